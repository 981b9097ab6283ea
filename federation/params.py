"""Model parameters as numpy float32 arrays: what members exchange instead of data.

A model is a list of float32 tensors in a fixed order (PyTorch ``state_dict`` order
for the EL CNN). Aggregation works on one flat vector; these helpers convert between
the two, check a member's update against the job's expected shapes, and give the
one canonical byte form that is hashed, signed and streamed in chunks.

The canonical bytes come from peers (a member's update, a coordinator's version), so
their header is read as hostile: its JSON is depth-bounded before it is decoded, every
dimension must be a whole number in ``0..MAX_DIMENSION``, sizes are computed with
Python integers (numpy's int64 product wraps: ``[2**62, 4]`` had "0" scalars), and a
reader that knows the model's shapes compares the header with them before anything is
cut up. Whatever is wrong becomes a ``ParamsError`` naming it, so a coordinator
refuses the upload (``wrong_shape``) instead of failing inside the RPC.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from qdspace.federation.errors import ParamsError, RefusalReason, UpdateRefused
from qdspace.util.json_depth import loads as bounded_json

Params = list[NDArray[np.float32]]
Vector = NDArray[np.float32]
Shapes = tuple[tuple[int, ...], ...]


class Hasher(Protocol):
    """What ``encode_vector`` feeds its output to (``hashlib`` objects are)."""

    def update(self, data: bytes | memoryview, /) -> None: ...


MAGIC = b"QDFP1\n"
_HEADER_LEN = struct.Struct(">I")
#: The header is ``{"dtype": ..., "shapes": [[...], ...]}``: three levels, never more.
_HEADER_DEPTH = 3
#: Largest dimension a header may give (a signed 32-bit index, as numpy and ONNX take).
MAX_DIMENSION = 2**31 - 1


def shapes_of(params: Sequence[NDArray[np.generic]]) -> Shapes:
    """The shape of each tensor, in order: what a flat vector needs to be cut back up."""
    return tuple(tuple(int(d) for d in p.shape) for p in params)


def size_of(shapes: Shapes) -> int:
    """How many scalars a model of ``shapes`` has (exact: Python integers never wrap)."""
    return sum(math.prod(int(d) for d in shape) for shape in shapes)


def flatten(params: Sequence[NDArray[np.generic]]) -> Vector:
    """Concatenate all tensors into one float32 vector (a copy)."""
    if not params:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([np.asarray(p, dtype=np.float32).ravel() for p in params])


def unflatten(vector: NDArray[np.generic], shapes: Shapes, *, copy: bool = True) -> Params:
    """Cut a flat vector back into float32 tensors of ``shapes``; a wrong length is refused.

    ``copy=False`` returns views into ``vector`` (when it already is float32), for
    callers that own the vector and do not change it afterwards.
    """
    flat = np.asarray(vector, dtype=np.float32)
    expected = size_of(shapes)
    if flat.ndim != 1 or flat.size != expected:
        raise ParamsError(f"parameter vector has shape {flat.shape}, the model needs {expected}")
    out: Params = []
    offset = 0
    for shape in shapes:
        size = math.prod(int(d) for d in shape)
        part = flat[offset : offset + size].reshape(shape)
        out.append(part.copy() if copy else part)
        offset += size
    return out


def check_update(params: Sequence[NDArray[np.generic]], expected: Shapes, member: str) -> None:
    """Refuse an update whose tensor count, shapes, dtype or values do not fit the job.

    Raises ``UpdateRefused`` with ``WRONG_SHAPE`` or ``NOT_FINITE`` naming the first
    tensor at fault, so the member learns exactly what it sent wrong.
    """
    if len(params) != len(expected):
        raise UpdateRefused(
            RefusalReason.WRONG_SHAPE,
            f"member {member} sent {len(params)} tensors, the model has {len(expected)}",
        )
    for i, (tensor, shape) in enumerate(zip(params, expected, strict=True)):
        if tuple(tensor.shape) != shape:
            raise UpdateRefused(
                RefusalReason.WRONG_SHAPE,
                f"member {member} tensor {i} has shape {tuple(tensor.shape)}, expected {shape}",
            )
        if tensor.dtype != np.float32:
            raise UpdateRefused(
                RefusalReason.WRONG_SHAPE,
                f"member {member} tensor {i} has dtype {tensor.dtype}, expected float32",
            )
        if not np.all(np.isfinite(tensor)):
            raise UpdateRefused(
                RefusalReason.NOT_FINITE, f"member {member} tensor {i} holds NaN or infinity"
            )


def _header(shapes: Shapes) -> bytes:
    header = json.dumps({"dtype": "<f4", "shapes": [list(s) for s in shapes]}).encode("ascii")
    return MAGIC + _HEADER_LEN.pack(len(header)) + header


def encoded_size(shapes: Shapes) -> int:
    """Length of ``params_to_bytes`` of a model of ``shapes``: what an upload must announce."""
    return len(_header(shapes)) + 4 * size_of(shapes)


def params_to_bytes(params: Sequence[NDArray[np.generic]]) -> bytes:
    """Canonical bytes: magic, a JSON header with the shapes, then little-endian float32 data.

    The same parameters always give the same bytes, so the digest of this string is
    what a model version signs and what the ledger anchors.
    """
    return bytes(encode_vector(flatten(params), shapes_of(params)))


#: Bytes hashed at a time by ``encode_vector_chunks``, right after they are written
#: (fits in L2 cache, so the 50 MB are read from memory once).
_HASH_PIECE = 256 * 1024


def _flat_of(vector: NDArray[np.generic], shapes: Shapes) -> NDArray[np.float32]:
    """``vector`` as little-endian float32, once it is seen to be the model's flat vector."""
    flat = np.asarray(vector, dtype="<f4")
    if flat.ndim != 1 or flat.size != size_of(shapes):
        raise ParamsError(
            f"parameter vector has shape {flat.shape}, the model needs {size_of(shapes)}"
        )
    return flat


