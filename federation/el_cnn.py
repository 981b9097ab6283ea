"""The line's EL CNN as a federated job model (``el-cnn``): its parameter layout and terms.

The inspection line serves ``inference.training.ElCnn``; an ``el-cnn`` job trains
exactly that network, so the final global version is exported with the same
``export_onnx`` as ``qdspace train`` and hot-swapped as is. Members exchange the
flattened parameter vector through the same chunked, masked path as any job.

**Layout (version 1).** The vector is the network's ``state_dict`` in its own order,
each tensor row-major float32: for each of the three widths ``w`` (input ``c``), twice
``conv.weight (w, c, 3, 3)``, ``conv.bias (w)``, ``groupnorm.weight (w)``,
``groupnorm.bias (w)``; then ``head.weight (classes, w3)``, ``head.bias (classes)``.
The job's terms carry ``layout: 1``; a member that knows another layout refuses the
job rather than load weights into the wrong places. The shapes fix the widths, so
``widths_of`` reads them back and refuses shapes that are not this network.

**Normalisation state.** The network normalises with group norm, which has no running
statistics: its affine weights are ordinary parameters, averaged like every other
weight, and the parameters are the whole state of the served model. (BatchNorm's
running means could not be kept local, FedBN-style, since the line serves one
network; they would have to be averaged too. Group norm avoids the question.)

**Terms** (``JobSpec.training``): ``image_size`` (pixels the member resizes its cells
to, as serving does), ``epochs`` (local epochs per round), ``lr``, ``batch``,
``weight_decay``, ``seed``, ``threads``. This module needs no PyTorch: a coordinator
checks terms and aggregates without it; training is in ``federation.train_torch``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qdspace.federation.errors import TrainingError
from qdspace.federation.logreg import Dataset
from qdspace.federation.params import Shapes

MODEL = "el-cnn"
LAYOUT = 1
CLASSES = 2
DEFAULT_WIDTHS = (16, 32, 64)
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 512
MAX_EPOCHS = 100
MAX_WIDTH = 512


def cnn_shapes(widths: tuple[int, int, int] = DEFAULT_WIDTHS, classes: int = CLASSES) -> Shapes:
    """The tensor shapes of ``ElCnn(classes, widths)`` in ``state_dict`` order (layout 1)."""
    out: list[tuple[int, ...]] = []
    channels = 1
    for width in widths:
        for into in (channels, width):
            out += [(width, into, 3, 3), (width,), (width,), (width,)]
        channels = width
    return (*out, (classes, channels), (classes,))


def widths_of(shapes: Shapes) -> tuple[int, int, int]:
    """The widths of the CNN whose shapes are ``shapes``; refused if they are not one."""
    if len(shapes) != 26 or len(shapes[0]) != 4 or len(shapes[8]) != 4 or len(shapes[16]) != 4:
        raise TrainingError(f"shapes {list(shapes)[:3]}... are not an {MODEL} network")
    widths = (shapes[0][0], shapes[8][0], shapes[16][0])
    if not all(1 <= w <= MAX_WIDTH for w in widths) or cnn_shapes(widths) != tuple(shapes):
        raise TrainingError(
            f"shapes are not an {MODEL} network of layout {LAYOUT} with {CLASSES} classes "
            f"(widths {widths} would need {list(cnn_shapes(widths))})"
        )
    return widths


@dataclass(frozen=True, slots=True)
class CnnTerms:
    """A member's local training per round, from the job's ``training`` terms."""

    image_size: int
    epochs: int = 2
    lr: float = 2e-3
    batch: int = 32
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 1

    @classmethod
    def from_terms(cls, terms: Mapping[str, float]) -> CnnTerms:
        problems = term_problems(terms)
        if problems:
            raise TrainingError(f"{MODEL} job terms: " + "; ".join(problems))
        return cls(
            image_size=int(terms["image_size"]),
            epochs=int(terms.get("epochs", 2)),
            lr=float(terms.get("lr", 2e-3)),
            batch=int(terms.get("batch", 32)),
            weight_decay=float(terms.get("weight_decay", 1e-4)),
            seed=int(terms.get("seed", 0)),
            threads=int(terms.get("threads", 1)),
        )


def term_problems(terms: Mapping[str, float]) -> list[str]:
    """What is wrong with an ``el-cnn`` job's training terms (empty: nothing)."""
    out = []
    layout = terms.get("layout")
    if layout != LAYOUT:
        out.append(f"layout {layout} is not the parameter layout this node knows ({LAYOUT})")
    size = terms.get("image_size")
    if size is None or size != int(size) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        out.append(f"image_size must be a whole number in {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}")
    epochs = terms.get("epochs", 2)
    if epochs != int(epochs) or not 1 <= epochs <= MAX_EPOCHS:
        out.append(f"epochs must be a whole number in 1..{MAX_EPOCHS}")
    if not 0 < terms.get("lr", 2e-3) <= 1:
        out.append("lr must be in (0, 1]")
    batch = terms.get("batch", 32)
    if batch != int(batch) or not 1 <= batch <= 4096:
        out.append("batch must be a whole number in 1..4096")
    if not 0 <= terms.get("weight_decay", 1e-4) <= 1:
        out.append("weight_decay must be in [0, 1]")
    threads = terms.get("threads", 1)
    if threads != int(threads) or not 1 <= threads <= 64:
        out.append("threads must be a whole number in 1..64")
    return out


