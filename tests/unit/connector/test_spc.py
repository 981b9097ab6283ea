"""SPC early warning: each run rule on a crafted series, re-arming, baselines and rolling Cpk."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from qdspace.connector.contract_errors import SpcError
from qdspace.connector.spc import (
    CPK_RULE,
    Rule,
    RuleJudge,
    SpcAlert,
    SpcMonitor,
    SpcPoint,
    SpcSpec,
    characteristic_value,
    cpk,
    moving_range_sigma,
)

T0 = datetime(2026, 5, 1, tzinfo=UTC)
UNIT = SpcSpec(centre=0.0, sigma=1.0)


def feed(
    values: list[float], spec: SpcSpec = UNIT, rules: tuple[Rule, ...] | None = None
) -> list[tuple[int, SpcAlert]]:
    monitor = SpcMonitor(spec) if rules is None else SpcMonitor(spec, rules)
    out = []
    for index, value in enumerate(values):
        out.extend((index, alert) for alert in monitor.add(value, T0 + timedelta(seconds=index)))
    return out


def fired(values: list[float], **kwargs: object) -> list[tuple[int, str]]:
    return [(index, alert.rule) for index, alert in feed(values, **kwargs)]  # type: ignore[arg-type]


WAVY = [0.2, 0.3, -0.1, -0.2, 0.1, 0.4, -0.3, -0.1]  # in control: no rule fires on it


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (WAVY, []),
        ([0.1, 3.5], [(1, "WE1")]),
        ([0.1, 2.5, 0.0, 2.5], [(3, "WE2")]),
        ([1.5, 1.5, 0.0, 1.5, 1.5], [(4, "WE3")]),
        ([0.5, 0.6] * 4, [(7, "WE4")]),
        ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [(5, "NELSON3")]),
        ([0.5, -0.5] * 7, [(13, "NELSON4")]),
        (WAVY * 2, [(14, "NELSON7")]),
        ([1.5, -1.5] * 4, [(7, "NELSON8")]),
        ([-3.5], [(0, "WE1")]),
    ],
)
def test_each_rule_fires_on_its_pattern_and_only_there(
    values: list[float], expected: list[tuple[int, str]]
) -> None:
    assert fired(values) == expected


def test_one_excursion_is_one_alert_and_new_points_rearm_the_rule() -> None:
    assert fired([0.5, 0.6] * 4 + [0.5]) == [(7, "WE4")]
    assert fired([0.5, 0.6] * 8, rules=(Rule.WE4,)) == [(7, "WE4"), (15, "WE4")]
    assert fired([3.5, 3.6]) == [(0, "WE1"), (1, "WE1"), (1, "WE2")]
    alerts = feed([0.1, 2.5, 0.0, 2.5])
    (_, alert) = alerts[0]
    assert [p.value for p in alert.points] == [2.5, 2.5]
    assert alert.description.startswith("WE2: 2 of 3")
    assert alert.at == T0 + timedelta(seconds=3)


# The rules as they read, each judging a window of points of its own (the monitor keeps
# streaks instead): the reference the monitor's alerts are compared with.


@dataclass(frozen=True)
class _Judged:
    point: SpcPoint
    z: float


_Check = Callable[[Sequence[_Judged]], tuple[Sequence[_Judged], str] | None]


def _same_side(window: Sequence[_Judged], beyond: float, need: int, of: int) -> Sequence[_Judged]:
    """The points of the last `of` beyond `beyond` sigma on the last point's side, if >= need."""
    last = window[-1]
    if abs(last.z) <= beyond:
        return ()
    sign = math.copysign(1.0, last.z)
    hits = [j for j in window[-of:] if j.z * sign > beyond]
    return hits if len(hits) >= need else ()


def _k_of_n(beyond: float, need: int, of: int, text: str) -> _Check:
    def check(window: Sequence[_Judged]) -> tuple[Sequence[_Judged], str] | None:
        hits = _same_side(window, beyond, need, of)
        return (hits, text) if hits else None

    return check


def _run(length: int, text: str, test: Callable[[Sequence[_Judged]], bool]) -> _Check:
    def check(window: Sequence[_Judged]) -> tuple[Sequence[_Judged], str] | None:
        run = window[-length:]
        return (run, text) if len(run) == length and test(run) else None

    return check


