"""A kept SPC chart (`LiveChart`) fed in pieces draws what one fed everything at once
draws, past `MAX_POINTS` too, with hostile values among them; what scrolled off is
neither drawn nor kept."""

from __future__ import annotations

import math
import random
from datetime import datetime
from typing import Any

import pytest

from qdspace.connector.contract_errors import SpcError
from qdspace.connector.spc import CPK_RULE, SpcMonitor, SpcSpec, cpk
from qdspace.connector.spc_xbar import RANGE_RULE, XbarRMonitor, XbarRSpec
from qdspace.node.console.spc_state import MAX_POINTS, LiveChart, chart_state

SPECS = [
    SpcSpec(usl=0.5, baseline_size=20, cpk_window=20),
    SpcSpec(lsl=-1.0, usl=1.0, baseline_size=30, cpk_window=50),
    SpcSpec(centre=0.3, sigma=0.05, usl=0.6),
    # a Cpk window wider than the chart shows
    SpcSpec(lsl=0.0, baseline_size=25, cpk_window=MAX_POINTS + 300),
]


def _series(rnd: random.Random, n: int) -> list[tuple[float, str]]:
    values = []
    for i in range(n):
        value = rnd.gauss(0.3 if i < n // 2 else 0.42, 0.05)  # a shift half way
        roll = rnd.random()
        if roll < 0.002:
            value = float("nan")
        elif roll < 0.003:
            value = rnd.choice([1.7e308, -1.7e308])
        values.append((value, f"t{i}"))
    return values


def _reference(values: list[tuple[float, str]], spec: SpcSpec, n: int | None) -> dict[str, Any]:
    """The chart as the page computed it before charts were kept: every value replayed
    through the monitors, every hit recorded, the newest `MAX_POINTS` cut out after."""
    values = [(v, a) for v, a in values if math.isfinite(v)]
    monitor, hits, epoch = SpcMonitor(spec), {}, datetime(1970, 1, 1)
    for value, _ in values:
        for alert in monitor.add(value, epoch):
            if alert.rule != CPK_RULE:
                for point in alert.points:
                    hits.setdefault(point.index, []).append(alert.rule)
    first = max(0, len(values) - MAX_POINTS)
    rolling = monitor.rolling_cpk  # the monitor's own, judged value by value
    window = [v for v, _ in values[-spec.cpk_window :]]
    if len(window) >= spec.cpk_window:
        assert rolling == cpk(window, spec.lsl, spec.usl)
    found: dict[str, Any] = {
        "n": len(values),
        "first": first,
        "y": [v for v, _ in values[first:]],
        "centre": monitor.centre,
        "violations": [
            (i, rules, values[i][0], values[i][1])
            for i, rules in sorted(hits.items())
            if i >= first
        ],
        "cpk": rolling if rolling is None or math.isfinite(rolling) else None,
    }
    if n is not None:
        xbar = XbarRMonitor(
            XbarRSpec(
                subgroup_size=n,
                baseline_subgroups=max(2, spec.baseline_size // n),
                centre=spec.centre,
                sigma=spec.sigma,
            )
        )
        means: list[float] = []
        marks: dict[int, list[str]] = {}
        for value, _ in values:
            try:
                alerts = xbar.add(value, epoch)
            except SpcError:
                continue
            if xbar.last is not None and xbar.last.index == len(means):
                means.append(xbar.last.mean)
            for alert in alerts:
                if alert.rule != RANGE_RULE:
                    for point in alert.points:
                        marks.setdefault(point.index, []).append(alert.rule)
        start = max(0, len(means) - MAX_POINTS)
        found["x"] = means[start:]
        found["x_marks"] = [(i, r, means[i]) for i, r in sorted(marks.items()) if i >= start]
    return found


def _drawn(state: dict[str, Any], n: int | None) -> dict[str, Any]:
    found = {k: state[k] for k in ("n", "first", "y", "centre", "cpk")}
    found["violations"] = [(v["i"], v["rules"], v["value"], v["at"]) for v in state["violations"]]
    if n is not None:
        found["x"] = state["xbar"]["x"]
        found["x_marks"] = [(v["i"], v["rules"], v["value"]) for v in state["xbar"]["violations"]]
    return found


@pytest.mark.parametrize("seed", range(10))
def test_fed_in_pieces_it_draws_what_it_draws_fed_at_once(seed: int) -> None:
    rnd = random.Random(seed)
    values = _series(rnd, rnd.choice([30, 700, MAX_POINTS + 1_500]))
    spec, subgroup = rnd.choice(SPECS), rnd.choice([None, 2, 5])
    whole = chart_state("own:x", values, spec, subgroup)
    chart, i = LiveChart(spec, subgroup), 0
    while i < len(values):
        step = rnd.randint(1, 400)
        chart.extend(values[i : i + step])
        i += step
    assert chart.state("own:x") == whole
    assert _drawn(whole, subgroup) == _reference(values, spec, subgroup)


def test_what_scrolled_off_is_neither_drawn_nor_kept() -> None:
    rnd = random.Random(9)
    chart = LiveChart(SpcSpec(usl=0.5, baseline_size=20, cpk_window=20))
    for _ in range(8):
        chart.extend(_series(rnd, MAX_POINTS))
    state = chart.state("own:x")
    assert state["first"] == chart.n - MAX_POINTS > 6 * MAX_POINTS
    assert len(state["y"]) == MAX_POINTS
    assert state["violations"] and all(v["i"] >= state["first"] for v in state["violations"])
    assert len(chart._hits) <= 2 * MAX_POINTS  # older marks are let go


def test_the_rolling_cpk_is_the_monitors_when_its_window_is_wider_than_the_chart() -> None:
    """The chart works Cpk out when it is shown, over its own newest values, not over the
    points it draws: with a window wider than `MAX_POINTS` it is still the monitor's."""
    spec = SpcSpec(lsl=0.0, usl=0.9, baseline_size=25, cpk_window=MAX_POINTS + 300)
    values = [v for v in _series(random.Random(3), MAX_POINTS + 1_500) if math.isfinite(v[0])]
    monitor, epoch = SpcMonitor(spec), datetime(1970, 1, 1)
    for value, _ in values:
        monitor.add(value, epoch)
    state = chart_state("own:x", values, spec)
    assert state["cpk"] == monitor.rolling_cpk is not None
    assert len(state["y"]) == MAX_POINTS < spec.cpk_window
    assert chart_state("own:x", values[: spec.cpk_window - 1], spec)["cpk"] is None


def test_a_chart_whose_limits_overflow_is_still_json_the_browser_parses() -> None:
    """Finite values near the float limit (what a hostile provider can send) make the
    baseline's sigma overflow: the event still parses as strict JSON (what the browser's
    ``JSON.parse`` takes), the overflowed limits as null, and every point is drawn. The
    standard library wrote ``Infinity`` there and the chart stopped updating."""
    import json

    from qdspace.node.console.spc import sse

    spec = SpcSpec(usl=0.5, baseline_size=4, cpk_window=4)
    huge = [1e308, -1e308, 1.7e308, -1.7e308, 1e308, 0.1]
    state = LiveChart(spec).extend([(v, "") for v in huge]).state("sub:x")
    assert math.isinf(state["ucl"])  # the overflow this is about

    def no_constants(name: str) -> None:
        raise AssertionError(f"{name} is not JSON")

    event = sse("chart", state)
    assert event.startswith(b"event: chart\ndata: ") and event.endswith(b"\n\n")
    data = event.removeprefix(b"event: chart\ndata: ").removesuffix(b"\n\n")
    assert b"\n" not in data
    drawn = json.loads(data, parse_constant=no_constants)
    assert drawn["ucl"] is None and drawn["lcl"] is None
    assert drawn["y"] == huge and drawn["centre"] == state["centre"]


def test_an_event_carries_the_state_as_it_is() -> None:
    """The event's JSON reads back as the chart's state, value for value (floats round
    trip), for charts with violations and an X-bar-R view."""
    import json

    from qdspace.node.console.spc import sse

    rnd = random.Random(5)
    values = _series(rnd, 3000)
    state = LiveChart(SPECS[0], subgroup=5).extend(values).state("own:EL-1")
    assert state["violations"] and state["xbar"] is not None
    data = sse("chart", state).split(b"data: ", 1)[1]
    assert json.loads(data) == json.loads(json.dumps(state))


@pytest.mark.parametrize(
    "stored",
    [
        "2026-05-01 10:30:45.123456",  # as SQLAlchemy stores a UTC time on SQLite
        "2026-05-01 10:30:45.000000",  # a whole second: isoformat writes no fraction
        "2026-05-01 10:30:45.000001",
        "2026-05-01 10:30:45.100000",
        "2026-05-01 10:30:45",  # other shapes: read as SQLAlchemy reads them
        "2026-05-01T10:30:45.123456",
        "2026-05-01 10:30:45.12345Z",  # the stored length, an offset of its own
        "2026-W18-5 10:30:45.123456",  # the stored length, a week date
        "2026-05-01 10:30:45+02:00",
        "2026-13-45 99:99:99.999999",  # the stored shape, no time: refused alike
        "0001-01-01 00:00:00.000000",
        "9999-12-31 23:59:59.999999",
    ],
)
def test_a_stored_time_is_written_as_reading_it_and_isoformat_write_it(stored: str) -> None:
    """`iso_time` (a station chart's 20,000 times) gives what SQLAlchemy's read of the
    stored text and ``isoformat()`` give, or the same refusal."""
    from sqlalchemy.dialects import sqlite

    from qdspace.connector.qdm import Inspection
    from qdspace.node.console.spc import iso_time

    dialect = sqlite.dialect()
    kind = Inspection.__table__.c.inspected_at.type  # type: ignore[attr-defined]
    slow = kind.dialect_impl(dialect).result_processor(dialect, None)
    try:
        want = slow(stored).isoformat()
    except ValueError as exc:
        with pytest.raises(type(exc)):
            iso_time(kind, dialect)(stored)
        return
    assert iso_time(kind, dialect)(stored) == want
