"""X-bar-R control charts: a characteristic measured in small subgroups.

An individuals chart (`qdspace.connector.spc`) judges every value; when a line
measures several parts in a row (n = 2..10 consecutive values form one subgroup),
the subgroup mean moves less than a single value, so a small shift of the process
mean shows sooner on an X-bar chart, and the range chart (R) shows a change of
spread separately. Both are Shewhart's charts with limits from the average range:

=========  ===================  ==========================================
chart      centre line          control limits
=========  ===================  ==========================================
X-bar      grand mean X-dbar    X-dbar +- A2 * R-bar
R          R-bar                D3 * R-bar, D4 * R-bar
=========  ===================  ==========================================

X-dbar and R-bar come from the first ``baseline_subgroups`` complete subgroups (a
baseline whose ranges are all zero is extended until one is not, as the individuals
chart does), or from known standards: a centre and a process sigma, then
R-bar = d2 * sigma (and A2 * R-bar = 3 sigma / sqrt(n)).

The X-bar points are judged by the same Western Electric / Nelson rules as individual
values (`RuleJudge`: sigma of X-bar = A2 * R-bar / 3); an R point outside its limits
raises `RANGE_RULE`. A subgroup counts only once it has all n values: a partial one
is neither judged nor drawn. Values must be finite (NaN or infinity is refused, as on
the individuals chart), and a subgroup whose mean or range overflows a float is
refused whole, without leaving a trace in the chart's state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from qdspace.connector.contract_errors import SpcError
from qdspace.connector.spc import DEFAULT_RULES, Rule, RuleJudge, SpcAlert, SpcPoint

# Control chart constants for subgroups of n: (A2, D3, D4, d2). Source: Montgomery,
# "Introduction to Statistical Quality Control", 7th ed., Appendix Table VI "Factors for
# Constructing Variables Control Charts" (the same values as ASTM E2587 / ASTM STP 15D).
XBAR_R_CONSTANTS: dict[int, tuple[float, float, float, float]] = {
    2: (1.880, 0.000, 3.267, 1.128),
    3: (1.023, 0.000, 2.574, 1.693),
    4: (0.729, 0.000, 2.282, 2.059),
    5: (0.577, 0.000, 2.114, 2.326),
    6: (0.483, 0.000, 2.004, 2.534),
    7: (0.419, 0.076, 1.924, 2.704),
    8: (0.373, 0.136, 1.864, 2.847),
    9: (0.337, 0.184, 1.816, 2.970),
    10: (0.308, 0.223, 1.777, 3.078),
}
MIN_SUBGROUP, MAX_SUBGROUP = min(XBAR_R_CONSTANTS), max(XBAR_R_CONSTANTS)
RANGE_RULE = "RANGE"
_RANGE_TEXT = "subgroup range outside the R chart's control limits"


def check_subgroup_size(n: object) -> int:
    """``n`` as a subgroup size, or an `SpcError` saying why it is not one."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise SpcError(f"subgroup size must be a whole number, got {n!r}")
    if n not in XBAR_R_CONSTANTS:
        raise SpcError(f"subgroup size must be {MIN_SUBGROUP} to {MAX_SUBGROUP}, got {n}")
    return n


@dataclass(frozen=True)
class XbarRSpec:
    """Subgroup size, and either known standards (centre and sigma) or a baseline."""

    subgroup_size: int = 5
    baseline_subgroups: int = 20
    centre: float | None = None
    sigma: float | None = None

    def __post_init__(self) -> None:
        check_subgroup_size(self.subgroup_size)
        k = self.baseline_subgroups
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise SpcError(f"baseline_subgroups must be a whole number >= 2, got {k!r}")
        if (self.centre is None) != (self.sigma is None):
            raise SpcError("give both centre and sigma, or neither (then a baseline is used)")
        if self.centre is not None and not math.isfinite(self.centre):
            raise SpcError(f"centre must be a finite number, got {self.centre}")
        if self.sigma is not None and not (math.isfinite(self.sigma) and self.sigma > 0):
            raise SpcError(f"sigma must be a finite number > 0, got {self.sigma}")


