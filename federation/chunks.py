"""Cutting large payloads (50 MB+ models, masked vectors) into stream chunks and back.

gRPC messages have a size limit, so global models and updates travel as streams of
chunks. The receiver knows the total size and SHA-256 up front (from the round
status or the upload header), accepts chunks only in order and never beyond the
announced size, so a peer cannot make it buffer more than it agreed to, and the
digest check at the end catches corruption or a swapped payload. The digest is
hashed piece by piece as the chunks are copied in (each piece while it is still in
the CPU cache);
an empty digest means the sender relies on the channel's own integrity (TLS AEAD)
and only the size is checked.

The sender picks its chunk size, anywhere from ``MIN_CHUNK_BYTES`` to
``MAX_CHUNK_BYTES``, on every path (plain updates, masked inputs, models). The
receiver's message limit follows ``MAX_CHUNK_BYTES``, never what it sends itself by
default (``DEFAULT_CHUNK_BYTES``): the two once moved together, and the masked-input
path, which cut its own 4 MiB chunks, broke when the default was lowered. A stream
may hold at most ``max_chunks(total)`` chunks (the announced size cut at
``MIN_CHUNK_BYTES``), so a peer cannot make the receiver handle millions of 1-byte
messages for one payload.

``prefer_heap_for_large_buffers`` keeps glibc from serving every 50 MB buffer with
a fresh ``mmap`` (and its page faults, which cost more than the copy itself).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from qdspace.federation.errors import RefusalReason, UpdateRefused

#: The largest data chunk any node accepts (its message limit is this plus a header).
MAX_CHUNK_BYTES = 4 * 1024 * 1024
#: The smallest chunk a sender may cut (all but a payload's last chunk): with it the
#: receiver bounds the messages of one payload at ``max_chunks(total)``.
MIN_CHUNK_BYTES = 64 * 1024
#: What this node's uploads and downloads are cut into unless told otherwise.
DEFAULT_CHUNK_BYTES = MAX_CHUNK_BYTES
#: Bytes copied and then hashed at a time (fits in a core's L2 cache).
HASH_PIECE = 256 * 1024

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_HEAP_TUNED: list[bool] = []


def prefer_heap_for_large_buffers(limit: int = 1 << 30) -> bool:
    """Serve allocations below ``limit`` bytes from the heap and keep freed memory.

    glibc maps every allocation above 32 MB with a fresh ``mmap`` and unmaps it on
    free, so each 50 MB model buffer costs ~12,000 page faults (several times the
    cost of copying it). Raising the mmap and trim thresholds lets the process
    reuse its buffers from round to round; the price is that up to ``limit`` of
    freed memory stays with the process. Linux/glibc only; returns whether it applied.
    """
    if _HEAP_TUNED:
        return _HEAP_TUNED[0]
    applied = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):
            mallopt = None
        if mallopt is not None:
            # one arena: worker threads' 50 MB buffers cannot live in a thread arena
            # (64 MB heaps), so they would be mmapped and faulted in every time
            applied = (
                bool(mallopt(_M_ARENA_MAX, 1))
                and bool(mallopt(_M_MMAP_THRESHOLD, limit))
                and bool(mallopt(_M_TRIM_THRESHOLD, 2 * limit))
            )
    _HEAP_TUNED.append(applied)
    return applied


def check_chunk_bytes(size: int) -> int:
    """``size`` if a sender may cut its chunks to it (ValueError otherwise)."""
    if not MIN_CHUNK_BYTES <= size <= MAX_CHUNK_BYTES:
        raise ValueError(
            f"chunk size must be between {MIN_CHUNK_BYTES} and {MAX_CHUNK_BYTES} bytes, got {size}"
        )
    return size


def max_chunks(total: int, min_chunk: int = MIN_CHUNK_BYTES) -> int:
    """The most chunks a payload of ``total`` bytes may arrive in (``min_chunk`` bytes
    each but the last; an empty payload has one, empty, chunk)."""
    return max(1, -(-total // min_chunk))


@dataclass(frozen=True, slots=True)
class Chunk:
    """``data`` starts at byte ``offset`` of a payload of ``total`` bytes."""

    offset: int
    total: int
    data: bytes | memoryview


def chunks(payload: bytes | memoryview, size: int = DEFAULT_CHUNK_BYTES) -> Iterator[Chunk]:
    """The payload in consecutive chunks of at most ``size`` bytes (zero-copy views)."""
    if size <= 0:
        raise ValueError(f"chunk size must be > 0, got {size}")
    view = memoryview(payload)
    total = len(view)
    if total == 0:
        yield Chunk(0, 0, b"")
        return
    for offset in range(0, total, size):
        yield Chunk(offset, total, view[offset : offset + size])


class _Checked:
    """The checks every received payload stream passes, chunk by chunk and at its end.

    More than ``max_chunks(total, min_chunk)`` chunks, or one over ``MAX_CHUNK_BYTES``,
    is refused on arrival (the sender cut its payload finer, or coarser, than any sender
    may). ``min_chunk`` is ``MIN_CHUNK_BYTES`` on the wire; tests of small payloads
    lower it.

    ``sha256`` empty: no digest to check (the channel's integrity is relied on);
    ``digest`` is then still available when ``hash_always`` is set.
    """

    def __init__(
        self,
        total: int,
        sha256: bytes,
        *,
        limit: int,
        what: str,
        hash_always: bool = False,
        min_chunk: int = MIN_CHUNK_BYTES,
    ) -> None:
        if total < 0 or total > limit:
            raise UpdateRefused(
                RefusalReason.WRONG_SHAPE, f"{what}: {total} bytes announced, limit is {limit}"
            )
        if sha256 and len(sha256) != 32:
            raise UpdateRefused(
                RefusalReason.WRONG_SHAPE, f"{what}: sha256 has {len(sha256)} bytes, not 32"
            )
        self.total, self.sha256, self.what = total, sha256, what
        self._hash = hashlib.sha256() if (sha256 or hash_always) else None
        self._filled = 0
        self._chunks = 0
        self._min_chunk = min_chunk
        self._max_chunks = max_chunks(total, min_chunk)

    @property
    def received(self) -> int:
        return self._filled

    def _check(self, chunk: Chunk) -> int:
        """Where ``chunk`` ends in the payload, once it is seen to fit (UpdateRefused if not)."""
        if chunk.total != self.total or chunk.offset != self._filled:
            raise UpdateRefused(
                RefusalReason.WRONG_SHAPE,
                f"{self.what}: chunk at offset {chunk.offset} of {chunk.total} bytes, "
                f"expected offset {self._filled} of {self.total}",
            )
        end = self._filled + len(chunk.data)
        if end > self.total:
            raise UpdateRefused(
                RefusalReason.WRONG_SHAPE, f"{self.what}: chunks run past {self.total} bytes"
            )
        if self._chunks >= self._max_chunks:
            raise UpdateRefused(
                RefusalReason.WRONG_SHAPE,
                f"{self.what}: more than {self._max_chunks} chunks for {self.total} bytes; "
                f"every chunk but the last must carry at least {self._min_chunk} bytes",
            )
        if len(chunk.data) > MAX_CHUNK_BYTES:
            raise UpdateRefused(
                RefusalReason.WRONG_SHAPE,
                f"{self.what}: a chunk of {len(chunk.data)} bytes; "
                f"chunks carry at most {MAX_CHUNK_BYTES} bytes",
            )
        self._chunks += 1
        return end

    @property
    def digest(self) -> bytes | None:
        """SHA-256 of what was received so far (None when not hashing)."""
        return None if self._hash is None else self._hash.digest()

    def _check_complete(self) -> None:
        if self._filled != self.total:
            raise UpdateRefused(
                RefusalReason.WRONG_SHAPE,
                f"{self.what}: stream ended after {self._filled} of {self.total} bytes",
            )
        if self.sha256 and self.digest != self.sha256:
            raise UpdateRefused(
                RefusalReason.WRONG_SHAPE, f"{self.what}: payload does not match its SHA-256"
            )


class Assembler(_Checked):
    """Collects one payload's chunks in order into one buffer; ``finish`` checks size and
    digest (see ``_Checked`` for what is refused on the way)."""

    def __init__(
        self,
        total: int,
        sha256: bytes,
        *,
        limit: int,
        what: str,
        hash_always: bool = False,
        min_chunk: int = MIN_CHUNK_BYTES,
    ) -> None:
        super().__init__(
            total, sha256, limit=limit, what=what, hash_always=hash_always, min_chunk=min_chunk
        )
        self._buf = np.empty(total, dtype=np.uint8)  # every byte is written before use
        self._view = self._buf.data

    def add(self, chunk: Chunk) -> None:
        end = self._check(chunk)
        if self._hash is None:
            self._view[self._filled : end] = chunk.data
        else:
            # copy a cache-sized piece, then hash it from the copy while it is still in
            # cache: the received bytes are read from memory once, not twice
            data, hashed = memoryview(chunk.data).cast("B"), self._hash
            for start in range(0, len(data), HASH_PIECE):
                piece = data[start : start + HASH_PIECE]
                lo = self._filled + start
                self._view[lo : lo + len(piece)] = piece
                hashed.update(self._view[lo : lo + len(piece)])
        self._filled = end

    def finish(self) -> memoryview:
        """The payload (a writable buffer owned by the caller from now on)."""
        self._check_complete()
        return self._view


class Pieces(_Checked):
    """Collects one payload's chunks in order *without copying them*; ``finish`` checks
    size and digest like ``Assembler`` and returns the chunks' data as received.

    For a payload its consumer reads once, piece by piece, where it lies: a masked
    input is summed straight from the received messages into the round's total
    (``SecAggServer.receive_masked``), which saves copying 50 MB into a buffer and
    reading them back. The received messages stay referenced until the stream is
    accepted or refused (the same memory the buffer would take); a refused stream's
    pieces are simply dropped, as nothing was done with them yet.
    """

    def __init__(
        self,
        total: int,
        sha256: bytes,
        *,
        limit: int,
        what: str,
        min_chunk: int = MIN_CHUNK_BYTES,
    ) -> None:
        super().__init__(total, sha256, limit=limit, what=what, min_chunk=min_chunk)
        self._pieces: list[memoryview] = []

    def add(self, chunk: Chunk) -> None:
        end = self._check(chunk)
        data = memoryview(chunk.data).cast("B")
        if self._hash is not None:
            self._hash.update(data)
        if len(data):
            self._pieces.append(data)
        self._filled = end

    def finish(self) -> tuple[memoryview, ...]:
        """The payload's consecutive pieces (read-only views of the received data)."""
        self._check_complete()
        return tuple(self._pieces)
