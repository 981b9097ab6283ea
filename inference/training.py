"""Training the EL defect CNN on a member's own images, and exporting it to ONNX.

This is the only module of ``inference`` that imports PyTorch (the ``train`` extra).
Frames go through the same ``to_model_input`` as in serving, so the exported model
sees pixels prepared exactly as it was trained on.

Training must not quietly produce a useless model: on some splits and seeds the plain
CNN used to collapse to a constant output (loss stuck at ln 2, every cell 'ok'), and
such a version would have been registered and served. So each conv is followed by
group normalisation (batch-independent and without running statistics, so the
parameters are still the whole state and federated averaging of them stays
meaningful), the learning rate warms up linearly and then follows a cosine, the
epoch with the lowest loss on the validation split is kept (early stopping), and a
run whose output is constant or whose loss stays at chance raises
:class:`TrainingCollapsedError` instead of being exported.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from qdspace.inference.dataset import ElImages, class_names, defective_classes
from qdspace.inference.errors import InferenceError, TrainingUnavailableError, WeightsError
from qdspace.inference.frames import to_model_input
from qdspace.inference.metrics import BinaryMetrics, binary_metrics, collapse_finding
from qdspace.inference.model import (
    INPUT_NAME,
    META_CLASS_NAMES,
    META_DEFECTIVE,
    META_FORMAT,
    META_INPUT_SIZE,
    MODEL_FORMAT,
    OUTPUT_NAME,
)
from qdspace.inference.weights import Weights, check_shapes, shapes_of
from qdspace.util.cpus import threads_for

try:
    import onnx
    import torch
    from torch import nn
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise TrainingUnavailableError(
        f"training needs PyTorch and onnx ({exc.name} is missing): "
        "install them with `pip install 'qdspace[train]'`"
    ) from exc

logger = logging.getLogger("inference")

ONNX_OPSET = 17
DEFAULT_INPUT_SIZE = 64


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one local training run; the defaults fit 2 CPU cores.

    ``epochs`` is the most passes over the training split; with a validation split,
    training stops after ``patience`` epochs without a lower validation loss and keeps
    the best epoch. The rate rises linearly over ``warmup_epochs``, then decays on a
    cosine to ``learning_rate * final_lr_fraction``.
    """

    input_size: int = DEFAULT_INPUT_SIZE
    num_classes: int = 2
    epochs: int = 12
    batch_size: int = 32
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 2
    augment: bool = True
    widths: tuple[int, int, int] = (16, 32, 64)
    warmup_epochs: float = 1.0
    final_lr_fraction: float = 0.05
    patience: int = 4


@dataclass(frozen=True)
class TrainResult:
    """The trained model, its exported ONNX bytes and its held-out metrics.

    ``losses`` are the training losses per epoch run, ``val_losses`` the validation
    losses (empty without a validation split), ``best_epoch`` the epoch kept (1-based).
    """

    model: ElCnn
    onnx_bytes: bytes
    metrics: BinaryMetrics
    losses: tuple[float, ...] = field(default_factory=tuple)
    val_losses: tuple[float, ...] = field(default_factory=tuple)
    best_epoch: int = 0


@dataclass(frozen=True)
class TrainHistory:
    """What happened during ``train_model``: per-epoch losses and the epoch kept."""

    losses: tuple[float, ...]
    val_losses: tuple[float, ...]
    best_epoch: int


class TrainingCollapsedError(InferenceError, RuntimeError):
    """Training ended with a useless model (constant output, loss at chance); not exported."""


