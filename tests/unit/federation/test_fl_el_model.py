"""The demo's EL model: fixed features, the numpy MLP head, the non-IID split, model kinds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qdspace.federation import logreg, mlp
from qdspace.federation.el_features import el_features, feature_count, member_split
from qdspace.federation.errors import FederationError, TrainingError
from qdspace.federation.logreg import Dataset
from qdspace.federation.models import model_kind


def _cells(n: int, seed: int, cracked: bool) -> np.ndarray:
    """Synthetic 48 px cells: grainy background, busbars; a dark diagonal crack if ``cracked``."""
    rng = np.random.default_rng(seed)
    cells = rng.normal(150, 12, size=(n, 48, 48))
    cells[:, :, 15] = cells[:, :, 32] = 60  # busbars
    if cracked:
        for i in range(n):
            start = rng.integers(0, 20)
            for k in range(20):
                cells[i, start + k, 5 + k] = 40
    return np.clip(cells, 0, 255).astype(np.uint8)


def test_features_have_the_documented_size_and_ignore_exposure() -> None:
    cells = _cells(6, 1, cracked=True)
    features = el_features(cells)
    assert features.shape == (6, feature_count()) and features.dtype == np.float32
    assert np.all(np.isfinite(features))
    brighter = np.clip(cells.astype(np.float32) * 0.5 + 20, 0, 255)
    assert np.allclose(el_features(brighter), features, atol=1e-3)
    with pytest.raises(ValueError, match="count, height, width"):
        el_features(cells[0])


def test_the_head_learns_cracks_from_the_features_and_keeps_its_scaling() -> None:
    cells = np.concatenate([_cells(60, 2, False), _cells(60, 3, True)])
    y = np.repeat([0, 1], 60).astype(np.int64)
    x = el_features(cells)
    order = np.random.default_rng(0).permutation(120)
    train, test = Dataset(x[order[:80]], y[order[:80]]), Dataset(x[order[80:]], y[order[80:]])
    start = mlp.init_params(train.x, 8)
    before = mlp.accuracy(start, test)
    trained, n = mlp.train_local(start, train, mlp.LocalTraining(epochs=30, lr=0.01))
    assert n == 80 and mlp.accuracy(trained, test) >= max(before, 0.9)
    assert all(np.array_equal(a, b) for a, b in zip(trained[:2], start[:2], strict=True))
    # FedProx's proximal term keeps the weights closer to where the round started
    prox, _ = mlp.train_local(start, train, mlp.LocalTraining(epochs=5, lr=0.01, mu=5.0))
    free, _ = mlp.train_local(start, train, mlp.LocalTraining(epochs=5, lr=0.01))

    def moved(p: list[np.ndarray]) -> float:
        return sum(float(np.linalg.norm(a - b)) for a, b in zip(p[2:], start[2:], strict=True))

    assert moved(prox) < moved(free)
    with pytest.raises(TrainingError, match="empty"):
        mlp.train_local(start, Dataset(x[:0], y[:0]), mlp.LocalTraining())


def test_member_split_is_non_iid_and_disjoint() -> None:
    rng = np.random.default_rng(4)
    labels = (rng.random(2000) < 0.3).astype(np.int64)
    kinds = np.where(rng.random(2000) < 0.4, "mono", "poly")
    shares, test = member_split(labels, kinds, seed=3)
    rows = np.concatenate([test, *shares.values()])
    assert len(rows) == len(set(rows.tolist())) == 2000
    assert len(test) == 400 and len(shares["sunarc"]) == 240
    assert abs(labels[shares["sunarc"]].mean() - 0.08) < 0.01
    assert set(kinds[shares["cellex"]]) == {"mono"} and set(kinds[shares["polycell"]]) == {"poly"}
    again, _ = member_split(labels, kinds, seed=3)
    assert all(np.array_equal(again[m], shares[m]) for m in shares)


def test_model_kinds_read_member_files(tmp_path: Path) -> None:
    cells = _cells(5, 6, cracked=True)
    path = tmp_path / "own.npz"
    np.savez(path, images=cells, y=np.ones(5, np.int64))
    shapes = mlp.model_shapes(feature_count(), 4)
    data = model_kind("el-mlp").load(path, shapes)
    assert data.x.shape == (5, feature_count())
    features = tmp_path / "features.npz"
    np.savez(features, x=data.x, y=data.y)
    assert np.array_equal(model_kind("el-mlp").load(features, shapes).x, data.x)
    with pytest.raises(TrainingError, match="needs"):
        model_kind("el-mlp").load(features, mlp.model_shapes(7, 4))
    logreg.save_dataset(tmp_path / "rows.npz", Dataset(data.x, data.y))
    assert (
        len(
            model_kind("logreg").load(
                tmp_path / "rows.npz", logreg.model_shapes(feature_count(), 2)
            )
        )
        == 5
    )
    with pytest.raises(FederationError, match="not one this node trains"):
        model_kind("resnet")
