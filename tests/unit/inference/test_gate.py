"""The promotion gate's decision: paired bootstrap on audit cells, FNR weighted as configured."""

from __future__ import annotations

import numpy as np
import pytest

from qdspace.inference.gate import (
    GateError,
    GatePolicy,
    PromotionRefusedError,
    decide,
    metric_values,
    stratified_resamples,
)
from qdspace.inference.metrics import binary_metrics

POLICY = GatePolicy()


def _labels(positives: int = 50, negatives: int = 50) -> np.ndarray:
    return np.array([1] * positives + [0] * negatives)


def _scores(labels: np.ndarray, fnr: float, fpr: float) -> np.ndarray:
    """Scores missing the first ``fnr`` of the defective and flagging ``fpr`` of the good."""
    scores = labels.astype(np.float64) * 0.9 + 0.05
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    scores[pos[: round(fnr * len(pos))]] = 0.2
    scores[neg[: round(fpr * len(neg))]] = 0.8
    return scores


def test_the_same_model_again_is_promoted() -> None:
    labels = _labels()
    scores = _scores(labels, 0.2, 0.1)
    d = decide(labels, scores, scores, POLICY, "a" * 64)
    assert d.promote and d.difference == 0.0 and d.lower == d.upper == 0.0


def test_a_clearly_worse_version_is_refused_with_its_figures() -> None:
    labels = _labels()
    d = decide(labels, _scores(labels, 0.5, 0.3), _scores(labels, 0.1, 0.1), POLICY, "ab" * 32)
    assert not d.promote
    assert d.candidate.fnr == pytest.approx(0.5) and d.incumbent.fnr == pytest.approx(0.1)
    assert d.upper < 0 and d.lower <= d.difference <= d.upper
    refusal = PromotionRefusedError("cd" * 32, d)
    text = str(refusal)
    assert text.startswith("model version cdcdcdcdcdcd not activated: weighted_accuracy")
    for part in ("0.600 vs 0.900", "active abababababab", "100 audit cells (50 defective)"):
        assert part in text
    assert "FNR 0.500 vs 0.100" in text and "95% interval" in text


def test_a_slightly_different_but_as_good_version_is_promoted() -> None:
    labels = _labels(60, 140)
    incumbent = _scores(labels, 0.2, 0.1)
    candidate = incumbent.copy()
    candidate[[0, 1]] = 0.9  # two more defects found...
    candidate[[60, 61]] = 0.9  # ...two more false alarms
    d = decide(labels, candidate, incumbent, POLICY, "ab" * 32)
    assert d.promote and d.difference > 0


def test_an_equally_good_model_with_other_errors_is_promoted() -> None:
    labels = _labels(60, 140)
    incumbent = _scores(labels, 0.2, 0.1)  # misses defects 0..11
    candidate = incumbent.copy()
    candidate[:6] = 0.9  # finds six of those...
    candidate[12:18] = 0.2  # ...and misses six others: as good, with a wide paired interval
    d = decide(labels, candidate, incumbent, POLICY, "ab" * 32)
    assert d.difference == pytest.approx(0.0) and d.lower < -POLICY.margin < 0 < d.upper
    assert d.promote


def test_the_fnr_weight_decides_between_a_missed_defect_and_a_false_alarm() -> None:
    labels = _labels()
    fewer_alarms = _scores(labels, fnr=0.4, fpr=0.1)
    fewer_misses = _scores(labels, fnr=0.1, fpr=0.4)
    misses_cost = GatePolicy(fnr_weight=5.0)
    alarms_cost = GatePolicy(fnr_weight=0.2)
    assert not decide(labels, fewer_alarms, fewer_misses, misses_cost, "v").promote
    assert decide(labels, fewer_alarms, fewer_misses, alarms_cost, "v").promote
    assert decide(labels, fewer_misses, fewer_alarms, misses_cost, "v").promote


def test_without_an_active_version_the_majority_class_must_be_beaten() -> None:
    labels = _labels(30, 70)
    constant = np.full(len(labels), 0.3)
    d = decide(labels, constant, None, POLICY)
    assert not d.promote and d.incumbent_version is None
    assert d.candidate.value == pytest.approx(0.5) and d.incumbent.value == pytest.approx(0.5)
    assert "the majority-class predictor" in d.summary() and "needed lower end > 0" in d.summary()
    assert decide(labels, _scores(labels, 0.2, 0.2), None, POLICY).promote


@pytest.mark.parametrize("metric", ["accuracy", "f1", "auroc"])
def test_other_metrics_match_the_held_out_metrics(metric: str) -> None:
    labels = _labels(30, 70)
    scores = np.random.default_rng(3).uniform(size=len(labels)) * 0.6 + labels * 0.3
    expected = getattr(binary_metrics(labels, scores), metric)
    assert metric_values(metric, labels, scores, POLICY)[0] == pytest.approx(expected)
    d = decide(labels, scores, _scores(labels, 0.0, 0.0), GatePolicy(metric=metric), "v")
    assert not d.promote and d.candidate.value == pytest.approx(expected)


def test_resamples_keep_the_class_counts() -> None:
    labels = _labels(7, 93).astype(bool)
    rows = stratified_resamples(labels, 200, seed=1)
    assert rows.shape == (200, 100)
    assert (labels[rows].sum(axis=1) == 7).all()


def test_policy_and_audit_set_are_checked() -> None:
    with pytest.raises(GateError, match="gate metric 'recall'"):
        GatePolicy(metric="recall")
    with pytest.raises(GateError, match="fnr_weight"):
        GatePolicy(fnr_weight=0)
    with pytest.raises(GateError, match="unknown keys fnr"):
        GatePolicy.from_dict({"fnr": 2})
    assert GatePolicy.from_dict(GatePolicy(fnr_weight=3).to_dict()) == GatePolicy(fnr_weight=3)
    labels = _labels(3, 50)
    with pytest.raises(GateError, match="3 defective and 50 good cells"):
        decide(labels, np.zeros(len(labels)), None, POLICY)
    with pytest.raises(GateError, match="differ"):
        decide(_labels(), np.zeros(3), None, POLICY)