def _one_side(run: Sequence[_Judged]) -> bool:
    return all(j.z > 0 for j in run) or all(j.z < 0 for j in run)


def _trend(run: Sequence[_Judged]) -> bool:
    steps = [b.point.value - a.point.value for a, b in itertools.pairwise(run)]
    return all(s > 0 for s in steps) or all(s < 0 for s in steps)


def _alternating(run: Sequence[_Judged]) -> bool:
    steps = [b.point.value - a.point.value for a, b in itertools.pairwise(run)]
    return all(a * b < 0 for a, b in itertools.pairwise(steps))


def _hugging(run: Sequence[_Judged]) -> bool:
    return all(abs(j.z) < 1 for j in run)


def _mixture(run: Sequence[_Judged]) -> bool:
    return (
        all(abs(j.z) > 1 for j in run) and any(j.z > 0 for j in run) and any(j.z < 0 for j in run)
    )


_BEYOND_3 = _k_of_n(3, 1, 1, "1 point beyond 3 sigma")
_TWO_OF_THREE = _k_of_n(2, 2, 3, "2 of 3 consecutive points beyond 2 sigma on one side")
_FOUR_OF_FIVE = _k_of_n(1, 4, 5, "4 of 5 consecutive points beyond 1 sigma on one side")
_CHECKS: dict[Rule, _Check] = {
    Rule.WE1: _BEYOND_3,
    Rule.NELSON1: _BEYOND_3,
    Rule.WE2: _TWO_OF_THREE,
    Rule.NELSON5: _TWO_OF_THREE,
    Rule.WE3: _FOUR_OF_FIVE,
    Rule.NELSON6: _FOUR_OF_FIVE,
    Rule.WE4: _run(8, "8 consecutive points on one side of the centre line", _one_side),
    Rule.NELSON2: _run(9, "9 consecutive points on one side of the centre line", _one_side),
    Rule.NELSON3: _run(6, "6 consecutive points steadily increasing or decreasing", _trend),
    Rule.NELSON4: _run(14, "14 consecutive points alternating up and down", _alternating),
    Rule.NELSON7: _run(15, "15 consecutive points within 1 sigma of the centre line", _hugging),
    Rule.NELSON8: _run(8, "8 consecutive points beyond 1 sigma on both sides", _mixture),
}


def _fired_by_definition(
    zs: list[float], rules: list[Rule]
) -> list[tuple[int, str, tuple[int, ...]]]:
    """Each rule judged on the points after the last one it fired on, among the last 15,
    with a window of its own: the rules as they read, without the shared windows."""
    last_fired = {rule: -1 for rule in rules}
    out = []
    for i in range(len(zs)):
        for rule in rules:
            first = max(last_fired[rule] + 1, i - 14)
            points = [SpcPoint(k, zs[k], T0) for k in range(first, i + 1)]
            found = _CHECKS[rule]([_Judged(p, p.value) for p in points])
            if found is not None:
                last_fired[rule] = i
                out.append((i, rule.value, tuple(j.point.index for j in found[0])))
    return out


def _fired_by_judge(zs: list[float], rules: list[Rule]) -> list[tuple[int, str, tuple[int, ...]]]:
    """The alerts of a `RuleJudge` fed ``zs`` (each its own value and z), as
    `_fired_by_definition` lists them."""
    judge = RuleJudge(rules)
    return [
        (i, alert.rule, tuple(p.index for p in alert.points))
        for i, z in enumerate(zs)
        for alert in judge.judge(SpcPoint(i, z, T0), z)
    ]


@pytest.mark.parametrize("seed", range(20))
def test_the_rules_fire_where_each_rule_read_alone_fires(seed: int) -> None:
    """Series with shifts and trends under random sets of rules: the same alerts, on
    the same points, as each rule judging its own window (the monitor shares one among
    the rules that have not fired on a point it still remembers)."""
    rnd = random.Random(seed)
    zs = [
        rnd.gauss(0, 1) + (2.5 if rnd.random() < 0.2 else 0.0) + (k % 7) * 0.3 * (seed % 2)
        for k in range(1500)
    ]
    rules = rnd.sample(list(Rule), rnd.randint(1, len(Rule)))
    got = _fired_by_judge(zs, rules)
    assert got == _fired_by_definition(zs, rules)
    assert got, "the series fires the rules chosen"


