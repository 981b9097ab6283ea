"""The p-chart against Montgomery's textbook example, limits per batch size, the rules."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from qdspace.connector.contract_errors import SpcError
from qdspace.connector.spc import Rule
from qdspace.connector.spc_defects import DefectSubgroup, p_chart, p_limits

T0 = datetime(2026, 5, 1, tzinfo=UTC)
# Montgomery, "Introduction to Statistical Quality Control", Example 7.1 (Table 7.1):
# 30 samples of n = 50 orange-juice cans, nonconforming per sample.
ORANGE_JUICE = [12, 15, 8, 10, 4, 7, 16, 9, 14, 10, 5, 6, 17, 12, 22,
                8, 10, 5, 13, 11, 20, 18, 24, 15, 9, 12, 7, 13, 9, 6]  # fmt: skip


def groups(defective: list[int], n: int | list[int] = 50) -> list[DefectSubgroup]:
    sizes = n if isinstance(n, list) else [n] * len(defective)
    return [
        DefectSubgroup(f"B-{i + 1}", sizes[i], d, T0 + timedelta(hours=i))
        for i, d in enumerate(defective)
    ]


def test_the_textbook_example_limits_and_the_two_samples_out_of_control() -> None:
    chart = p_chart(groups(ORANGE_JUICE), rules=[Rule.WE1])
    # the book: p-bar = 0.2313, UCL = 0.4102, LCL = 0.0524; samples 15 and 23 above UCL
    assert chart.centre == pytest.approx(347 / 1500)
    assert round(chart.centre, 4) == 0.2313
    assert round(chart.points[0].ucl, 4) == 0.4102
    assert round(chart.points[0].lcl, 4) == 0.0524
    out = [p.batch_id for p in chart.points if p.out_of_control]
    assert out == ["B-15", "B-23"]
    assert [p.batch_id for p in chart.points if p.rules] == ["B-15", "B-23"]
    assert [a.rule for a in chart.alerts] == ["WE1", "WE1"]
    assert chart.points[14].fraction == pytest.approx(0.44)


def test_each_batch_gets_limits_of_its_own_size() -> None:
    sizes = [100, 400, 25]
    chart = p_chart(groups([10, 40, 2], sizes))
    assert chart.centre == pytest.approx(52 / 525)
    for point, n in zip(chart.points, sizes, strict=True):
        sigma = math.sqrt(chart.centre * (1 - chart.centre) / n)
        assert point.ucl == pytest.approx(chart.centre + 3 * sigma)
        assert point.lcl == pytest.approx(max(0.0, chart.centre - 3 * sigma))
    assert chart.points[2].ucl - chart.points[2].lcl > chart.points[1].ucl - chart.points[1].lcl
    assert p_limits(0.5, 4) == (0.0, 1.0)  # clipped to 0..1


def test_a_standard_centre_and_a_batch_below_the_lower_limit() -> None:
    chart = p_chart(groups([10, 0, 11], [100, 400, 100]), standard=0.1, rules=[Rule.WE1])
    assert chart.standard and chart.centre == 0.1
    assert chart.points[1].lcl > 0 and chart.points[1].out_of_control
    assert [a.rule for a in chart.alerts] == ["WE1"]


def test_a_run_on_one_side_fires_we4() -> None:
    chart = p_chart(groups([6] * 8 + [2] * 8, 100), rules=[Rule.WE4])
    assert [a.rule for a in chart.alerts] == ["WE4", "WE4"]


def test_no_spread_raises_nothing_unless_a_standard_says_so() -> None:
    chart = p_chart(groups([0, 0, 0], 20))
    assert chart.centre == 0.0 and not chart.alerts
    assert all(p.lcl == p.ucl == 0.0 and p.z is None for p in chart.points)
    zero = p_chart(groups([0, 1, 0], 20), standard=0.0, rules=[Rule.WE1])
    assert [p.batch_id for p in zero.points if p.rules] == ["B-2"]
    assert zero.points[1].out_of_control and not zero.points[0].out_of_control


@pytest.mark.parametrize(
    ("inspected", "defective", "text"),
    [(0, 0, "at least 1"), (5, 6, "not within"), (5, -1, "not within"), (True, 0, "whole")],
)
def test_impossible_counts_are_refused(inspected: int, defective: int, text: str) -> None:
    with pytest.raises(SpcError, match=text):
        DefectSubgroup("B-1", inspected, defective, T0)


def test_bad_charts_are_refused() -> None:
    with pytest.raises(SpcError, match="at least one batch"):
        p_chart([])
    with pytest.raises(SpcError, match="twice"):
        p_chart(groups([1, 1], 10)[:1] * 2)
    with pytest.raises(SpcError, match=r"within 0\.\.1"):
        p_chart(groups([1], 10), standard=float("nan"))
