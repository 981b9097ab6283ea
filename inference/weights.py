"""Model weights as numpy: the currency of federated learning, without PyTorch.

``inference.training.get_weights`` returns a list of arrays in the model's fixed
parameter order; aggregation code works on that list or on one flat float32 vector,
and these helpers convert between the two, refusing anything that does not fit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from qdspace.inference.errors import WeightsError

Weights = list[NDArray[np.float32]]
Shapes = tuple[tuple[int, ...], ...]


def shapes_of(weights: Sequence[NDArray[np.float32]]) -> Shapes:
    """The shape of each tensor, in order: what a flat vector needs to be cut back up."""
    return tuple(tuple(int(d) for d in w.shape) for w in weights)


def flatten(weights: Sequence[NDArray[np.float32]]) -> NDArray[np.float32]:
    """Concatenate all tensors into one float32 vector (a copy)."""
    if not weights:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([np.asarray(w, dtype=np.float32).ravel() for w in weights])


def unflatten(vector: NDArray[np.float32], shapes: Shapes) -> Weights:
    """Cut a flat vector back into tensors of ``shapes``; a wrong length is refused."""
    flat = np.asarray(vector, dtype=np.float32)
    expected = sum(int(np.prod(shape)) for shape in shapes)
    if flat.ndim != 1 or flat.size != expected:
        raise WeightsError(
            f"weight vector has shape {flat.shape}, the model needs {expected} values"
        )
    out: Weights = []
    offset = 0
    for shape in shapes:
        size = int(np.prod(shape))
        out.append(flat[offset : offset + size].reshape(shape).copy())
        offset += size
    return out


def check_shapes(weights: Sequence[NDArray[np.float32]], expected: Shapes) -> None:
    """Raise ``WeightsError`` naming the first tensor whose shape differs."""
    if len(weights) != len(expected):
        raise WeightsError(f"got {len(weights)} weight tensors, the model has {len(expected)}")
    for position, (tensor, shape) in enumerate(zip(weights, expected, strict=True)):
        if tuple(tensor.shape) != shape:
            raise WeightsError(f"weight tensor {position}: shape {tensor.shape}, expected {shape}")
