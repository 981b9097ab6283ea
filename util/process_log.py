"""A process whose stdout and stderr go to a file keeps that file bounded itself.

The local network (`node.localnet`) starts its processes with their stdout and stderr on
a log file: a node's or host's ``logs/process.log``, the chain's ``chain.log``, the
authority service's ``logs/authority.log``, the demo's line tool and connector logs.
That file holds what no log handler sees (a crash's traceback, gRPC core's own lines,
warnings) and, for a process without a log file of its own, every line it logs.
``qdspace demo --keep-running`` leaves them running for weeks, so the file is rotated
like a log file: at `LOG_FILE_BYTES` it is renamed ``NAME.1`` (the older ones moved up to
``.LOG_FILE_KEEP``, the oldest dropped).

The process does it itself (`keep_output_bounded`): the demo command ends while its
processes go on, so nothing in the parent may stand between a child and its output, and
a pipe to a reader thread would also lose a dying process's last words. The parent only
opens the file and names it in `PROCESS_LOG_ENV` (`process_log_env`); the child's fds 1
and 2 stay the file itself, written by the kernel even as the process dies, and a thread
in the child checks the file's size every `OUTPUT_CHECK_S`: past the limit it renames it
``NAME.1`` (older ones moved up, the oldest dropped), opens a new one and puts it under
fds 1 and 2 (``dup2``). A file can pass the limit by what is written in one check; a
child of the process keeps the fd it was born with.

It lives here, not in `node.logs` (which uses it), because the chain (`ledger.chain`)
and the demo's line tool may not import the node; it imports only the standard library,
so an entry point that calls it pays no import for it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

#: the size at which a log file is rotated, and how many rotated files are kept (the
#: node's own log, `node.logs`, too)
LOG_FILE_BYTES = 64 * 1024 * 1024
LOG_FILE_KEEP = 4
#: the file a process's stdout and stderr go to, named by the local network that started
#: it: the process keeps that file bounded itself (`keep_output_bounded`)
PROCESS_LOG_ENV = "QDSPACE_PROCESS_LOG"
#: the size at which that file is rotated, when not `LOG_FILE_BYTES` (the tests: less)
PROCESS_LOG_BYTES_ENV = "QDSPACE_PROCESS_LOG_BYTES"
#: how often a process looks at the size of its output file
OUTPUT_CHECK_S = 0.5


def process_log_env(path: Path) -> dict[str, str]:
    """The environment a process started with its stdout and stderr on ``path`` is given,
    so that it keeps ``path`` bounded itself (`keep_output_bounded`); absolute, as a
    process may change its working directory."""
    return {PROCESS_LOG_ENV: str(path.absolute())}


def keep_output_bounded() -> threading.Thread | None:
    """Rotate this process's stdout/stderr file (`PROCESS_LOG_ENV`) at its limit from a
    daemon thread; None when no file is named or fds 1 and 2 are not on it.

    The variables are taken out of the environment: a process this one starts has fds
    of its own and must not rotate this one's file too."""
    named = os.environ.pop(PROCESS_LOG_ENV, "")
    size = os.environ.pop(PROCESS_LOG_BYTES_ENV, "")
    if not named:
        return None
    limit = int(size) if size.isascii() and size.isdigit() and int(size) > 0 else LOG_FILE_BYTES
    path = Path(named)
    fds = _fds_on(path)
    if not fds:
        return None
    thread = threading.Thread(
        target=_rotate_output, args=(path, fds, limit), name="qdspace-process-log", daemon=True
    )
    thread.start()
    return thread


def _fds_on(path: Path) -> list[int]:
    """Which of fds 1 and 2 are the file ``path`` (nothing when it is gone or elsewhere)."""
    try:
        target = os.stat(path)
        return [
            fd
            for fd in (1, 2)
            if (os.fstat(fd).st_dev, os.fstat(fd).st_ino) == (target.st_dev, target.st_ino)
        ]
    except OSError:
        return []


def _rotate_output(path: Path, fds: list[int], limit: int) -> None:
    while True:
        time.sleep(OUTPUT_CHECK_S)
        try:
            if os.fstat(fds[0]).st_size < limit:
                continue
            if _fds_on(path) != fds:  # moved or replaced by someone else: not ours to cut
                return
            _rotate_onto(path, fds)
        except OSError as exc:  # a full or vanished disk: the output goes on, unrotated
            logging.getLogger("qdspace.util.process_log").warning(
                "process log %s: not rotated any more: %s", path, exc
            )
            return


def _rotate_onto(path: Path, fds: list[int]) -> None:
    """``path`` to ``path.1`` (the older ones up, the oldest dropped), a new ``path``
    under ``fds``: what is written meanwhile lands in one or the other, none is lost."""
    for i in range(LOG_FILE_KEEP - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{i + 1}"))
    os.replace(path, path.with_name(f"{path.name}.1"))
    fresh = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        for fd in fds:
            os.dup2(fresh, fd)
    finally:
        os.close(fresh)