def job_problems(shapes: Shapes, terms: Mapping[str, float]) -> list[str]:
    """What keeps ``shapes`` and ``terms`` from being an ``el-cnn`` job this node trains."""
    out = term_problems(terms)
    try:
        widths_of(shapes)
    except TrainingError as exc:
        out.append(str(exc))
    return out


def with_shapes(terms: Mapping[str, Any]) -> dict[str, Any]:
    """Job terms as a caller may write them for an ``el-cnn`` job: ``widths`` (three
    channel counts) instead of the 26 tensor shapes, which are filled in from them."""
    out = dict(terms)
    if out.get("model") != MODEL or "shapes" in out or "widths" not in out:
        return out
    widths = out.pop("widths")
    if (
        not isinstance(widths, list | tuple)
        or len(widths) != 3
        or not all(isinstance(w, int) and 1 <= w <= MAX_WIDTH for w in widths)
    ):
        raise TrainingError(f"widths must be three whole numbers in 1..{MAX_WIDTH}")
    out["shapes"] = [list(s) for s in cnn_shapes((widths[0], widths[1], widths[2]))]
    return out


def initial_params(shapes: Shapes, terms: Mapping[str, float]) -> list[Any]:
    """A freshly initialised CNN of ``shapes`` (seeded by the terms' ``seed``): the version 0
    of a job published without an initial model (all zeros would never train)."""
    try:
        from qdspace.inference.training import TrainConfig, build_model, get_weights
    except ImportError as exc:
        raise TrainingError(
            f"an {MODEL} job without an initial model needs PyTorch here to make one ({exc}); "
            "send the initial model"
        ) from exc
    config = TrainConfig(seed=int(terms.get("seed", 0)), widths=widths_of(shapes))
    return list(get_weights(build_model(config)))


def load_images(path: Path, shapes: Shapes, terms: Mapping[str, float]) -> Dataset:
    """A member's ``.npz`` (``images``: count x height x width, ``y``: 0 ok / 1 defective)
    as model inputs ``(n, 1, s, s)`` in [0, 1], resized as serving does."""
    from qdspace.inference.frames import to_model_input

    size = CnnTerms.from_terms(terms).image_size
    widths_of(shapes)
    try:
        with np.load(path, allow_pickle=False) as npz:
            images = np.asarray(npz["images"])
            y = np.asarray(npz["y"], dtype=np.int64)
    except (OSError, ValueError, KeyError) as exc:
        raise TrainingError(f"{path}: not a data file with images and y ({exc})") from exc
    if images.ndim != 3 or y.shape != (images.shape[0],) or images.shape[0] == 0:
        raise TrainingError(
            f"{path}: images have shape {images.shape} and labels {y.shape}; an {MODEL} job "
            "needs (n >= 1, height, width) and (n,)"
        )
    if images.dtype != np.uint8:
        raise TrainingError(f"{path}: images must be 8-bit grey (uint8), got {images.dtype}")
    if y.min() < 0 or y.max() >= CLASSES:
        raise TrainingError(f"{path}: labels must be in 0..{CLASSES - 1}")
    x = to_model_input(list(images), size)
    return Dataset(x, y)
