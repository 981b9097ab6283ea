"""What the export-folder connector puts aside, against an exporter that writes into the
watched folder: errors files private to the node, done/ and failed/ reached through no
link the exporter planted on their way, and no file moved there that was changed after
it was read."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from qdspace.connector.errors import ConnectorError
from qdspace.connector.linein.folder import ERRORS_SUFFIX, LEDGER, Ledger

from .test_linein_folder_hostile import Rig, export, make_rig


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = make_rig(tmp_path)
    yield r
    r.folder.close()
    r.store.close()


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The umask most services run with (0o022: files readable by all)."""
    old = os.umask(0o022)
    yield
    os.umask(old)


# ------------------------------------------------------------ errors files


@pytest.mark.usefixtures("loose_umask")
def test_an_errors_file_quoting_rows_is_the_owners_only(rig: Rig) -> None:
    (rig.watch / "a.csv").write_text(export("F1").replace("°C", "secret recipe 42"))
    rig.scan()
    errors = rig.folder.failed / ("a.csv" + ERRORS_SUFFIX)
    assert "secret recipe 42" in errors.read_text()
    assert stat.S_IMODE(errors.stat().st_mode) == 0o600


# -------------------------------------------- done/ and failed/ inside the folder


@pytest.mark.parametrize("which", ["done", "failed"])
def test_a_link_planted_on_the_way_to_done_inside_the_folder_is_refused(
    tmp_path: Path, which: str
) -> None:
    """``done`` configured as ``archive/done`` in the watched folder: the exporter makes
    ``archive`` a link to a folder of its choice; no file goes there, none is made there."""
    watch = tmp_path / "watch"
    watch.mkdir()
    (tmp_path / "outside").mkdir()
    (watch / "archive").symlink_to(tmp_path / "outside")
    r = make_rig(tmp_path, **{which: watch / "archive" / which})
    (r.watch / "a.csv").write_text(export("F1") if which == "done" else "no,header\n")
    try:
        with pytest.raises(ConnectorError, match=rf"{which}: .*archive is a symbolic link"):
            r.scan()
    finally:
        r.folder.close()
        r.store.close()
    assert list(r.outside.iterdir()) == [] and (r.watch / "a.csv").exists()


def test_done_inside_the_folder_named_through_a_link_to_it_is_checked_too(
    tmp_path: Path,
) -> None:
    """The watched folder given by one path (a link the operator made) and done/ by the
    other: still inside, every part the exporter's."""
    watch = tmp_path / "watch"
    watch.mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "watch-link").symlink_to(watch)
    (watch / "sub").symlink_to(tmp_path / "outside")
    r = make_rig(tmp_path, watch=tmp_path / "watch-link", done=watch / "sub" / "done")
    (watch / "a.csv").write_text(export("F1"))
    try:
        with pytest.raises(ConnectorError, match="sub is a symbolic link"):
            r.scan()
    finally:
        r.folder.close()
        r.store.close()
    assert list(r.outside.iterdir()) == [] and (watch / "a.csv").exists()


def test_done_deeper_in_the_folder_is_made_and_used(tmp_path: Path) -> None:
    watch = tmp_path / "watch"
    r = make_rig(tmp_path, done=watch / "archive" / "2025" / "done")
    (r.watch / "a.csv").write_text(export("F1"))
    try:
        r.scan()
    finally:
        r.folder.close()
        r.store.close()
    assert (watch / "archive" / "2025" / "done" / "a.csv").exists() and r.stored() == 2


# ------------------------------------------- a file rewritten in place, times set back


def rewrite_in_place(path: Path, content: str) -> None:
    """``path`` rewritten (the same inode) with ``content`` of its size, its times set
    back (a copy tool keeping times): only its change time tells."""
    look = path.stat()
    assert len(content.encode()) == look.st_size
    with path.open("r+b") as f:
        f.write(content.encode())
    os.utime(path, ns=(look.st_atime_ns, look.st_mtime_ns))
    while path.stat().st_ctime_ns == look.st_ctime_ns:  # within the clock's last tick
        os.utime(path, ns=(look.st_atime_ns, look.st_mtime_ns))
    assert path.stat().st_mtime_ns == look.st_mtime_ns


