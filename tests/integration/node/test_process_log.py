"""A process the local network starts keeps its stdout/stderr file (``process.log``)
bounded itself, like its own log: rotated at the limit into ``process.log.1`` .. ``.4``,
the oldest dropped, also after the process that started it is gone (``qdspace demo
--keep-running``). Before, the file only grew.

The limit is made small here (`PROCESS_LOG_BYTES_ENV`); the processes are real: one
started the way the local network starts its nodes by a launcher that exits at once,
and a real node of a one-member network.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from qdspace.node.localnet.network import LocalNetwork, MemberSpec
from qdspace.node.logs import LOG_FILE_KEEP, PROCESS_LOG_BYTES_ENV

from .conftest import wait_for

pytestmark = pytest.mark.integration

LIMIT = 4096
CHUNK = 5000  # one log line over the limit: each one is followed by a rotation
CHUNKS = LOG_FILE_KEEP + 3  # more files than are kept

#: writes CHUNKS log lines through the node's logging (to stderr), each time waiting
#: until its output file was rotated, then a last line on fd 1 below Python
CHILD = f"""
import logging, os, time
from qdspace.node.logs import setup_logging
setup_logging("INFO")
for i in range({CHUNKS}):
    before = os.fstat(2).st_ino
    logging.getLogger("qdspace.test").info("chunk %d %s", i, "x" * {CHUNK})
    deadline = time.monotonic() + 30
    while os.fstat(2).st_ino == before and time.monotonic() < deadline:
        time.sleep(0.02)
os.write(1, b"last words\\n")
"""

#: starts CHILD as the local network starts a node (own session, stdout and stderr
#: appended to the file, the file named in its environment) and exits at once
LAUNCHER = f"""
import os, subprocess, sys
from pathlib import Path
from qdspace.node.logs import PROCESS_LOG_BYTES_ENV, process_log_env
path = Path(sys.argv[1])
env = {{**os.environ, **process_log_env(path), PROCESS_LOG_BYTES_ENV: "{LIMIT}"}}
with path.open("ab") as log:
    subprocess.Popen(
        [sys.executable, "-c", sys.argv[2]], stdout=log, stderr=subprocess.STDOUT,
        env=env, start_new_session=True,
    )
"""


def rotated(path: Path) -> list[Path]:
    """``path`` and its rotated files that exist, newest first."""
    names = [path, *(path.with_name(f"{path.name}.{i}") for i in range(1, LOG_FILE_KEEP + 2))]
    return [p for p in names if p.exists()]


def test_a_process_outliving_its_launcher_rotates_its_output_file(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "process.log"
    log.parent.mkdir()
    worktree = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(worktree)}
    launcher = subprocess.run(
        [sys.executable, "-c", LAUNCHER, str(log), CHILD], env=env, timeout=60, check=False
    )
    assert launcher.returncode == 0  # gone: the child rotates on its own
    wait_for("the child's last words", lambda: "last words" in log.read_text(), 120)
    files = rotated(log)
    # before: one file of CHUNKS x CHUNK bytes
    assert [p.name for p in files] == ["process.log"] + [
        f"process.log.{i}" for i in range(1, LOG_FILE_KEEP + 1)
    ]
    assert all(p.stat().st_size < LIMIT + 2 * CHUNK for p in files), [
        p.stat().st_size for p in files
    ]
    # newest first: the fd-1 line written after the last rotation, then one chunk a file
    # back to the oldest kept; the first chunks are dropped
    assert files[0].read_text() == "last words\n"
    for age, path in enumerate(files[1:], start=1):
        assert f"chunk {CHUNKS - age} x" in path.read_text(), (path, path.read_text()[:200])
    kept = "".join(p.read_text() for p in files)
    assert all(f"chunk {i} x" not in kept for i in range(CHUNKS - LOG_FILE_KEEP))


@pytest.fixture
def net(tmp_path: Path) -> Iterator[LocalNetwork]:
    network = LocalNetwork(
        tmp_path,
        [MemberSpec("cellex", "supplier")],
        chain=False,
        env={PROCESS_LOG_BYTES_ENV: "256"},  # less than the lines a node logs as it starts
    )
    network.create()
    try:
        network.start()
        yield network
    finally:
        network.stop()


def test_a_node_of_the_local_network_rotates_its_process_log(net: LocalNetwork) -> None:
    """``qdspace node start`` as the local network runs it: what it logs as it starts
    (on stderr too) passes the limit, and the node rotates its ``process.log``."""
    member = net["cellex"]
    log = member.log_path
    first = log.with_name(f"{log.name}.1")
    wait_for("process.log rotated", first.exists, 30)
    wait_for(  # nothing lost on the way
        "the serving line", lambda: "serving gRPC on" in "".join(map(Path.read_text, rotated(log)))
    )
    assert member.running
    files = rotated(log)
    assert all(p.stat().st_size < 4096 for p in files), [p.stat().st_size for p in files]
    assert member.layout.node_log.stat().st_size > 256  # the node's own log: not this limit