def test_nelson_variants_are_available_when_asked_for() -> None:
    rules = (Rule.NELSON1, Rule.NELSON2, Rule.NELSON5, Rule.NELSON6)
    assert fired([0.5, 0.6] * 5, rules=rules) == [(8, "NELSON2")]
    assert fired([0.1, 3.5], rules=rules) == [(1, "NELSON1")]


def test_baseline_sets_the_limits_before_rules_run() -> None:
    spec = SpcSpec(baseline_size=8)
    monitor = SpcMonitor(spec)
    for index, value in enumerate(WAVY):
        assert monitor.add(value, T0 + timedelta(seconds=index)) == []
    assert monitor.centre == pytest.approx(sum(WAVY) / 8)
    assert monitor.sigma == pytest.approx(moving_range_sigma(WAVY))
    alerts = monitor.add(10.0, T0 + timedelta(seconds=9))
    assert [a.rule for a in alerts] == ["WE1"]


def test_a_flat_baseline_waits_for_spread() -> None:
    monitor = SpcMonitor(SpcSpec(baseline_size=3))
    for value in (1.0, 1.0, 1.0):
        monitor.add(value, T0)
    assert monitor.sigma is None
    monitor.add(1.2, T0)
    assert monitor.sigma is not None and monitor.sigma > 0


def test_cpk_formula() -> None:
    assert cpk([9.0, 10.0, 11.0], 0.0, 20.0) == pytest.approx(10 / 3)
    assert cpk([9.0, 10.0, 11.0], None, 12.0) == pytest.approx(2 / 3)
    assert cpk([5.0, 5.0], 0.0, 10.0) == math.inf
    with pytest.raises(SpcError, match="spec limit"):
        cpk([1.0, 2.0], None, None)


def test_cpk_of_huge_finite_values_is_a_number_not_an_overflow() -> None:
    """A supplier's stream may carry 1e200 in a characteristic: squaring its deviation
    overflowed a float (OverflowError, which ended the consumer's subscription). The
    Cpk is computed in units of the largest value and comes out as the formula says."""
    values = [0.1] * 19 + [1e200]
    mean, sd = 1e200 / 20, 1e200 * math.sqrt(1 / 20)  # the 19 small ones are noise here
    assert cpk(values, None, 0.5) == pytest.approx((0.5 - mean) / (3 * sd), rel=1e-9)
    assert 0 < cpk([1.7e308, -1.7e308, 1.0], -1.0, 1.0) < 1e-300
    assert cpk([1e-310, 2e-310, 3e-310], 0.0, 1.0) == pytest.approx(2 / 3)
    monitor = SpcMonitor(SpcSpec(usl=0.5, baseline_size=20, cpk_window=20))
    raised = [a.rule for i in range(30) for a in monitor.add(1e200 if i == 22 else 0.1, T0)]
    assert "CPK" in raised  # the capability collapses; the monitor goes on


def test_rolling_cpk_alerts_once_per_drop_and_rearms_after_recovery() -> None:
    spec = SpcSpec(centre=10.0, sigma=1.0, lsl=0.0, usl=20.0, cpk_window=4, cpk_threshold=1.33)
    capable = [9.9, 10.1, 10.0, 9.9, 10.1, 10.0]
    drifting = [12.0, 18.0, 12.0, 18.0, 12.0, 18.0]
    values = capable + drifting + capable + drifting
    cpk_alerts = [(i, a) for i, a in feed(values, spec=spec) if a.rule == CPK_RULE]
    assert [i for i, _ in cpk_alerts] == [7, 19]  # the first windows that hold an 18
    assert "rolling Cpk" in cpk_alerts[0][1].description
    assert len(cpk_alerts[0][1].points) == 4


