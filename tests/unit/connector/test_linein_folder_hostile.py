"""The export-folder connector against a hostile or broken exporter (and a careless operator).

Whoever writes into the watched folder may put links, FIFOs and hard links there, swap
a file for one between the listing and the read, plant links where the connector writes,
write files with no newline or millions of lines that are no rows, and choose any file
name. Each test runs the real connector on a real folder and a real SQLite store; where
the exporter must act at one exact moment (between the listing and the read, during an
ingest) a hook on the connector's own settling, ledger or store does what it would do.
"""

from __future__ import annotations

import csv
import errno
import logging
import os
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import text

from qdspace.connector.errors import ConnectorError
from qdspace.connector.linein import folder as folder_module
from qdspace.connector.linein import folder_read
from qdspace.connector.linein.config import FolderConfig
from qdspace.connector.linein.folder import (
    ERRORS_SUFFIX,
    LEDGER,
    FolderConnector,
    Ledger,
    Settling,
)
from qdspace.connector.linein.folder_read import LINE_MAX
from qdspace.connector.storage import QualityStore, open_store

HEADER = "equipment,parameter,value,unit,measured_at\n"


def export(equipment: str, n: int = 2) -> str:
    return HEADER + "".join(
        f"{equipment},firing_peak_temperature,{800 + i},°C,2024-01-01T00:00:{i:02d}Z\n"
        for i in range(n)
    )


@dataclass
class Rig:
    watch: Path
    outside: Path
    store: QualityStore
    folder: FolderConnector

    def scan(self, times: int = 2) -> None:
        """Look at the folder ``times`` times (settle_s 0: a file is taken at the second)."""
        ledger = Ledger(self.watch / LEDGER)
        try:
            for _ in range(times):
                self.folder.scan(ledger)
        finally:
            ledger.close()

    def stored(self, equipment: str | None = None) -> int:
        query = "SELECT count(*) FROM qdm_measurement"
        with self.store.engine.connect() as c:
            if equipment is None:
                return int(c.execute(text(query)).scalar_one())
            query += " WHERE equipment = :e"
            return int(c.execute(text(query), {"e": equipment}).scalar_one())

    def tree(self) -> list[str]:
        """Every entry under the watched folder, relative, sorted."""
        return sorted(str(p.relative_to(self.watch)) for p in self.watch.rglob("*"))


def make_rig(tmp_path: Path, **config: Any) -> Rig:
    watch = tmp_path / "watch"
    watch.mkdir(exist_ok=True)
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    store = open_store(f"sqlite:///{tmp_path}/q.db")
    settings = {"watch": watch, "files": [{"pattern": "*", "kind": "measurement"}], "settle_s": 0}
    folder = FolderConnector(FolderConfig.model_validate({**settings, **config}), store)
    return Rig(watch, outside, store, folder)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = make_rig(tmp_path)
    r.folder.done.mkdir()
    r.folder.failed.mkdir()
    yield r
    getattr(r.folder, "close", lambda: None)()
    r.store.close()


class ExporterAtTheRead(Settling):
    """Settling that, when a file has settled, lets ``act(path)`` run first: the
    exporter acting between the listing and the read."""

    def __init__(self, watch: Path, act: Callable[[Path], None]) -> None:
        super().__init__(0.0)
        self.watch = watch
        self.act = act

    def look(self, name: str, stat: tuple[int, ...], now: float) -> bool:
        ready = super().look(name, stat, now)
        if ready:
            self.act(self.watch / name)
        return ready


# ------------------------------------------------------------ planted links


def test_a_ledger_planted_as_a_link_is_refused_never_written_through(rig: Rig) -> None:
    target = rig.outside / ".bashrc"
    target.write_text("export PATH=/usr/bin\n")
    (rig.watch / LEDGER).symlink_to(target)
    with pytest.raises(ConnectorError, match="symbolic link"):
        Ledger(rig.watch / LEDGER).close()
    assert target.read_text() == "export PATH=/usr/bin\n"


