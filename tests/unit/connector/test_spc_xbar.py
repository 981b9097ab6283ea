"""X-bar-R charts: a textbook example's published limits, a planted shift, partial
subgroups, the rule machinery shared with the individuals chart, and hostile input."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from qdspace.connector.contract_errors import SpcError
from qdspace.connector.spc import Rule, SpcAlert
from qdspace.connector.spc_xbar import (
    RANGE_RULE,
    XBAR_R_CONSTANTS,
    XbarRMonitor,
    XbarRSpec,
    xbar_r_limits,
)

T0 = datetime(2026, 5, 1, tzinfo=UTC)

# Montgomery, "Introduction to Statistical Quality Control" (7th ed.), Example 6.1 /
# Table 6.3: inside diameters (mm) of automobile engine piston rings, 25 samples of 5.
# Published: X-dbar = 74.001, R-bar = 0.023; X-bar chart UCL 74.014, LCL 73.988; R chart
# UCL 0.049, LCL 0; every sample inside the limits on both charts.
PISTON_RINGS = """
74.030 74.002 74.019 73.992 74.008
73.995 73.992 74.001 74.011 74.004
73.988 74.024 74.021 74.005 74.002
74.002 73.996 73.993 74.015 74.009
73.992 74.007 74.015 73.989 74.014
74.009 73.994 73.997 73.985 73.993
73.995 74.006 73.994 74.000 74.005
73.985 74.003 73.993 74.015 73.988
74.008 73.995 74.009 74.005 74.004
73.998 74.000 73.990 74.007 73.995
73.994 73.998 73.994 73.995 73.990
74.004 74.000 74.007 74.000 73.996
73.983 74.002 73.998 73.997 74.012
74.006 73.967 73.994 74.000 73.984
74.012 74.014 73.998 73.999 74.007
74.000 73.984 74.005 73.998 73.996
73.994 74.012 73.986 74.005 74.007
74.006 74.010 74.018 74.003 74.000
73.984 74.002 74.003 74.005 73.997
74.000 74.010 74.013 74.020 74.003
73.982 74.001 74.015 74.005 73.996
74.004 73.999 73.990 74.006 74.009
74.010 73.989 73.990 74.009 74.014
74.015 74.008 73.993 74.000 74.010
73.982 73.984 73.995 74.017 74.013
"""
RINGS = [float(v) for v in PISTON_RINGS.split()]


def feed(monitor: XbarRMonitor, values: list[float]) -> list[tuple[int, SpcAlert]]:
    """(subgroup index, alert) for every alert the values raise."""
    out = []
    for i, value in enumerate(values):
        for alert in monitor.add(value, T0 + timedelta(seconds=i)):
            assert monitor.last is not None
            out.append((monitor.last.index, alert))
    return out


def test_the_constants_are_the_published_table() -> None:
    assert sorted(XBAR_R_CONSTANTS) == list(range(2, 11))
    for n, (a2, d3, d4, d2) in XBAR_R_CONSTANTS.items():
        # A2 = 3 / (d2 sqrt n); D3 + D4 = 2 where D3 > 0 (both are 1 -+ 3 d3/d2)
        assert a2 == pytest.approx(3 / (d2 * math.sqrt(n)), abs=0.002), n
        if d3 > 0:
            assert d3 + d4 == pytest.approx(2.0, abs=0.001), n
    assert XBAR_R_CONSTANTS[5] == (0.577, 0.0, 2.114, 2.326)


def test_montgomery_piston_rings_limits_match_the_published_ones() -> None:
    # from the published, rounded statistics: the book's limits to 3 decimals
    book = xbar_r_limits(5, 74.001, 0.023)
    assert (round(book.x_ucl, 3), round(book.x_lcl, 3)) == (74.014, 73.988)
    assert (round(book.r_lcl, 3), round(book.r_ucl, 3)) == (0.0, 0.049)
    # from the raw data: the same statistics; limits within the book's rounding (the
    # book rounds X-dbar and R-bar before it multiplies: UCL 74.0145 here, 74.014 there)
    monitor = XbarRMonitor(XbarRSpec(subgroup_size=5, baseline_subgroups=25), rules=(Rule.WE1,))
    assert feed(monitor, RINGS) == []
    limits = monitor.limits
    assert limits is not None
    assert (round(limits.grand_mean, 3), round(limits.rbar, 3)) == (74.001, 0.023)
    assert limits.x_ucl == pytest.approx(74.014, abs=0.001)
    assert limits.x_lcl == pytest.approx(73.988, abs=0.0005)
    assert round(limits.r_ucl, 3) == 0.049 and limits.r_lcl == 0.0
    assert monitor.complete == 25 and monitor.pending == 0


def test_a_shift_planted_in_subgroups_is_flagged_on_the_xbar_chart() -> None:
    monitor = XbarRMonitor(XbarRSpec(subgroup_size=5, baseline_subgroups=25))
    assert feed(monitor, RINGS) == []
    # phase II: the first 5 samples again (in control), then the same ones moved up by
    # 0.02 mm (one and a half times the distance from X-dbar to the UCL)
    again = RINGS[:25]
    assert feed(monitor, again) == []
    shifted = [v + 0.02 for v in RINGS[25:50]]
    alerts = feed(monitor, shifted)
    assert alerts, "a 0.02 mm shift of the mean went unnoticed"
    first_index, first = alerts[0]
    assert first_index == 30  # the first shifted subgroup
    assert first.rule == "WE1"
    assert first.points[0].value == pytest.approx(sum(shifted[:5]) / 5)
    assert all(a.rule != RANGE_RULE for _, a in alerts)  # the spread did not change


def test_a_wider_spread_is_flagged_on_the_r_chart() -> None:
    monitor = XbarRMonitor(XbarRSpec(subgroup_size=5, centre=74.0, sigma=0.01))
    alerts = feed(monitor, [73.95, 74.05, 74.0, 74.0, 74.0])
    assert [a.rule for _, a in alerts] == [RANGE_RULE]
    assert alerts[0][1].points[0].value == pytest.approx(0.1)


def test_known_standards_give_three_sigma_over_root_n() -> None:
    monitor = XbarRMonitor(XbarRSpec(subgroup_size=4, centre=10.0, sigma=2.0))
    limits = monitor.limits
    assert limits is not None
    # A2 * d2 * sigma = 3 sigma / sqrt(n) up to the table's rounding
    assert limits.x_ucl == pytest.approx(10.0 + 3 * 2.0 / 2, abs=0.01)
    assert limits.rbar == pytest.approx(2.059 * 2.0)


def test_incomplete_subgroups_are_neither_judged_nor_counted() -> None:
    monitor = XbarRMonitor(XbarRSpec(subgroup_size=4, centre=0.0, sigma=1.0))
    for i, value in enumerate([50.0, 50.0, 50.0]):  # far out, but only 3 of 4
        assert monitor.add(value, T0 + timedelta(seconds=i)) == []
    assert monitor.complete == 0 and monitor.last is None and monitor.pending == 3
    alerts = monitor.add(50.0, T0)
    assert [a.rule for a in alerts] == ["WE1"]
    assert monitor.complete == 1 and monitor.pending == 0


def test_the_rules_are_the_individuals_rules_on_subgroup_means() -> None:
    # 8 subgroup means on one side of the centre (within 1 sigma of X-bar): WE4, the
    # same machinery as the individuals chart, counted in subgroups not values
    monitor = XbarRMonitor(XbarRSpec(subgroup_size=2, centre=0.0, sigma=1.0))
    values = [0.3, 0.5, 0.5, 0.3] * 4
    assert [(i, a.rule) for i, a in feed(monitor, values)] == [(7, "WE4")]


def test_a_flat_baseline_waits_for_spread() -> None:
    monitor = XbarRMonitor(XbarRSpec(subgroup_size=2, baseline_subgroups=2))
    feed(monitor, [1.0] * 4)
    assert monitor.limits is None
    feed(monitor, [1.0, 1.2])
    assert monitor.limits is not None and monitor.limits.rbar > 0


@pytest.mark.parametrize("n", [0, 1, 11, 100, -5, 2.5, True, "5", None])
def test_a_bad_subgroup_size_is_refused(n: object) -> None:
    with pytest.raises(SpcError, match="subgroup size"):
        XbarRSpec(subgroup_size=n)  # type: ignore[arg-type]
    with pytest.raises(SpcError, match="subgroup size"):
        xbar_r_limits(n, 0.0, 1.0)  # type: ignore[arg-type]


def test_hostile_values_and_specs_are_refused() -> None:
    monitor = XbarRMonitor(XbarRSpec(subgroup_size=2, centre=0.0, sigma=1.0))
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(SpcError, match="not a finite number"):
            monitor.add(bad, T0)
    with pytest.raises(SpcError, match="not a number"):
        monitor.add("1.0", T0)  # type: ignore[arg-type]
    assert monitor.pending == 0  # nothing refused was kept
    # finite but huge: the range overflows, the whole subgroup is refused
    monitor.add(1.7e308, T0)
    with pytest.raises(SpcError, match="overflows"):
        monitor.add(-1.7e308, T0)
    assert monitor.complete == 0 and monitor.pending == 0
    monitor.add(1.7e308, T0)  # a huge mean does not overflow
    assert monitor.add(1.7e308, T0)[0].rule == "WE1"
    with pytest.raises(SpcError, match="baseline_subgroups"):
        XbarRSpec(baseline_subgroups=1)
    with pytest.raises(SpcError, match="both centre and sigma"):
        XbarRSpec(centre=1.0)
    with pytest.raises(SpcError, match="sigma must be"):
        XbarRSpec(centre=1.0, sigma=math.nan)
    with pytest.raises(SpcError, match="centre must be"):
        XbarRSpec(centre=math.inf, sigma=1.0)
    with pytest.raises(SpcError, match="R-bar"):
        xbar_r_limits(5, 0.0, -1.0)
