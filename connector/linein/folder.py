"""Export-folder connector (watchdog): each MES export ingested once, then moved aside.

An MES drops CSV or JSON Lines exports into a folder; a file is ours once it has
*settled* (its size and modification time unchanged for ``settle_s``; names an exporter
gives a file while writing it, ``*.tmp``, ``*.part``, dot-files, are never read). Then:

1. its SHA-256 is looked up in the folder's ledger (``.qdspace-ledger.jsonl``): content
   ingested before (the same export dropped twice, or a crash after the ingest but
   before the move) is not read again and goes where the first copy went;
2. its rows go through the store's ingest (validated through the data dictionary,
   stored idempotently by natural key: a crash mid-file and a retry store nothing twice);
3. rows refused are written beside it as ``FILE.errors.csv`` (line, field, reason);
4. the ledger line is appended and flushed to disk, and the file is moved with one
   ``rename`` into ``done/`` (every row stored) or ``failed/`` (a row refused, or the
   file unreadable), its errors file with it.

A file that breaks the ingest in a way no rule foresaw (an exception, not a refused
row) goes to ``failed/`` with that exception as its error: left in the folder it would
end the watcher again after every restart. Only a store that cannot be written leaves
the file where it is, to be taken again later.

watchdog only tells us early that something changed; the folder is also rescanned
every few seconds, so an event lost (a network share, an overflowing inotify queue)
delays a file but never skips it. One watcher per folder: the ledger is locked.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatch
from pathlib import Path
from typing import IO, Any

from qdspace.connector.errors import ConnectorError, StorageError
from qdspace.connector.ingest import SUFFIXES, IngestReport, RowError, ingest_file
from qdspace.connector.linein.config import FolderConfig
from qdspace.connector.storage import QualityStore

log = logging.getLogger("qdspace.connector.linein.folder")

LEDGER = ".qdspace-ledger.jsonl"
ERRORS_SUFFIX = ".errors.csv"
#: names of files still being written (and our own): never read
PARTIAL = ("*.tmp", "*.part", "*.partial", "*.crdownload", "*.swp", "*~", ".*", "*.errors.csv")
#: a file name's bytes at most (Linux NAME_MAX); a name moved aside is cut so that with
#: ERRORS_SUFFIX and write_errors' ".tmp" it still fits
NAME_MAX = 255
TARGET_MAX = NAME_MAX - len(ERRORS_SUFFIX + ".tmp")
#: the folder is listed this often even without events (events can be lost)
RESCAN_S = 5.0
POLL_S = 0.2


class FolderBusy(ConnectorError):
    """Another watcher holds this folder's ledger."""


def kind_of(config: FolderConfig, name: str) -> str | None:
    """The QDM kind a file is read as (first matching rule), or None: not ours."""
    if any(fnmatch(name, p) for p in PARTIAL) or Path(name).suffix.lower() not in SUFFIXES:
        return None
    return next((r.kind for r in config.files if fnmatch(name, r.pattern)), None)


@dataclass
class Settling:
    """Files seen and their (size, mtime) when last looked at; ready once unchanged."""

    settle_s: float
    seen: dict[str, tuple[tuple[int, int], float]] = field(default_factory=dict)

    def look(self, name: str, stat: tuple[int, int], now: float) -> bool:
        """Whether ``name`` has kept ``stat`` for ``settle_s`` (the first look starts it;
        so a file is read at the second look at the earliest)."""
        last = self.seen.get(name)
        if last is None or last[0] != stat:
            self.seen[name] = (stat, now)
            return False
        return now - last[1] >= self.settle_s

    def forget(self, name: str) -> None:
        self.seen.pop(name, None)


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


