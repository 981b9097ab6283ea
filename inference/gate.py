"""The promotion gate: a new model version goes live on a line only if it is no worse.

A version can come from local training, fine-tuning or a federated round, and any of
them can be worse on *this* member's cells than the version the line serves now. So
before a version becomes active, both are scored on the member's audit set (labelled
cells the member re-inspected) and compared on the metric the member chose. The
comparison is a paired, class-stratified bootstrap of the difference
``candidate - incumbent``: the candidate is refused when it is measurably worse, that
is when its point difference is more than ``margin`` below zero or the whole
confidence interval lies below zero. (A strict non-inferiority rule, lower end above
``-margin``, was tried first: on audit sets of 100-250 cells an equally good but
different model has an interval about +-0.06 wide and could never pass, which froze
every federated update.) Without an active version the incumbent is the
majority-class predictor and the candidate must beat it outright, lower end above
zero: a collapsed network must never be the first one.

The default metric is the FNR-weighted accuracy ``1 - (FPR + w * FNR) / (1 + w)``:
with ``w = 1`` it is the balanced accuracy, and a member for whom a missed defect
costs more than a false alarm raises ``w``. Plain, typed numpy: no files, no models.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from qdspace.inference.errors import InferenceError
from qdspace.inference.metrics import DEFAULT_THRESHOLD, auroc

WEIGHTED_ACCURACY = "weighted_accuracy"
GATE_METRICS = (WEIGHTED_ACCURACY, "accuracy", "f1", "auroc")
MIN_AUDIT_PER_CLASS = 5


class GateError(InferenceError, ValueError):
    """The gate's policy or audit data are unusable (unknown metric, too few cells...)."""


class PromotionRefusedError(InferenceError, PermissionError):
    """A version is registered but not activated: it is worse than the active one."""

    def __init__(self, version: str, decision: GateDecision) -> None:
        super().__init__(f"model version {version[:12]} not activated: {decision.summary()}")
        self.version = version
        self.decision = decision


@dataclass(frozen=True)
class GatePolicy:
    """How a member judges a candidate version (``models/gate.json`` in its node).

    ``margin`` is how much worse (in metric units) the candidate's point estimate may
    be; ``fnr_weight`` how many false alarms a missed defect
    is worth in the weighted accuracy.
    """

    metric: str = WEIGHTED_ACCURACY
    fnr_weight: float = 1.0
    confidence: float = 0.95
    margin: float = 0.02
    resamples: int = 1000
    threshold: float = DEFAULT_THRESHOLD
    seed: int = 0

    def __post_init__(self) -> None:
        if self.metric not in GATE_METRICS:
            raise GateError(f"gate metric {self.metric!r}: one of {', '.join(GATE_METRICS)}")
        if not self.fnr_weight > 0:
            raise GateError(f"gate fnr_weight {self.fnr_weight}: must be positive")
        if not 0.5 <= self.confidence < 1.0:
            raise GateError(f"gate confidence {self.confidence}: must be in [0.5, 1)")
        if not 0.0 <= self.margin < 1.0:
            raise GateError(f"gate margin {self.margin}: must be in [0, 1)")
        if self.resamples < 100:
            raise GateError(f"gate resamples {self.resamples}: at least 100")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> GatePolicy:
        """From ``to_dict`` output; unknown keys are refused rather than ignored."""
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise GateError(f"gate policy: unknown keys {', '.join(sorted(unknown))}")
        return cls(**dict(raw))


