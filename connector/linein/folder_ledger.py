"""The folder's ledger: the content hash of every file ingested from it, and where it went.

One JSON line per file, appended and flushed to disk before the file is moved; read
whole at the start. It lives in the watched folder, so whoever writes there can
replace it, and a crash can tear its last line. Why it is opened and read as it is:

* ``O_NOFOLLOW``, a plain file only, looked up in the folder held open: a ledger planted
  as a symbolic link (to a shell start-up file, to the node's key) was appended to, every
  line quoting a file name the exporter chose; a FIFO would block the start.
* Read as bytes, line by line, ``LEDGER_LINE_MAX`` bytes a line at most, each line parsed
  on its own with the nesting bounded (`util.json_depth`): a byte that is no UTF-8 ended
  every start with a traceback, until someone mended the file by hand. A line that is no
  entry is skipped with a warning (the first ``_BAD_LOGGED``, the rest counted); its file
  is at worst read again, which the store's natural keys make harmless.
* Made the owner's only (``util.files.PRIVATE``, as the node's other data files): it
  names every export taken.
* Only what a later file of the same content needs is kept of each entry (name, time,
  outcome), and only the latest entry of each content.
* Locked (``flock``): one watcher per folder. The lock is on the file, and compaction
  puts a new file under the name, so the new file is locked before it is renamed into
  place, and a watcher starting checks after it got its lock that the name still is the
  file it locked (else it opened the old one, just released: it tries again).

Compaction. One line per file for ever was half a million lines a year for a folder that
receives an export a minute, all read at every start. So only the entries recorded in
the last ``KEEP_DAYS`` are kept, the newest ``KEEP_ENTRIES`` of them at most, and the file
is rewritten with just those once it holds a quarter more lines than that (at least
``COMPACT_SLACK`` more): at the start, and while watching. The rewrite goes to a
temporary name (created ``O_EXCL | O_NOFOLLOW``: a link planted under it is removed, never
written through), is flushed to disk and renamed over the ledger, and the folder is
flushed too: a crash at any point leaves the old ledger or the new one whole (at worst a
stray hidden temporary file, replaced by the next compaction). A compaction that fails
(a full disk) leaves the old ledger and is tried again later. Measured: a ledger of
500,000 lines (110 MB) took 7.2 s to start once, and 0.9 s compacted (100,000 entries,
15 MB). What it gives up:

* a content dropped again after its entry went (older than ``KEEP_DAYS``, or more than
  ``KEEP_ENTRIES`` files since) is read again, not skipped: its rows are found stored
  by their natural keys and counted as duplicate rows, nothing is stored twice;
* the counts of each file (kind, rows stored, duplicates, refused) and the earlier
  outcomes of a content read more than once: the node's log keeps them. An entry
  whose time cannot be read (tampering) counts as expired.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import IO, Any

from qdspace.connector.errors import ConnectorError
from qdspace.connector.linein.folder_files import created
from qdspace.util.files import PRIVATE
from qdspace.util.json_depth import loads

log = logging.getLogger("qdspace.connector.linein.folder")

LEDGER = ".qdspace-ledger.jsonl"
#: a ledger line's bytes at most (ours are a few hundred); a longer one is skipped
LEDGER_LINE_MAX = 1 << 16
#: entries older than this are dropped (their content, dropped again, is read again)
KEEP_DAYS = 180
#: entries kept at most, the newest (about 25 MB of ledger, 69 days at one file a minute)
KEEP_ENTRIES = 100_000
#: what an entry may hold: a content hash (ours are 64 hex digits), a file name (at most
#: 255 bytes on Linux, so at most 255 characters), a time, an outcome this module writes
HASH_MAX_CHARS = 128
NAME_MAX_CHARS = 255
OUTCOMES = ("done", "failed")
#: lines the ledger may hold beyond the entries kept before it is compacted (at least)
COMPACT_SLACK = 1_024
#: lines that are no entries logged one by one at the start (the rest counted: the
#: ledger is the exporter's to fill with garbage, and the log is not)
_BAD_LOGGED = 10
#: tries to get the lock on the file the name still names (another watcher compacting)
_LOCK_TRIES = 3
_FLAGS = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NEW = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class FolderBusy(ConnectorError):
    """Another watcher holds this folder's ledger."""


