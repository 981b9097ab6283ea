"""The SPC page's X-bar-R state: complete subgroups only, marks on the right chart, and
a hostile value that overflows a subgroup's range dropped without a server error."""

from __future__ import annotations

import pytest

from qdspace.connector.spc import SpcSpec
from qdspace.node.console.spc_state import chart_state


def test_xbar_state_draws_complete_subgroups_and_marks_both_charts() -> None:
    steady = [0.10, 0.12, 0.09, 0.11] * 5  # 20 values: the baseline, 5 subgroups of 4
    values = [(v, "") for v in [*steady, 0.1, 0.5, 0.5, 0.5, 0.5, 0.5]]
    state = chart_state("own:x", values, SpcSpec(usl=0.6, baseline_size=20), 4)
    xbar = state["xbar"]
    assert (xbar["n"], xbar["groups"], xbar["pending"], xbar["baseline"]) == (4, 6, 2, 5)
    assert len(xbar["x"]) == len(xbar["r"]) == 6
    assert [v["i"] for v in xbar["violations"]] == [5]
    assert [v["rules"] for v in xbar["r_violations"]] == [["RANGE"]]
    assert xbar["lcl"] < xbar["centre"] < xbar["ucl"]
    assert chart_state("own:x", values, SpcSpec(baseline_size=20))["xbar"] is None


def test_an_overflowing_subgroup_is_dropped_not_a_server_error() -> None:
    values = [(v, "") for v in [1.0, 1.2, 1.7e308, -1.7e308, 1.1, 1.3]]
    xbar = chart_state("own:x", values, SpcSpec(baseline_size=4), 2)["xbar"]
    assert xbar["groups"] == 2 and xbar["pending"] == 0
    assert xbar["r"] == pytest.approx([0.2, 0.2])
