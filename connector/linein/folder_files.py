"""The export folder's file-system side, safe against whoever writes into the folder.

An MES exporter (or a script gone wrong, or anyone with the share's password) can put
any entry into the watched folder, and rename or replace one at any moment. Nothing it
does there may make the connector read, write or move a file outside the folder, block,
or move an export it never read. Why each rule:

* The folders are held open (`Folder`): every name is looked up in the folder checked
  at the start. A ``done/`` swapped for a symbolic link to ``/etc`` would otherwise
  receive the exports and their errors files (the audit's case); a ``done``/``failed``
  that is a link, or no folder, is refused at the start with what it is.
* An export is opened once (`Folder.open_export`: ``O_NOFOLLOW | O_NONBLOCK``), checked
  to be a plain file with one name and the very file the scan listed, and then hashed,
  read and, across file systems, copied from that one descriptor. Between the listing
  and the read the name can be swapped for a link to the node's key file (read, and its
  first line quoted into the errors file) or for a FIFO (an open that blocks for ever,
  and with it the watcher). A hard link is not read either where the kernel lets
  anyone link any file (``fs.protected_hardlinks`` off): its other name can be any file
  of that file system; with the setting on (the default) it is read (`hardlinks_protected`).
* ``done``/``failed`` inside the watched folder (the default) are opened from the watched
  folder one component at a time, none of them followed if it is a link
  (`Folder.within`): a ``done`` configured as ``archive/done`` had only its last part
  checked, and an ``archive`` the exporter made a link to any folder the node may write
  received the exports (and the made folders) there. A path outside the watched folder
  is the operator's own and is followed (an archive reached by a link).
* Files we write (an errors file, a copy across file systems) are created ``O_EXCL |
  O_NOFOLLOW`` under a temporary name and renamed into place (`Folder.create`): a
  symbolic link planted under that name was written through, truncating its target.
  They are the owner's only (``util.files.PRIVATE``, as the node's other data files): an
  errors file quotes the rows it refuses, and a copy holds them all.
* A file is moved aside only while its name is still the file read, unchanged since it
  was listed (`move`): an exporter that writes every export under one name
  (``latest.csv``, replaced by a rename) may put the next one there while this one is
  read, or rewrite it in place after the read, setting its size and time back (a copy
  tool keeping times); the new content is read once it settles, never moved unread.
  In place is seen by the inode's change time (``st_ctime``), which every write, truncate
  and ``utime`` moves on and no unprivileged writer can set back; the file kept it
  through settling (and it is checked again when the file is opened), so a change after
  the read falls in a later clock tick (Linux 6.13 and later also time a change that
  follows a ``stat`` finely). Rehashing the file before the move would cost a second
  read and leave the same window. What remains: the few microseconds between that
  check and the rename (POSIX has no rename-if-unchanged); a change in the same clock
  tick (a few milliseconds) as the one before the file settled, possible only with a
  ``settle_s`` shorter than that tick on an older kernel; a wall clock stepped back; a
  writer through a shared ``mmap``, whose change time may lag; and a network file
  system whose cached attributes lag behind another client's write.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import functools
import hashlib
import io
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO

from qdspace.connector.errors import ConnectorError, IngestFileError
from qdspace.connector.ingest import RowError
from qdspace.util.files import PRIVATE

ERRORS_SUFFIX = ".errors.csv"
#: a file name's bytes at most (Linux NAME_MAX); a name moved aside is cut so that with
#: ERRORS_SUFFIX and the ".tmp" of a file being written it still fits
NAME_MAX = 255
TARGET_MAX = NAME_MAX - len(ERRORS_SUFFIX + ".tmp")

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: O_NONBLOCK: a FIFO put in a file's place opens at once (and is then refused)
#: a folder looked at, not read: passing through it is enough (`Folder.below`)
_UP = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: most parents `Folder.below` walks up (a path of PATH_MAX bytes has fewer)
_MAX_DEPTH = 4096
#: most links `parts_below` follows (as the kernel's own ELOOP limit)
_MAX_HOPS = 40


class NotAnExport(IngestFileError):
    """An entry that is no plain file of its own (a link, FIFO, device, folder, hard link),
    or one replaced since the scan listed it: not read, left where it is."""


class Replaced(ConnectorError):
    """The name of a file read now names another file: the new one is read later."""


def shown(name: str) -> str:
    """``name`` as logged: as it is, or quoted with its control characters (a newline
    would forge a log line) and bytes that are no UTF-8 escaped."""
    return name if name.isprintable() else repr(name)


def refusal(st: os.stat_result) -> str | None:
    """Why the entry whose (not followed) status is ``st`` is not read; None: it is."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link: not read (it may point anywhere); copy the file in"
    if stat.S_ISDIR(st.st_mode):
        return "is a folder: not read"
    if not stat.S_ISREG(st.st_mode):
        return "is no plain file (a FIFO, socket or device): not read"
    if st.st_nlink > 1 and not hardlinks_protected():
        return (
            f"has {st.st_nlink} names (a hard link): not read (its other name may be any "
            "file); copy the file in"
        )
    return None


