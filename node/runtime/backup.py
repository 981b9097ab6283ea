"""An online backup of a node's SQLite store, taken while the node serves.

Copying ``node.db`` with ``cp`` while the node writes can tear it: the file and its WAL are
two files, and a page written between the two reads leaves a copy that SQLite calls
corrupt. SQLite's backup API copies the database page by page under a read transaction
and restarts when a writer changes a page already copied, so the result is one
consistent snapshot, whatever the node does meanwhile. The copy is written next to its
destination and renamed into place only when complete and ``PRAGMA integrity_check``
says ``ok``: an interrupted backup never leaves a file that looks like a backup.

PostgreSQL is backed up with PostgreSQL's tools (``pg_dump``, or base backups with WAL
archiving); this module refuses a PostgreSQL store and says so.

What a backup does not hold, on purpose: the node's keys. The database holds the data keys
of received data wrapped under the key-encryption key (``contract.kek``), which lives in
the node directory. Keep the two apart (the keys once, access-controlled; the database on
a schedule): a database copy alone cannot be read, and crypto-shredding stays meaningful.
After a restore the retention sweep (every 30 s from the node's start) destroys again
every data key whose deadline passed since the backup was taken.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from qdspace.node.errors import ConfigError

PAGES_PER_STEP = 1024


@dataclass(frozen=True)
class BackupResult:
    source: Path
    destination: Path
    pages: int
    bytes: int
    seconds: float


def sqlite_path(database_url: str) -> Path:
    """The file behind a SQLite URL; a clear error for any other store."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        raise ConfigError(
            f"this node's store is {url.get_backend_name()}, not SQLite: back it up with "
            "its own tools (PostgreSQL: pg_dump --format=custom, or a base backup with WAL "
            "archiving)"
        )
    if not url.database or url.database == ":memory:":
        raise ConfigError("this node's SQLite store is in memory: there is nothing to back up")
    return Path(url.database)


def backup_sqlite(
    source: Path,
    destination: Path,
    progress: Callable[[int, int], None] | None = None,
) -> BackupResult:
    """Copy ``source`` to ``destination`` consistently while other connections write."""
    if not source.is_file():
        raise ConfigError(f"database {source} does not exist")
    if destination.exists():
        raise ConfigError(f"{destination} exists; a backup never overwrites a file")
    if not destination.parent.is_dir():
        raise ConfigError(f"directory {destination.parent} does not exist")
    partial = destination.with_name(f".{destination.name}.partial")
    partial.unlink(missing_ok=True)
    started = time.perf_counter()
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(partial)
        try:

            def step(status: int, remaining: int, total: int) -> None:
                if progress is not None:
                    progress(total - remaining, total)

            src.backup(dst, pages=PAGES_PER_STEP, progress=step)
            (check,) = dst.execute("PRAGMA integrity_check").fetchone()
            if check != "ok":
                raise ConfigError(f"the backup of {source} failed its integrity check: {check}")
            (pages,) = dst.execute("PRAGMA page_count").fetchone()
        finally:
            dst.close()
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        src.close()
    os.chmod(partial, 0o600)  # it holds the node's data: as private as node.db
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, destination)
    return BackupResult(
        source, destination, int(pages), destination.stat().st_size, time.perf_counter() - started
    )