class Ledger:
    """Content hashes of the files ingested from a folder, and where each went."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[str] = path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.close()
            raise FolderBusy(f"{path}: another watcher has this folder") from None
        self._handle.seek(0)
        self.entries: dict[str, dict[str, Any]] = {}
        for n, line in enumerate(self._handle, 1):
            try:
                entry = json.loads(line)
                self.entries[str(entry["sha256"])] = entry
            except (ValueError, KeyError, TypeError):  # a torn last line after a crash
                log.warning("%s:%d: not a ledger entry, ignored", path, n)

    def record(self, entry: dict[str, Any]) -> None:
        self._handle.write(json.dumps(entry, sort_keys=True) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.entries[entry["sha256"]] = entry

    def close(self) -> None:
        self._handle.close()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def write_errors(path: Path, problems: Iterable[RowError]) -> None:
    """``path`` (line, field, reason), written whole or not at all."""
    tmp = path.with_name(path.name + ".tmp")
    # backslashreplace: a reason may quote text no UTF-8 file holds (a lone surrogate)
    with tmp.open("w", encoding="utf-8", errors="backslashreplace", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["line", "field", "reason"])
        for p in problems:
            writer.writerow([p.line, p.field, p.reason])
    os.replace(tmp, path)


def fitted(name: str, limit: int = TARGET_MAX) -> str:
    """``name``, or when longer than ``limit`` bytes its stem cut with a short hash of
    the whole name added (the suffix kept): ``name.errors.csv.tmp`` must fit NAME_MAX."""
    raw = os.fsencode(name)
    if len(raw) <= limit:
        return name
    stem, suffix = os.path.splitext(raw)
    tag = b"." + hashlib.sha256(raw).hexdigest()[:8].encode()
    room = max(0, limit - len(suffix) - len(tag))
    return os.fsdecode(stem[:room].decode("utf-8", "ignore").encode() + tag + suffix)


def free_name(folder: Path, name: str, digest: str) -> Path:
    """``folder/name`` (`fitted`), or with the content hash in it when that name is taken."""
    target = folder / fitted(name)
    if not target.exists():
        return target
    stem, suffix = os.path.splitext(name)
    for i in range(1, 1000):
        name_i = f"{stem}.{digest[:12]}{'.' + str(i) if i > 1 else ''}{suffix}"
        target = folder / fitted(name_i)
        if not target.exists():
            return target
    raise ConnectorError(f"{folder}: no free name for {name}")


def move(source: Path, target: Path) -> None:
    """One rename; across file systems a copy renamed into place, then the source removed."""
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != 18:  # EXDEV
            raise
        tmp = target.with_name(f".{target.name}.tmp")
        with source.open("rb") as src, tmp.open("wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, target)
        source.unlink()


class FolderConnector:
    def __init__(self, config: FolderConfig, store: QualityStore) -> None:
        self.config = config
        self.store = store
        self.watch = config.watch
        self.done = config.done or config.watch / "done"
        self.failed = config.failed or config.watch / "failed"
        self.totals = FolderTotals()
        self.settling = Settling(config.settle_s)
        self._ignored: set[str] = set()
        #: files that could be neither ingested nor moved aside, by (size, mtime): left
        #: alone (and not logged again) until they change
        self._stuck: dict[str, tuple[int, int]] = {}

    def status(self) -> str:
        return str(self.totals)

    async def run(self, stop: asyncio.Event) -> None:
        """Ingest what settles in the folder until ``stop`` is set."""
        if not self.watch.is_dir():
            raise ConnectorError(f"{self.watch}: not a folder")
        self.done.mkdir(parents=True, exist_ok=True)
        self.failed.mkdir(parents=True, exist_ok=True)
        ledger = Ledger(self.watch / LEDGER)
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        observer = self._observer(lambda: loop.call_soon_threadsafe(wake.set))
        log.info("folder %s: watching (done: %s, failed: %s)", self.watch, self.done, self.failed)
        try:
            last_scan = 0.0
            while not stop.is_set():
                if wake.is_set() or time.monotonic() - last_scan >= RESCAN_S or self._pending():
                    wake.clear()
                    last_scan = time.monotonic()
                    try:
                        await asyncio.to_thread(self.scan, ledger)
                    except StorageError as exc:  # the file stays; it is taken again later
                        log.error("folder %s: store failed: %s", self.watch, exc)
                        self.settling.seen.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), POLL_S)
        finally:
            observer.stop()
            await asyncio.to_thread(observer.join, 5)
            ledger.close()

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

    def scan(self, ledger: Ledger) -> None:
        """Look at every file in the folder once; ingest the ones that have settled."""
        now = time.monotonic()
        present = set()
        for entry in sorted(os.scandir(self.watch), key=lambda e: e.name):
            if not entry.is_file(follow_symlinks=False):
                continue
            kind = kind_of(self.config, entry.name)
            if kind is None:
                if entry.name not in self._ignored and not entry.name.startswith("."):
                    self._ignored.add(entry.name)
                    log.info("folder %s: %s matches no rule; left alone", self.watch, entry.name)
                continue
            present.add(entry.name)
            st = entry.stat(follow_symlinks=False)
            stat = (st.st_size, st.st_mtime_ns)
            if self._stuck.get(entry.name) == stat:
                continue
            if self.settling.look(entry.name, stat, now):
                self.settling.forget(entry.name)
                self._take_or_fail(Path(entry.path), kind, stat, ledger)
        for gone in set(self.settling.seen) - present:
            self.settling.forget(gone)

    def _take_or_fail(self, path: Path, kind: str, stat: tuple[int, int], ledger: Ledger) -> None:
        """`take`; a file it fails on (not the store: that is retried) goes to failed/."""
        try:
            self.take(path, kind, stat, ledger)
        except StorageError:
            raise
        except Exception as exc:
            reason = f"could not be ingested: {type(exc).__name__}: {exc}"
            log.error("folder %s: %s %s; moved to failed", self.watch, path.name, reason)
            try:
                digest = sha256_of(path)
                self._place(path, False, digest, [RowError(path.name, 0, "-", reason)])
            except Exception as again:
                self._stuck[path.name] = stat
                log.error(
                    "folder %s: %s could not be moved to failed either (%s); left in place",
                    self.watch,
                    path.name,
                    again,
                )

    def take(self, path: Path, kind: str, stat: tuple[int, int], ledger: Ledger) -> None:
        """Ingest one settled file (unless its content was ingested before), then move it."""
        digest = sha256_of(path)
        earlier = ledger.entries.get(digest)
        if earlier is not None:
            self.totals.duplicates += 1
            log.warning(
                "folder %s: %s has the content of %s (ingested %s): not read again",
                self.watch,
                path.name,
                earlier.get("name"),
                earlier.get("at"),
            )
            self._place(path, earlier.get("outcome") == "done", digest)
            return
        problems, report = self._ingest(path, kind)
        after = path.stat()
        if (after.st_size, after.st_mtime_ns) != stat:  # written to while we read it
            log.warning("folder %s: %s changed while read; read again later", self.watch, path)
            return
        ok = not problems
        ledger.record(
            {
                "sha256": digest,
                "name": path.name,
                "kind": kind,
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
                "stored": report.accepted + report.corrected if report else 0,
                "duplicates": report.duplicates if report else 0,
                "refused": len({p.line for p in problems}),
                "outcome": "done" if ok else "failed",
            }
        )
        target = self._place(path, ok, digest, problems)
        self.totals.rows += report.accepted + report.corrected if report else 0
        self.totals.rejected_rows += len({p.line for p in problems})
        log.info(
            "folder %s: %s -> %s: %s",
            self.watch,
            path.name,
            target,
            _summary(report, problems),
        )

    def _ingest(self, path: Path, kind: str) -> tuple[list[RowError], IngestReport | None]:
        try:
            report = ingest_file(self.store, path, kind, charset=self.config.charset)
        except ConnectorError as exc:
            if not isinstance(exc, ValueError):  # the store, not the file: try again later
                raise
            return [RowError(path.name, 0, "-", str(exc))], None
        return report.rejected, report

    def _place(
        self, path: Path, ok: bool, digest: str, problems: list[RowError] | None = None
    ) -> Path:
        folder = self.done if ok else self.failed
        target = free_name(folder, path.name, digest)
        if problems:
            write_errors(target.with_name(target.name + ERRORS_SUFFIX), problems)
        move(path, target)
        if ok:
            self.totals.done += 1
        else:
            self.totals.failed += 1
        return target


def _summary(report: IngestReport | None, problems: list[RowError]) -> str:
    if report is None:
        return f"not read: {problems[0].reason}"
    return (
        f"{report.accepted} stored, {report.corrected} corrected, "
        f"{report.duplicates} duplicates, {len({p.line for p in problems})} rows refused"
    )