@functools.cache
def hardlinks_protected() -> bool:
    """Whether the kernel lets a user hard-link only files it owns or may read and write
    (``fs.protected_hardlinks``, on by default in Linux distributions). Then a hard link
    in the folder names nothing its writer could not read anyway (an MES that publishes
    exports by linking them from its archive), and it is read; otherwise its other name
    may be any file on the disk (``/etc/shadow``, a key), and it is refused."""
    try:
        with open("/proc/sys/fs/protected_hardlinks", "rb") as setting:
            return setting.read().strip() == b"1"
    except OSError:  # not Linux, or no /proc: assume the worst
        return False


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def unchanged(a: os.stat_result, b: os.stat_result) -> bool:
    """Whether ``a`` and ``b`` are the same file with the same content and status, as far
    as the kernel tells: size, modification time and change time (see the module's notes)."""
    look = ("st_size", "st_mtime_ns", "st_ctime_ns")
    return same_file(a, b) and all(getattr(a, k) == getattr(b, k) for k in look)


def folder_refusal(st: os.stat_result) -> str | None:
    """Why the entry whose (not followed) status is ``st`` is not used as a folder."""
    if stat.S_ISLNK(st.st_mode):
        return (
            "is a symbolic link; give the folder itself (whoever writes beside it could "
            "point the link anywhere)"
        )
    if not stat.S_ISDIR(st.st_mode):
        return "not a folder"
    return None


def created(name: str, dir_fd: int, flags: int = _NEW) -> int:
    """A descriptor of a new file ``name`` in the folder ``dir_fd``, the owner's only
    (``flags`` with ``O_CREAT | O_EXCL | O_NOFOLLOW``); whatever had the name (a file
    left by a crash, a planted link) is removed first, never written through."""
    try:
        return os.open(name, flags, PRIVATE, dir_fd=dir_fd)
    except FileExistsError:
        os.unlink(name, dir_fd=dir_fd)  # a link itself, never its target
        return os.open(name, flags, PRIVATE, dir_fd=dir_fd)


