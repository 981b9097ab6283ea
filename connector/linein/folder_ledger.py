"""The folder's ledger: the content hash of every file ingested from it, and where it went.

One JSON line per file, appended and flushed to disk before the file is moved; read
whole at the start. It lives in the watched folder, so whoever writes there can
replace it, and a crash can tear its last line. Why it is opened and read as it is:

* ``O_NOFOLLOW``, a plain file only: a ledger planted as a symbolic link (to a shell
  start-up file, to the node's key) was appended to, every line quoting a file name the
  exporter chose; a FIFO would block the start.
* Read as bytes, line by line, ``LEDGER_LINE_MAX`` bytes a line at most, each line parsed
  on its own with the nesting bounded (`util.json_depth`): a byte that is no UTF-8 ended
  every start with a traceback, until someone mended the file by hand. A line that is no
  entry is skipped with a warning; its file is at worst read again, which the store's
  natural keys make harmless.
* Only what a later file of the same content needs is kept of each entry (name, time,
  outcome): the ledger grows by one line per file for as long as the folder is watched.
* Locked (``flock``): one watcher per folder.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from qdspace.connector.errors import ConnectorError
from qdspace.util.json_depth import loads

log = logging.getLogger("qdspace.connector.linein.folder")

LEDGER = ".qdspace-ledger.jsonl"
#: a ledger line's bytes at most (ours are a few hundred); a longer one is skipped
LEDGER_LINE_MAX = 1 << 16
_FLAGS = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class FolderBusy(ConnectorError):
    """Another watcher holds this folder's ledger."""


class Ledger:
    """Content hashes of the files ingested from a folder, and where each went."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            fd = os.open(path, _FLAGS, 0o666)
        except OSError as exc:
            raise ConnectorError(
                f"{path}: cannot open the ledger: {exc.strerror}"
                + (" (a symbolic link: remove it)" if os.path.islink(path) else "")
            ) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ConnectorError(f"{path}: the ledger is no plain file; remove it")
        self._handle: IO[bytes] = os.fdopen(fd, "a+b")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.close()
            raise FolderBusy(f"{path}: another watcher has this folder") from None
        self._handle.seek(0)
        #: content hash -> name, time and outcome of the last file of it read (a content
        #: that failed and was read again: its latest outcome)
        self.entries: dict[str, dict[str, Any]] = {}
        for n, line in enumerate(self._lines(), 1):
            entry = _entry(line)
            if entry is None:  # a torn last line after a crash, or tampering
                log.warning("%s:%d: not a ledger entry, ignored", path, n)
            else:
                self.entries[entry["sha256"]] = entry

    def _lines(self) -> Iterator[bytes]:
        while line := self._handle.readline(LEDGER_LINE_MAX + 1):
            if len(line) > LEDGER_LINE_MAX:
                while line and not line.endswith(b"\n"):  # skipped, not held
                    line = self._handle.readline(LEDGER_LINE_MAX)
                line = b""
            yield line

    def record(self, entry: dict[str, Any]) -> None:
        self._handle.write(json.dumps(entry, sort_keys=True).encode() + b"\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.entries[entry["sha256"]] = _slim(entry)

    def close(self) -> None:
        self._handle.close()


def _entry(line: bytes) -> dict[str, Any] | None:
    try:
        entry = loads(line)  # bytes that are no UTF-8 or too deep: a ValueError
    except ValueError:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
        return None
    return _slim(entry)


def _slim(entry: dict[str, Any]) -> dict[str, Any]:
    """What a later file of the same content needs of an entry (kept for every file)."""
    return {k: entry.get(k) for k in ("sha256", "name", "at", "outcome")}
