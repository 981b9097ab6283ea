"""The coordinator's checkpoint file: the between-rounds state on disk (``QDFC1``).

Between rounds the coordinator writes a checkpoint (global model, round, history);
a restarted coordinator resumes from it and reopens the round it was in. What goes
into the state and how a round is reopened is the state machine's business
(``rounds.Coordinator.checkpoint`` / ``resume``); this module is only the file: its
byte layout and the atomic write, so the state machine itself stays free of I/O and
the format can be read (or changed) in one place.

Format: ``QDFC1\\n``, a 4-byte big-endian length, the JSON state, then the global
model as raw little-endian float32 (one write of the vector's memory, no 50 MB copy).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from qdspace.federation.errors import CheckpointError
from qdspace.federation.params import Vector
from qdspace.util.files import atomic_writer

_CHECKPOINT_MAGIC = b"QDFC1\n"
_LEN = struct.Struct(">I")


def write_checkpoint(path: Path, meta: dict[str, Any], vector: Vector, *, fsync: bool) -> None:
    """Write ``meta`` and ``vector`` atomically (temp file, rename; fsync if asked).

    ``meta`` must carry ``vector_len``. ``fsync=False`` leaves flushing to the caller
    (the file is complete and in place for a restarted process either way).
    """
    head = json.dumps(meta).encode()
    body = np.ascontiguousarray(vector, dtype="<f4")
    with atomic_writer(path, fsync=fsync) as fh:
        fh.write(_CHECKPOINT_MAGIC + _LEN.pack(len(head)) + head)
        fh.write(body.data.cast("B"))


def read_checkpoint(path: Path) -> tuple[dict[str, Any], Vector]:
    """The state and global vector of a checkpoint file; ``CheckpointError`` if unreadable."""
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