def norm_groups(width: int) -> int:
    """Groups of the group norm after a conv of ``width`` channels (4 channels a group)."""
    return max(1, width // 4) if width % 4 == 0 else 1


class ElCnn(nn.Module):
    """Three conv blocks (conv, group norm, ReLU twice, max-pool), global average pooling
    and a linear head; input (N, 1, S, S)."""

    def __init__(self, num_classes: int = 2, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for width in widths:
            for into in (channels, width):
                layers += [
                    nn.Conv2d(into, width, 3, padding=1),
                    nn.GroupNorm(norm_groups(width), width),
                    nn.ReLU(),
                ]
            layers.append(nn.MaxPool2d(2))
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, classes)``."""
        logits: torch.Tensor = self.head(torch.flatten(self.pool(self.features(x)), 1))
        return logits


class _Probabilities(nn.Module):
    """The exported graph: the CNN followed by a softmax, so ONNX outputs probabilities."""

    def __init__(self, model: ElCnn) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def get_weights(model: nn.Module) -> Weights:
    """Parameters as float32 numpy arrays in ``state_dict`` order (for federated rounds)."""
    return [t.detach().cpu().numpy().astype(np.float32) for t in model.state_dict().values()]


def set_weights(model: nn.Module, weights: Sequence[NDArray[np.float32]]) -> None:
    """Load arrays from ``get_weights`` order; a count or shape mismatch is refused."""
    state = model.state_dict()
    check_shapes(weights, shapes_of([t.numpy() for t in state.values()]))
    try:
        model.load_state_dict(
            {k: torch.from_numpy(np.array(w)) for k, w in zip(state, weights, strict=True)}
        )
    except RuntimeError as exc:
        raise WeightsError(f"weights do not load into {type(model).__name__}: {exc}") from exc


def build_model(config: TrainConfig) -> ElCnn:
    """A freshly initialised CNN, seeded so two members start from the same weights."""
    torch.manual_seed(config.seed)
    return ElCnn(config.num_classes, config.widths)


def tensors(data: ElImages, config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Model inputs and labels of a collection, prepared as in serving."""
    inputs = torch.from_numpy(to_model_input(list(data.images), config.input_size))
    labels = torch.from_numpy(data.labels(config.num_classes))
    return inputs, labels


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flips: an EL cell is a cell whichever way round the camera sees it."""
    flip_h = torch.rand(len(batch), generator=generator) < 0.5
    flip_v = torch.rand(len(batch), generator=generator) < 0.5
    batch = torch.where(flip_h[:, None, None, None], batch.flip(3), batch)
    return torch.where(flip_v[:, None, None, None], batch.flip(2), batch)


def lr_factor(step: int, total_steps: int, warmup_steps: int, final_fraction: float) -> float:
    """The learning-rate multiplier at ``step``: linear warm-up, then a cosine decay.

    Warm-up keeps the first large Adam steps of a freshly initialised network from
    pushing it into the all-one-class corner it then never leaves.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights: defective cells are about a third of the data, and a
    model that calls everything 'ok' must not look good to the loss."""
    counts = torch.bincount(labels, minlength=num_classes).float().clamp(min=1.0)
    return counts.sum() / (num_classes * counts)


def _mean_loss(
    model: ElCnn, loss_fn: nn.Module, inputs: torch.Tensor, labels: torch.Tensor
) -> float:
    model.eval()
    with torch.no_grad():
        return float(loss_fn(model(inputs), labels).item())


def train_model(
    data: ElImages,
    config: TrainConfig,
    initial: Sequence[NDArray[np.float32]] | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    val: ElImages | None = None,
) -> tuple[ElCnn, TrainHistory]:
    """Train on ``data`` (from ``initial`` weights if given); returns the model and history.

    With ``val``, the weights of the epoch with the lowest validation loss are kept and
    training stops after ``config.patience`` epochs without improvement. Then the
    model is checked for collapse on ``val`` (on ``data`` without it):
    :class:`TrainingCollapsedError` if its output is constant or its loss at chance.
    """
    if len(data) == 0:
        raise InferenceError("cannot train on an empty set of cells")
    torch.set_num_threads(threads_for(config.threads))  # the process's: `util.cpus`
    model = build_model(config)
    if initial is not None:
        set_weights(model, initial)
    inputs, labels = tensors(data, config)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(labels, config.num_classes))
    has_val = val is not None and len(val) > 0
    checked = tensors(val, config) if val is not None and has_val else (inputs, labels)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    per_epoch = math.ceil(len(inputs) / config.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda step: lr_factor(
            step,
            per_epoch * config.epochs,
            round(per_epoch * config.warmup_epochs),
            config.final_lr_fraction,
        ),
    )
    generator = torch.Generator().manual_seed(config.seed)
    losses: list[float] = []
    val_losses: list[float] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    for epoch in range(1, config.epochs + 1):
        losses.append(
            _epoch(model, inputs, labels, loss_fn, optimiser, schedule, generator, config)
        )
        logger.info("inference.training: epoch %s loss %.4f", epoch, losses[-1])
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
        if not has_val:
            continue
        val_losses.append(_mean_loss(model, loss_fn, *checked))
        if best is None or val_losses[-1] < best[0]:
            best = (val_losses[-1], epoch, copy.deepcopy(model.state_dict()))
        elif epoch - best[1] >= config.patience:
            logger.info("inference.training: early stop after epoch %s (best %s)", epoch, best[1])
            break
    if best is not None:
        model.load_state_dict(best[2])
    model.eval()
    history = TrainHistory(
        tuple(losses), tuple(val_losses), len(losses) if best is None else best[1]
    )
    _check_collapse(
        model, loss_fn, checked, history, config, "validation" if has_val else "training"
    )
    return model, history


def _epoch(
    model: ElCnn,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    loss_fn: nn.Module,
    optimiser: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
    config: TrainConfig,
) -> float:
    """One pass over the training cells in a seeded order; the mean training loss."""
    model.train()
    order = torch.randperm(len(inputs), generator=generator)
    total = 0.0
    for start in range(0, len(order), config.batch_size):
        chosen = order[start : start + config.batch_size]
        batch = inputs[chosen]
        if config.augment:
            batch = augment(batch, generator)
        optimiser.zero_grad()
        loss = loss_fn(model(batch), labels[chosen])
        loss.backward()
        optimiser.step()
        schedule.step()
        total += float(loss.item()) * len(chosen)
    return total / len(inputs)


def _check_collapse(
    model: ElCnn,
    loss_fn: nn.Module,
    checked: tuple[torch.Tensor, torch.Tensor],
    history: TrainHistory,
    config: TrainConfig,
    where: str,
) -> None:
    """Raise :class:`TrainingCollapsedError` if the kept model is useless on ``checked``."""
    inputs, labels = checked
    scores = defect_scores(predict_proba(model, inputs), config.num_classes)
    loss = _mean_loss(model, loss_fn, inputs, labels)
    finding = collapse_finding(scores, loss, config.num_classes)
    if finding is None:
        return
    raise TrainingCollapsedError(
        f"training collapsed: {finding} on {len(scores)} {where} cells "
        f"(seed {config.seed}, learning rate {config.learning_rate:g}, epoch kept "
        f"{history.best_epoch}, training losses {', '.join(f'{x:.3f}' for x in history.losses)}); "
        "the model was not exported: retrain with another seed or a lower learning rate"
    )


def predict_proba(model: ElCnn, inputs: torch.Tensor, batch_size: int = 256) -> NDArray[np.float32]:
    """Softmax probabilities of prepared inputs, computed by PyTorch."""
    model.eval()
    parts: list[NDArray[np.float32]] = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            logits = model(inputs[start : start + batch_size])
            parts.append(torch.softmax(logits, dim=1).numpy().astype(np.float32))
    if not parts:
        return np.zeros((0, model.num_classes), dtype=np.float32)
    return np.concatenate(parts)


def defect_scores(probs: NDArray[np.float32], num_classes: int) -> NDArray[np.float64]:
    """P(defective) per row: the probability mass of the defective classes."""
    scores: NDArray[np.float64] = probs[:, list(defective_classes(num_classes))].sum(axis=1)
    return scores.astype(np.float64)


def evaluate(model: ElCnn, data: ElImages, config: TrainConfig) -> BinaryMetrics:
    """Accuracy, F1 and AUROC of 'defective' (p >= 0.5) on ``data``."""
    inputs, _ = tensors(data, config)
    scores = defect_scores(predict_proba(model, inputs), config.num_classes)
    return binary_metrics(data.labels(2), scores)


def export_onnx(model: ElCnn, input_size: int) -> bytes:
    """ONNX bytes (opset ``ONNX_OPSET``, dynamic batch) with the qdspace metadata."""
    model.eval()
    with tempfile.TemporaryDirectory(prefix="qdspace-export-") as folder:
        path = Path(folder) / "model.onnx"
        _torch_export(model, input_size, path)
        proto = onnx.load(str(path))
    metadata = {
        META_FORMAT: MODEL_FORMAT,
        META_INPUT_SIZE: str(input_size),
        META_CLASS_NAMES: json.dumps(list(class_names(model.num_classes))),
        META_DEFECTIVE: json.dumps(list(defective_classes(model.num_classes))),
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "qdspace"
    onnx.checker.check_model(proto)
    data: bytes = proto.SerializeToString()
    return data


def _torch_export(model: ElCnn, input_size: int, path: Path) -> None:
    """Run the TorchScript exporter; its deprecation notices are silenced here and only here.

    The torch.export-based exporter needs ``onnxscript``, which the ``train`` extra
    does not install; the TorchScript one gives the same graph for this plain CNN.
    Group norm's input-size check (a Python ``if`` on the traced batch size) makes the
    tracer warn that it is kept as a constant; it guards nothing in the graph, and the
    tests compare the exported graph with PyTorch on batches of several sizes.
    """
    example = torch.zeros(1, 1, input_size, input_size)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=r"The feature will be removed.*")
        warnings.filterwarnings("ignore", message=r"Converting a tensor to a Python boolean")
        torch.onnx.export(
            _Probabilities(model),
            (example,),
            path,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=ONNX_OPSET,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            dynamo=False,
        )


def train_and_export(
    train: ElImages,
    held_out: ElImages,
    config: TrainConfig,
    on_epoch: Callable[[int, float], None] | None = None,
    val: ElImages | None = None,
) -> TrainResult:
    """Train (early-stopping on ``val``), refuse a collapsed model, export it to ONNX and
    measure it on the held-out split: what ``qdspace train`` does."""
    model, history = train_model(train, config, on_epoch=on_epoch, val=val)
    metrics = evaluate(model, held_out, config)
    return TrainResult(
        model,
        export_onnx(model, config.input_size),
        metrics,
        history.losses,
        history.val_losses,
        history.best_epoch,
    )
