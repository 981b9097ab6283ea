"""SPC early warning on a stream of measurements received under an agreement.

An OEM watching a supplier's live inspection stream wants to hear about a
drifting process before parts fail. `SpcMonitor` is an individuals control
chart: the centre line and sigma come from the spec or from a baseline window
(sigma by the moving-range method, MR-bar / 1.128; a baseline without spread
is extended until it has some), then each new value is judged by the run
rules below, and a rolling Cpk is compared with a threshold.

Rules (z = (x - centre) / sigma, "same side" means all above or all below):

==========  ==========================================================
WE1/N1      1 point beyond 3 sigma
WE2/N5      2 of 3 consecutive points beyond 2 sigma, same side
WE3/N6      4 of 5 consecutive points beyond 1 sigma, same side
WE4         8 consecutive points on the same side of the centre line
NELSON2     9 consecutive points on the same side of the centre line
NELSON3     6 consecutive points steadily increasing or decreasing
NELSON4     14 consecutive points alternating up and down
NELSON7     15 consecutive points within 1 sigma (too little variation)
NELSON8     8 consecutive points beyond 1 sigma, on both sides
CPK         rolling Cpk over the last `cpk_window` values below threshold
==========  ==========================================================

After a rule fires it is re-armed only by new points: the next alert of the
same rule uses none of the points of the previous one, so one excursion is
one alert. The Cpk alert fires when Cpk falls below the threshold and again
only after it has recovered.

The rules live in `RuleJudge`, which knows nothing of how a point's sigma was found:
the X-bar chart (`qdspace.connector.spc_xbar`) judges subgroup means with it too.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from qdspace.connector.contract_errors import SpcError

D2_MOVING_RANGE = 1.128  # d2 for subgroups of 2: sigma = mean moving range / d2


class Rule(StrEnum):
    WE1 = "WE1"
    WE2 = "WE2"
    WE3 = "WE3"
    WE4 = "WE4"
    NELSON1 = "NELSON1"
    NELSON2 = "NELSON2"
    NELSON3 = "NELSON3"
    NELSON4 = "NELSON4"
    NELSON5 = "NELSON5"
    NELSON6 = "NELSON6"
    NELSON7 = "NELSON7"
    NELSON8 = "NELSON8"


# The Western Electric rules plus the Nelson rules that are not the same test again.
DEFAULT_RULES: tuple[Rule, ...] = (
    Rule.WE1,
    Rule.WE2,
    Rule.WE3,
    Rule.WE4,
    Rule.NELSON3,
    Rule.NELSON4,
    Rule.NELSON7,
    Rule.NELSON8,
)
CPK_RULE = "CPK"


@dataclass(frozen=True)
class SpcSpec:
    """Spec limits, an optional known centre/sigma, and the window sizes."""

    lsl: float | None = None
    usl: float | None = None
    centre: float | None = None
    sigma: float | None = None
    baseline_size: int = 25
    cpk_window: int = 30
    cpk_threshold: float = 1.33

    def __post_init__(self) -> None:
        if (self.centre is None) != (self.sigma is None):
            raise SpcError("give both centre and sigma, or neither (then a baseline is used)")
        if self.sigma is not None and not self.sigma > 0:
            raise SpcError(f"sigma must be > 0, got {self.sigma}")
        if self.lsl is not None and self.usl is not None and not self.lsl < self.usl:
            raise SpcError(f"lsl {self.lsl} must be below usl {self.usl}")
        if self.baseline_size < 2 or self.cpk_window < 2:
            raise SpcError("baseline_size and cpk_window need at least 2 points")


@dataclass(frozen=True)
class SpcPoint:
    index: int
    value: float
    at: datetime


@dataclass(frozen=True)
class SpcAlert:
    rule: str  # a Rule value, or "CPK"
    description: str
    points: tuple[SpcPoint, ...]
    at: datetime


@dataclass(frozen=True, slots=True)
class _KOfN:
    """`need` of the last `of` points beyond `beyond` sigma on the last point's side."""

    beyond: float
    need: int
    of: int
    text: str


