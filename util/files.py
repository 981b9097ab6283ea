"""Atomic file writes: a reader sees a file's old content or its new, never half of it.

Node identities and configuration, the inspection tier's models, manifests and drift
state, a federated round's checkpoint, a federation host's announced version and the
dev chain's endpoint and deployment are all files that another process, or the next
start, reads back. Each package had its own copy of "write a temporary file beside
it, then rename it into place"; this is the one copy.

How, and why each step:

- the temporary file is made by ``mkstemp`` in the target's own folder (a rename is
  atomic only within one filesystem), named ``.NAME.XXXXXXXX.tmp``: two writers never
  share it (a fixed ``NAME.tmp`` can be clobbered by a concurrent writer), and a crash
  leaves at most a hidden stray file, never a half-written ``NAME``;
- with `fsync` (the default) the data is on disk before the rename, so a power loss
  cannot leave the new name pointing at an empty or partial file on a filesystem that
  orders metadata before data;
- the file gets `mode` before any byte is written: 0o600 by default (``mkstemp``'s own:
  owner only, right for keys and private state); pass 0o644 for a file others read;
- on any failure, the temporary file is removed and the target is left as it was.

The target's folder is created if missing.

The read side of the small JSON records written this way (a running node's, host's or
authority's runtime record) is `read_json_record`: each reader wants "the object, or
None if there is none", which a file being replaced, removed or never written all mean.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

PRIVATE = 0o600


@contextmanager
def atomic_writer(path: Path, *, fsync: bool = True, mode: int = PRIVATE) -> Iterator[BinaryIO]:
    """A binary file to write `path`'s new content into; it replaces `path` when the
    block ends without an exception (and is discarded when it raises)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            if mode != PRIVATE:
                os.fchmod(handle.fileno(), mode)
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes, *, fsync: bool = True, mode: int = PRIVATE) -> None:
    """Replace `path`'s content with `data`, atomically (see the module's notes)."""
    with atomic_writer(path, fsync=fsync, mode=mode) as handle:
        handle.write(data)


def read_json_record(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None where there is none: no such file (or a file
    where a folder should be), not UTF-8 or not JSON, or JSON that is not an object."""
    try:
        data = json.loads(path.read_bytes())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    return data if isinstance(data, dict) else None
