"""Local training with PyTorch, imported lazily: a node that only aggregates never needs it.

``train_local`` runs a member's epochs on its own tensors, starting from the global
parameters, with FedProx's proximal term ``mu/2 * ||w - w_global||^2`` added to the
loss when the job names FedProx. ``train_el_cnn`` does this for the EL-image CNN of
``inference.training`` on a member's own EL images. Parameters go in and out as
float32 numpy arrays in ``state_dict`` order, the currency of ``federation``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from qdspace.federation.errors import TrainingError
from qdspace.federation.params import Params, check_update, shapes_of


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
    torch.set_num_threads(config.threads)
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
    data: Any, params: Sequence[NDArray[np.float32]], config: LocalConfig
) -> tuple[Params, int]:
    """Train the EL CNN of ``inference.training`` on a member's own ``ElImages``."""
    try:
        training = importlib.import_module("qdspace.inference.training")
    except ImportError as exc:
        raise TrainingError(f"the EL CNN trainer is unavailable: {exc}") from exc
    cnn_config = training.TrainConfig(seed=config.seed, threads=config.threads)
    model = training.build_model(cnn_config)
    inputs, labels = training.tensors(data, cnn_config)
    torch = _torch()
    # Inverse-frequency class weights, as in ``inference.training``: defects are the minority.
    counts = torch.bincount(labels, minlength=cnn_config.num_classes).float().clamp(min=1.0)
    weights = counts.sum() / (cnn_config.num_classes * counts)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    return train_local(model, params, inputs, labels, config, loss_fn)