@dataclass(frozen=True, slots=True)
class _Run:
    """The last `length` points all fit `pattern` (see `RuleJudge._fits`)."""

    length: int
    pattern: str  # one-side, trend, alternating, hugging, mixture
    text: str


_BEYOND_3 = _KOfN(3, 1, 1, "1 point beyond 3 sigma")
_TWO_OF_THREE = _KOfN(2, 2, 3, "2 of 3 consecutive points beyond 2 sigma on one side")
_FOUR_OF_FIVE = _KOfN(1, 4, 5, "4 of 5 consecutive points beyond 1 sigma on one side")
_TESTS: dict[Rule, _KOfN | _Run] = {
    Rule.WE1: _BEYOND_3,
    Rule.NELSON1: _BEYOND_3,
    Rule.WE2: _TWO_OF_THREE,
    Rule.NELSON5: _TWO_OF_THREE,
    Rule.WE3: _FOUR_OF_FIVE,
    Rule.NELSON6: _FOUR_OF_FIVE,
    Rule.WE4: _Run(8, "one-side", "8 consecutive points on one side of the centre line"),
    Rule.NELSON2: _Run(9, "one-side", "9 consecutive points on one side of the centre line"),
    Rule.NELSON3: _Run(6, "trend", "6 consecutive points steadily increasing or decreasing"),
    Rule.NELSON4: _Run(14, "alternating", "14 consecutive points alternating up and down"),
    Rule.NELSON7: _Run(15, "hugging", "15 consecutive points within 1 sigma of the centre line"),
    Rule.NELSON8: _Run(8, "mixture", "8 consecutive points beyond 1 sigma on both sides"),
}
_LONGEST_RUN = 15
#: the points an alert carries to the supplier at most, the newest (a run rule reads 15;
#: a Cpk alert's window may hold thousands, which no notice needs whole)
MAX_ALERT_POINTS = 32


def characteristic_value(record: Mapping[str, Any], characteristic: str) -> float | None:
    """The value a subscription's monitor judges in a received record: a number (an int
    or a float; ``true``/``false`` are no measurement), else None (skipped). The SPC
    page's chart of the subscription takes the same values (`node.console.spc`)."""
    value = record.get(characteristic)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer beyond a double (the wire refuses them, too)
        return None


def moving_range_sigma(values: Sequence[float]) -> float:
    """sigma estimated as the mean absolute difference of neighbours / d2."""
    ranges = [abs(b - a) for a, b in itertools.pairwise(values)]
    return sum(ranges) / len(ranges) / D2_MOVING_RANGE if ranges else 0.0


def cpk(values: Sequence[float], lsl: float | None, usl: float | None) -> float:
    """Process capability against the limits that are given (sample standard deviation).

    Computed in units of the largest value's magnitude, so that any finite values give a
    number: squared deviations of values near 1e200 overflow a float (Python raises
    OverflowError for ``** 2``), and a supplier's stream may carry such a value."""
    if lsl is None and usl is None:
        raise SpcError("Cpk needs at least one spec limit")
    scale = max(abs(v) for v in values) or 1.0
    scaled = [v / scale for v in values]
    mean = math.fsum(scaled) / len(scaled)
    var = math.fsum((v - mean) * (v - mean) for v in scaled) / (len(scaled) - 1)
    sides = [usl / scale - mean] if usl is not None else []
    if lsl is not None:
        sides.append(mean - lsl / scale)
    if var <= 0:
        return math.inf if min(sides) >= 0 else -math.inf
    return min(sides) / (3 * math.sqrt(var))


