"""Cutting large payloads (50 MB+ models, masked vectors) into stream chunks and back.

gRPC messages have a size limit, so global models and updates travel as streams of
chunks. The receiver knows the total size and SHA-256 up front (from the round
status or the upload header), accepts chunks only in order and never beyond the
announced size, so a peer cannot make it buffer more than it agreed to, and the
digest check at the end catches corruption or a swapped payload.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from federation.errors import RefusalReason, UpdateRefused

DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024


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


class Assembler:
    """Collects one payload's chunks in order; ``finish`` checks size and digest."""

    def __init__(self, total: int, sha256: bytes, *, limit: int, what: str) -> None:
        if total < 0 or total > limit:
            raise UpdateRefused(
                RefusalReason.WRONG_SHAPE, f"{what}: {total} bytes announced, limit is {limit}"
            )
        self.total, self.sha256, self.what = total, sha256, what
        self._buf = bytearray(total)
        self._filled = 0

    @property
    def received(self) -> int:
        return self._filled

    def add(self, chunk: Chunk) -> None:
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
        self._buf[self._filled : end] = chunk.data
        self._filled = end

    def finish(self) -> bytearray:
        if self._filled != self.total:
            raise UpdateRefused(
                RefusalReason.WRONG_SHAPE,
                f"{self.what}: stream ended after {self._filled} of {self.total} bytes",
            )
        if hashlib.sha256(self._buf).digest() != self.sha256:
            raise UpdateRefused(
                RefusalReason.WRONG_SHAPE, f"{self.what}: payload does not match its SHA-256"
            )
        return self._buf
