"""The federated EL model as one ONNX graph the inspection tier can serve.

A global version of an ``el-mlp`` job is a small MLP head over the fixed features of
``federation.el_features``. The inspection tier (``inference``) serves ONNX models that
take the EL image itself: ``frames`` ``(N, 1, size, size)`` float32 in [0, 1], giving
``probs`` ``(N, 2)``. ``export_el_mlp`` writes the feature extractor and the head as
one graph of standard operators, step for step what the numpy code computes:

* per-image standardisation (population spread, ``+ 1e-6``);
* brightness quantiles with numpy's linear interpolation (a full ascending ``TopK``
  and two ``Gather``\\ s), and dark-pixel fractions;
* block statistics on the 4 x 4 grid (the image cropped to whole blocks);
* absolute gradients, and the dark-ridge responses (``Pad`` in ``edge`` mode);
* ``softmax(W2 . relu(W1 . (f - mean) / scale + b1) + b2)``.

``el_mlp_reference`` is the numpy computation of the same probabilities, used to check
an export with onnxruntime before it is handed to the inspection tier.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from qdspace.federation import mlp
from qdspace.federation.el_features import (
    DARK_LEVELS,
    DIRECTIONS,
    GRID,
    QUANTILES,
    WIDTHS,
    el_features,
    feature_count,
)
from qdspace.federation.errors import FederationError
from qdspace.federation.params import Params

OPSET = 17
INPUT_NAME = "frames"
OUTPUT_NAME = "probs"
#: What ``inference.model`` reads from the file's metadata (kept in step with it).
MODEL_FORMAT = "qdspace.el-classifier/1"
CLASS_NAMES = ("functional", "defective")
DEFECTIVE = (1,)


class ExportError(FederationError, ValueError):
    """A model that cannot be exported (wrong kind, shapes or image size)."""


class _Graph:
    """A tiny builder: unique names, constants, nodes."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(
        self, value: NDArray[np.generic] | Sequence[float] | np.floating[Any], hint: str
    ) -> str:
        array = np.asarray(value)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def ints(self, values: Sequence[int], hint: str = "ints") -> str:
        return self.const(np.asarray(values, np.int64), hint)

    def op(self, kind: str, *inputs: str, outputs: int = 1, **attrs: Any) -> str:
        names = [self.name(kind.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(kind, list(inputs), names, **attrs))
        return names[0]

    def slice(self, x: str, starts: Sequence[int], ends: Sequence[int], axes: Sequence[int]) -> str:
        return self.op("Slice", x, self.ints(starts), self.ints(ends), self.ints(axes))

    def reshape(self, x: str, shape: Sequence[int]) -> str:
        return self.op("Reshape", x, self.ints(shape))

    def flat(self, x: str) -> str:
        """``(N, ...)`` to ``(N, rest)`` in row-major order."""
        return self.op("Flatten", x, axis=1)

    def mean(self, x: str, axes: Sequence[int], keep: int = 0) -> str:
        return self.op("ReduceMean", x, axes=list(axes), keepdims=keep)

    def std(self, x: str, axes: Sequence[int], keep: int = 0) -> str:
        """Population standard deviation, as numpy's ``std``."""
        centred = self.op("Sub", x, self.mean(x, axes, keep=1))
        return self.op("Sqrt", self.mean(self.op("Mul", centred, centred), axes, keep))

    def grid(self, x: str, h: int, w: int) -> str:
        """``(N, h, w)`` to ``(N, GRID, GRID, block pixels)`` (``el_features._grid``)."""
        bh, bw = h // GRID, w // GRID
        cropped = self.slice(x, [0, 0], [bh * GRID, bw * GRID], [1, 2])
        blocks = self.reshape(cropped, [-1, GRID, bh, GRID, bw])
        moved = self.op("Transpose", blocks, perm=[0, 1, 3, 2, 4])
        return self.reshape(moved, [-1, GRID, GRID, bh * bw])


def _features(g: _Graph, frames: str, size: int) -> str:
    """The ``el_features`` of the frames, ``(N, feature_count())``."""
    x = g.reshape(frames, [-1, size, size])
    centred = g.op("Sub", x, g.mean(x, [1, 2], keep=1))
    spread = g.op("Sqrt", g.mean(g.op("Mul", centred, centred), [1, 2], keep=1))
    x = g.op("Div", centred, g.op("Add", spread, g.const(np.float32(1e-6), "eps")))
    pixels = size * size
    flat = g.reshape(x, [-1, pixels])
    ordered = g.op("TopK", flat, g.ints([pixels]), outputs=2, axis=1, largest=0, sorted=1)
    positions = np.asarray(QUANTILES, np.float64) * (pixels - 1)
    below = np.floor(positions).astype(np.int64)
    above = np.minimum(below + 1, pixels - 1)
    low = g.op("Gather", ordered, g.ints(list(below)), axis=1)
    high = g.op("Gather", ordered, g.ints(list(above)), axis=1)
    gamma = g.const((positions - below).astype(np.float32), "gamma")
    parts = [g.op("Add", low, g.op("Mul", g.op("Sub", high, low), gamma))]
    dark = g.op("Less", g.op("Unsqueeze", flat, g.ints([2])), g.const(DARK_LEVELS, "levels"))
    parts.append(g.mean(g.op("Cast", dark, to=TensorProto.FLOAT), [1]))
    blocks = g.grid(x, size, size)
    parts += [g.flat(g.mean(blocks, [3])), g.flat(g.std(blocks, [3]))]
    parts.append(g.flat(g.op("ReduceMin", blocks, axes=[3], keepdims=0)))
    down = g.op(
        "Sub",
        g.slice(x, [1], [size], [1]),
        g.slice(x, [0], [size - 1], [1]),
    )
    across = g.op(
        "Sub",
        g.slice(x, [1], [size], [2]),
        g.slice(x, [0], [size - 1], [2]),
    )
    gradient = g.op(
        "Add",
        g.slice(g.op("Abs", down), [0], [size - 1], [2]),
        g.slice(g.op("Abs", across), [0], [size - 1], [1]),
    )
    parts.append(g.flat(g.mean(g.grid(gradient, size - 1, size - 1), [3])))
    parts.append(g.mean(g.reshape(gradient, [-1, (size - 1) ** 2]), [1], keep=1))
    half = g.const(np.float32(0.5), "half")
    zero = g.const(np.float32(0.0), "zero")
    for dy0, dx0 in DIRECTIONS:
        for width in WIDTHS:
            dy, dx = dy0 * width, dx0 * width
            pad = max(abs(dy), abs(dx))
            padded = g.op("Pad", x, g.ints([0, pad, pad, 0, pad, pad]), mode="edge")

            def window(oy: int, ox: int, padded: str = padded, pad: int = pad) -> str:
                return g.slice(
                    padded, [pad + oy, pad + ox], [pad + oy + size, pad + ox + size], [1, 2]
                )

            mid = g.op("Mul", g.op("Add", window(dy, dx), window(-dy, -dx)), half)
            ridge = g.grid(g.op("Max", g.op("Sub", mid, x), zero), size, size)
            parts += [
                g.flat(g.mean(ridge, [3])),
                g.flat(g.op("ReduceMax", ridge, axes=[3], keepdims=0)),
            ]
    return g.op("Concat", *parts, axis=1)


def _check(params: Params, size: int) -> None:
    if len(params) != 6:
        raise ExportError(f"an el-mlp model has 6 tensors, got {len(params)}")
    dims = feature_count()
    mean, scale, w1, b1, w2, b2 = (np.asarray(p) for p in params)
    hidden = w1.shape[1] if w1.ndim == 2 else -1
    expected = mlp.model_shapes(dims, hidden, mlp.CLASSES)
    got = tuple(p.shape for p in (mean, scale, w1, b1, w2, b2))
    if got != expected:
        raise ExportError(
            f"el-mlp tensors have shapes {got}; over {dims} EL features they must be {expected}"
        )
    if size < 2 * GRID + 1:
        raise ExportError(f"image size {size} is too small for a {GRID} x {GRID} grid")


def export_el_mlp(params: Params, size: int, *, doc: str = "") -> bytes:
    """ONNX bytes of the EL features plus MLP head, with the inspection tier's metadata."""
    _check(params, size)
    g = _Graph()
    features = _features(g, INPUT_NAME, size)
    mean, scale, w1, b1, w2, b2 = (np.asarray(p, np.float32) for p in params)
    z = g.op("Div", g.op("Sub", features, g.const(mean, "mean")), g.const(scale, "scale"))
    hidden = g.op("Relu", g.op("Add", g.op("MatMul", z, g.const(w1, "w1")), g.const(b1, "b1")))
    logits = g.op("Add", g.op("MatMul", hidden, g.const(w2, "w2")), g.const(b2, "b2"))
    g.nodes.append(helper.make_node("Softmax", [logits], [OUTPUT_NAME], axis=1))
    graph = helper.make_graph(
        g.nodes,
        "el_mlp",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 1, size, size])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", mlp.CLASSES])],
        g.inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qdspace"
    )
    model.ir_version = 8
    model.doc_string = doc
    metadata = {
        "qdspace.format": MODEL_FORMAT,
        "qdspace.input_size": str(size),
        "qdspace.class_names": json.dumps(list(CLASS_NAMES)),
        "qdspace.defective_classes": json.dumps(list(DEFECTIVE)),
    }
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    data: bytes = model.SerializeToString()
    return data


def el_mlp_reference(params: Params, frames: NDArray[np.float32]) -> NDArray[np.float64]:
    """The numpy probabilities the exported graph must reproduce, for ``(N, 1, s, s)``."""
    batch = np.asarray(frames, np.float32)
    if batch.ndim != 4 or batch.shape[1] != 1:
        raise ExportError(f"frames must be (N, 1, size, size), got {batch.shape}")
    return mlp.probabilities(params, el_features(batch[:, 0]))