class _Record:
    """The ledger's ``record``; the first one (after the read, before the move) runs
    ``act`` once it is written."""

    def __init__(self, ledger: Ledger, act: Callable[[], None]) -> None:
        self.record = ledger.record
        self.act: Callable[[], None] | None = act

    def __call__(self, entry: dict[str, Any]) -> None:
        self.record(entry)
        if self.act is not None:
            act, self.act = self.act, None
            act()


@pytest.mark.parametrize("first", ["valid", "refused"])
def test_a_file_rewritten_in_place_after_its_read_is_not_moved_unread(rig: Rig, first: str) -> None:
    """Read (and its rows stored, or refused), then rewritten before the move: the new
    content is read, and a refused first one leaves no errors file behind in failed/."""
    path = rig.watch / "latest.csv"
    content = export("FA")
    path.write_text(content if first == "valid" else content.replace("unit", "umit"))
    ledger = Ledger(rig.watch / LEDGER)
    try:
        rewrite = _Record(ledger, lambda: rewrite_in_place(path, export("FB")))
        ledger.record = rewrite  # type: ignore[method-assign]
        for _ in range(6):
            rig.folder.scan(ledger)
    finally:
        ledger.close()
    assert rewrite.act is None  # the exporter did act
    assert rig.stored("FA") == (2 if first == "valid" else 0) and rig.stored("FB") == 2
    assert (rig.folder.done / "latest.csv").read_text() == export("FB")
    assert list(rig.folder.failed.iterdir()) == []


class _Lookup(dict[str, Any]):
    """The ledger's entries; the look-up of ``digest`` (after the hash) runs ``act``."""

    digest = ""
    act: Callable[[], None] | None = None

    def get(self, key: str, default: Any = None) -> Any:
        if key == self.digest and self.act is not None:
            act, self.act = self.act, None
            act()
        return super().get(key, default)


def test_a_duplicate_rewritten_in_place_after_its_hash_is_not_moved_unread(rig: Rig) -> None:
    """A file of content already ingested is moved without being read: rewritten after
    its hash, it is the new content that would go to done/ unread."""
    (rig.watch / "first.csv").write_text(export("FA"))
    ledger = Ledger(rig.watch / LEDGER)
    try:
        rig.folder.scan(ledger)
        rig.folder.scan(ledger)
        again = rig.watch / "again.csv"
        again.write_text(export("FA"))
        entries = _Lookup(ledger.entries)
        entries.digest = next(iter(ledger.entries))
        entries.act = lambda: rewrite_in_place(again, export("FB"))
        ledger.entries = entries
        for _ in range(6):
            rig.folder.scan(ledger)
    finally:
        ledger.close()
    assert rig.stored("FB") == 2
    assert (rig.folder.done / "again.csv").read_text() == export("FB")


# ------------------------------------------------ the operator's own paths


def test_a_link_of_the_operators_into_the_folder_follows_no_link_of_the_exporters(
    tmp_path: Path,
) -> None:
    """done/ named through the operator's own link to ``watch/sub/done``: the exporter
    replaces ``sub`` by a link to a folder of the node's (here ``outside``). Resolved
    whole, the path led out of the watched folder and files were moved there; resolved
    only up to the watched folder, ``sub`` is a part inside it, and a link there is
    refused at the start."""
    r = make_rig(tmp_path, done=tmp_path / "done-link")
    (r.watch / "sub" / "done").mkdir(parents=True)
    (tmp_path / "done-link").symlink_to(r.watch / "sub" / "done")
    (r.watch / "sub" / "done").rmdir()
    (r.watch / "sub").rmdir()
    (r.outside / "done").mkdir()
    (r.watch / "sub").symlink_to(r.outside)  # the exporter's
    (r.watch / "a.csv").write_text(export("F1"))
    try:
        with pytest.raises(ConnectorError, match="watch/sub is a symbolic link"):
            r.scan()
    finally:
        r.folder.close()
        r.store.close()
    assert not list((r.outside / "done").iterdir()) and (r.watch / "a.csv").exists()


