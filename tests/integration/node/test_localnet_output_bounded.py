"""The local network's other processes keep their output files bounded, as a node keeps
its ``process.log``: the chain (``chain.log``), the authority service
(``logs/authority.log``) and the demo's line processes (``line/NAME.log``). Each is
started by its launcher with the file named in its environment and rotates it at the
limit into ``NAME.1`` .. ``.4``, the oldest dropped. Before, the launchers named no file
and the chain and the line tool never looked: a demo kept running for weeks filled
these files without end.

The limit is made small (`PROCESS_LOG_BYTES_ENV`), less than what each process prints as
it starts; the processes are real, started by their real launchers.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from qdspace.node.identity.authority import Authority
from qdspace.node.localnet.authority import AuthorityProcess
from qdspace.node.localnet.chain import ChainProcess
from qdspace.node.localnet.line import LineProcess
from qdspace.node.logs import LOG_FILE_KEEP, PROCESS_LOG_BYTES_ENV
from qdspace.util.ports import free_port

from .conftest import wait_for

pytestmark = pytest.mark.integration

LIMIT = 64  # bytes: each process prints more than that as it starts


def small_limit() -> dict[str, str]:
    return {**os.environ, PROCESS_LOG_BYTES_ENV: str(LIMIT)}


def rotated(path: Path) -> list[Path]:
    """``path`` and its rotated files that exist, newest first."""
    names = [path, *(path.with_name(f"{path.name}.{i}") for i in range(1, LOG_FILE_KEEP + 2))]
    return [p for p in names if p.exists()]


def assert_rotated(log: Path, last_words: str, running: Callable[[], bool]) -> None:
    """``log`` was rotated by the running process, what it printed as it started is kept
    (in one file or another), and no file passed the limit by more than a line or two."""
    wait_for(f"{log.name} rotated", log.with_name(f"{log.name}.1").exists, 60)
    wait_for(
        f"{last_words!r} in {log.name}*",
        lambda: last_words in "".join(p.read_text(errors="replace") for p in rotated(log)),
        30,
    )
    assert running()
    files = rotated(log)
    assert len(files) <= 1 + LOG_FILE_KEEP, [p.name for p in files]
    assert all(p.stat().st_size < LIMIT + 4096 for p in files), [p.stat().st_size for p in files]


def test_the_chain_rotates_its_log(tmp_path: Path) -> None:
    chain = ChainProcess(tmp_path / "chain" / "state", env=small_limit())
    try:
        chain.start()
        assert_rotated(chain.log_path, "listening on", lambda: chain.running)
    finally:
        chain.stop()


def test_the_authority_service_rotates_its_log(tmp_path: Path) -> None:
    directory = tmp_path / "authority"
    Authority.init(directory, "bounded-space")
    service = AuthorityProcess(directory, env=small_limit())
    try:
        service.start()
        assert_rotated(service.log_path, "serving on https://", lambda: service.running)
    finally:
        service.stop()


def test_a_line_process_rotates_its_log(tmp_path: Path) -> None:
    """The demo's simulated PECVD tool as the demo starts it (`node.demo.line`)."""
    pytest.importorskip("asyncua", reason="the connect extra is not installed")
    directory = tmp_path / "line" / "pecvd-tool"
    argv = ["-m", "qdspace.node.demo.pecvd_tool", "--dir", str(directory)]
    argv += ["--port", str(free_port())]
    log = tmp_path / "line" / "pecvd-tool.log"
    tool = LineProcess("pecvd-tool", [sys.executable, *argv], log, str(directory))
    try:
        tool.spawn(small_limit())
        assert_rotated(tool.log_path, "serving opc.tcp://", lambda: tool.running)
    finally:
        tool.stop()