def test_bad_specs_and_values_are_refused() -> None:
    with pytest.raises(SpcError, match="both centre and sigma"):
        SpcSpec(centre=1.0)
    with pytest.raises(SpcError, match="sigma must be > 0"):
        SpcSpec(centre=1.0, sigma=0.0)
    with pytest.raises(SpcError, match="below usl"):
        SpcSpec(lsl=2.0, usl=1.0)
    with pytest.raises(SpcError, match="at least 2"):
        SpcSpec(baseline_size=1)
    with pytest.raises(SpcError, match="not a finite number"):
        SpcMonitor(UNIT).add(math.nan, T0)


def test_a_long_flat_series_settles_its_baseline_when_spread_comes() -> None:
    """A baseline without spread grows until a value differs; its sigma is then the
    moving-range sigma of all of it. Summing every range again on each value made a flat
    stream cost the square of its length (a supplier could stall the subscriber with
    one: 200,000 values took hours; they take about a second now, and this test's
    timeout is what fails the old way)."""
    monitor = SpcMonitor(SpcSpec(usl=0.5, baseline_size=20, cpk_window=20))
    flat = [0.25] * 200_000
    for value in flat:
        monitor.add(value, T0)
    assert monitor.sigma is None
    monitor.add(0.35, T0)
    assert monitor.sigma == pytest.approx(moving_range_sigma([*flat, 0.35]))
    assert monitor.centre == pytest.approx((0.25 * 200_000 + 0.35) / 200_001)


def test_a_characteristic_is_a_number_and_nothing_else() -> None:
    """What a supplier's record carries in the followed field is judged only when it is a
    number: ``true`` is no 1.0 (a run of them would read as a shift past a 0.5 USL), and
    text, null, lists and an integer beyond a double are skipped, not raised on."""
    record = {
        "a": 0.25,
        "b": 3,
        "t": True,
        "f": False,
        "s": "0.3",
        "n": None,
        "l": [1],
        "h": 10**400,
    }
    assert characteristic_value(record, "a") == 0.25
    assert characteristic_value(record, "b") == 3.0
    for skipped in ("t", "f", "s", "n", "l", "h", "missing"):
        assert characteristic_value(record, skipped) is None, skipped


def _patterned(rnd: random.Random, length: int) -> list[float]:
    """Segments that each rule looks for, at random lengths, between noise: shifts to one
    side, trends, saw-teeth, hugging the centre, and points beyond 1 sigma on both sides,
    with exact zeros and equal neighbours (which break a side, a trend and a turn) and
    points exactly on 1, 2 and 3 sigma (the rules' strict bounds)."""
    zs: list[float] = []
    while len(zs) < length:
        kind, n = rnd.randrange(7), rnd.randint(3, 20)
        if kind == 0:
            zs += [rnd.gauss(0, 1) for _ in range(n)]
        elif kind == 1:
            side = rnd.choice((-1, 1))
            zs += [side * rnd.uniform(0.1, 2.5) for _ in range(n)]
        elif kind == 2:
            start, step = rnd.uniform(-2, 2), rnd.choice((-0.3, 0.3))
            zs += [start + step * k for k in range(n)]
        elif kind == 3:
            zs += [(-1) ** k * rnd.uniform(0.2, 1.5) for k in range(n)]
        elif kind == 4:
            zs += [rnd.uniform(-0.9, 0.9) for _ in range(n)]
        elif kind == 5:
            zs += [rnd.choice((-1, 1)) * rnd.uniform(1.1, 2.9) for _ in range(n)]
        else:
            edge = [rnd.choice((-1.0, 1.0, -2.0, 2.0, 3.0)) for _ in range(rnd.randint(1, 4))]
            zs += [0.0] * rnd.randint(1, 3) + edge + [zs[-1] if zs else 1.0] * 2
    return zs[:length]


@pytest.mark.parametrize("seed", range(6))
def test_every_rule_fires_where_it_reads_alone_on_patterned_series(seed: int) -> None:
    """The monitor keeps streaks instead of windows: over series made of the patterns the
    rules look for, every rule (all at once, and alone) fires on the same points as the
    rule read by its definition, and each rule fires somewhere."""
    rnd = random.Random(100 + seed)
    zs = _patterned(rnd, 3000)
    for rules in (list(Rule), [rnd.choice(list(Rule))]):
        got = _fired_by_judge(zs, rules)
        assert got == _fired_by_definition(zs, rules)
        assert {rule for _, rule, _ in got} == {r.value for r in rules}