def test_a_link_of_the_operators_into_the_folder_is_inside(tmp_path: Path) -> None:
    """The same link with no link of the exporter's on the way: done/ is the watched
    folder's own ``sub/done``, found by no link when its parts are looked up from it."""
    r = make_rig(tmp_path, done=tmp_path / "done-link")
    (r.watch / "sub" / "done").mkdir(parents=True)
    (tmp_path / "done-link").symlink_to(r.watch / "sub" / "done")
    (r.watch / "a.csv").write_text(export("F1"))
    try:
        r.scan()
    finally:
        r.folder.close()
        r.store.close()
    assert (r.watch / "sub" / "done" / "a.csv").exists()


def test_a_move_across_file_systems_copies_the_file_read_with_its_mode_and_time(
    tmp_path: Path, loose_umask: None
) -> None:
    """done/ on another file system: the file read is copied there, whole, and the copy
    keeps the file's mode and times as a rename would; it was the node's private file
    (0600) with the time of the copy."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("no second file system at /dev/shm")
    done = Path(os.path.realpath(shm)) / f"qdspace-done-{os.getpid()}-{tmp_path.name}"
    r = make_rig(tmp_path, done=str(done))
    try:
        (r.watch / "a.csv").write_text(export("F1"))
        os.chmod(r.watch / "a.csv", 0o4644)  # set-id: never carried over
        os.utime(r.watch / "a.csv", ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
        r.scan()
        assert (done / "a.csv").read_text() == export("F1")
        assert r.tree() == [LEDGER, "failed"] and r.stored() == 2
        st = (done / "a.csv").stat()
        assert stat.S_IMODE(st.st_mode) == 0o644
        assert st.st_mtime_ns == 1_600_000_000_000_000_000
    finally:
        r.folder.close()
        r.store.close()
        for p in done.glob("*"):
            p.unlink()
        done.rmdir()


def test_a_folder_held_open_knows_whether_it_lies_under_another(tmp_path: Path) -> None:
    """The check made once done/ is open (a link swapped between the look and the open):
    by the folders' parents on disk, not their paths."""
    from qdspace.connector.linein.folder_files import Folder

    (tmp_path / "w" / "a" / "b").mkdir(parents=True)
    (tmp_path / "o").mkdir()
    (tmp_path / "way-in").symlink_to(tmp_path / "w" / "a")
    watch = Folder.open(tmp_path / "w")
    held = [Folder.open(tmp_path / p, follow=True) for p in ("w/a/b", "way-in", "o", "w")]
    try:
        assert [f.below(watch) for f in held] == [True, True, False, True]
        assert not watch.below(held[0])
    finally:
        for f in [watch, *held]:
            f.close()


_PASS_THROUGH = """
import sys
from pathlib import Path
from qdspace.connector.linein.config import FolderConfig
from qdspace.connector.linein.folder import FolderConnector
base = Path(sys.argv[1])
cfg = FolderConfig.model_validate({
    "watch": base / "watch", "done": base / "home" / "archive" / "done",
    "failed": base / "home" / "archive" / "failed",
    "files": [{"pattern": "*", "kind": "measurement"}], "settle_s": 0})
FolderConnector(cfg, None).open_folders()
print("opened")
"""


def test_done_under_a_folder_the_node_may_only_pass_through_opens() -> None:
    """done/ outside the watched folder under a parent of another owner, mode 0711 (the
    node passes through it, may not list it): walking up from done/ to check it is not
    inside the watched folder opened each parent for reading, and the connector did not
    start ("Permission denied: '..'")."""
    import shutil
    import subprocess
    import sys
    import tempfile

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root to run the node as another user (setpriv)")
    nobody = 65534
    base = Path(tempfile.mkdtemp(prefix="qdspace-pass-"))
    try:
        os.chmod(base, 0o755)
        (base / "watch").mkdir()
        (base / "home" / "archive").mkdir(parents=True)
        os.chmod(base / "home", 0o711)  # root's: the node only passes through
        for p in (base / "watch", base / "home" / "archive"):
            os.chown(p, nobody, nobody)
        ran = subprocess.run(
            ["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups",
             sys.executable, "-c", _PASS_THROUGH, str(base)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert ran.stdout.strip() == "opened", ran.stderr[-2000:]
    finally:
        shutil.rmtree(base)