def encode_vector(vector: NDArray[np.generic], shapes: Shapes) -> memoryview:
    """``params_to_bytes`` of the model whose flat parameter vector is ``vector``, in one copy.

    The result is a fresh buffer; ``body_of`` gives the float32 body back as a view.
    """
    flat = _flat_of(vector, shapes)
    header = _header(shapes)
    out = np.empty(len(header) + 4 * flat.size, dtype=np.uint8)
    out[: len(header)] = np.frombuffer(header, dtype=np.uint8)
    out[len(header) :].view("<f4")[:] = flat
    return out.data


#: The bytes a transport puts before a chunk's data in its message (given the data's
#: length); the data ends the message.
ChunkPrefix = Callable[[int], bytes]


def no_prefix(length: int) -> bytes:
    """Bare chunks: each message is its data."""
    return b""


def encode_vector_chunks(
    vector: NDArray[np.generic],
    shapes: Shapes,
    *,
    chunk_bytes: int,
    prefix: ChunkPrefix = no_prefix,
    hasher: Hasher | None = None,
) -> tuple[tuple[bytes, ...], tuple[memoryview, ...]]:
    """``encode_vector`` cut into chunks of ``chunk_bytes``, written straight into the
    messages that carry them: ``(messages, pieces)``, each message ``prefix(n)`` and
    then its piece of the canonical bytes (``pieces`` are views of those pieces).

    A version sent to members in chunk messages is thus copied once from the vector,
    instead of into one buffer and then into the messages. ``hasher`` is fed each
    piece in cache-sized parts right after its message is written.
    """
    if chunk_bytes <= 0:
        raise ValueError(f"chunk size must be > 0, got {chunk_bytes}")
    flat = _flat_of(vector, shapes)
    header = _header(shapes)
    body = np.ascontiguousarray(flat).data.cast("B")
    total = len(header) + len(body)
    messages: list[bytes] = []
    pieces: list[memoryview] = []
    for start in range(0, total, chunk_bytes):
        end = min(start + chunk_bytes, total)
        parts: list[bytes | memoryview] = [prefix(end - start)]
        if start < len(header):
            parts.append(header[start : min(end, len(header))])
        if end > len(header):
            parts.append(body[max(start - len(header), 0) : end - len(header)])
        message = b"".join(parts)
        piece = memoryview(message)[len(message) - (end - start) :]
        if hasher is not None:
            for lo in range(0, len(piece), _HASH_PIECE):
                hasher.update(piece[lo : lo + _HASH_PIECE])
        messages.append(message)
        pieces.append(piece)
    return tuple(messages), tuple(pieces)


