"""p-chart of the fraction defective per production batch, from inspection verdicts.

Every inspection verdict carries the batch (and serial, order) of the cell it judged,
so a batch is a natural subgroup: n cells inspected, d of them failed. Batches differ
in size, so each gets its own limits (Montgomery, "Introduction to Statistical Quality
Control", section 7.2.2, variable sample size):

=========  ===============================================================
centre     p-bar = sum(d) / sum(n)   (or a standard p0 when one is given)
sigma_i    sqrt(p-bar * (1 - p-bar) / n_i)
limits     max(0, p-bar - 3 sigma_i) .. min(1, p-bar + 3 sigma_i)
=========  ===============================================================

Each batch's fraction is placed in sigma units of its own size (the standardized
p-chart: z_i = (p_i - p-bar) / sigma_i) and judged by the same Western Electric /
Nelson rules as the variables charts (`RuleJudge`): WE1 is a batch outside its limits.
With a centre of 0 or 1 there is no spread: the limits equal the centre, a batch on it
is in control, and one off it (possible only against a standard p0) is beyond them.
Pure: the verdicts are read elsewhere (`qdspace.connector.verdict_data`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from qdspace.connector.contract_errors import SpcError
from qdspace.connector.spc import DEFAULT_RULES, Rule, RuleJudge, SpcAlert, SpcPoint

#: limits at this many sigmas (Shewhart)
SIGMAS = 3.0


@dataclass(frozen=True)
class DefectSubgroup:
    """One batch: ``inspected`` cells judged, ``defective`` of them failed, first judged
    ``at`` (the chart's order); ``by_class`` counts the failures per defect class."""

    batch_id: str
    inspected: int
    defective: int
    at: datetime
    by_class: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.inspected, bool) or not isinstance(self.inspected, int):
            raise SpcError(f"batch {self.batch_id}: inspected must be a whole number")
        if isinstance(self.defective, bool) or not isinstance(self.defective, int):
            raise SpcError(f"batch {self.batch_id}: defective must be a whole number")
        if self.inspected < 1:
            raise SpcError(f"batch {self.batch_id}: inspected must be at least 1")
        if not 0 <= self.defective <= self.inspected:
            raise SpcError(
                f"batch {self.batch_id}: defective {self.defective} is not within "
                f"0..{self.inspected} inspected"
            )


@dataclass(frozen=True)
class PPoint:
    """A batch on the chart: its fraction defective, its own limits, where it stands."""

    batch_id: str
    at: datetime
    inspected: int
    defective: int
    fraction: float
    lcl: float
    ucl: float
    #: distance from the centre in sigmas of this batch's size (None: no spread, p = 0 or 1)
    z: float | None
    rules: tuple[str, ...]
    by_class: tuple[tuple[str, int], ...]

    @property
    def out_of_control(self) -> bool:
        return self.fraction > self.ucl or self.fraction < self.lcl


@dataclass(frozen=True)
class PChart:
    centre: float
    points: tuple[PPoint, ...]
    alerts: tuple[SpcAlert, ...]
    #: whether ``centre`` is a given standard (p0) or was estimated from the points
    standard: bool


def p_limits(centre: float, n: int) -> tuple[float, float]:
    """The 3-sigma limits of a subgroup of ``n`` around fraction ``centre``."""
    sigma = math.sqrt(centre * (1.0 - centre) / n)
    return max(0.0, centre - SIGMAS * sigma), min(1.0, centre + SIGMAS * sigma)


def p_chart(
    subgroups: Sequence[DefectSubgroup],
    *,
    standard: float | None = None,
    rules: Iterable[Rule] = DEFAULT_RULES,
) -> PChart:
    """The p-chart of ``subgroups`` (judged in the order given), limits per batch size."""
    if standard is not None and not (math.isfinite(standard) and 0.0 <= standard <= 1.0):
        raise SpcError(f"standard fraction defective {standard!r} is not within 0..1")
    if not subgroups:
        raise SpcError("a p-chart needs at least one batch with inspected cells")
    seen: set[str] = set()
    for s in subgroups:
        if s.batch_id in seen:
            raise SpcError(f"batch {s.batch_id} is given twice")
        seen.add(s.batch_id)
    if standard is None:
        centre = sum(s.defective for s in subgroups) / sum(s.inspected for s in subgroups)
    else:
        centre = standard
    judge = RuleJudge(rules)
    points: list[PPoint] = []
    alerts: list[SpcAlert] = []
    for index, s in enumerate(subgroups):
        fraction = s.defective / s.inspected
        lcl, ucl = p_limits(centre, s.inspected)
        sigma = math.sqrt(centre * (1.0 - centre) / s.inspected)
        z: float | None = None
        if sigma > 0.0:
            z = (fraction - centre) / sigma
            fired = judge.judge(SpcPoint(index, fraction, s.at), z)
        else:  # a standard of 0 or 1: any other fraction is beyond every limit
            away = 0.0 if fraction == centre else math.copysign(math.inf, fraction - centre)
            fired = judge.judge(SpcPoint(index, fraction, s.at), away)
        alerts.extend(fired)
        points.append(
            PPoint(
                s.batch_id,
                s.at,
                s.inspected,
                s.defective,
                fraction,
                lcl,
                ucl,
                z,
                tuple(a.rule for a in fired),
                s.by_class,
            )
        )
    return PChart(centre, tuple(points), tuple(alerts), standard is not None)