def test_an_errors_file_name_planted_as_a_link_is_not_written_through(rig: Rig) -> None:
    key = rig.outside / "node.key"
    key.write_text("PRIVATE KEY\n")
    (rig.folder.failed / ("a.csv" + ERRORS_SUFFIX + ".tmp")).symlink_to(key)
    (rig.watch / "a.csv").write_text("no,header\n")
    rig.scan()
    assert key.read_text() == "PRIVATE KEY\n"
    errors = rig.folder.failed / ("a.csv" + ERRORS_SUFFIX)
    assert not errors.is_symlink() and "'no' is not a field" in errors.read_text()


def test_done_planted_as_a_link_is_refused_at_the_start(tmp_path: Path) -> None:
    r = make_rig(tmp_path)
    (r.watch / "done").symlink_to(r.outside)
    (r.watch / "a.csv").write_text(export("F1"))
    try:
        with pytest.raises(ConnectorError, match="done: is a symbolic link"):
            r.scan()
    finally:
        r.store.close()
    assert list(r.outside.iterdir()) == [] and (r.watch / "a.csv").exists()


def test_done_swapped_for_a_link_while_watching_still_gets_the_files(rig: Rig) -> None:
    rig.scan(1)  # the folders are open now
    (rig.watch / "done").rename(rig.watch / "done-old")
    (rig.watch / "done").symlink_to(rig.outside)
    (rig.watch / "a.csv").write_text(export("F1"))
    rig.scan()
    assert list(rig.outside.iterdir()) == []
    assert (rig.watch / "done-old" / "a.csv").exists() and rig.stored() == 2


def test_done_that_is_a_file_or_the_watched_folder_is_refused_with_why(tmp_path: Path) -> None:
    r = make_rig(tmp_path)
    (r.watch / "done").write_text("an operator's note")
    try:
        with pytest.raises(ConnectorError, match="done: not a folder"):
            r.scan()
    finally:
        r.store.close()
    r = make_rig(tmp_path, done=str(tmp_path / "watch"))
    (r.watch / "a.csv").write_text(export("F1"))
    try:
        with pytest.raises(ConnectorError, match="is the watched folder itself"):
            r.scan()
    finally:
        r.store.close()
    assert (r.watch / "a.csv").exists()


# --------------------------------------------- what is read: plain files of their own


@pytest.mark.parametrize("same_look", [False, True])
def test_a_file_swapped_for_a_link_after_the_listing_is_not_read(rig: Rig, same_look: bool) -> None:
    elsewhere = rig.outside / "secret.csv"
    elsewhere.write_text(export("SECRET"))  # a valid export: its rows would be stored
    original = rig.watch / "a.csv"
    original.write_text(export("F1"))
    if same_look:  # the exporter made the file look like the target (size, time)
        original.write_text(export("F1").ljust(elsewhere.stat().st_size - 1) + "\n")
        os.utime(original, ns=(elsewhere.stat().st_atime_ns, elsewhere.stat().st_mtime_ns))

    def swap(path: Path) -> None:
        path.unlink()
        path.symlink_to(elsewhere)

    rig.folder.settling = ExporterAtTheRead(rig.watch, swap)
    rig.scan()
    assert rig.stored() == 0
    assert elsewhere.read_text() == export("SECRET")
    for p in rig.watch.rglob("*"):
        assert not p.is_file() or p.is_symlink() or "SECRET" not in p.read_text("latin-1"), p


def test_a_fifo_swapped_in_after_the_listing_does_not_block_the_watcher(rig: Rig) -> None:
    (rig.watch / "a.csv").write_text(export("F1"))
    (rig.watch / "b.csv").write_text(export("F2"))

    def swap(path: Path) -> None:
        if path.name == "a.csv":
            path.unlink()
            os.mkfifo(path)

    rig.folder.settling = ExporterAtTheRead(rig.watch, swap)
    scan = threading.Thread(target=rig.scan, daemon=True)
    scan.start()
    scan.join(60)  # a guard against a hang, not a timing
    blocked = scan.is_alive()
    if blocked:  # release the reader (the old code opened the FIFO and waited)
        os.close(os.open(rig.watch / "a.csv", os.O_WRONLY | os.O_NONBLOCK))
        scan.join()
    assert not blocked, "the scan blocked on a FIFO"
    assert rig.stored("F2") == 2 and (rig.folder.done / "b.csv").exists()


