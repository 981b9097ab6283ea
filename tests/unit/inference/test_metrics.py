"""Accuracy, F1 and AUROC against hand counts and a brute-force pairwise AUROC."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qdspace.inference.errors import InferenceError, WeightsError
from qdspace.inference.metrics import auroc, binary_metrics, collapse_finding
from qdspace.inference.weights import check_shapes, flatten, shapes_of, unflatten


def _pairwise_auroc(labels: list[int], scores: list[float]) -> float:
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_counts_and_rates_by_hand() -> None:
    m = binary_metrics([1, 1, 0, 0, 1], [0.9, 0.4, 0.6, 0.1, 0.5])
    assert (m.true_positives, m.false_positives, m.true_negatives, m.false_negatives) == (
        2,
        1,
        1,
        1,
    )
    assert m.accuracy == pytest.approx(3 / 5)
    assert m.precision == pytest.approx(2 / 3) and m.recall == pytest.approx(2 / 3)
    assert m.f1 == pytest.approx(2 / 3)
    assert m.auroc == pytest.approx(4 / 6)  # 4 of 6 (pos, neg) pairs ranked right
    assert m.as_dict()["count"] == 5.0


def test_auroc_undefined_for_one_class_and_shape_mismatch_refused() -> None:
    assert math.isnan(auroc([1, 1], [0.2, 0.3]))
    with pytest.raises(InferenceError, match="equal 1-D shapes"):
        binary_metrics([1, 0], [0.5])


@given(
    st.lists(
        st.tuples(st.integers(0, 1), st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])),
        min_size=2,
        max_size=40,
    )
)
def test_auroc_matches_pairwise_definition(pairs: list[tuple[int, float]]) -> None:
    labels = [y for y, _ in pairs]
    scores = [s for _, s in pairs]
    if len(set(labels)) < 2:
        assert math.isnan(auroc(labels, scores))
    else:
        assert auroc(labels, scores) == pytest.approx(_pairwise_auroc(labels, scores))


def test_weights_flatten_round_trip_and_errors() -> None:
    weights = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, dtype=np.float32)]
    shapes = shapes_of(weights)
    back = unflatten(flatten(weights), shapes)
    assert all(np.array_equal(a, b) for a, b in zip(weights, back, strict=True))
    with pytest.raises(WeightsError, match="needs 10 values"):
        unflatten(np.zeros(9, dtype=np.float32), shapes)
    with pytest.raises(WeightsError, match="tensor 1"):
        check_shapes([weights[0], np.ones(5, dtype=np.float32)], shapes)


def test_balanced_accuracy_is_a_half_for_the_majority_class() -> None:
    labels = [1] * 3 + [0] * 7
    assert binary_metrics(labels, [0.0] * 10).balanced_accuracy == 0.5
    assert binary_metrics(labels, [0.0] * 10).accuracy == 0.7
    assert binary_metrics(labels, [1, 1, 0, 0, 0, 0, 0, 0, 0, 1]).balanced_accuracy == (
        pytest.approx((2 / 3 + 6 / 7) / 2)
    )


def test_collapse_findings() -> None:
    healthy = np.array([0.1, 0.7, 0.3, 0.9])
    assert collapse_finding(healthy, 0.5, 2) is None
    constant = collapse_finding(np.full(8, 0.31), 0.69, 2)
    assert constant is not None and constant.startswith("constant output (P(defective) 0.310")
    one_class = collapse_finding(np.array([0.1, 0.2, 0.4]), 0.6, 2)
    assert one_class is not None and "every cell called 'ok'" in one_class
    all_bad = collapse_finding(np.array([0.6, 0.9]), 0.6, 2)
    assert all_bad is not None and "every cell called 'defective'" in all_bad
    at_chance = collapse_finding(healthy, 0.69, 2)
    assert at_chance == "loss 0.6900 at chance (ln 2 = 0.6931)"
    assert collapse_finding(healthy, 1.37, 4) is not None  # ln 4 = 1.386
    diverged = collapse_finding(np.array([np.nan, 0.2]), 0.5, 2)
    assert diverged is not None and "diverged" in diverged
    with pytest.raises(InferenceError, match="non-empty"):
        collapse_finding(np.array([]), 0.5, 2)