class RuleJudge:
    """The run rules over a stream of points already placed in sigma units.

    Shared by the individuals chart (`SpcMonitor`) and the X-bar chart
    (`qdspace.connector.spc_xbar`): the caller says where the centre is and how wide a
    sigma is; this class only remembers the recent points and re-arms each rule.

    A rule sees the points after the last one it fired on. The run rules are judged from
    streaks kept as points come (how many points in a row ended here above the centre,
    below it, within 1 sigma, beyond 1 sigma; how many steps in a row went up, down, or
    turned), not by looking at the last 6 to 15 points again for every rule and point:
    the windows were most of a value's cost on a long series (a chart's first viewer
    replays 20,000). A run of `length` points ending here fits when its streak reaches
    back that far and the rule has seen that many points since it last fired.
    """

    def __init__(self, rules: Iterable[Rule] = DEFAULT_RULES) -> None:
        self.rules = tuple(rules)
        self._tests = [(rule, _TESTS[rule]) for rule in self.rules]
        #: (index, value, time, z) of the latest points; a point is made for a hit only
        self._recent: deque[tuple[int, float, datetime, float]] = deque(maxlen=_LONGEST_RUN)
        self._seen = 0  # points judged, this one included
        self._fired_at: dict[Rule, int] = {}  # `_seen` when each rule last fired
        # streaks ending at the latest point (in points, or in steps between points)
        self._above = self._below = self._within = self._beyond = 0
        self._up = self._down = self._turns = 0
        self._last_above = self._last_below = 0  # `_seen` of the latest z > 0, z < 0
        self._value: float | None = None
        self._step: float | None = None

    def judge(self, point: SpcPoint, z: float) -> list[SpcAlert]:
        """The alerts `point` raises; ``z`` is its distance from the centre in sigmas.
        Point indexes must increase."""
        return self.judge_value(point.index, point.value, point.at, z)

    def judge_value(self, index: int, value: float, at: datetime, z: float) -> list[SpcAlert]:
        """`judge` of the point (`index`, `value`, `at`), without making it unless a rule
        fires on it (most points raise nothing: a point object was a fifth of their cost)."""
        self._recent.append((index, value, at, z))
        seen = self._seen = self._seen + 1
        self._above = self._above + 1 if z > 0 else 0
        self._below = self._below + 1 if z < 0 else 0
        self._within = self._within + 1 if abs(z) < 1 else 0
        self._beyond = self._beyond + 1 if abs(z) > 1 else 0
        if z > 0:
            self._last_above = seen
        elif z < 0:
            self._last_below = seen
        if self._value is not None:
            step = value - self._value
            self._up = self._up + 1 if step > 0 else 0
            self._down = self._down + 1 if step < 0 else 0
            turned = self._step is not None and step * self._step < 0
            self._turns = self._turns + 1 if turned else 0
            self._step = step
        self._value = value
        alerts = []
        size = abs(z)
        # the cheap test of each rule first (most points fit none): a k-of-n rule needs
        # this point beyond its sigma, a run its streak; then how many points are fresh
        for rule, test in self._tests:
            if test.__class__ is _KOfN:
                if size <= test.beyond:
                    continue
                fresh = min(seen - self._fired_at.get(rule, 0), _LONGEST_RUN)
                hits = self._k_of_n(test, fresh)
                if not hits:
                    continue
            else:
                run: _Run = test  # type: ignore[assignment]
                if not self._fits(run) or seen - self._fired_at.get(rule, 0) < run.length:
                    continue
                start = len(self._recent) - run.length
                hits = [
                    SpcPoint(i, v, a) for i, v, a, _ in itertools.islice(self._recent, start, None)
                ]
            self._fired_at[rule] = seen
            alerts.append(SpcAlert(rule.value, f"{rule.value}: {test.text}", tuple(hits), at))
        return alerts

    def _fits(self, run: _Run) -> bool:
        """The last ``run.length`` points fit its pattern (from the streaks)."""
        n = run.length
        if run.pattern == "one-side":
            return self._above >= n or self._below >= n
        if run.pattern == "trend":
            return self._up >= n - 1 or self._down >= n - 1
        if run.pattern == "alternating":
            return self._turns >= n - 2
        if run.pattern == "hugging":
            return self._within >= n
        # mixture: all beyond 1 sigma, some above and some below
        since = self._seen - n
        return self._beyond >= n and self._last_above > since and self._last_below > since

    def _k_of_n(self, test: _KOfN, fresh: int) -> list[SpcPoint]:
        """The points of the last ``test.of`` (of the ``fresh`` ones) beyond its sigma on
        the latest point's side, if at least ``test.need`` are."""
        last_z = self._recent[-1][3]
        if abs(last_z) <= test.beyond:
            return []
        sign = math.copysign(1.0, last_z)
        take = min(test.of, fresh)
        recent = itertools.islice(self._recent, len(self._recent) - take, None)
        hits = [SpcPoint(i, v, a) for i, v, a, z in recent if z * sign > test.beyond]
        return hits if len(hits) >= test.need else []


