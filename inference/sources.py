"""Frame sources for station runners: the EL data set, a folder of images, any arrays.

A source hands out one frame at a time, as a camera would; ``None`` means it has no
more frames (a source built with ``loop=True`` never ends). An image file that cannot
be decoded raises ``FrameError`` naming the file, and the station counts it and goes on.
A folder source can read which unit each frame shows (serial, order, batch) from the
file name or a sidecar JSON (:mod:`inference.frame_context`); the verdict carries them.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from qdspace.inference.dataset import ElImages
from qdspace.inference.errors import DatasetError, FrameError
from qdspace.inference.frame_context import (
    ProductionContext,
    compile_pattern,
    context_from_name,
    context_from_sidecar,
)
from qdspace.inference.frames import read_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class SourceFrame:
    """A frame as delivered (not yet checked) and its label when known (1 = defective)."""

    frame_id: str
    frame: object
    label: int | None = None
    #: the unit the frame shows, when the source knows it
    context: ProductionContext | None = None


class FrameSource(Protocol):
    """What a station reads frames from."""

    def next_frame(self) -> SourceFrame | None:
        """The next frame, ``None`` when exhausted; raises ``FrameError`` for an unreadable one.

        A station calls it on a thread of its own, one call at a time, so it may block
        on a file (a source whose class sets ``reads_in_loop = True`` is read on the
        station's loop: it must never block); anything else it raises is counted as a
        bad frame too."""
        ...


class _Cursor:
    """A thread-safe position over ``count`` items, optionally wrapping around."""

    def __init__(self, count: int, loop: bool) -> None:
        self._count = count
        self._loop = loop
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> int | None:
        with self._lock:
            if self._next >= self._count:
                if not self._loop or self._count == 0:
                    return None
                self._next = 0
            position = self._next
            self._next += 1
            return position


class ArrayFrames:
    """Frames held in memory (for instance the EL data set), with optional labels."""

    #: a read takes a frame from memory and cannot block: a station takes it on its
    #: loop instead of a thread of its own (`inference.line`)
    reads_in_loop = True

    def __init__(
        self,
        frames: Sequence[object],
        frame_ids: Sequence[str],
        labels: Sequence[int] | None = None,
        loop: bool = True,
    ) -> None:
        if len(frames) != len(frame_ids) or (labels is not None and len(labels) != len(frames)):
            raise DatasetError(f"{len(frames)} frames but {len(frame_ids)} ids / labels")
        self._frames = frames
        self._ids = frame_ids
        self._labels = labels
        self._cursor = _Cursor(len(frames), loop)

    def next_frame(self) -> SourceFrame | None:
        position = self._cursor.take()
        if position is None:
            return None
        label = None if self._labels is None else int(self._labels[position])
        return SourceFrame(self._ids[position], self._frames[position], label)


def dataset_frames(data: ElImages, loop: bool = True) -> ArrayFrames:
    """The cells of an EL collection as frames, labelled defective when p >= 0.5."""
    return ArrayFrames(list(data.images), data.frame_ids, data.labels(2).tolist(), loop)


class FolderFrames:
    """Image files of a folder, in name order; each file is read when its turn comes.

    ``name_pattern`` (a regular expression with groups serial / order / batch, matched
    against the file stem) and ``sidecar`` (read ``<stem>.json`` beside the image) give
    each frame its production context; a frame whose context cannot be read is a
    ``FrameError``, as an unreadable image is. With ``context_required=False`` (another
    source, the MES context, fills it) a frame without a sidecar is judged without one;
    a malformed sidecar or a name that does not match is still an error.
    """

    def __init__(
        self,
        folder: Path,
        loop: bool = True,
        labels: Mapping[str, int] | None = None,
        name_pattern: str | None = None,
        sidecar: bool = False,
        context_required: bool = True,
    ) -> None:
        if not folder.is_dir():
            raise DatasetError(f"frame folder {folder} does not exist")
        self._files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            raise DatasetError(f"frame folder {folder} has no {'/'.join(IMAGE_SUFFIXES)} files")
        self._labels = dict(labels or {})
        self._pattern = compile_pattern(name_pattern) if name_pattern is not None else None
        self._sidecar = sidecar
        self._required = context_required
        self._cursor = _Cursor(len(self._files), loop)

    def next_frame(self) -> SourceFrame | None:
        position = self._cursor.take()
        if position is None:
            return None
        path = self._files[position]
        context = self._context(path)
        return SourceFrame(
            path.stem, read_image(path, path.stem), self._labels.get(path.stem), context
        )

    def _context(self, path: Path) -> ProductionContext | None:
        if self._pattern is None and not self._sidecar:
            return None
        found = ProductionContext()
        if self._pattern is not None:
            found = context_from_name(self._pattern, path.stem)
        if self._sidecar:
            side = context_from_sidecar(path.with_suffix(".json"), path.stem)
            if side is None and self._pattern is None and self._required:
                raise FrameError(path.stem, f"no sidecar {path.with_suffix('.json').name}")
            if side is not None:
                found = side.over(found)
        return found


def split_round_robin(data: ElImages, parts: int) -> list[ElImages]:
    """Deal a collection's cells to ``parts`` stations, alternating."""
    if parts < 1:
        raise DatasetError(f"cannot deal cells to {parts} stations")
    return [data.subset(list(range(i, len(data), parts))) for i in range(parts)]
