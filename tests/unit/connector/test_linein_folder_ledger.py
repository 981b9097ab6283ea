"""The export folder's ledger stays bounded: compacted at the start and while watching,
atomically (a crash at any point leaves the old ledger or the new one whole), never
written through a link planted under its temporary name, and still one watcher per
folder after its file was replaced by a compaction."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from qdspace.connector.linein import folder_ledger
from qdspace.connector.linein.folder_ledger import LEDGER, FolderBusy, Ledger

from .test_linein_folder_hostile import Rig, export, make_rig

NOW = datetime.now(UTC)


def line(digest: str, at: datetime = NOW, outcome: str = "done", **more: Any) -> bytes:
    entry = {"sha256": digest, "name": f"{digest}.csv", "at": at.isoformat(), "outcome": outcome}
    return json.dumps({**entry, **more}).encode() + b"\n"


def a_year_of_exports(path: Path) -> set[str]:
    """A ledger of 3,000 lines, most of which a compaction drops: entries older than
    KEEP_DAYS, a content read again and again, lines that are no entries. The digests
    that are kept are returned."""
    old = NOW - timedelta(days=2 * 365)  # past KEEP_DAYS
    fresh = {f"fresh{i}" for i in range(100)}
    with path.open("wb") as out:
        for i in range(2_000):
            out.write(line(f"old{i}", old, kind="measurement", stored=10))
        for i in range(800):  # one content dropped again and again, failing then done
            out.write(line("again", NOW, "done" if i % 2 else "failed"))
        for _ in range(100):
            out.write(b"not json\n")
        for digest in sorted(fresh):
            out.write(line(digest))
    return fresh | {"again"}


def file_entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_bytes().splitlines()]


def test_a_ledger_past_its_bound_is_compacted_at_the_start(tmp_path: Path) -> None:
    path = tmp_path / LEDGER
    kept = a_year_of_exports(path)
    ledger = Ledger(path)
    try:
        assert set(ledger.entries) == kept
        assert ledger.entries["again"]["outcome"] == "done"  # its latest outcome
    finally:
        ledger.close()
    on_disk = file_entries(path)
    assert len(on_disk) == len(kept) and {e["sha256"] for e in on_disk} == kept
    assert not (tmp_path / (LEDGER + ".tmp")).exists()
    again = Ledger(path)  # the compacted ledger reads back the same
    try:
        assert again.entries == ledger.entries
    finally:
        again.close()


def test_a_small_ledger_is_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / LEDGER
    written = b"".join(line(f"d{i}", outcome="done", kind="measurement") for i in range(50))
    path.write_bytes(written)
    Ledger(path).close()
    assert path.read_bytes() == written  # the counts kept: no compaction yet


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounds scaled down so that a test of a few dozen files passes them."""
    monkeypatch.setattr(folder_ledger, "KEEP_ENTRIES", 20, raising=False)
    monkeypatch.setattr(folder_ledger, "COMPACT_SLACK", 10, raising=False)


@pytest.mark.usefixtures("small")
def test_the_ledger_is_compacted_while_watching_and_stays_locked(tmp_path: Path) -> None:
    path = tmp_path / LEDGER
    ledger = Ledger(path)
    try:
        for i in range(200):
            ledger.record(json.loads(line(f"d{i}", kind="measurement", stored=1)))
            assert len(path.read_bytes().splitlines()) <= 20 + 10
            assert len(ledger.entries) <= 20 + 10
        assert list(ledger.entries)[-20:] == [f"d{i}" for i in range(180, 200)]
        with pytest.raises(FolderBusy):  # the file compaction put in place is locked
            Ledger(path)
    finally:
        ledger.close()
    again = Ledger(path)
    try:
        assert list(again.entries) == [f"d{i}" for i in range(180, 200)]
    finally:
        again.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = make_rig(tmp_path)
    yield r
    r.folder.close()
    r.store.close()


@pytest.mark.usefixtures("small")
def test_a_content_still_in_the_compacted_ledger_is_not_read_again(rig: Rig) -> None:
    ledger = Ledger(rig.watch / LEDGER)
    try:
        for i in range(40):
            (rig.watch / f"e{i}.csv").write_text(export(f"F{i}"))
            rig.folder.scan(ledger)
            rig.folder.scan(ledger)
        assert len((rig.watch / LEDGER).read_bytes().splitlines()) <= 20 + 10
        (rig.watch / "again.csv").write_text(export("F39"))  # among the newest
        rig.folder.scan(ledger)
        rig.folder.scan(ledger)
    finally:
        ledger.close()
    assert rig.folder.totals.duplicates == 1 and rig.folder.totals.done == 41