class Folder:
    """A folder held open: its names are looked up in it, wherever its path now leads."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd

    @classmethod
    def open(cls, path: Path, *, create: bool = False, follow: bool = False) -> Folder:
        """``path`` (made when ``create``); a symbolic link is refused unless ``follow``
        (the watched folder: the operator's own path, which the exporter cannot replace)."""
        if create:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileExistsError):
                    os.mkdir(path)
            except OSError as exc:
                raise ConnectorError(f"{path}: cannot be made: {exc.strerror}") from None
        try:
            st = os.stat(path, follow_symlinks=follow)
        except OSError as exc:
            raise ConnectorError(f"{path}: cannot open: {exc.strerror}") from None
        why = folder_refusal(st)
        if why is not None:
            raise ConnectorError(f"{path}: {why}")
        try:
            fd = os.open(path, _DIR & ~os.O_NOFOLLOW if follow else _DIR)
        except OSError as exc:  # replaced since the look just now
            raise ConnectorError(f"{path}: cannot open as a folder: {exc.strerror}") from None
        return cls(path, fd)

    def within(self, parts: Sequence[str], path: Path, *, create: bool = False) -> Folder:
        """The folder ``path``, ``parts`` below this one (made when ``create``), each part
        looked up in the one above it held open and refused if it is a link: every part
        is the exporter's to replace."""
        fd, where = os.dup(self.fd), self.path
        for part in parts:
            where = where / part
            fd = _step(fd, part, where, path, create)
        return Folder(path, fd)

    def close(self) -> None:
        os.close(self.fd)

    def same_as(self, other: Folder) -> bool:
        return same_file(os.fstat(self.fd), os.fstat(other.fd))

    def below(self, other: Folder) -> bool:
        """Whether this folder is ``other`` or lies under it on disk, whatever paths led
        to either: its parents are walked up by ``..`` from the folder held open."""
        goal = os.fstat(other.fd)
        fd = os.dup(self.fd)
        try:
            st = os.fstat(fd)
            for _ in range(_MAX_DEPTH):
                if same_file(st, goal):
                    return True
                # O_PATH: a parent the node may only pass through (mode 0711) is not read
                parent = os.open("..", _UP, dir_fd=fd)
                os.close(fd)
                fd = parent
                up = os.fstat(fd)
                if same_file(up, st):  # the root: its .. is itself
                    return False
                st = up
            return False
        finally:
            os.close(fd)

    def entries(self) -> list[os.DirEntry[str]]:
        """The folder's entries by name (their stat is looked up in this folder)."""
        with os.scandir(self.fd) as found:
            return sorted(found, key=lambda e: e.name)

    def lstat(self, name: str) -> os.stat_result:
        return os.stat(name, dir_fd=self.fd, follow_symlinks=False)

    def taken(self, name: str) -> bool:
        try:
            self.lstat(name)
        except FileNotFoundError:
            return False
        return True

    def open_export(self, name: str, listed: os.stat_result) -> IO[bytes]:
        """``name`` open for reading, if it is still the plain file ``listed`` (its
        not-followed status when the folder was listed); else `NotAnExport`."""
        try:
            fd = os.open(name, _READ, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise NotAnExport(f"{shown(name)}: {refusal(self.lstat(name))}") from None
            raise
        try:
            st = os.fstat(fd)
            why = refusal(st)
            if why is None and not same_file(st, listed):
                why = "was replaced since it was listed: read once the new file settles"
            elif why is None and not unchanged(st, listed):
                why = "was changed since it was listed: read once it settles"
            if why is not None:
                raise NotAnExport(f"{shown(name)}: {why}")
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def create(self, name: str) -> IO[bytes]:
        """A new file ``name``, for writing, the owner's only (`created`)."""
        return os.fdopen(created(name, self.fd), "wb")

    def rename(self, name: str, to: Folder, new: str) -> None:
        os.replace(name, new, src_dir_fd=self.fd, dst_dir_fd=to.fd)

    def unlink(self, name: str) -> None:
        os.unlink(name, dir_fd=self.fd)


def parts_below(path: Path, folder: Folder) -> tuple[str, ...] | None:
    """The parts of ``path`` below ``folder`` on disk, or None: it does not pass through it.

    ``path`` is resolved part by part, its links followed, as ``realpath`` would, until
    the folder reached so far is ``folder`` (the same inode, whatever path led there):
    what is left, links not yet followed among it, is returned unresolved, for
    `Folder.within` to open without following any. Resolving the whole path first would
    follow a link the exporter put inside the watched folder out of it."""
    goal = os.fstat(folder.fd)
    pending = list(Path(os.path.abspath(path)).parts[1:])
    at, hops = Path("/"), 0
    while True:
        try:
            if same_file(os.stat(at), goal):
                return tuple(pending)
            if not pending:
                return None
            part = pending.pop(0)
            if part == "..":
                at = at.parent
                continue
            st = os.lstat(at / part)
        except OSError:  # missing, not a folder, not ours to look at: not through it
            return None
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > _MAX_HOPS:
                return None
            target = Path(os.readlink(at / part))
            if target.is_absolute():
                at, pending = Path("/"), [*target.parts[1:], *pending]
            else:
                pending = [*target.parts, *pending]
            continue
        at = at / part


def _step(fd: int, part: str, where: Path, path: Path, create: bool) -> int:
    """The folder ``part`` in the folder open as ``fd``, not followed; ``fd`` is closed
    whatever comes of it."""
    said = f"{path}:" if where == path else f"{path}: {where}"
    try:
        if create:
            with contextlib.suppress(FileExistsError):  # a link there too: refused below
                os.mkdir(part, dir_fd=fd)
        why = folder_refusal(os.stat(part, dir_fd=fd, follow_symlinks=False))
        if why is not None:
            raise ConnectorError(f"{said} {why}")
        return os.open(part, _DIR, dir_fd=fd)
    except OSError as exc:  # missing, or replaced since the look just now
        raise ConnectorError(f"{said} cannot open as a folder: {exc.strerror}") from None
    finally:
        os.close(fd)


def sha256_of(handle: IO[bytes]) -> str:
    """The SHA-256 of the open file ``handle`` (read from its start; left at its start)."""
    handle.seek(0)
    digest = hashlib.sha256()
    while block := handle.read(1 << 20):
        digest.update(block)
    handle.seek(0)
    return digest.hexdigest()


def write_errors(folder: Folder, name: str, problems: Iterable[RowError], more: int = 0) -> None:
    """``folder/name`` (line, field, reason), written whole or not at all; ``more``
    problems not listed are counted in a last line."""
    tmp = name + ".tmp"
    # backslashreplace: a reason may quote text no UTF-8 file holds (a lone surrogate)
    with io.TextIOWrapper(
        folder.create(tmp), encoding="utf-8", errors="backslashreplace", newline=""
    ) as out:
        writer = csv.writer(out)
        writer.writerow(["line", "field", "reason"])
        for p in problems:
            writer.writerow([p.line, p.field, p.reason])
        if more:
            writer.writerow(["-", "-", f"and {more} more problems, not listed"])
    folder.rename(tmp, folder, name)


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


def free_name(folder: Folder, name: str, digest: str) -> str:
    """``name`` (`fitted`), or with the content hash in it when that name is taken in
    ``folder`` (an earlier export of that name is never overwritten)."""
    target = fitted(name)
    if not folder.taken(target):
        return target
    stem, suffix = os.path.splitext(name)
    for i in range(1, 1000):
        target = fitted(f"{stem}.{digest[:12]}{'.' + str(i) if i > 1 else ''}{suffix}")
        if not folder.taken(target):
            return target
    raise ConnectorError(f"{folder.path}: no free name for {shown(name)}")


def move(
    src: Folder,
    name: str,
    handle: IO[bytes] | None,
    to: Folder,
    target: str,
    listed: os.stat_result | None,
) -> None:
    """Move ``src/name`` to ``to/target`` by one rename; across file systems a copy
    from ``handle`` renamed into place, then ``name`` removed. With ``handle`` (the file
    read) only while ``name`` is still that file, unchanged since it was ``listed``
    (else `Replaced`)."""
    if handle is not None:
        _still(src, name, handle, listed)
    try:
        src.rename(name, to, target)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV or handle is None:
            raise
    tmp = f".{target}.tmp"
    handle.seek(0)
    held = os.fstat(handle.fileno())
    with to.create(tmp) as dst:
        while block := handle.read(1 << 20):
            dst.write(block)
        dst.flush()
        # what a rename keeps: the exporter's permission bits (never set-id or sticky
        # ones, which a copy must not make ours) and its times
        os.fchmod(dst.fileno(), stat.S_IMODE(held.st_mode) & 0o777)
        os.utime(dst.fileno(), ns=(held.st_atime_ns, held.st_mtime_ns))
        os.fsync(dst.fileno())
    to.rename(tmp, to, target)
    _still(src, name, handle, listed)
    src.unlink(name)


def _still(src: Folder, name: str, handle: IO[bytes], listed: os.stat_result | None) -> None:
    try:
        now = src.lstat(name)
    except FileNotFoundError:
        now = None
    held = os.fstat(handle.fileno())
    if now is None or not same_file(now, held):
        raise Replaced(f"{shown(name)} was replaced while it was read")
    if listed is not None and not unchanged(held, listed):
        raise Replaced(f"{shown(name)} was changed in place since it was read")
