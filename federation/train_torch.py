"""Local training with PyTorch, imported lazily: a node that only aggregates never needs it.

``train_local`` runs a member's epochs on its own tensors, starting from the global
parameters, with FedProx's proximal term ``mu/2 * ||w - w_global||^2`` added to the
loss when the job names FedProx. ``train_el_cnn`` runs one round of an ``el-cnn`` job:
the line's CNN (``inference.training``) on a member's own EL cells. Parameters go in and out as
float32 numpy arrays in ``state_dict`` order, the currency of ``federation``.

The terms' ``threads`` are the coordinator's to write, and PyTorch's thread count is the
whole process's: a member trains on at most the CPUs it may run on,
whatever the terms ask (up to 64, which on a small member, or in a managed host serving
many, oversubscribed every core it shares): `util.cpus.threads_for`.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qdspace.federation.el_cnn import CLASSES, CnnTerms, widths_of
from qdspace.federation.errors import TrainingError
from qdspace.federation.logreg import Dataset
from qdspace.federation.params import Params, check_update, shapes_of
from qdspace.util.cpus import threads_for


def _torch() -> Any:
    try:
        return importlib.import_module("torch")
    except ImportError as exc:
        raise TrainingError(
            "local training needs PyTorch: install it with `pip install 'qdspace[train]'`"
        ) from exc


@dataclass(frozen=True, slots=True)
class LocalConfig:
    """One member's local-training settings for a round (from the job's ``training`` terms)."""

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.05
    mu: float = 0.0
    seed: int = 0
    threads: int = 1


def get_params(model: Any) -> Params:
    """The module's ``state_dict`` as float32 numpy arrays, in order."""
    return [t.detach().cpu().numpy().astype(np.float32) for t in model.state_dict().values()]


def set_params(model: Any, params: Sequence[NDArray[np.float32]]) -> None:
    """Load arrays from ``get_params`` order; a count or shape mismatch is refused."""
    torch = _torch()
    state = model.state_dict()
    try:
        check_update(params, shapes_of([t.cpu().numpy() for t in state.values()]), "local")
    except ValueError as exc:
        raise TrainingError(f"parameters do not fit {type(model).__name__}: {exc}") from exc
    model.load_state_dict(
        {k: torch.from_numpy(np.array(p)) for k, p in zip(state, params, strict=True)}
    )


def train_local(
    model: Any,
    params: Sequence[NDArray[np.float32]],
    inputs: Any,
    labels: Any,
    config: LocalConfig,
    loss_fn: Any = None,
) -> tuple[Params, int]:
    """SGD from ``params`` on ``(inputs, labels)``; returns new parameters and example count."""
    torch = _torch()
    if len(labels) == 0:
        raise TrainingError("cannot train on an empty local data set")
    torch.set_num_threads(threads_for(config.threads))
    set_params(model, params)
    anchor = [p.detach().clone() for p in model.parameters()]
    criterion = loss_fn if loss_fn is not None else torch.nn.CrossEntropyLoss()
    optimiser = torch.optim.SGD(model.parameters(), lr=config.learning_rate)
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), config.batch_size):
            chosen = order[start : start + config.batch_size]
            optimiser.zero_grad()
            loss = criterion(model(inputs[chosen]), labels[chosen])
            if config.mu > 0:
                prox = sum(
                    ((w - a) ** 2).sum() for w, a in zip(model.parameters(), anchor, strict=True)
                )
                loss = loss + 0.5 * config.mu * prox
            loss.backward()
            optimiser.step()
    model.eval()
    out = get_params(model)
    if not all(np.all(np.isfinite(p)) for p in out):
        raise TrainingError("local training diverged (non-finite weights); lower the rate")
    return out, len(labels)


def train_el_cnn(
    data: Dataset, params: Sequence[NDArray[np.float32]], terms: CnnTerms, round_: int, mu: float
) -> tuple[Params, int]:
    """One round of an ``el-cnn`` job on a member's own cells: ``terms.epochs`` epochs of
    the line's trainer (``inference.training``: class-weighted loss, random flips, AdamW)
    from the global ``params``.

    The rate follows the trainer's schedule within the round (a linear warm-up over the
    first epoch of round 1 only, then a cosine down to 5 %), so every round starts at the
    full rate from the new global model. Seeded by the job's ``seed`` and the round: a
    rerun gives the same update. With FedProx (``mu > 0``) the proximal term
    ``mu/2 * ||w - w_global||^2`` is added to the loss. Unlike ``qdspace train`` there is
    no early stopping or collapse check here: one member's round need not be a good model
    on its own; the final global version is checked where it is deployed (the promotion
    gate) and where it is exported.
    """
    torch = _torch()
    training = _training()
    widths = widths_of(shapes_of(params))
    if len(data) == 0:
        raise TrainingError("cannot train on an empty local data set")
    torch.set_num_threads(threads_for(terms.threads))
    seed = terms.seed * 100_003 + round_
    torch.manual_seed(seed)
    model = training.ElCnn(CLASSES, widths)
    training.set_weights(model, params)
    anchor = [p.detach().clone() for p in model.parameters()]
    inputs = torch.from_numpy(np.ascontiguousarray(data.x, dtype=np.float32))
    labels = torch.from_numpy(np.asarray(data.y, dtype=np.int64))
    loss_fn = torch.nn.CrossEntropyLoss(weight=training.class_weights(labels, CLASSES))
    optimiser = torch.optim.AdamW(model.parameters(), lr=terms.lr, weight_decay=terms.weight_decay)
    per_epoch = -(-len(labels) // terms.batch)
    total, warmup = per_epoch * terms.epochs, per_epoch if round_ <= 1 else 0
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: training.lr_factor(step, total, warmup, 0.05)
    )
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(terms.epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order), terms.batch):
            chosen = order[start : start + terms.batch]
            optimiser.zero_grad()
            loss = loss_fn(model(training.augment(inputs[chosen], generator)), labels[chosen])
            if mu > 0:
                prox = sum(
                    ((w - a) ** 2).sum() for w, a in zip(model.parameters(), anchor, strict=True)
                )
                loss = loss + 0.5 * mu * prox
            loss.backward()
            optimiser.step()
            schedule.step()
    model.eval()
    out = training.get_weights(model)
    if not all(np.all(np.isfinite(p)) for p in out):
        raise TrainingError("local training diverged (non-finite weights); lower the rate")
    return out, len(labels)


def el_cnn_scores(params: Sequence[NDArray[np.float32]], data: Dataset) -> NDArray[np.float64]:
    """P(defective) of each prepared cell of ``data`` under the CNN ``params``."""
    torch = _torch()
    training = _training()
    model = training.ElCnn(CLASSES, widths_of(shapes_of(params)))
    training.set_weights(model, params)
    inputs = torch.from_numpy(np.ascontiguousarray(data.x, dtype=np.float32))
    scores: NDArray[np.float64] = training.defect_scores(
        training.predict_proba(model, inputs), CLASSES
    )
    return scores


def el_cnn_onnx(params: Sequence[NDArray[np.float32]], image_size: int) -> tuple[bytes, Any]:
    """ONNX bytes of the CNN ``params`` with the export of ``qdspace train``, and the model."""
    training = _training()
    model = training.ElCnn(CLASSES, widths_of(shapes_of(params)))
    training.set_weights(model, params)
    model.eval()
    return training.export_onnx(model, image_size), model


def _training() -> Any:
    try:
        return importlib.import_module("qdspace.inference.training")
    except ImportError as exc:
        raise TrainingError(f"the EL CNN trainer is unavailable: {exc}") from exc
