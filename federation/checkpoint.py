"""The coordinator's checkpoint file: the between-rounds state on disk (``QDFC1``).

Between rounds the coordinator writes a checkpoint (global model, round, history);
a restarted coordinator resumes from it and reopens the round it was in. What goes
into the state and how a round is reopened is the state machine's business
(``rounds.Coordinator.checkpoint`` / ``resume``); this module is only the file: its
byte layout and the atomic write, so the state machine itself stays free of I/O and
the format can be read (or changed) in one place.

Format: ``QDFC1\\n``, a 4-byte big-endian length, the JSON state, then the global
model as raw little-endian float32 (one write of the vector's memory, no 50 MB copy).

Between rounds the write is on the round's critical path (the new version is announced
only once its checkpoint is in place), so ``keep_previous`` makes it cheaper: the old
file is renamed aside (``NAME.prev``) and the new one renamed into a free name, instead
of replacing the old in one rename. Replacing a file makes ext4 start writing the new
50 MB out at the rename (``auto_da_alloc``) and frees the old file's 50 MB right then;
renaming into a free name does neither, and the caller removes ``NAME.prev`` once the
new file is flushed (off the critical path; until then it is also a fallback after a
power loss). A crash between the two renames leaves only ``NAME.prev``, which
``read_checkpoint`` then reads: it is the checkpoint of the version announced last.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from qdspace.federation.errors import CheckpointError
from qdspace.federation.params import Vector
from qdspace.util.files import atomic_writer

_CHECKPOINT_MAGIC = b"QDFC1\n"
_LEN = struct.Struct(">I")


def previous_path(path: Path) -> Path:
    """Where ``write_checkpoint(..., keep_previous=True)`` leaves the replaced checkpoint."""
    return path.with_name(path.name + ".prev")


def write_checkpoint(
    path: Path, meta: dict[str, Any], vector: Vector, *, fsync: bool, keep_previous: bool = False
) -> None:
    """Write ``meta`` and ``vector`` atomically (temp file, rename; fsync if asked).

    ``meta`` must carry ``vector_len``. ``fsync=False`` leaves flushing to the caller
    (the file is complete and in place for a restarted process either way).
    ``keep_previous``: the replaced checkpoint stays as ``previous_path(path)`` for the
    caller to remove (see the module's notes).
    """
    head = json.dumps(meta).encode()
    body = np.ascontiguousarray(vector, dtype="<f4")
    if not keep_previous:
        with atomic_writer(path, fsync=fsync) as fh:
            fh.write(_CHECKPOINT_MAGIC + _LEN.pack(len(head)) + head)
            fh.write(body.data.cast("B"))
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(_CHECKPOINT_MAGIC + _LEN.pack(len(head)) + head)
            fh.write(body.data.cast("B"))
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        previous = previous_path(path)
        # none: the first checkpoint, or a crash left only .prev (now superseded); a .prev
        # still there is older than ``path`` and is replaced
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_checkpoint(path: Path) -> tuple[dict[str, Any], Vector]:
    """The state and global vector of a checkpoint file; ``CheckpointError`` if unreadable.

    With no ``path``, the checkpoint a crash between ``write_checkpoint``'s two renames
    left aside (``previous_path(path)``) is read, if there is one."""
    previous = previous_path(path)
    if not path.exists() and previous.exists():
        return _read_checkpoint(previous)
    return _read_checkpoint(path)


def _read_checkpoint(path: Path) -> tuple[dict[str, Any], Vector]:
    try:
        data = path.read_bytes()
        if not data.startswith(_CHECKPOINT_MAGIC):
            raise ValueError("not a QDFC1 checkpoint")
        start = len(_CHECKPOINT_MAGIC) + _LEN.size
        (head_len,) = _LEN.unpack(data[len(_CHECKPOINT_MAGIC) : start])
        meta = json.loads(data[start : start + head_len].decode())
        body = memoryview(data)[start + head_len :]
        if len(body) != 4 * int(meta["vector_len"]):
            raise ValueError(f"{len(body)} bytes of model, expected {4 * meta['vector_len']}")
        vector = np.frombuffer(body, dtype="<f4").astype(np.float32)
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read: {exc}") from exc
    return meta, vector
