"""Integration fixtures: a local data space of real node processes on loopback."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qdspace.node.localnet.network import LocalNetwork


@pytest.fixture(scope="session")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    """The reference members (OEM, two suppliers, regulator), started once per session."""
    net = LocalNetwork(tmp_path_factory.mktemp("space"))
    net.create()
    net.start()
    try:
        yield net
    finally:
        net.stop()


def kill_leftovers(workdir: Path, timeout: float = 10.0) -> list[int]:
    """Kill every process whose command line names `workdir` (nodes, chain, Ray workers).

    A demo killed by a test timeout dies alone: the nodes and the chain it started run
    in their own sessions and would outlive it, eating the CPU of every later test.
    """
    marker = str(workdir).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(entry.name))
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in found):
        time.sleep(0.1)
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return found