class SpcMonitor:
    """Feed values one at a time with `add`; each call returns the alerts that value raised."""

    def __init__(
        self, spec: SpcSpec, rules: Iterable[Rule] = DEFAULT_RULES, *, judge_cpk: bool = True
    ) -> None:
        """``judge_cpk=False``: no rolling Cpk and no Cpk alert, for a caller that wants
        the run rules alone and works out Cpk when it shows it (the console's charts:
        `node.console.spc_state`); a Cpk per value was a quarter of a value's cost."""
        self.spec = spec
        self.rules = tuple(rules)
        self.judge_cpk = judge_cpk
        self.centre: float | None = spec.centre
        self.sigma: float | None = spec.sigma
        self._baseline: list[float] = []
        #: the baseline's moving ranges added up as it grows: a baseline without spread
        #: grows until one comes, and summing them all again on every value made a long
        #: flat series (a supplier may send one) cost the square of its length
        self._ranges = 0.0
        self._judge = RuleJudge(self.rules)
        self._cpk_points: deque[SpcPoint] = deque(maxlen=spec.cpk_window)
        #: Cpk over the last ``cpk_window`` values (None until that many, or without limits)
        self.rolling_cpk: float | None = None
        self._cpk_armed = True
        self._count = 0

    def add(self, value: float, at: datetime) -> list[SpcAlert]:
        if not math.isfinite(value):
            raise SpcError(f"value {value!r} at {at.isoformat()} is not a finite number")
        index, value = self._count, float(value)
        self._count += 1
        alerts = self._rule_alerts(index, value, at)
        if self.judge_cpk:
            alerts.extend(self._cpk_alert(SpcPoint(index, value, at)))
        return alerts

    def _rule_alerts(self, index: int, value: float, at: datetime) -> list[SpcAlert]:
        if self.centre is None or self.sigma is None:
            if self._baseline:
                self._ranges += abs(value - self._baseline[-1])
            self._baseline.append(value)
            if len(self._baseline) >= self.spec.baseline_size:
                # moving_range_sigma(self._baseline), from the running sum
                sigma = self._ranges / (len(self._baseline) - 1) / D2_MOVING_RANGE
                if sigma > 0:
                    self.centre = sum(self._baseline) / len(self._baseline)
                    self.sigma = sigma
            return []
        return self._judge.judge_value(index, value, at, (value - self.centre) / self.sigma)

    def _cpk_alert(self, point: SpcPoint) -> list[SpcAlert]:
        spec = self.spec
        if spec.lsl is None and spec.usl is None:
            return []
        self._cpk_points.append(point)
        if len(self._cpk_points) < spec.cpk_window:
            return []
        value = self.rolling_cpk = cpk([p.value for p in self._cpk_points], spec.lsl, spec.usl)
        if value >= spec.cpk_threshold:
            self._cpk_armed = True
            return []
        if not self._cpk_armed:
            return []
        self._cpk_armed = False
        text = (
            f"{CPK_RULE}: rolling Cpk {value:.2f} over {spec.cpk_window} points "
            f"is below {spec.cpk_threshold}"
        )
        return [SpcAlert(CPK_RULE, text, tuple(self._cpk_points), point.at)]


@dataclass(frozen=True)
class QualityAlert:
    """An SPC alert with where it came from, as sent to the supplier concerned."""

    alert_id: str
    alert: SpcAlert
    agreement_id: str = ""
    order_id: str = ""
    station: str = ""
    characteristic: str = ""


@dataclass(frozen=True)
class Investigation:
    """A quality investigation one member opens with another (e.g. a traced batch)."""

    investigation_id: str
    subject: str
    description: str
    batch_id: str = ""
    order_id: str = ""
    status: str = "open"
