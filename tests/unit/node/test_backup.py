"""The online SQLite backup: a consistent copy while another connection keeps writing.

A writer thread inserts rows in WAL mode, as a serving node does, for the whole backup.
The copy must pass SQLite's integrity check and hold a prefix of the writes (every row
up to some id and none missing below it), never a torn page; a backup never overwrites
a file, leaves no partial file when it fails, and a PostgreSQL store is refused with
the tool to use instead.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from qdspace.node.errors import ConfigError
from qdspace.node.runtime.backup import backup_sqlite, sqlite_path


def _database(path: Path, rows: int) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)")
    db.executemany("INSERT INTO t VALUES (?, ?)", ((i, bytes(2000)) for i in range(rows)))
    db.commit()
    db.close()


def test_a_backup_under_concurrent_writes_is_a_consistent_prefix(tmp_path: Path) -> None:
    source = tmp_path / "node.db"
    _database(source, 3000)
    stop = threading.Event()
    written = [3000]

    def writer() -> None:
        db = sqlite3.connect(source, timeout=30)
        while not stop.is_set():
            db.execute("INSERT INTO t VALUES (?, ?)", (written[0], bytes(2000)))
            db.commit()
            written[0] += 1
        db.close()

    thread = threading.Thread(target=writer)
    thread.start()
    steps: list[tuple[int, int]] = []
    try:
        result = backup_sqlite(source, tmp_path / "backup.db", lambda d, t: steps.append((d, t)))
    finally:
        stop.set()
        thread.join()
    copy = sqlite3.connect(result.destination)
    (check,) = copy.execute("PRAGMA integrity_check").fetchone()
    count, low, high = copy.execute("SELECT count(*), min(id), max(id) FROM t").fetchone()
    copy.close()
    assert check == "ok"
    assert low == 0 and count == high + 1, "the copy is a prefix of the writes, no gap"
    assert 3000 <= count <= written[0]
    assert steps and steps[-1][0] == steps[-1][1], "progress reached the total"
    assert result.destination.stat().st_mode & 0o777 == 0o600


def test_a_backup_never_overwrites_and_leaves_no_partial_file(tmp_path: Path) -> None:
    source = tmp_path / "node.db"
    _database(source, 10)
    existing = tmp_path / "backup.db"
    existing.write_bytes(b"yesterday's backup")
    with pytest.raises(ConfigError, match="never overwrites"):
        backup_sqlite(source, existing)
    assert existing.read_bytes() == b"yesterday's backup"
    with pytest.raises(ConfigError, match="does not exist"):
        backup_sqlite(tmp_path / "missing.db", tmp_path / "b2.db")
    with pytest.raises(ConfigError, match="does not exist"):
        backup_sqlite(source, tmp_path / "no" / "dir" / "b3.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.db", "node.db"]


def test_only_sqlite_stores_are_backed_up_here() -> None:
    with pytest.raises(ConfigError, match="pg_dump"):
        sqlite_path("postgresql+psycopg://u:secret@db/q")
    with pytest.raises(ConfigError, match="in memory"):
        sqlite_path("sqlite:///:memory:")
    assert sqlite_path("sqlite:////var/lib/qdspace/node/node.db") == Path(
        "/var/lib/qdspace/node/node.db"
    )
