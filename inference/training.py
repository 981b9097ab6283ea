"""Training the EL defect CNN on a member's own images, and exporting it to ONNX.

This is the only module of ``inference`` that imports PyTorch (the ``train`` extra).
Frames go through the same ``to_model_input`` as in serving, so the exported model
sees pixels prepared exactly as it was trained on. The network has no batch-norm, so
its parameters are the whole state and federated averaging of them is meaningful.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from inference.dataset import ElImages, class_names, defective_classes
from inference.errors import TrainingUnavailableError, WeightsError
from inference.frames import to_model_input
from inference.metrics import BinaryMetrics, binary_metrics
from inference.model import (
    INPUT_NAME,
    META_CLASS_NAMES,
    META_DEFECTIVE,
    META_FORMAT,
    META_INPUT_SIZE,
    MODEL_FORMAT,
    OUTPUT_NAME,
)
from inference.weights import Weights, check_shapes, shapes_of

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
    """Hyper-parameters of one local training run; the defaults fit 2 CPU cores."""

    input_size: int = DEFAULT_INPUT_SIZE
    num_classes: int = 2
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 2
    augment: bool = True
    widths: tuple[int, int, int] = (16, 32, 64)


@dataclass(frozen=True)
class TrainResult:
    """The trained model, its exported ONNX bytes and its held-out metrics."""

    model: ElCnn
    onnx_bytes: bytes
    metrics: BinaryMetrics
    losses: tuple[float, ...] = field(default_factory=tuple)


class ElCnn(nn.Module):
    """Three conv blocks, global average pooling and a linear head; input (N, 1, S, S)."""

    def __init__(self, num_classes: int = 2, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for width in widths:
            layers += [
                nn.Conv2d(channels, width, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
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


def _augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random flips: an EL cell is a cell whichever way round the camera sees it."""
    flip_h = torch.rand(len(batch), generator=generator) < 0.5
    flip_v = torch.rand(len(batch), generator=generator) < 0.5
    batch = torch.where(flip_h[:, None, None, None], batch.flip(3), batch)
    return torch.where(flip_v[:, None, None, None], batch.flip(2), batch)


def train_model(
    data: ElImages,
    config: TrainConfig,
    initial: Sequence[NDArray[np.float32]] | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> tuple[ElCnn, tuple[float, ...]]:
    """Train on ``data`` (from ``initial`` weights if given); returns model and epoch losses.

    Classes are weighted by inverse frequency: defective cells are about a third of the
    data, and a model that calls everything 'ok' must not look good to the loss.
    """
    torch.set_num_threads(config.threads)
    model = build_model(config)
    if initial is not None:
        set_weights(model, initial)
    inputs, labels = tensors(data, config)
    counts = torch.bincount(labels, minlength=config.num_classes).float().clamp(min=1.0)
    loss_fn = nn.CrossEntropyLoss(weight=counts.sum() / (config.num_classes * counts))
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    generator = torch.Generator().manual_seed(config.seed)
    losses: list[float] = []
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(inputs), generator=generator)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            chosen = order[start : start + config.batch_size]
            batch = inputs[chosen]
            if config.augment:
                batch = _augment(batch, generator)
            optimiser.zero_grad()
            loss = loss_fn(model(batch), labels[chosen])
            loss.backward()
            optimiser.step()
            total += float(loss.item()) * len(chosen)
        losses.append(total / max(len(inputs), 1))
        logger.info("inference.training: epoch %s loss %.4f", epoch + 1, losses[-1])
        if on_epoch is not None:
            on_epoch(epoch + 1, losses[-1])
    model.eval()
    return model, tuple(losses)


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
    """
    example = torch.zeros(1, 1, input_size, input_size)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=r"The feature will be removed.*")
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
) -> TrainResult:
    """Train, export to ONNX and measure on the held-out split: what ``qdspace train`` does."""
    model, losses = train_model(train, config, on_epoch=on_epoch)
    metrics = evaluate(model, held_out, config)
    return TrainResult(model, export_onnx(model, config.input_size), metrics, losses)
