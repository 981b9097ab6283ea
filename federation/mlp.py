"""A small numpy classifier on fixed features: the EL defect model the demo federates.

The model is ``softmax(W2 . relu(W1 . z + b1) + b2)`` with ``z = (x - mean) / scale``.
``mean`` and ``scale`` are tensors of the model too, set once by whoever creates
the job (the coordinator, from its own cells) and never trained: every member
returns them unchanged, so averaging keeps them, and the signed global version
carries the exact preprocessing that goes with its weights. Local training is
Adam on (optionally class-weighted) cross-entropy, plus FedProx's proximal term
when ``mu > 0``. Pure numpy: a member needs no PyTorch to take part.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from qdspace.federation.errors import TrainingError
from qdspace.federation.logreg import Dataset
from qdspace.federation.params import Params, Shapes

CLASSES = 2
FROZEN = 2  # mean and scale come first and are not trained


def model_shapes(dims: int, hidden: int, classes: int = CLASSES) -> Shapes:
    """mean (dims), scale (dims), W1 (dims x hidden), b1 (hidden), W2 (hidden x classes), b2."""
    return ((dims,), (dims,), (dims, hidden), (hidden,), (hidden, classes), (classes,))


def init_params(
    reference: NDArray[np.float32], hidden: int, *, classes: int = CLASSES, seed: int = 0
) -> Params:
    """A fresh model whose input scaling is fitted to ``reference`` features (one member's)."""
    if reference.ndim != 2 or len(reference) < 2:
        raise TrainingError(f"reference features must be (n >= 2, dims), got {reference.shape}")
    dims = reference.shape[1]
    rng = np.random.default_rng(seed)
    mean = reference.mean(axis=0).astype(np.float32)
    scale = (reference.std(axis=0) + 1e-3).astype(np.float32)
    w1 = rng.normal(0.0, np.sqrt(2.0 / dims), (dims, hidden)).astype(np.float32)
    w2 = rng.normal(0.0, np.sqrt(1.0 / hidden), (hidden, classes)).astype(np.float32)
    return [
        mean,
        scale,
        w1,
        np.zeros(hidden, np.float32),
        w2,
        np.zeros(classes, np.float32),
    ]


def _forward(
    params: Params, x: NDArray[np.float32]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    mean, scale, w1, b1, w2, b2 = (np.asarray(p, np.float64) for p in params)
    z: NDArray[np.float64] = (np.asarray(x, np.float64) - mean) / scale
    hidden: NDArray[np.float64] = np.maximum(z @ w1 + b1, 0.0)
    logits: NDArray[np.float64] = hidden @ w2 + b2
    return z, hidden, logits


def probabilities(params: Params, x: NDArray[np.float32]) -> NDArray[np.float64]:
    """Class probabilities of each row."""
    _, _, logits = _forward(params, x)
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    out: NDArray[np.float64] = e / e.sum(axis=1, keepdims=True)
    return out


def defect_scores(params: Params, x: NDArray[np.float32]) -> NDArray[np.float64]:
    """Probability of the defective class (1) of each row."""
    return probabilities(params, x)[:, 1]


def accuracy(params: Params, data: Dataset) -> float:
    """Share of rows classified correctly."""
    return float(np.mean(np.argmax(probabilities(params, data.x), axis=1) == data.y))


@dataclass(frozen=True, slots=True)
class LocalTraining:
    """One member's local training per round (from the job's ``training`` terms)."""

    epochs: int = 2
    lr: float = 0.003
    batch: int = 32
    weight_decay: float = 1e-4
    mu: float = 0.0

    @classmethod
    def from_terms(cls, terms: Mapping[str, float], mu: float = 0.0) -> LocalTraining:
        return cls(
            epochs=int(terms.get("epochs", 2)),
            lr=float(terms.get("lr", 0.003)),
            batch=int(terms.get("batch", 32)),
            weight_decay=float(terms.get("weight_decay", 1e-4)),
            mu=mu,
        )


def train_local(
    params: Params, data: Dataset, config: LocalTraining, seed: int = 0
) -> tuple[Params, int]:
    """Adam from ``params`` on the member's own rows; returns new parameters and row count."""
    if len(data) == 0:
        raise TrainingError("cannot train on an empty local data set")
    if len(params) != 6:
        raise TrainingError(f"the MLP has 6 tensors, got {len(params)}")
    frozen = [np.asarray(p, np.float32) for p in params[:FROZEN]]
    start = [np.asarray(p, np.float64) for p in params[FROZEN:]]
    weights = [p.copy() for p in start]
    moments = [np.zeros_like(p) for p in weights]
    squares = [np.zeros_like(p) for p in weights]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    rng = np.random.default_rng(seed)
    z_all = (np.asarray(data.x, np.float64) - frozen[0]) / frozen[1]
    step = 0
    for _ in range(config.epochs):
        order = rng.permutation(len(data))
        for lo in range(0, len(data), config.batch):
            idx = order[lo : lo + config.batch]
            z, y = z_all[idx], data.y[idx]
            w1, b1, w2, b2 = weights
            pre = z @ w1 + b1
            hidden = np.maximum(pre, 0.0)
            logits = hidden @ w2 + b2
            logits -= logits.max(axis=1, keepdims=True)
            probs = np.exp(logits)
            probs /= probs.sum(axis=1, keepdims=True)
            probs[np.arange(len(idx)), y] -= 1.0
            probs /= len(idx)
            grad_hidden = (probs @ w2.T) * (pre > 0)
            grads = [z.T @ grad_hidden, grad_hidden.sum(0), hidden.T @ probs, probs.sum(0)]
            step += 1
            for i, (w, g) in enumerate(zip(weights, grads, strict=True)):
                g = g + config.weight_decay * w
                if config.mu > 0:
                    g = g + config.mu * (w - start[i])
                moments[i] = beta1 * moments[i] + (1 - beta1) * g
                squares[i] = beta2 * squares[i] + (1 - beta2) * g * g
                m_hat = moments[i] / (1 - beta1**step)
                v_hat = squares[i] / (1 - beta2**step)
                w -= config.lr * m_hat / (np.sqrt(v_hat) + eps)
    if not all(np.all(np.isfinite(w)) for w in weights):
        raise TrainingError("local training diverged (non-finite weights); lower the rate")
    return frozen + [w.astype(np.float32) for w in weights], len(data)


def trainer_for(
    terms: Mapping[str, float], data: Dataset, mu: float = 0.0
) -> Callable[[Params, int], tuple[Params, int]]:
    """A member's ``Trainer`` over its own ``data`` (seeded by the round, so reruns agree)."""
    config = LocalTraining.from_terms(terms, mu)

    def train(params: Params, round_: int) -> tuple[Params, int]:
        return train_local(params, data, config, seed=round_)

    return train