@pytest.mark.parametrize("protected", [False, True])
def test_a_hard_link_is_read_only_where_the_kernel_protects_them(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, protected: bool
) -> None:
    """Without ``fs.protected_hardlinks`` a writer may link any file of the disk into
    the folder: refused. With it (the default) a link names only a file its writer could
    read anyway (an MES linking exports from its archive): read."""
    from qdspace.connector.linein import folder_files

    monkeypatch.setattr(folder_files, "hardlinks_protected", lambda: protected)
    elsewhere = rig.outside / "other.csv"
    elsewhere.write_text(export("OTHER"))
    os.link(elsewhere, rig.watch / "a.csv")
    rig.scan()
    if protected:
        assert rig.stored() == 2 and (rig.folder.done / "a.csv").exists()
    else:
        assert rig.stored() == 0 and (rig.watch / "a.csv").exists()


def test_links_fifos_and_folders_named_like_exports_are_left_alone_and_logged_once(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    elsewhere = rig.outside / "other.csv"
    elsewhere.write_text(export("OTHER"))
    (rig.watch / "link.csv").symlink_to(elsewhere)
    os.mkfifo(rig.watch / "fifo.csv")
    (rig.watch / "dir.csv").mkdir()
    with caplog.at_level(logging.INFO, "qdspace.connector.linein.folder"):
        rig.scan(3)
    said = [r.getMessage() for r in caplog.records]
    for name, why in [
        ("link.csv", "symbolic link"),
        ("fifo.csv", "no plain file"),
        ("dir.csv", "is a folder"),
    ]:
        assert len([m for m in said if name in m]) == 1, said
        assert any(name in m and why in m for m in said), said
    assert rig.stored() == 0 and elsewhere.read_text() == export("OTHER")
    assert rig.tree() == [LEDGER, "dir.csv", "done", "failed", "fifo.csv", "link.csv"]


# ----------------------------------------------------------- what a file holds


def test_a_file_without_newlines_is_refused_at_its_first_long_line(rig: Rig) -> None:
    with (rig.watch / "a.csv").open("wb") as out:
        out.write(HEADER.encode())
        for _ in range(40):
            out.write(b"x" * (1 << 20))
    rig.folder.settling.unended_s = 0  # no final newline: it waits unended_s first
    tracemalloc.start()
    try:
        rig.scan(3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * LINE_MAX, f"{peak} bytes at the peak for a 40 MiB line"
    errors = (rig.folder.failed / ("a.csv" + ERRORS_SUFFIX)).read_text()
    assert f"a.csv:2: a line longer than {LINE_MAX} bytes" in errors


@pytest.mark.parametrize("line", [b"\x00\n", b"x\n", b"\xff\n"])
def test_a_file_of_lines_that_are_no_rows_is_read_in_bounded_memory(
    rig: Rig, line: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the bounds scaled down (by ten) with the file, so that the test stays quick
    monkeypatch.setattr(folder_read, "CHUNK_ROWS", 5_000)
    monkeypatch.setattr(folder_read, "KEEP_PROBLEMS", 1_000)
    lines = 100_000  # 200 kB: each line is refused
    with (rig.watch / "a.csv").open("wb") as out:
        out.write(HEADER.encode() + line * lines + export("F1").split("\n", 1)[1].encode())
    tracemalloc.start()
    try:
        rig.scan()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"{peak >> 20} MiB at the peak for a 200 kB file"
    assert rig.stored("F1") == 2  # the rows after the bad lines are stored
    with (rig.folder.failed / ("a.csv" + ERRORS_SUFFIX)).open() as f:
        errors = list(csv.reader(f))
    assert len(errors) == 1 + 1_000 + 1
    assert errors[-1] == ["-", "-", f"and {lines - 1_000} more problems, not listed"]
    assert rig.folder.totals.rejected_rows == lines


def test_a_name_with_a_newline_is_logged_quoted_and_kept_one_ledger_line(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    name = "a.csv\n2025-01-01 INFO all is well\x1b[2J.csv"
    (rig.watch / name).write_text(export("F1"))
    with caplog.at_level(logging.INFO, "qdspace.connector.linein.folder"):
        rig.scan()
    assert rig.stored() == 2 and (rig.folder.done / name).exists()
    for record in caplog.records:
        message = record.getMessage()
        assert "\n" not in message and "\x1b" not in message, message
    assert len((rig.watch / LEDGER).read_bytes().splitlines()) == 1


# ------------------------------------------------- a file changed while it is taken


class _Entries(dict[str, Any]):
    """The ledger's entries; a look-up (between the hash and the read) runs ``act``."""

    act: Callable[[], None] = staticmethod(lambda: None)

    def get(self, key: str, default: Any = None) -> Any:
        self.act()
        self.act = lambda: None
        return super().get(key, default)


def test_a_file_rewritten_keeping_its_size_and_time_is_read_again(rig: Rig) -> None:
    path = rig.watch / "a.csv"
    first, second = export("FA"), export("FB")
    path.write_text(first)
    look = path.stat()

    def rewrite() -> None:  # in place, the time set back (a copy tool keeping times)
        path.write_text(second)
        os.utime(path, ns=(look.st_atime_ns, look.st_mtime_ns))

    ledger = Ledger(rig.watch / LEDGER)
    try:
        entries = _Entries(ledger.entries)
        entries.act = rewrite
        ledger.entries = entries
        for _ in range(4):
            rig.folder.scan(ledger)
        (rig.watch / "again.csv").write_text(first)  # the first content, dropped again
        for _ in range(2):
            rig.folder.scan(ledger)
    finally:
        ledger.close()
    assert rig.stored("FB") == 2 and rig.stored("FA") == 2


class _Store:
    """The real store; ``act`` runs at its first ingest (the exporter, meanwhile)."""

    def __init__(self, store: QualityStore, act: Callable[[], None]) -> None:
        self._store = store
        self._act: Callable[[], None] | None = act

    def ingest_rows(self, *args: Any, **kwargs: Any) -> Any:
        if self._act is not None:
            act, self._act = self._act, None
            act()
        return self._store.ingest_rows(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_a_file_replaced_under_its_name_while_read_is_not_moved_unread(rig: Rig) -> None:
    path = rig.watch / "latest.csv"
    path.write_text(export("FA"))
    look = path.stat()

    def replace() -> None:  # the next export under the same name, renamed into place
        new = rig.watch / "latest.csv.part"
        new.write_text(export("FB"))
        os.utime(new, ns=(look.st_atime_ns, look.st_mtime_ns))
        new.replace(path)

    rig.folder.store = _Store(rig.store, replace)
    rig.scan(4)
    assert rig.stored("FA") == 2 and rig.stored("FB") == 2


def test_a_file_gone_between_the_listing_and_its_look_does_not_end_the_scan(rig: Rig) -> None:
    (rig.watch / "a.csv").write_text(export("FA"))
    (rig.watch / "b.csv").write_text(export("FB"))
    (rig.watch / "c.csv").write_text(export("FC"))
    rig.scan(1)
    rig.folder.store = _Store(rig.store, (rig.watch / "b.csv").unlink)
    rig.scan(1)
    assert rig.stored("FA") == 2 and rig.stored("FC") == 2


# --------------------------------------------------------------- the ledger itself


def test_a_ledger_that_is_garbage_costs_its_lines_not_the_start(rig: Rig) -> None:
    at = datetime.now(UTC).isoformat(timespec="seconds")
    good = f'{{"sha256": "ab", "name": "a.csv", "at": "{at}", "outcome": "done"}}\n'.encode()
    (rig.watch / LEDGER).write_bytes(
        good
        + b"\xff\xfe not utf-8\n"
        + b"[" * 200_000
        + b"\n"
        + b'{"sha256": "' + b"c" * 300_000 + b'"}\n'
        + b'["sha256"]\n'
        + good.replace(b"ab", b"cd")
        + b'{"sha256": "ef", "na'  # torn by a crash
    )  # fmt: skip
    ledger = Ledger(rig.watch / LEDGER)
    try:
        assert sorted(ledger.entries) == ["ab", "cd"]
    finally:
        ledger.close()


# ------------------------------------------------------------ a careless operator


def test_a_charset_the_reader_cannot_use_is_refused_when_the_config_is_loaded() -> None:
    base = {"watch": "/x", "files": [{"pattern": "*", "kind": "measurement"}]}
    with pytest.raises(ValidationError, match="charset 'utf-16' is not supported"):
        FolderConfig.model_validate({**base, "charset": "utf-16"})
    with pytest.raises(ValidationError, match="charset 'utf8x' is not known"):
        FolderConfig.model_validate({**base, "charset": "utf8x"})
    assert FolderConfig.model_validate({**base, "charset": "latin-1"}).charset == "latin-1"


def test_many_names_are_matched_once_and_forgotten_when_gone(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = folder_module.kind_of

    def counted(config: FolderConfig, name: str) -> str | None:
        calls.append(name)
        return real(config, name)

    monkeypatch.setattr(folder_module, "kind_of", counted)
    for i in range(300):
        (rig.watch / f"note-{i}.txt").write_text("")
    rig.scan(3)
    assert len(calls) == 300 + 3  # each name once (and done/, failed/, the ledger)
    for i in range(300):
        (rig.watch / f"note-{i}.txt").unlink()
    rig.scan(1)
    assert rig.folder._kinds.keys() == {"done", "failed", LEDGER}
    assert not rig.folder._told


def test_a_stop_is_not_held_up_by_a_backlog(rig: Rig) -> None:
    for i in range(5):
        (rig.watch / f"e{i}.csv").write_text(export(f"F{i}"))
    ledger = Ledger(rig.watch / LEDGER)
    try:
        rig.folder.scan(ledger)
        asked: list[int] = []  # the ledger, done/, e0.csv, e1.csv, then the stop
        rig.folder.scan(ledger, lambda: (asked.append(1), len(asked) > 4)[1])
    finally:
        ledger.close()
    assert rig.stored() == 2 * 2  # two files taken


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file of mode 000")
def test_an_unreadable_file_goes_to_failed_with_why(rig: Rig) -> None:
    path = rig.watch / "a.csv"
    path.write_text(export("F1"))
    path.chmod(0)
    rig.scan()
    errors = (rig.folder.failed / ("a.csv" + ERRORS_SUFFIX)).read_text()
    assert "cannot be read: Permission denied" in errors


def test_done_the_operator_points_outside_the_folder_may_be_a_link(tmp_path: Path) -> None:
    """done/ and failed/ the operator configured outside the watched folder are its own
    paths (an archive on another disk, reached by a link): followed; inside the watched
    folder, where the exporter could plant one, a link is refused (above)."""
    archive = tmp_path / "archive"
    archive.mkdir()
    (tmp_path / "done-link").symlink_to(archive)
    r = make_rig(tmp_path, done=tmp_path / "done-link")
    (r.watch / "a.csv").write_text(export("F1"))
    try:
        r.scan()
    finally:
        r.folder.close()
        r.store.close()
    assert (archive / "a.csv").exists() and not (r.watch / "a.csv").exists()


def test_a_file_another_process_holds_is_read_later_not_failed(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lease held on the file (a share's oplock) makes a non-blocking open say
    EWOULDBLOCK: the export waits for the next scan instead of going to failed/."""
    from qdspace.connector.linein import folder_files

    (rig.watch / "a.csv").write_text(export("F1"))
    open_export = folder_files.Folder.open_export

    def held(self: Any, name: str, listed: Any) -> Any:
        raise BlockingIOError(errno.EWOULDBLOCK, "Resource temporarily unavailable")

    monkeypatch.setattr(folder_files.Folder, "open_export", held)
    rig.scan()
    assert (rig.watch / "a.csv").exists() and not list(rig.folder.failed.iterdir())
    monkeypatch.setattr(folder_files.Folder, "open_export", open_export)
    rig.scan()
    assert (rig.folder.done / "a.csv").exists()