def _shown(shapes: object, limit: int = 120) -> str:
    """``shapes`` for a refusal message, cut short (a header may list thousands)."""
    text = repr(shapes)
    return text if len(text) <= limit else text[:limit] + "..."


def _header_shapes(raw: object) -> Shapes:
    """The ``shapes`` of a decoded header, once each is a list of whole dimensions in
    ``0..MAX_DIMENSION`` (``bool`` is no dimension, though Python counts it an ``int``)."""
    if not isinstance(raw, list):
        raise ParamsError(f"parameter header shapes must be a list, got {_shown(raw)}")
    for i, shape in enumerate(raw):
        if not isinstance(shape, list) or not all(
            type(d) is int and 0 <= d <= MAX_DIMENSION for d in shape
        ):
            raise ParamsError(
                f"parameter header tensor {i} has shape {_shown(shape)}: every dimension "
                f"must be a whole number in 0..{MAX_DIMENSION}"
            )
    return tuple(tuple(shape) for shape in raw)


def _parse(
    data: bytes | bytearray | memoryview, expected: Shapes | None = None
) -> tuple[Shapes, memoryview]:
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
    if bytes(view[: len(MAGIC)]) != MAGIC:
        raise ParamsError("parameter bytes do not start with the QDFP1 magic")
    start = len(MAGIC) + _HEADER_LEN.size
    if len(view) < start:
        raise ParamsError("parameter bytes are truncated inside the header length")
    (head_len,) = _HEADER_LEN.unpack(view[len(MAGIC) : start])
    if start + head_len > len(view):
        raise ParamsError(
            f"parameter header announces {head_len} bytes, only {len(view) - start} follow"
        )
    try:
        text = bytes(view[start : start + head_len]).decode("ascii")
        header = bounded_json(text, limit=_HEADER_DEPTH)
    except ValueError as exc:  # not ASCII, not JSON, or nested deeper than a header is
        raise ParamsError(f"parameter header is not valid: {exc}") from None
    if not isinstance(header, dict) or "shapes" not in header or "dtype" not in header:
        raise ParamsError("parameter header is not an object with dtype and shapes")
    dtype = header["dtype"]
    if dtype != "<f4":
        raise ParamsError(f"parameter dtype {_shown(dtype, 40)} is not little-endian float32")
    shapes = _header_shapes(header["shapes"])
    if expected is not None and shapes != expected:
        raise ParamsError(
            f"parameter header has shapes {_shown([list(s) for s in shapes])}, "
            f"the model has {_shown([list(s) for s in expected])}"
        )
    body = view[start + head_len :]
    if len(body) != 4 * size_of(shapes):
        raise ParamsError(
            f"parameter body has {len(body)} bytes, the shapes need {4 * size_of(shapes)}"
        )
    return shapes, body


def body_of(data: bytes | bytearray | memoryview, expected: Shapes | None = None) -> Vector:
    """The flat float32 parameter vector of canonical bytes, as a view (no copy);
    ``expected``: the model's shapes, which the header must give exactly."""
    _, body = _parse(data, expected)
    flat: Vector = np.frombuffer(body, dtype="<f4")
    return flat


def params_from_bytes(
    data: bytes | bytearray | memoryview, expected: Shapes | None = None
) -> Params:
    """Parse ``params_to_bytes`` output; anything truncated or malformed is refused
    (``ParamsError``), and so is a header whose shapes are not ``expected`` when given
    (checked before the body is cut up: a peer's bytes name the job's model or nothing).

    A writable buffer (what ``Assembler.finish`` returns) is parsed in place: the
    tensors are views into it, so the caller must not reuse the buffer. Read-only
    input (``bytes``) is copied, so the tensors are always writable.
    """
    shapes, body = _parse(data, expected)
    flat = np.frombuffer(body, dtype="<f4")
    if not flat.flags.writeable:
        flat = flat.copy()
    return unflatten(flat, shapes, copy=False)


def params_digest(params: Sequence[NDArray[np.generic]]) -> bytes:
    """SHA-256 of the canonical bytes (computed without holding a second copy of the body)."""
    h = hashlib.sha256(_header(shapes_of(params)))
    for p in params:
        h.update(np.ascontiguousarray(p, dtype="<f4").data)
    return h.digest()