def test_a_link_planted_at_the_compaction_name_is_not_written_through(tmp_path: Path) -> None:
    watch, outside = tmp_path / "watch", tmp_path / "outside"
    watch.mkdir()
    outside.mkdir()
    target = outside / ".bashrc"
    target.write_text("export PATH=/usr/bin\n")
    (watch / (LEDGER + ".tmp")).symlink_to(target)
    kept = a_year_of_exports(watch / LEDGER)
    Ledger(watch / LEDGER).close()
    assert target.read_text() == "export PATH=/usr/bin\n"
    assert {e["sha256"] for e in file_entries(watch / LEDGER)} == kept


CRASH = """
import os, sys
from pathlib import Path
from qdspace.connector.linein import folder_ledger

where, path = sys.argv[1], Path(sys.argv[2])
real_replace, real_fsync = os.replace, os.fsync

def fsync(fd):  # the temporary file half written: killed
    if where == "write" and os.fstat(fd).st_size:
        os.write(fd, b'{"sha256": "torn", "na')
        os.kill(os.getpid(), 9)
    real_fsync(fd)

def replace(*args, **kwargs):
    if where == "rename":
        os.kill(os.getpid(), 9)
    real_replace(*args, **kwargs)
    os.kill(os.getpid(), 9)  # "after": the old ledger still open and locked

os.fsync, os.replace = fsync, replace
folder_ledger.Ledger(path)
"""


@pytest.mark.parametrize("where", ["write", "rename", "after"])
def test_a_crash_mid_compaction_leaves_the_old_ledger_or_the_new_whole(
    tmp_path: Path, where: str
) -> None:
    path = tmp_path / LEDGER
    kept = a_year_of_exports(path)
    old = path.read_bytes()
    crashed = subprocess.run([sys.executable, "-c", textwrap.dedent(CRASH), where, str(path)])
    assert crashed.returncode == -9  # killed in the compaction
    if where == "after":
        assert {e["sha256"] for e in file_entries(path)} == kept
    else:
        assert path.read_bytes() == old
    ledger = Ledger(path)  # the next start: every entry kept, the leftover replaced
    try:
        assert set(ledger.entries) == kept
    finally:
        ledger.close()
    assert {e["sha256"] for e in file_entries(path)} == kept
    assert not (tmp_path / (LEDGER + ".tmp")).exists()


def test_a_watcher_that_opened_the_ledger_a_compaction_replaced_does_not_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second watcher opens the ledger; the first compacts it (locking the new file,
    then closing the old one) before the second asks for its lock: the lock it gets is
    on a file no longer named, and it must not take the folder."""
    path = tmp_path / LEDGER
    first = Ledger(path)
    try:
        for i in range(5):
            first.record(json.loads(line(f"d{i}")))
        real = fcntl.flock
        armed = [True]

        def flock(handle: Any, op: int) -> None:
            if armed.pop() if armed else False:
                first.compact()
            real(handle, op)

        monkeypatch.setattr(fcntl, "flock", flock)
        with pytest.raises(FolderBusy):
            Ledger(path).close()
    finally:
        first.close()
    assert list(os.listdir(tmp_path)) == [LEDGER]


def test_lines_shaped_unlike_an_entry_are_bad_lines_not_kept(tmp_path: Path) -> None:
    """The ledger is the exporter's to write into: entries with a 60 KB name, hash or
    time, or an outcome this module never writes, are bad lines (each was kept whole:
    100,000 of them some 8 GB held at every start)."""
    path = tmp_path / LEDGER
    big = "n" * 60_000
    with path.open("wb") as out:
        out.write(line("ok1"))
        out.write(json.dumps({"sha256": "big-name", "name": big, "at": NOW.isoformat(),
                              "outcome": "done"}).encode() + b"\n")  # fmt: skip
        out.write(line("h" * 60_000))
        out.write(line("big-at", outcome="done").replace(NOW.isoformat().encode(), big.encode()))
        out.write(line("odd-outcome", outcome="maybe"))
        out.write(json.dumps({"sha256": "no-name", "at": NOW.isoformat(), "outcome": "done"})
                  .encode() + b"\n")  # fmt: skip
        out.write(line("ok2", outcome="failed"))
    ledger = Ledger(path)
    try:
        assert set(ledger.entries) == {"ok1", "ok2"}
    finally:
        ledger.close()
