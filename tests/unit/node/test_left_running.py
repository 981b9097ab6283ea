"""Stopping what ``demo --keep-running`` left: everything of ours goes, nothing else.

Real processes, no sockets: a stand-in "node" (a Python process in its own session,
its directory on its command line) with a child that ignores SIGTERM, and a pid file
entry whose pid now belongs to an unrelated process.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from qdspace.node.errors import NodeError
from qdspace.node.localnet.left_running import (
    RunningProcess,
    group_members,
    is_ours,
    processes_file,
    stop_left_running,
    write_processes,
)

# a parent that exits on SIGTERM, with a child in its group that ignores SIGTERM
PARENT = """
import signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
print(child.pid, flush=True)
time.sleep(120)
"""


def _spawn(marker: Path) -> tuple[subprocess.Popen[str], int]:
    marker.mkdir(parents=True, exist_ok=True)
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(marker)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    return parent, child


def test_stop_ends_the_process_and_the_children_it_leaves(tmp_path: Path) -> None:
    node = tmp_path / "nodes" / "cellex"
    parent, child = _spawn(node)
    write_processes(tmp_path, [RunningProcess("cellex", parent.pid, str(node))])
    try:
        outcome = stop_left_running(tmp_path, timeout=5)
        parent.wait(5)  # reap our own child (a demo's nodes are reaped by init)
        assert outcome == {"cellex": "stopped"}
        deadline = time.monotonic() + 5
        while group_members(parent.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert group_members(parent.pid) == []
        assert not processes_file(tmp_path).exists()
    finally:
        parent.kill()
        parent.wait()
        assert parent.stdout is not None
        parent.stdout.close()
        subprocess.run(["kill", "-9", str(child)], capture_output=True)


def test_a_reused_pid_is_left_alone(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        stale = RunningProcess("sunarc", other.pid, str(tmp_path / "nodes" / "sunarc"))
        assert not is_ours(stale)
        write_processes(tmp_path, [stale])
        assert stop_left_running(tmp_path) == {"sunarc": "was not running"}
        assert other.poll() is None  # still running
    finally:
        other.kill()
        other.wait()


def test_no_pid_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(NodeError, match="no network left running"):
        stop_left_running(tmp_path)
