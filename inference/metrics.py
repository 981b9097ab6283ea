"""Held-out metrics for a defect classifier: accuracy, F1 and AUROC, in plain numpy.

No scikit-learn: these few formulas are short, and keeping them here lets a node that
only inspects report the same numbers the trainer did.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike

from inference.errors import InferenceError

DEFAULT_THRESHOLD = 0.5


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
