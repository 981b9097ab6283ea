"""What an SPC chart draws, built as its values arrive: points, limits, rule hits, Cpk.

Why a chart is kept and fed instead of computed: the SPC page follows live series, and a
line judges a frame every few milliseconds. Replaying a series through the monitor costs
about 26 us a value, so recomputing a station's chart from all its values on every
change took 13 s for 500,000 scores, ten times a second. A `LiveChart` is fed each value
once (`extend`) and keeps only what it draws: the newest `MAX_POINTS` values, the rule
hits on them, and the monitor's state (centre and sigma from the baseline, the recent
points the run rules look at, its rolling Cpk). Its `state` is the same JSON the
page has always drawn; `chart_state` builds one chart from a whole list of values, which
gives exactly what feeding them one at a time gives.

The rules and limits are the monitors' (`connector.spc`, `connector.spc_xbar`); nothing
here decides what a violation is. Pure: no I/O (the values are read in `console.spc`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from qdspace.connector.contract_errors import SpcError
from qdspace.connector.spc import SpcMonitor, SpcSpec, cpk
from qdspace.connector.spc_xbar import RANGE_RULE, XbarRMonitor, XbarRSpec

#: the most points a chart shows (the newest); every value fed is judged
MAX_POINTS = 5000
#: the time the monitors are given: charts carry the stored times as text instead
_EPOCH = datetime(1970, 1, 1)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _forget_before(marks: dict[int, Any], first: int) -> None:
    """Drop the marks of points before ``first``: scrolled off the chart."""
    for i in [i for i in marks if i < first]:
        del marks[i]


class LiveXbar:
    """The X-bar and R charts of a series in subgroups of ``n`` (complete ones only)."""

    def __init__(self, spec: SpcSpec, n: int) -> None:
        self.n = n
        self._monitor = XbarRMonitor(
            XbarRSpec(
                subgroup_size=n,
                baseline_subgroups=max(2, spec.baseline_size // n),
                centre=spec.centre,
                sigma=spec.sigma,
            )
        )
        self.groups = 0
        self._means: deque[float] = deque(maxlen=MAX_POINTS)
        self._ranges: deque[float] = deque(maxlen=MAX_POINTS)
        self._hits: dict[int, list[str]] = {}
        self._r_hits: dict[int, list[str]] = {}
        self._rules: dict[str, str] = {}

    def add(self, value: float) -> None:
        try:
            alerts = self._monitor.add(value, _EPOCH)
        except SpcError:  # a subgroup whose range overflows: refused whole, not drawn
            return
        last = self._monitor.last
        if last is not None and last.index == self.groups:
            self._means.append(last.mean)
            self._ranges.append(last.range)
            self.groups += 1
        for alert in alerts:
            self._rules[alert.rule] = alert.description
            into = self._r_hits if alert.rule == RANGE_RULE else self._hits
            for point in alert.points:
                into.setdefault(point.index, []).append(alert.rule)
        if len(self._hits) + len(self._r_hits) > 2 * MAX_POINTS:
            first = self.groups - len(self._means)
            _forget_before(self._hits, first)
            _forget_before(self._r_hits, first)

    def state(self) -> dict[str, Any]:
        first = self.groups - len(self._means)
        means, ranges = list(self._means), list(self._ranges)
        limits = self._monitor.limits

        def marks(found: dict[int, list[str]], ys: list[float]) -> list[dict[str, Any]]:
            return [
                {"i": i, "rules": list(rules), "value": ys[i - first]}
                for i, rules in sorted(found.items())
                if i >= first
            ]

        return {
            "n": self.n,
            "groups": self.groups,
            "pending": self._monitor.pending,
            "first": first,
            "x": means,
            "r": ranges,
            "baseline": self._monitor.spec.baseline_subgroups,
            "centre": None if limits is None else limits.grand_mean,
            "ucl": None if limits is None else limits.x_ucl,
            "lcl": None if limits is None else limits.x_lcl,
            "r_centre": None if limits is None else limits.rbar,
            "r_ucl": None if limits is None else limits.r_ucl,
            "r_lcl": None if limits is None else limits.r_lcl,
            "violations": marks(self._hits, means),
            "r_violations": marks(self._r_hits, ranges),
            "rules": dict(self._rules),
        }


class LiveChart:
    """One series' individuals chart (and, with a ``subgroup`` size, its X-bar-R view),
    fed values in order with `extend`."""

    def __init__(self, spec: SpcSpec, subgroup: int | None = None) -> None:
        self.spec = spec
        self.n = 0
        # the rules alone: Cpk over the newest values when the chart is shown (`state`)
        self._monitor = SpcMonitor(spec, judge_cpk=False)
        self._newest: deque[float] = deque(maxlen=spec.cpk_window)
        self._shown: deque[tuple[float, str]] = deque(maxlen=MAX_POINTS)
        #: point index -> the rules that marked it, its value and its time
        self._hits: dict[int, tuple[list[str], float, str]] = {}
        self._rules: dict[str, str] = {}
        self.xbar = None if subgroup is None else LiveXbar(spec, subgroup)

    def extend(self, values: Iterable[tuple[float, str]]) -> LiveChart:
        """Feed ``values`` (value, time as text) in order; a value that is not finite is
        skipped, as the subscriptions' monitors skip it."""
        for value, at in values:
            if not math.isfinite(value):
                continue
            self.n += 1
            self._shown.append((value, at))
            self._newest.append(value)
            for alert in self._monitor.add(value, _EPOCH):
                self._mark(alert.rule, alert.description, [p.index for p in alert.points])
            if self.xbar is not None:
                self.xbar.add(value)
        if len(self._hits) > 2 * MAX_POINTS:
            _forget_before(self._hits, self.n - len(self._shown))
        return self

    def _mark(self, rule: str, description: str, indexes: list[int]) -> None:
        self._rules[rule] = description
        first = self.n - len(self._shown)
        for i in indexes:
            if i < first:
                continue  # scrolled off the chart already
            if i in self._hits:
                self._hits[i][0].append(rule)
            else:
                value, at = self._shown[i - first]
                self._hits[i] = ([rule], value, at)

    def _rolling_cpk(self) -> float | None:
        """Cpk over the newest ``cpk_window`` values, as the monitor's ``rolling_cpk``
        would be (None until that many, or without spec limits)."""
        spec = self.spec
        if (spec.lsl is None and spec.usl is None) or len(self._newest) < spec.cpk_window:
            return None
        return cpk(self._newest, spec.lsl, spec.usl)

    def state(self, key: str) -> dict[str, Any]:
        """The JSON a chart draws: points, limits, rule hits by point, rolling Cpk, and
        the X-bar-R view where one was asked for."""
        spec = self.spec
        first = self.n - len(self._shown)
        centre, sigma = self._monitor.centre, self._monitor.sigma
        rolling = _finite(self._rolling_cpk())
        return {
            "key": key,
            "n": self.n,
            "first": first,
            "y": [v for v, _ in self._shown],
            "at": [a for _, a in self._shown],
            "centre": centre,
            "ucl": None if centre is None or sigma is None else centre + 3 * sigma,
            "lcl": None if centre is None or sigma is None else centre - 3 * sigma,
            "usl": spec.usl,
            "lsl": spec.lsl,
            "baseline": spec.baseline_size,
            "violations": [
                {"i": i, "rules": list(rules), "value": value, "at": at}
                for i, (rules, value, at) in sorted(self._hits.items())
                if i >= first
            ],
            "rules": dict(self._rules),
            "cpk": rolling,
            "cpk_window": spec.cpk_window,
            "cpk_threshold": spec.cpk_threshold,
            "cpk_low": rolling is not None and rolling < spec.cpk_threshold,
            "xbar": None if self.xbar is None else self.xbar.state(),
        }


def chart_state(
    key: str, values: list[tuple[float, str]], spec: SpcSpec, subgroup: int | None = None
) -> dict[str, Any]:
    """The JSON one chart of ``values`` draws (a `LiveChart` fed all of them)."""
    return LiveChart(spec, subgroup).extend(values).state(key)
