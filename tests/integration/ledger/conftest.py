"""Ledger integration fixtures: a real embedded chain process, funded accounts, a node database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, event

from qdspace.ledger.chain import read_endpoint
from qdspace.ledger.client import LedgerClient
from qdspace.ledger.deploy import Deployment, fund_from_dev_account
from qdspace.ledger.keys import ChainSigner, new_key_file
from qdspace.ledger.queue import LeafQueue
from qdspace.ledger.queue_schema import ensure_schema
from qdspace.util.ports import free_port

START_TIMEOUT_S = 60.0
ONE_ETH = 10**18


@dataclass
class ChainProcess:
    """``python -m qdspace.ledger.chain`` as a child process that a test can kill and restart."""

    state_dir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with (self.state_dir.parent / f"{self.state_dir.name}.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "qdspace.ledger.chain",
                    "--port",
                    str(self.port),
                    "--state-dir",
                    str(self.state_dir),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            ep = read_endpoint(self.state_dir)
            if ep is not None and ep.pid == self.proc.pid:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"chain process exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("chain process did not come up")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as in a crash or a pulled plug."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def deployment(self) -> Deployment:
        return Deployment.read(self.state_dir / "anchor.json")

    def client(self) -> LedgerClient:
        dep = self.deployment
        return LedgerClient(self.url, dep.address, expected_chain_id=dep.chain_id, timeout_s=5)


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[ChainProcess]:
    proc = ChainProcess(tmp_path / "chain", free_port())
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def signer(chain: ChainProcess, tmp_path: Path) -> ChainSigner:
    s = new_key_file(tmp_path / "keys" / "chain.key")
    fund_from_dev_account(chain.url, s.address, ONE_ETH)
    return s


def sqlite_engine(path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _wal(dbapi_conn: object, _record: object) -> None:
        cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
        cur.execute("PRAGMA journal_mode=WAL")
        cur.close()

    return engine


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[LeafQueue]:
    engine = sqlite_engine(tmp_path / "node.db")
    ensure_schema(engine)
    yield LeafQueue(engine)
    engine.dispose()


@contextmanager
def funded_chain(directory: Path) -> Iterator[tuple[ChainProcess, ChainSigner, LeafQueue]]:
    """A chain process, a funded signer and a leaf queue under ``directory``: for a
    module-scoped fixture of the tests that only read what was anchored (one chain start
    and one funded key for all of them instead of one each)."""
    chain = ChainProcess(directory / "chain", free_port())
    chain.start()
    engine = sqlite_engine(directory / "node.db")
    try:
        signer = new_key_file(directory / "keys" / "chain.key")
        fund_from_dev_account(chain.url, signer.address, ONE_ETH)
        ensure_schema(engine)
        yield chain, signer, LeafQueue(engine)
    finally:
        engine.dispose()
        chain.stop()
