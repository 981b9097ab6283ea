"""Accuracy, F1 and AUROC against hand counts and a brute-force pairwise AUROC."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from inference.errors import InferenceError, WeightsError
from inference.metrics import auroc, binary_metrics
from inference.weights import check_shapes, flatten, shapes_of, unflatten


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
