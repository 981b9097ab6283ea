"""A small softmax-regression task in numpy: the synthetic model of tests and benchmarks.

Federation logic must be testable in seconds and without PyTorch, so the unit
tests, the attack tests and the loopback benchmark train this model on synthetic
Gaussian blobs. It follows the same contract as the EL CNN trainer: parameters in,
parameters and example count out; the member's data never leaves the function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from qdspace.federation.errors import TrainingError
from qdspace.federation.params import Params, Shapes, flatten, unflatten
from qdspace.federation.strategies import proximal_gradient


@dataclass(frozen=True, slots=True)
class Dataset:
    """Features and integer labels held by one member."""

    x: NDArray[np.float32]
    y: NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.y.shape[0])


def make_blobs(n: int, dims: int, classes: int, seed: int, spread: float = 1.0) -> Dataset:
    """Gaussian blobs with overlapping classes (so accuracy is informative, not 100%)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(12345).normal(0.0, 1.0, size=(classes, dims))
    y = rng.integers(0, classes, size=n)
    x = centres[y] + rng.normal(0.0, spread, size=(n, dims))
    return Dataset(x.astype(np.float32), y.astype(np.int64))


def split(data: Dataset, parts: int, seed: int = 0) -> list[Dataset]:
    """Shuffle and cut a data set into ``parts`` equal-ish member shares (IID)."""
    order = np.random.default_rng(seed).permutation(len(data))
    return [Dataset(data.x[idx], data.y[idx]) for idx in np.array_split(order, parts)]


def model_shapes(dims: int, classes: int) -> Shapes:
    """Weights (dims x classes) then bias (classes)."""
    return ((dims, classes), (classes,))


def init_params(dims: int, classes: int) -> Params:
    """All-zero start: every member and the coordinator agree on it without a download."""
    return [np.zeros((dims, classes), np.float32), np.zeros(classes, np.float32)]


def _softmax(logits: NDArray[np.float64]) -> NDArray[np.float64]:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    out: NDArray[np.float64] = e / e.sum(axis=1, keepdims=True)
    return out


def predict(params: Params, x: NDArray[np.float32]) -> NDArray[np.int64]:
    """Most likely class of each row."""
    w, b = params
    return np.asarray(np.argmax(x @ w + b, axis=1), dtype=np.int64)


def accuracy(params: Params, data: Dataset) -> float:
    """Share of rows classified correctly."""
    return float(np.mean(predict(params, data.x) == data.y))


def train_local(
    params: Params,
    data: Dataset,
    *,
    epochs: int = 1,
    lr: float = 0.1,
    batch: int = 32,
    mu: float = 0.0,
    seed: int = 0,
) -> tuple[Params, int]:
    """Mini-batch SGD on cross-entropy (+ FedProx term when ``mu > 0``) from ``params``."""
    if len(data) == 0:
        raise TrainingError("cannot train on an empty local data set")
    shapes = tuple(tuple(p.shape) for p in params)
    start = flatten(params)
    w = params[0].astype(np.float64).copy()
    b = params[1].astype(np.float64).copy()
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = rng.permutation(len(data))
        for lo in range(0, len(data), batch):
            idx = order[lo : lo + batch]
            x, y = data.x[idx].astype(np.float64), data.y[idx]
            probs = _softmax(x @ w + b)
            probs[np.arange(len(idx)), y] -= 1.0
            grad_w = x.T @ probs / len(idx)
            grad_b = probs.mean(axis=0)
            if mu > 0:
                current = flatten([w.astype(np.float32), b.astype(np.float32)])
                prox = unflatten(proximal_gradient(current, start, mu), shapes)
                grad_w += prox[0]
                grad_b += prox[1]
            w -= lr * grad_w
            b -= lr * grad_b
    if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
        raise TrainingError("local training diverged (non-finite weights); lower the rate")
    return [w.astype(np.float32), b.astype(np.float32)], len(data)


def trainer(
    data: Dataset, *, epochs: int = 1, lr: float = 0.1, batch: int = 32, mu: float = 0.0
) -> Callable[[Params, int], tuple[Params, int]]:
    """A member's ``Trainer`` over its own ``data`` (seeded by the round, so reruns agree)."""

    def train(params: Params, round_: int) -> tuple[Params, int]:
        return train_local(params, data, epochs=epochs, lr=lr, batch=batch, mu=mu, seed=round_)

    return train


def save_dataset(path: Path, data: Dataset) -> None:
    """Write a member's features and labels as ``.npz`` (arrays ``x`` and ``y``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        np.savez(fh, x=data.x, y=data.y)


def load_dataset(path: Path, dims: int, classes: int) -> Dataset:
    """Read a ``save_dataset`` file and check it fits a ``dims`` x ``classes`` model."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            x = np.asarray(npz["x"], dtype=np.float32)
            y = np.asarray(npz["y"], dtype=np.int64)
    except (OSError, ValueError, KeyError) as exc:
        raise TrainingError(f"{path}: not a data file with arrays x and y ({exc})") from exc
    if x.ndim != 2 or x.shape[1] != dims or y.shape != (x.shape[0],):
        raise TrainingError(
            f"{path}: x has shape {x.shape} and y {y.shape}; the job's model needs "
            f"(n, {dims}) and (n,)"
        )
    if y.size and (y.min() < 0 or y.max() >= classes):
        raise TrainingError(f"{path}: labels must be in 0..{classes - 1}")
    return Dataset(x, y)


def trainer_for(
    job_training: Mapping[str, float], data: Dataset, mu: float = 0.0
) -> Callable[[Params, int], tuple[Params, int]]:
    """The trainer a job's ``training`` terms ask for (``epochs``, ``lr``, ``batch``)."""
    return trainer(
        data,
        epochs=int(job_training.get("epochs", 1)),
        lr=float(job_training.get("lr", 0.1)),
        batch=int(job_training.get("batch", 32)),
        mu=mu,
    )
