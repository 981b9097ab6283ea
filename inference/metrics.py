"""Held-out metrics for a defect classifier: accuracy, F1 and AUROC, in plain numpy.

No scikit-learn: these few formulas are short, and keeping them here lets a node that
only inspects report the same numbers the trainer did.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike

from qdspace.inference.errors import InferenceError

DEFAULT_THRESHOLD = 0.5
#: A defect score whose range over a set of cells is narrower than this is constant.
MIN_SCORE_SPREAD = 1e-3
#: A loss within this fraction of chance (ln of the class count) has learnt nothing.
CHANCE_MARGIN = 0.02


@dataclass(frozen=True)
class BinaryMetrics:
    """Counts and rates of a defect / no-defect decision at one threshold."""

    count: int
    true_positives: int
    false_positives: int
    true_negatives: int
    false_negatives: int
    accuracy: float
    precision: float
    recall: float
    f1: float
    auroc: float
    threshold: float

    @property
    def balanced_accuracy(self) -> float:
        """Mean of the recalls of both classes: 0.5 for any constant decision, so a model
        beats the majority-class predictor exactly when this is above 0.5."""
        negatives = self.true_negatives + self.false_positives
        specificity = self.true_negatives / negatives if negatives else 0.0
        return (self.recall + specificity) / 2.0

    def as_dict(self) -> dict[str, float]:
        """Numbers only, for JSON reports and the model version's metrics."""
        return {key: float(value) for key, value in asdict(self).items()}


def auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve via the rank-sum (Mann-Whitney U) form, ties averaged.

    Returns NaN when only one class is present: the area is then undefined, and a
    number would mislead.
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_scores = s[order]
    start = 0
    while start < len(s):
        stop = start
        while stop + 1 < len(s) and sorted_scores[stop + 1] == sorted_scores[start]:
            stop += 1
        ranks[order[start : stop + 1]] = (start + stop) / 2.0 + 1.0
        start = stop + 1
    rank_sum = float(ranks[y].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def binary_metrics(
    labels: ArrayLike, scores: ArrayLike, threshold: float = DEFAULT_THRESHOLD
) -> BinaryMetrics:
    """Metrics of 'defective when score >= threshold' against 0/1 ``labels``."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise InferenceError(f"labels {y.shape} and scores {s.shape} must be equal 1-D shapes")
    predicted = s >= threshold
    tp = int(np.sum(predicted & y))
    fp = int(np.sum(predicted & ~y))
    tn = int(np.sum(~predicted & ~y))
    fn = int(np.sum(~predicted & y))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return BinaryMetrics(
        count=len(y),
        true_positives=tp,
        false_positives=fp,
        true_negatives=tn,
        false_negatives=fn,
        accuracy=(tp + tn) / len(y) if len(y) else 0.0,
        precision=precision,
        recall=recall,
        f1=f1,
        auroc=auroc(y, s),
        threshold=threshold,
    )


def collapse_finding(
    scores: ArrayLike, loss: float, num_classes: int, threshold: float = DEFAULT_THRESHOLD
) -> str | None:
    """Why a model with these defect ``scores`` and class-balanced ``loss`` on a set of
    labelled cells is useless, or None when it is not.

    Three signs of a collapsed network, in the order they are reported: the same score
    for every cell; the same decision for every cell (the majority-class predictor, or
    its mirror image); a loss at chance (``ln num_classes``, what a constant output
    scores under class-balanced cross-entropy).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise InferenceError(f"collapse check needs a non-empty 1-D score array, got {s.shape}")
    if not (np.all(np.isfinite(s)) and math.isfinite(loss)):
        return f"non-finite output or loss (loss {loss}): training diverged"
    spread = float(s.max() - s.min())
    if not spread >= MIN_SCORE_SPREAD:
        return f"constant output (P(defective) {s.mean():.3f} for every cell, spread {spread:.1e})"
    called = s >= threshold
    if bool(called.all()) or not bool(called.any()):
        verdict = "defective" if bool(called.all()) else "ok"
        return (
            f"every cell called {verdict!r} (P(defective) from {s.min():.3f} to {s.max():.3f}, "
            f"threshold {threshold:g})"
        )
    chance = math.log(num_classes)
    if not loss < chance * (1.0 - CHANCE_MARGIN):
        return f"loss {loss:.4f} at chance (ln {num_classes} = {chance:.4f})"
    return None