class Ledger:
    """Content hashes of the files ingested from a folder, and where each went."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name
        try:  # the watched folder: the operator's own path, followed
            self._dir = os.open(path.parent, _DIR)
        except OSError as exc:
            raise ConnectorError(f"{path.parent}: cannot open: {exc.strerror}") from None
        try:
            self._handle = self._open_locked()
        except BaseException:
            os.close(self._dir)
            raise
        #: content hash -> name, time and outcome of the last file of it read (a content
        #: that failed and was read again: its latest outcome); oldest first
        self.entries: dict[str, dict[str, Any]] = {}
        #: lines the file holds (entries, bad lines and those of contents read again)
        self.lines = bad = 0
        self._handle.seek(0)
        for line in self._lines():
            self.lines += 1
            entry = _entry(line)
            if entry is not None:
                self._keep(entry)
                continue
            bad += 1  # a torn last line after a crash, or tampering
            if bad <= _BAD_LOGGED:
                log.warning("%s:%d: not a ledger entry, ignored", path, self.lines)
        if bad > _BAD_LOGGED:
            log.warning("%s: %d more lines that are no entries, ignored", path, bad - _BAD_LOGGED)
        self._drop_expired()
        self._limit = self._next_limit()
        if self.lines > self._limit:
            self.compact()

    def _open_locked(self) -> IO[bytes]:
        for _ in range(_LOCK_TRIES):
            handle = self._open()
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                raise FolderBusy(f"{self.path}: another watcher has this folder") from None
            if self._names(handle):
                return handle
            handle.close()  # the old file, which a compaction just replaced: again
        raise FolderBusy(f"{self.path}: another watcher is rewriting this folder's ledger")

    def _open(self) -> IO[bytes]:
        try:
            fd = os.open(self.name, _FLAGS, PRIVATE, dir_fd=self._dir)
        except OSError as exc:
            raise ConnectorError(
                f"{self.path}: cannot open the ledger: {exc.strerror}"
                + (" (a symbolic link: remove it)" if os.path.islink(self.path) else "")
            ) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ConnectorError(f"{self.path}: the ledger is no plain file; remove it")
        return os.fdopen(fd, "a+b")

    def _names(self, handle: IO[bytes]) -> bool:
        """Whether the ledger's name still names the file open as ``handle``."""
        try:
            now = os.stat(self.name, dir_fd=self._dir, follow_symlinks=False)
        except FileNotFoundError:
            return False
        held = os.fstat(handle.fileno())
        return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)

    def _lines(self) -> Iterator[bytes]:
        while line := self._handle.readline(LEDGER_LINE_MAX + 1):
            if len(line) > LEDGER_LINE_MAX:
                while line and not line.endswith(b"\n"):  # skipped, not held
                    line = self._handle.readline(LEDGER_LINE_MAX)
                line = b""
            yield line

    def _keep(self, entry: dict[str, Any]) -> None:
        """``entry`` as the newest; the oldest dropped once there are too many (in one go:
        a dict dropped from its front one by one is slow to find its front again)."""
        self.entries.pop(entry["sha256"], None)
        self.entries[entry["sha256"]] = entry
        if len(self.entries) > KEEP_ENTRIES + max(COMPACT_SLACK, KEEP_ENTRIES // 4):
            self._trim()

    def _trim(self) -> None:
        """Only the newest ``KEEP_ENTRIES`` entries kept."""
        for digest in list(islice(self.entries, max(0, len(self.entries) - KEEP_ENTRIES))):
            del self.entries[digest]

    def _drop_expired(self) -> None:
        """Only the newest ``KEEP_ENTRIES`` of the entries of the last ``KEEP_DAYS`` kept."""
        since = datetime.now(UTC) - timedelta(days=KEEP_DAYS)
        for digest in [d for d, e in self.entries.items() if not _since(e, since)]:
            del self.entries[digest]
        self._trim()

    def _next_limit(self) -> int:
        kept = len(self.entries)
        return kept + max(COMPACT_SLACK, kept // 4)

    def record(self, entry: dict[str, Any]) -> None:
        self._handle.write(_line(entry, full=True))
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._keep(_slim(entry))
        self.lines += 1
        if self.lines > self._limit:
            self.compact()

    def compact(self) -> None:
        """Rewrite the ledger with the entries kept only (see the module's notes)."""
        self._drop_expired()
        tmp = self.name + ".tmp"
        try:
            new = self._create(tmp)
        except OSError as exc:
            return self._not_compacted(exc)
        try:
            fcntl.flock(new, fcntl.LOCK_EX | fcntl.LOCK_NB)  # before anyone can open it
            new.writelines(_line(e) for e in self.entries.values())
            new.flush()
            os.fsync(new.fileno())
            os.replace(tmp, self.name, src_dir_fd=self._dir, dst_dir_fd=self._dir)
        except OSError as exc:
            new.close()
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=self._dir)
            return self._not_compacted(exc)
        self._handle.close()
        self._handle = new
        with contextlib.suppress(OSError):  # the rename on disk; else the old ledger stays
            os.fsync(self._dir)
        log.info("%s: compacted from %d lines to %d", self.path, self.lines, len(self.entries))
        self.lines = len(self.entries)
        self._limit = self._next_limit()

    def _create(self, name: str) -> IO[bytes]:
        """A new file ``name`` (`folder_files.created`: a leftover or a planted link under
        the name is removed first, never written through)."""
        return os.fdopen(created(name, self._dir, _NEW), "a+b")

    def _not_compacted(self, exc: OSError) -> None:
        log.warning("%s: could not be compacted (%s); tried again later", self.path, exc)
        self._limit = self.lines + self._next_limit() - len(self.entries)

    def close(self) -> None:
        self._handle.close()
        os.close(self._dir)


def _entry(line: bytes) -> dict[str, Any] | None:
    """The entry a line holds, or None: one that is not what this module writes is a bad
    line. Every field is checked for its shape, not only its presence: the ledger is the
    exporter's to write into, and 100,000 kept entries of 64 KiB names were some 8 GB
    held at every start (and written back by each compaction)."""
    try:
        entry = loads(line)  # bytes that are no UTF-8 or too deep: a ValueError
    except ValueError:
        return None
    if not isinstance(entry, dict):
        return None
    digest, name, at = entry.get("sha256"), entry.get("name"), entry.get("at")
    if not (isinstance(digest, str) and 0 < len(digest) <= HASH_MAX_CHARS):
        return None
    if not (isinstance(name, str) and len(name) <= NAME_MAX_CHARS):
        return None
    if not (isinstance(at, str) and len(at) <= 40) or entry.get("outcome") not in OUTCOMES:
        return None
    return _slim(entry)


def _slim(entry: dict[str, Any]) -> dict[str, Any]:
    """What a later file of the same content needs of an entry (kept for every file)."""
    return {k: entry.get(k) for k in ("sha256", "name", "at", "outcome")}


def _line(entry: dict[str, Any], *, full: bool = False) -> bytes:
    return json.dumps(entry if full else _slim(entry), sort_keys=True).encode() + b"\n"


def _since(entry: dict[str, Any], since: datetime) -> bool:
    """Whether ``entry`` was recorded at ``since`` or later (a time unreadable: no)."""
    try:
        at = datetime.fromisoformat(entry["at"])
    except (TypeError, ValueError):
        return False
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at >= since