@dataclass(frozen=True)
class Rates:
    """One model's figures on the audit set."""

    value: float
    fpr: float
    fnr: float
    accuracy: float


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict and the figures it rests on."""

    promote: bool
    metric: str
    fnr_weight: float
    candidate: Rates
    incumbent: Rates
    incumbent_version: str | None
    difference: float
    lower: float
    upper: float
    confidence: float
    margin: float
    cells: int
    positives: int

    def summary(self) -> str:
        """One line with the figures, as an operator reads it in a log or a refusal."""
        against = (
            f"active {self.incumbent_version[:12]}"
            if self.incumbent_version
            else "the majority-class predictor"
        )
        need = (
            f"difference >= -{self.margin:g} and upper end >= 0"
            if self.incumbent_version
            else "lower end > 0"
        )
        metric = self.metric + (
            f" (FNR weight {self.fnr_weight:g})" if self.metric == WEIGHTED_ACCURACY else ""
        )
        c, i = self.candidate, self.incumbent
        return (
            f"{metric} {c.value:.3f} vs {i.value:.3f} for {against} on {self.cells} audit cells "
            f"({self.positives} defective): difference {self.difference:+.3f}, "
            f"{self.confidence:.0%} interval [{self.lower:+.3f}, {self.upper:+.3f}], "
            f"needed {need}; FNR {c.fnr:.3f} vs {i.fnr:.3f}, FPR {c.fpr:.3f} vs {i.fpr:.3f}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for the registry's promotion log)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> GateDecision:
        """Rebuild from ``to_dict`` output (a promotion log entry)."""
        fields = dict(raw)
        fields["candidate"] = Rates(**fields["candidate"])
        fields["incumbent"] = Rates(**fields["incumbent"])
        return cls(**fields)


def _rates(
    labels: NDArray[np.bool_], called: NDArray[np.bool_]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """FPR, FNR and accuracy along the last axis (rows are resamples)."""
    positives = labels.sum(axis=-1)
    negatives = labels.shape[-1] - positives
    fn = (labels & ~called).sum(axis=-1)
    fp = (~labels & called).sum(axis=-1)
    fpr = fp / np.maximum(negatives, 1)
    fnr = fn / np.maximum(positives, 1)
    return fpr, fnr, 1.0 - (fp + fn) / labels.shape[-1]


def metric_values(
    metric: str, labels: ArrayLike, scores: ArrayLike, policy: GatePolicy
) -> NDArray[np.float64]:
    """The metric of each row of ``scores`` against the matching row of ``labels``."""
    y = np.atleast_2d(np.asarray(labels).astype(bool))
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    if metric == "auroc":
        return np.array([auroc(yr, sr) for yr, sr in zip(y, s, strict=True)])
    called = s >= policy.threshold
    fpr, fnr, accuracy = _rates(y, called)
    if metric == WEIGHTED_ACCURACY:
        w = policy.fnr_weight
        return np.asarray(1.0 - (fpr + w * fnr) / (1.0 + w), dtype=np.float64)
    if metric == "accuracy":
        return np.asarray(accuracy, dtype=np.float64)
    tp = (y & called).sum(axis=-1)
    predicted, actual = called.sum(axis=-1), y.sum(axis=-1)
    return np.asarray(2.0 * tp / np.maximum(predicted + actual, 1), dtype=np.float64)


def figures(labels: ArrayLike, scores: ArrayLike, policy: GatePolicy) -> Rates:
    """A model's metric, FPR, FNR and accuracy on the audit set."""
    y = np.asarray(labels).astype(bool)
    called = np.asarray(scores, dtype=np.float64) >= policy.threshold
    fpr, fnr, accuracy = _rates(y, called)
    value = float(metric_values(policy.metric, y, scores, policy)[0])
    return Rates(value, float(fpr), float(fnr), float(accuracy))


def stratified_resamples(labels: NDArray[np.bool_], count: int, seed: int) -> NDArray[np.int64]:
    """``count`` bootstrap index rows that keep the audit set's class counts.

    Resampling defective and good cells separately keeps every resample's FNR and
    AUROC defined, and matches how an audit set is drawn: so many of each class.
    """
    rng = np.random.default_rng(seed)
    parts = []
    for members in (np.flatnonzero(labels), np.flatnonzero(~labels)):
        parts.append(members[rng.integers(0, len(members), (count, len(members)))])
    return np.concatenate(parts, axis=1).astype(np.int64)


def majority_scores(labels: ArrayLike, threshold: float = DEFAULT_THRESHOLD) -> NDArray[np.float64]:
    """The scores of the predictor that calls every cell the majority class."""
    y = np.asarray(labels).astype(bool)
    value = threshold if y.mean() > 0.5 else 0.0
    return np.full(len(y), value, dtype=np.float64)


def decide(
    labels: ArrayLike,
    candidate: ArrayLike,
    incumbent: ArrayLike | None,
    policy: GatePolicy,
    incumbent_version: str | None = None,
) -> GateDecision:
    """Compare defect scores of the candidate and the incumbent on the audit cells.

    ``incumbent`` None means no version is active: the candidate is compared with the
    majority-class predictor and must be strictly better at the lower bound.
    """
    y = np.asarray(labels).astype(bool)
    cand = np.asarray(candidate, dtype=np.float64)
    positives = int(y.sum())
    if y.ndim != 1 or cand.shape != y.shape:
        raise GateError(f"audit labels {y.shape} and candidate scores {cand.shape} differ")
    if min(positives, len(y) - positives) < MIN_AUDIT_PER_CLASS:
        raise GateError(
            f"audit set has {positives} defective and {len(y) - positives} good cells; "
            f"the gate needs at least {MIN_AUDIT_PER_CLASS} of each"
        )
    inc = majority_scores(y, policy.threshold) if incumbent is None else np.asarray(incumbent)
    inc = inc.astype(np.float64)
    if inc.shape != y.shape:
        raise GateError(f"audit labels {y.shape} and incumbent scores {inc.shape} differ")
    rows = stratified_resamples(y, policy.resamples, policy.seed)

    def value(scores: NDArray[np.float64]) -> NDArray[np.float64]:
        return metric_values(policy.metric, y[rows], scores[rows], policy)

    differences = value(cand) - value(inc)
    tail = (1.0 - policy.confidence) / 2.0
    lower, upper = (float(q) for q in np.quantile(differences, [tail, 1.0 - tail]))
    c, i = figures(y, cand, policy), figures(y, inc, policy)
    difference = c.value - i.value
    worse = difference < -policy.margin or upper < 0.0
    promote = lower > 0.0 if incumbent is None else not worse
    return GateDecision(
        promote=promote,
        metric=policy.metric,
        fnr_weight=policy.fnr_weight,
        candidate=c,
        incumbent=i,
        incumbent_version=incumbent_version if incumbent is not None else None,
        difference=difference,
        lower=lower,
        upper=upper,
        confidence=policy.confidence,
        margin=policy.margin,
        cells=len(y),
        positives=positives,
    )
