"""Export-folder connector (watchdog): each MES export ingested once, then moved aside.

An MES drops CSV or JSON Lines exports into a folder; a file is ours once it has
*settled* (its size, modification and change times and inode unchanged for ``settle_s``;
names an exporter gives a file while writing it, ``*.tmp``, ``*.part``, dot-files, are
never read; one whose last byte is no newline, the exporter may have paused mid-line,
waits ``unended_s``, 60 s, and its last line is then refused as cut off; an exporter that
legitimately never ends its last line still has its files read, ``unended_s`` late, and
sets ``unended_last_line: store`` to have that line stored). Then:

1. its SHA-256 is looked up in the folder's ledger (``.qdspace-ledger.jsonl``): content
   stored whole before (the same export dropped twice, or a crash after the ingest but
   before the move) is not read again and goes to ``done/``. Content that went to
   ``failed/`` is read again: the operator who fixed what refused it (the dictionary, a
   unit, the charset) drops the same file back, and rows it stored the first time are
   not stored twice (step 2);
2. its rows go through the store's ingest (validated through the data dictionary,
   stored idempotently by natural key: a crash mid-file and a retry store nothing twice);
3. rows refused are written beside it as ``FILE.errors.csv`` (line, field, reason; the
   first ``folder_read.KEEP_PROBLEMS``, the rest counted);
4. the ledger line is appended and flushed to disk, and the file is moved with one
   ``rename`` into ``done/`` (every row stored) or ``failed/`` (a row refused, or the
   file unreadable), its errors file with it; only while its name is still the file
   read, unchanged since it settled (`folder_files.move`: else it is read again).

A file that breaks the ingest in a way no rule foresaw (an exception, not a refused
row) goes to ``failed/`` with that exception as its error: left in the folder it would
end the watcher again after every restart. Only a store that cannot be written leaves
the file where it is, to be taken again later.

watchdog only tells us early that something changed; the folder is also rescanned
every few seconds, so an event lost (a network share, an overflowing inotify queue)
delays a file but never skips it. One watcher per folder: the ledger is locked.

Whoever writes into the folder is not trusted with anything outside it: entries that are
no plain file of their own (links, FIFOs, folders, hard links) are left alone and logged
once, and every file is read, written and moved through descriptors checked first (why,
case by case: `folder_files`); what a file holds is read bounded (`folder_read`). The
ledger is opened the same way and read line by line whatever it holds (`folder_ledger`:
a ledger planted as a link to a shell start-up file had every name the exporter chose
appended to it; a tampered or torn one costs its bad lines, never the start). A name is
logged quoted when it holds a control character (`folder_files.shown`): names are the
exporter's, and a newline in one would forge a log line. A folder of many files is
rescanned at the same cost however long it keeps them (what each name is, is worked out
once). ``done`` or ``failed`` set to the watched folder itself is refused at the start:
a file moved there was found again and moved again, under a longer name each time. Inside
the watched folder (``done/``, the default) every part of their path is the exporter's to
replace by a link, and none is followed (`Folder.within`); outside it, the path is the
operator's own and is followed. "Inside" is judged against the watched folder's path as
given and as resolved, and ``done``'s too: ``done`` given through another path to the same
folder, or through the operator's own link into it, is inside and opened part by part from
the watched folder (following the link would follow whatever the exporter put in place of
a part). A folder that still turns out to lie inside once open (a link changed between the
look and the open) is refused at the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatch
from pathlib import Path
from typing import IO, Any

from qdspace.connector.errors import ConnectorError, StorageError
from qdspace.connector.ingest import SUFFIXES, RowError
from qdspace.connector.linein.config import FolderConfig
from qdspace.connector.linein.folder_files import (
    ERRORS_SUFFIX,
    NAME_MAX,
    Folder,
    NotAnExport,
    Replaced,
    free_name,
    move,
    parts_below,
    refusal,
    sha256_of,
    shown,
    unchanged,
    write_errors,
)
from qdspace.connector.linein.folder_ledger import LEDGER, FolderBusy, Ledger
from qdspace.connector.linein.folder_read import FileRead, read_export
from qdspace.connector.linein.folder_settle import Look, Settling, look_of
from qdspace.connector.storage import QualityStore

__all__ = [
    "ERRORS_SUFFIX",
    "LEDGER",
    "NAME_MAX",
    "FolderBusy",
    "FolderConnector",
    "Ledger",
    "Settling",
    "free_name",
    "kind_of",
]

log = logging.getLogger("qdspace.connector.linein.folder")

#: names of files still being written (and our own): never read
PARTIAL = ("*.tmp", "*.part", "*.partial", "*.crdownload", "*.swp", "*~", ".*", "*.errors.csv")
#: the folder is listed this often even without events (events can be lost)
RESCAN_S = 5.0
POLL_S = 0.2


def kind_of(config: FolderConfig, name: str) -> str | None:
    """The QDM kind a file is read as (first matching rule), or None: not ours."""
    if any(fnmatch(name, p) for p in PARTIAL) or Path(name).suffix.lower() not in SUFFIXES:
        return None
    return next((r.kind for r in config.files if fnmatch(name, r.pattern)), None)


@dataclass
class FolderTotals:
    done: int = 0
    failed: int = 0
    duplicates: int = 0
    rows: int = 0
    rejected_rows: int = 0

    def __str__(self) -> str:
        return (
            f"{self.done} files done, {self.failed} failed, {self.duplicates} duplicate files; "
            f"{self.rows} rows stored, {self.rejected_rows} refused"
        )


@dataclass
class _Folders:
    watch: Folder
    done: Folder
    failed: Folder

    def close(self) -> None:
        for f in (self.watch, self.done, self.failed):
            f.close()


class FolderConnector:
    def __init__(self, config: FolderConfig, store: QualityStore) -> None:
        self.config = config
        self.store = store
        self.watch = config.watch
        self.done = config.done or config.watch / "done"
        self.failed = config.failed or config.watch / "failed"
        self.totals = FolderTotals()
        self.settling = Settling(config.settle_s, config.unended_s)
        #: what each name in the folder is read as (None: not ours), worked out once
        self._kinds: dict[str, str | None] = {}
        #: names logged as left alone (no rule, or no plain file), not logged again
        self._told: set[str] = set()
        #: files that could be neither ingested nor moved aside, by how they looked: left
        #: alone (and not logged again) until they change
        self._stuck: dict[str, Look] = {}
        self._folders: _Folders | None = None
        self._unlisted: str | None = None

    def status(self) -> str:
        return str(self.totals)

    def open_folders(self) -> _Folders:
        """The watched folder, done/ and failed/ (made if missing), held open."""
        if self._folders is None:
            watch = Folder.open(self.watch, follow=True)
            try:
                done = self._aside(watch, self.done)
                try:
                    failed = self._aside(watch, self.failed)
                except BaseException:
                    done.close()
                    raise
            except BaseException:
                watch.close()
                raise
            self._folders = _Folders(watch, done, failed)
            for f in (done, failed):
                if f.same_as(watch):
                    self.close()
                    raise ConnectorError(
                        f"{f.path}: is the watched folder itself; a file moved there "
                        "would be found and moved again, for ever"
                    )
        return self._folders

    def _aside(self, watch: Folder, path: Path) -> Folder:
        """done/ or failed/, made if missing: inside the watched folder opened part by
        part from it, no part followed (the exporter could replace any by a link pointing
        anywhere); outside it the operator's own path, which may be a symbolic link (an
        archive on another disk, say)."""
        # the operator may name one folder by two paths, and reach the watched folder
        # through a link of its own: resolved up to the watched folder, and no further
        parts = parts_below(path, watch)
        if parts is not None:
            return watch.within(parts, path, create=True)
        aside = Folder.open(path, create=True, follow=True)
        try:
            inside = aside.below(watch)
        except OSError as exc:
            aside.close()
            raise ConnectorError(f"{path}: cannot look at its parents: {exc.strerror}") from None
        if inside:  # a way in that no path showed (a link swapped since)
            aside.close()
            raise ConnectorError(
                f"{path}: leads into the watched folder {self.watch} through a link, where "
                "the exporter could replace any part of it by a link of its own; name it "
                "by its path inside the watched folder, or place it outside"
            )
        return aside

    def close(self) -> None:
        if self._folders is not None:
            self._folders.close()
            self._folders = None

    async def run(self, stop: asyncio.Event) -> None:
        """Ingest what settles in the folder until ``stop`` is set."""
        async with contextlib.AsyncExitStack() as stack:
            self.open_folders()
            stack.callback(self.close)
            ledger = Ledger(self.watch / LEDGER)
            stack.callback(ledger.close)
            loop = asyncio.get_running_loop()
            wake = asyncio.Event()
            observer = self._observer(lambda: loop.call_soon_threadsafe(wake.set))
            stack.push_async_callback(asyncio.to_thread, observer.join, 5)
            stack.callback(observer.stop)
            log.info(
                "folder %s: watching (done: %s, failed: %s)", self.watch, self.done, self.failed
            )
            last_scan = 0.0
            while not stop.is_set():
                if wake.is_set() or time.monotonic() - last_scan >= RESCAN_S or self._pending():
                    wake.clear()
                    last_scan = time.monotonic()
                    try:
                        await asyncio.to_thread(self.scan, ledger, stop.is_set)
                    except StorageError as exc:  # the file stays; it is taken again later
                        log.error("folder %s: store failed: %s", self.watch, exc)
                        self.settling.seen.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), POLL_S)

    def _observer(self, notify: Any) -> Any:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                notify()

        observer = Observer()
        observer.schedule(Handler(), str(self.watch), recursive=False)
        observer.start()
        return observer

    def _pending(self) -> bool:
        return bool(self.settling.seen)

    def _kind(self, name: str) -> str | None:
        if name not in self._kinds:
            self._kinds[name] = kind_of(self.config, name)
        return self._kinds[name]

    def _tell_once(self, name: str, why: str) -> None:
        if name not in self._told:
            self._told.add(name)
            log.info("folder %s: %s %s; left alone", self.watch, shown(name), why)

    def scan(self, ledger: Ledger, stopping: Callable[[], bool] = lambda: False) -> None:
        """Look at every file in the folder once; ingest the ones that have settled
        (until ``stopping()``: a backlog of thousands of files does not hold a stop up)."""
        folders = self.open_folders()
        now = time.monotonic()
        try:
            entries = folders.watch.entries()
        except OSError as exc:  # a network share gone: tried again at the next scan
            if self._unlisted != exc.strerror:
                log.error("folder %s: cannot be listed: %s", self.watch, exc.strerror)
            self._unlisted = exc.strerror
            return
        self._unlisted = None
        names = {e.name for e in entries}
        for entry in entries:
            if stopping():
                return
            self._look(entry, now, ledger)
        for known in (self._kinds, self._stuck, self.settling.seen):
            for gone in set(known) - names:
                known.pop(gone, None)
        self._told &= names

    def _look(self, entry: os.DirEntry[str], now: float, ledger: Ledger) -> None:
        name = entry.name
        kind = self._kind(name)
        if kind is None:
            if entry.is_file(follow_symlinks=False) and not name.startswith("."):
                self._tell_once(name, "matches no rule")
            return
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:  # gone since the listing
            self.settling.forget(name)
            return
        why = refusal(st)
        if why is not None:
            self._tell_once(name, why)
            self.settling.forget(name)
            return
        look = look_of(st)
        if self._stuck.get(name) == look:
            return
        if self.settling.look(name, look, now):
            waited, since = name in self.settling.unended, self.settling.seen[name][1]
            self.settling.forget(name)
            if self._take_or_fail(name, kind, st, ledger, waited):
                self.settling.hold(name, look, since)

    def _take_or_fail(
        self, name: str, kind: str, listed: os.stat_result, ledger: Ledger, waited: bool
    ) -> bool:
        """`take`; a file it fails on (not the store: that is retried) goes to failed/.
        True: not taken, it does not end with a newline and has not ``waited`` for that."""
        folders = self.open_folders()
        try:
            handle = folders.watch.open_export(name, listed)
        except NotAnExport as exc:
            log.warning("folder %s: %s; left alone", self.watch, exc)
            return False
        except FileNotFoundError:  # gone since the listing
            return False
        except BlockingIOError:  # another holds a lease on it (a share's oplock): later
            log.info(
                "folder %s: %s is held by another process; read later", self.watch, shown(name)
            )
            return False
        except OSError as exc:
            self._fail(name, listed, None, f"cannot be read: {exc.strerror}")
            return False
        with handle:
            size = listed.st_size
            if not waited and size and os.pread(handle.fileno(), 1, size - 1) != b"\n":
                log.info(
                    "folder %s: %s does not end with a newline (still written?): read once "
                    "unchanged for %.0f s",
                    self.watch,
                    shown(name),
                    self.config.unended_s,
                )
                return True
            try:
                self.take(handle, name, kind, ledger, listed, refuse_unended=waited)
            except StorageError:
                raise
            except Replaced as exc:
                log.warning("folder %s: %s: read once it settles", self.watch, exc)
            except Exception as exc:
                reason = f"could not be ingested: {type(exc).__name__}: {exc}"
                self._fail(name, listed, handle, reason)
        return False

    def _fail(
        self, name: str, listed: os.stat_result, handle: IO[bytes] | None, reason: str
    ) -> None:
        log.error("folder %s: %s %s; moved to failed", self.watch, shown(name), reason)
        try:
            problem = [RowError(name, 0, "-", reason)]
            self._place(name, handle, listed, False, secrets.token_hex(6), problem)
        except Exception as again:
            self._stuck[name] = look_of(listed)
            log.error(
                "folder %s: %s could not be moved to failed either (%s); left in place",
                self.watch,
                shown(name),
                again,
            )

    def take(
        self,
        handle: IO[bytes],
        name: str,
        kind: str,
        ledger: Ledger,
        listed: os.stat_result,
        *,
        refuse_unended: bool = False,
    ) -> None:
        """Ingest one settled file, open as ``handle`` (unless its content was ingested
        before), then move it (while it is still as ``listed``)."""
        digest = sha256_of(handle)
        earlier = ledger.entries.get(digest)
        if earlier is not None and earlier.get("outcome") != "done":
            log.info(
                "folder %s: %s has the content of %s, which failed %s: read again",
                self.watch,
                shown(name),
                shown(str(earlier.get("name"))),
                earlier.get("at"),
            )
            earlier = None
        if earlier is not None:
            log.warning(
                "folder %s: %s has the content of %s (ingested %s): not read again",
                self.watch,
                shown(name),
                shown(str(earlier.get("name"))),
                earlier.get("at"),
            )
            self._place(name, handle, listed, True, digest)
            self.totals.duplicates += 1
            return
        read = read_export(
            self.store,
            handle,
            name,
            Path(name).suffix,
            kind,
            self.config.charset,
            unended=refuse_unended and self.config.unended_last_line == "refuse",
        )
        if read.digest != digest or not unchanged(os.fstat(handle.fileno()), listed):
            log.warning(
                "folder %s: %s changed while read; read again later", self.watch, shown(name)
            )
            return
        ok = not read.problems
        ledger.record(
            {
                "sha256": digest,
                "name": name,
                "kind": kind,
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
                "stored": read.stored + read.corrected,
                "duplicates": read.duplicates,
                "refused": read.refused,
                "outcome": "done" if ok else "failed",
            }
        )
        self.totals.rows += read.stored + read.corrected
        self.totals.rejected_rows += read.refused
        target = self._place(name, handle, listed, ok, digest, read.problems, read.more)
        log.info(
            "folder %s: %s -> %s: %s", self.watch, shown(name), shown(str(target)), _summary(read)
        )

    def _place(
        self,
        name: str,
        handle: IO[bytes] | None,
        listed: os.stat_result,
        ok: bool,
        digest: str,
        problems: list[RowError] | None = None,
        more: int = 0,
    ) -> Path:
        folders = self.open_folders()
        to = folders.done if ok else folders.failed
        target = free_name(to, name, digest)
        if problems:
            write_errors(to, target + ERRORS_SUFFIX, problems, more)
        try:
            move(folders.watch, name, handle, to, target, listed)
        except Replaced:  # the file stays, to be read again: its errors go
            if problems:
                with contextlib.suppress(OSError):
                    to.unlink(target + ERRORS_SUFFIX)
            raise
        if ok:
            self.totals.done += 1
        else:
            self.totals.failed += 1
        return to.path / target


def _summary(read: FileRead) -> str:
    text = (
        f"{read.stored} stored, {read.corrected} corrected, "
        f"{read.duplicates} duplicates, {read.refused} rows refused"
    )
    return text if read.stopped is None else f"{text}; not read on: {read.stopped}"
