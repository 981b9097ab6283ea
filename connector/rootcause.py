"""Local findings of a root-cause trace: which of a producer's process parameters behave
differently in the implicated batches than in comparable unaffected ones.

A trace asks each producer for its part of a defect's history. The default answer is
not raw rows but *findings*: per parameter (a PECVD chamber's vacuum, a furnace
temperature, cleanroom humidity) or categorical factor (operator shift, tool), how the
implicated batches differ from comparable batches, how sure that is, and which
records show it. This module computes them, as plain functions over readings the
caller has already read from its own QDM (no I/O here, so the same code runs at a
supplier, at a hosted tenant and in the central baseline of `bench/trace.py`).

Why these statistics:

- Defect causes in cell lines are mostly *excursions* (a vacuum leak for an hour, a
  heater fault for a shift), not permanent level shifts. The short-term variation of
  each parameter is estimated from the comparable batches (average moving range / d2,
  the individuals-chart estimate), and a reading is out of control when it lies more
  than three of those sigmas from *its own batch's* median. The main evidence is the
  *excess* out-of-control rate: implicated batches' share minus comparable batches'
  share. A batch that merely runs a little higher than the others shows no excursion,
  so ordinary batch-to-batch wobble does not pose as a cause.
- Whole batches running at another level still count, judged with the batch as the
  unit (the implicated batches, not their thousands of readings, are the sample):
  implicated batch medians outside the comparable batch medians' robust limits
  (median +- 3 x 1.4826 MAD), and Cliff's delta over batch medians as the effect size.
- Significance is robust to small samples: Fisher's exact tests on the out-of-control
  readings and on the off-level batches, the smaller of the two Bonferroni-corrected,
  then Holm's step-down across everything tested, so that looking at forty parameters
  does not find a cause by chance.
- Findings carry the data's confidence (`DataConfidence`: completeness, anchoring,
  calibration), and their rank weighs it in: a clear signal from uncalibrated,
  incomplete data ranks below an equally clear one from trusted data.

`scipy.stats` provides the tests (exact distributions for small samples are easy to
get subtly wrong by hand); it is imported when a finding is computed, so a node that
never traces does not pay for the import.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from itertools import pairwise
from statistics import median

from qdspace.connector.errors import ConnectorError

#: d2 for moving ranges of two consecutive readings (Shewhart individuals chart).
D2 = 1.128
SIGMA_LIMIT = 3.0
DEFAULT_ALPHA = 0.01
MIN_READINGS = 3
MAX_EVIDENCE = 50


class RootCauseError(ConnectorError, ValueError):
    """Input a root-cause analysis cannot judge (no implicated batch, a non-finite value)."""


@dataclass(frozen=True)
class Reading:
    """One numeric reading of a parameter (`key`, e.g. ``PECVD-2/pecvd_chamber_vacuum``)
    attributed to a batch; `evidence_id` names the record (``qdm_measurement:1234``)."""

    key: str
    batch_id: str
    at: datetime
    value: float
    evidence_id: str


@dataclass(frozen=True)
class Observation:
    """One categorical fact about a batch (`factor` ``shift``, `category` ``night``)."""

    factor: str
    batch_id: str
    category: str
    evidence_id: str


@dataclass(frozen=True)
class DataConfidence:
    """How far a parameter's records can be trusted, each part in [0, 1].

    `completeness`: readings present / readings expected; `anchored`: share of the
    records whose hashes are on the ledger; `calibrated`: share of readings taken
    while the measuring equipment had a valid calibration (None: no certificate known).
    """

    completeness: float = 1.0
    anchored: float = 0.0
    calibrated: float | None = None

    def __post_init__(self) -> None:
        for name in ("completeness", "anchored", "calibrated"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise RootCauseError(f"confidence {name} must be within [0, 1], got {value!r}")

    @property
    def score(self) -> float:
        """One factor in (0, 1]: completeness counts fully, anchoring lifts trust by up to
        a fifth, calibration halves it when expired and takes 30 % off when unknown."""
        calibration = 0.7 if self.calibrated is None else 0.5 + 0.5 * self.calibrated
        return self.completeness * (0.8 + 0.2 * self.anchored) * calibration


@dataclass(frozen=True)
class Window:
    """A run of out-of-control implicated readings close together in time."""

    start: datetime
    end: datetime
    readings: int
    batches: tuple[str, ...]
    peak_sigma: float


@dataclass(frozen=True)
class Finding:
    """How one parameter or categorical factor differs in the implicated batches."""

    key: str
    kind: str  # "numeric" or "categorical"
    implicated_n: int
    comparable_n: int
    effect: float  # numeric: Cliff's delta of batch medians; categorical: difference of shares
    excess_out_of_control: float  # excursions within implicated batches, beyond comparable's
    p_value: float  # before correction for the number of tests
    level_out_of_control: float = 0.0  # implicated batches outside the between-batch limits
    adjusted_p: float = 1.0
    implicated_center: float | None = None
    comparable_center: float | None = None
    limits: tuple[float, float] | None = None
    windows: tuple[Window, ...] = ()
    evidence: tuple[str, ...] = ()
    confidence: DataConfidence = field(default_factory=DataConfidence)
    note: str = ""

    @property
    def strength(self) -> float:
        """How strongly the data points here, before confidence: the excess rate of
        excursions plus the excess share of implicated batches off the usual level (for a
        categorical factor, the excess share of implicated batches having it)."""
        if self.kind == "categorical":
            return max(self.effect, 0.0)
        return self.excess_out_of_control + self.level_out_of_control

    @property
    def score(self) -> float:
        return self.strength * self.confidence.score

    def significant(self, alpha: float = DEFAULT_ALPHA) -> bool:
        return self.adjusted_p < alpha


def _check_finite(readings: Sequence[Reading]) -> None:
    for r in readings:
        if not math.isfinite(r.value):
            raise RootCauseError(f"{r.evidence_id}: {r.key} holds {r.value!r}, not a number")


def _moving_range_sigma(series: Mapping[str, list[Reading]]) -> float:
    """Short-term sigma from consecutive readings within each batch (MR-bar / d2)."""
    ranges = [abs(b.value - a.value) for readings in series.values() for a, b in pairwise(readings)]
    return (sum(ranges) / len(ranges)) / D2 if ranges else 0.0


def _by_batch(readings: Sequence[Reading]) -> dict[str, list[Reading]]:
    out: dict[str, list[Reading]] = defaultdict(list)
    for r in sorted(readings, key=lambda r: r.at):
        out[r.batch_id].append(r)
    return out


def _windows(flagged: list[tuple[Reading, float]], gap: timedelta) -> tuple[Window, ...]:
    out: list[Window] = []
    run: list[tuple[Reading, float]] = []
    for item in sorted(flagged, key=lambda x: x[0].at):
        if run and item[0].at - run[-1][0].at > gap:
            out.append(_window(run))
            run = []
        run.append(item)
    if run:
        out.append(_window(run))
    return tuple(out)


def _window(run: list[tuple[Reading, float]]) -> Window:
    batches = tuple(sorted({r.batch_id for r, _ in run}))
    peak = max(abs(z) for _, z in run)
    return Window(run[0][0].at, run[-1][0].at, len(run), batches, round(peak, 2))


def _typical_gap(readings: Sequence[Reading]) -> timedelta:
    times = sorted(r.at for r in readings)
    gaps = [(b - a).total_seconds() for a, b in pairwise(times) if b > a]
    return timedelta(seconds=3 * median(gaps)) if gaps else timedelta(hours=1)


def _batch_medians(batches: Mapping[str, list[Reading]]) -> dict[str, float]:
    return {batch: median(r.value for r in readings) for batch, readings in batches.items()}


def _excursions(
    batches: Mapping[str, list[Reading]], centers: Mapping[str, float], sigma: float
) -> list[tuple[Reading, float]]:
    """Readings beyond the short-term limits around their own batch's median (`centers`):
    a change *within* a batch, which a batch that merely runs a little high never shows."""
    flagged = []
    for batch, readings in batches.items():
        for r in readings:
            z = (r.value - centers[batch]) / sigma
            if abs(z) > SIGMA_LIMIT:
                flagged.append((r, z))
    return flagged


def _robust_limits(values: Sequence[float], floor: float) -> tuple[float, float, float]:
    """(center, low, high): median +- 3 robust sigmas (1.4826 MAD), sigma at least `floor`."""
    center = median(values)
    mad = median(abs(v - center) for v in values) if values else 0.0
    sigma = max(1.4826 * mad, floor)
    return center, center - SIGMA_LIMIT * sigma, center + SIGMA_LIMIT * sigma


def numeric_finding(
    key: str,
    implicated: Sequence[Reading],
    comparable: Sequence[Reading],
    confidence: DataConfidence | None = None,
) -> Finding:
    """The finding for one parameter (see the module docstring for the statistics).

    Two kinds of difference count: excursions within implicated batches (readings
    beyond the short-term limits around their batch's median, in excess of how often
    comparable batches show them) and whole implicated batches running outside the
    between-batch limits of the comparable batches. The level effect reported is
    Cliff's delta over batch medians: a batch, not a reading, is the unit that was
    implicated, so thousands of readings do not make a batch-to-batch wobble significant.
    """
    from scipy.stats import fisher_exact, mannwhitneyu

    confidence = confidence or DataConfidence()
    _check_finite(implicated)
    _check_finite(comparable)
    n1, n2 = len(implicated), len(comparable)
    if n1 < MIN_READINGS or n2 < MIN_READINGS:
        note = f"too few readings to compare ({n1} implicated, {n2} comparable)"
        return Finding(key, "numeric", n1, n2, 0.0, 0.0, 1.0, confidence=confidence, note=note)
    ours, theirs = _by_batch(implicated), _by_batch(comparable)
    sigma = _moving_range_sigma(theirs)
    center = median(r.value for r in comparable)
    if sigma <= 0.0:  # a constant parameter: any different reading is out of control
        sigma = max(abs(center), 1.0) * 1e-9
    centers1, centers2 = _batch_medians(ours), _batch_medians(theirs)
    flagged = _excursions(ours, centers1, sigma)
    out_comparable = len(_excursions(theirs, centers2, sigma))
    excess = len(flagged) / n1 - out_comparable / n2
    p_excursion = float(
        fisher_exact(
            [[len(flagged), n1 - len(flagged)], [out_comparable, n2 - out_comparable]],
            alternative="greater",
        ).pvalue
    )
    medians1, medians2 = list(centers1.values()), list(centers2.values())
    _, low, high = _robust_limits(medians2, sigma / math.sqrt(max(n2 / len(theirs), 1.0)))
    off1 = sum(1 for m in medians1 if not low <= m <= high)
    off2 = sum(1 for m in medians2 if not low <= m <= high)
    level_excess = off1 / len(medians1) - off2 / len(medians2)
    p_level_batches = float(
        fisher_exact(
            [[off1, len(medians1) - off1], [off2, len(medians2) - off2]], alternative="greater"
        ).pvalue
    )
    level = mannwhitneyu(medians1, medians2, alternative="two-sided")
    delta = 2.0 * float(level.statistic) / (len(medians1) * len(medians2)) - 1.0
    p_value = min(1.0, 2.0 * min(p_excursion, p_level_batches))
    ranked = sorted(flagged, key=lambda x: -abs(x[1]))[:MAX_EVIDENCE]
    return Finding(
        key=key,
        kind="numeric",
        implicated_n=n1,
        comparable_n=n2,
        effect=round(delta, 4),
        excess_out_of_control=round(max(excess, 0.0), 4),
        p_value=p_value,
        level_out_of_control=round(max(level_excess, 0.0), 4),
        implicated_center=median(r.value for r in implicated),
        comparable_center=center,
        limits=(center - SIGMA_LIMIT * sigma, center + SIGMA_LIMIT * sigma),
        windows=_windows(flagged, _typical_gap(implicated)),
        evidence=tuple(r.evidence_id for r, _ in ranked),
        confidence=confidence,
    )


def categorical_finding(
    factor: str,
    category: str,
    implicated: Sequence[Observation],
    comparable: Sequence[Observation],
    confidence: DataConfidence | None = None,
) -> Finding:
    """Whether batches with `category` of `factor` are over-represented among the
    implicated batches (Fisher's exact test on batches, not on records)."""
    from scipy.stats import fisher_exact

    confidence = confidence or DataConfidence()
    batches1 = {o.batch_id for o in implicated}
    batches2 = {o.batch_id for o in comparable}
    with1 = {o.batch_id for o in implicated if o.category == category}
    with2 = {o.batch_id for o in comparable if o.category == category}
    n1, n2 = len(batches1), len(batches2)
    key = f"{factor}={category}"
    if not n1 or not n2:
        return Finding(
            key,
            "categorical",
            n1,
            n2,
            0.0,
            0.0,
            1.0,
            confidence=confidence,
            note="no batches to compare",
        )
    table = [[len(with1), n1 - len(with1)], [len(with2), n2 - len(with2)]]
    p_value = float(fisher_exact(table, alternative="greater").pvalue)
    effect = len(with1) / n1 - len(with2) / n2
    evidence = tuple(sorted(o.evidence_id for o in implicated if o.category == category))
    return Finding(
        key=key,
        kind="categorical",
        implicated_n=n1,
        comparable_n=n2,
        effect=round(effect, 4),
        excess_out_of_control=0.0,
        p_value=p_value,
        evidence=evidence[:MAX_EVIDENCE],
        confidence=confidence,
    )


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def local_findings(
    readings: Iterable[Reading],
    implicated: frozenset[str],
    comparable: frozenset[str],
    *,
    observations: Iterable[Observation] = (),
    confidence: Mapping[str, DataConfidence] | None = None,
    alpha: float = DEFAULT_ALPHA,
) -> list[Finding]:
    """Every parameter's and factor's finding, ranked: significant ones first (Holm at
    `alpha`), then by strength weighted by the data's confidence."""
    if not implicated:
        raise RootCauseError("no implicated batch to explain")
    if implicated & comparable:
        both = ", ".join(sorted(implicated & comparable))
        raise RootCauseError(f"batches both implicated and comparable: {both}")
    if not math.isfinite(alpha) or not 0.0 < alpha < 1.0:
        raise RootCauseError(f"alpha must be within (0, 1), got {alpha!r}")
    confidence = confidence or {}
    split: dict[str, tuple[list[Reading], list[Reading]]] = defaultdict(lambda: ([], []))
    for r in readings:
        if r.batch_id in implicated:
            split[r.key][0].append(r)
        elif r.batch_id in comparable:
            split[r.key][1].append(r)
    findings = [
        numeric_finding(key, ours, theirs, confidence.get(key))
        for key, (ours, theirs) in sorted(split.items())
    ]
    findings += _categorical(observations, implicated, comparable, confidence)
    adjusted = holm([f.p_value for f in findings])
    ranked = [_with_adjusted(f, p) for f, p in zip(findings, adjusted, strict=True)]
    return sorted(ranked, key=lambda f: (not f.significant(alpha), -f.score, f.key))


def _categorical(
    observations: Iterable[Observation],
    implicated: frozenset[str],
    comparable: frozenset[str],
    confidence: Mapping[str, DataConfidence],
) -> list[Finding]:
    by_factor: dict[str, tuple[list[Observation], list[Observation]]] = defaultdict(
        lambda: ([], [])
    )
    for o in observations:
        if o.batch_id in implicated:
            by_factor[o.factor][0].append(o)
        elif o.batch_id in comparable:
            by_factor[o.factor][1].append(o)
    out = []
    for factor, (ours, theirs) in sorted(by_factor.items()):
        for category in sorted({o.category for o in ours}):
            out.append(categorical_finding(factor, category, ours, theirs, confidence.get(factor)))
    return out


def _with_adjusted(finding: Finding, adjusted: float) -> Finding:
    return replace(finding, adjusted_p=adjusted)


def responsibility(
    findings_by_member: Mapping[str, Sequence[Finding]], alpha: float = DEFAULT_ALPHA
) -> dict[str, float]:
    """Each member's share of responsibility, where several tiers are implicated: the
    confidence-weighted score of its strongest significant finding, normalised to sum
    to 1 (members without a significant finding get 0; nobody implicated: all 0)."""
    best = {
        member: max((f.score for f in findings if f.significant(alpha)), default=0.0)
        for member, findings in findings_by_member.items()
    }
    total = sum(best.values())
    return {m: (round(s / total, 4) if total else 0.0) for m, s in best.items()}