@dataclass(frozen=True)
class XbarRLimits:
    n: int
    grand_mean: float
    rbar: float
    x_ucl: float
    x_lcl: float
    r_lcl: float
    r_ucl: float

    @property
    def sigma_xbar(self) -> float:
        """The standard deviation of a subgroup mean, A2 * R-bar / 3."""
        return (self.x_ucl - self.grand_mean) / 3


def xbar_r_limits(n: int, grand_mean: float, rbar: float) -> XbarRLimits:
    """Centre lines and control limits of both charts from X-dbar and R-bar."""
    a2, d3, d4, _d2 = XBAR_R_CONSTANTS[check_subgroup_size(n)]
    if not (math.isfinite(grand_mean) and math.isfinite(rbar)) or rbar < 0:
        raise SpcError(f"grand mean {grand_mean} and R-bar {rbar} must be finite, R-bar >= 0")
    return XbarRLimits(
        n, grand_mean, rbar, grand_mean + a2 * rbar, grand_mean - a2 * rbar, d3 * rbar, d4 * rbar
    )


@dataclass(frozen=True)
class Subgroup:
    """A complete subgroup: its place (0, 1, ...), mean, range and last value's time."""

    index: int
    mean: float
    range: float
    at: datetime


class XbarRMonitor:
    """Feed values one at a time with `add`; a value that completes a subgroup returns
    the alerts that subgroup raised (and sets `last`), any other returns []."""

    def __init__(self, spec: XbarRSpec, rules: Iterable[Rule] = DEFAULT_RULES) -> None:
        self.spec = spec
        self.n = spec.subgroup_size
        self.limits: XbarRLimits | None = None
        if spec.centre is not None and spec.sigma is not None:
            d2 = XBAR_R_CONSTANTS[self.n][3]
            self.limits = xbar_r_limits(self.n, spec.centre, d2 * spec.sigma)
        self.last: Subgroup | None = None
        self.complete = 0
        self._open: list[float] = []
        self._baseline: list[Subgroup] = []
        self._judge = RuleJudge(rules)

    @property
    def pending(self) -> int:
        """How many values wait in the subgroup that is not complete yet."""
        return len(self._open)

    def add(self, value: float, at: datetime) -> list[SpcAlert]:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SpcError(f"value {value!r} at {at.isoformat()} is not a number")
        if not math.isfinite(value):
            raise SpcError(f"value {value!r} at {at.isoformat()} is not a finite number")
        self._open.append(float(value))
        if len(self._open) < self.n:
            return []
        values, self._open = self._open, []
        # divided before summing: n finite floats cannot overflow this way
        mean = sum(v / self.n for v in values)
        spread = max(values) - min(values)
        if not math.isfinite(spread):
            raise SpcError(
                f"subgroup {self.complete + 1} ending at {at.isoformat()}: its range "
                "overflows a float; the subgroup is refused"
            )
        group = Subgroup(self.complete, mean, spread, at)
        self.complete += 1
        self.last = group
        if self.limits is None:
            self._learn(group)
            return []
        return self._alerts(group, self.limits)

    def _learn(self, group: Subgroup) -> None:
        self._baseline.append(group)
        k = len(self._baseline)
        if k < self.spec.baseline_subgroups:
            return
        rbar = sum(g.range / k for g in self._baseline)
        if rbar > 0:
            grand = sum(g.mean / k for g in self._baseline)
            self.limits = xbar_r_limits(self.n, grand, rbar)
            self._baseline = []

    def _alerts(self, group: Subgroup, limits: XbarRLimits) -> list[SpcAlert]:
        point = SpcPoint(group.index, group.mean, group.at)
        sigma = limits.sigma_xbar
        if sigma > 0:
            alerts = self._judge.judge(point, (group.mean - limits.grand_mean) / sigma)
        else:  # known standards cannot give 0; kept total for a caller-made XbarRLimits
            alerts = []
        if not limits.r_lcl <= group.range <= limits.r_ucl:
            where = SpcPoint(group.index, group.range, group.at)
            text = f"{RANGE_RULE}: {_RANGE_TEXT}"
            alerts.append(SpcAlert(RANGE_RULE, text, (where,), group.at))
        return alerts
