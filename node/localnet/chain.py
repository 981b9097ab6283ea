"""The local network's chain: one embedded EVM process for all nodes.

The process is ``python -m qdspace.ledger.chain``, its stdout and stderr on ``chain.log``,
which it keeps bounded itself as a node does its ``process.log`` (`process_log_env`).

The launcher starts it before the nodes, gives every member a funded account key
(``DIR/chain.key``) and a ``DIR/ledger.json`` naming the URL and the anchor contract, and
restarts it on the same port and state directory, so a stopped chain comes back with its
blocks and every node reconnects by itself.

A chain started here goes when its owner goes (a finalizer reaps it when the network is
dropped or the interpreter exits), unless the owner hands it over with :meth:`detach`:
``qdspace demo --keep-running`` does, so the nodes it leaves running keep their chain
(issue 21: before, the chain ended with the demo command while every ``ledger.json``
still named it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from qdspace.ledger.chain import DEPLOYMENT_FILE, read_endpoint
from qdspace.ledger.deploy import Deployment, fund_from_dev_account
from qdspace.ledger.errors import LedgerError
from qdspace.ledger.keys import new_key_file
from qdspace.node.errors import NodeError
from qdspace.node.layout import NodeLayout
from qdspace.node.logs import process_log_env
from qdspace.node.runtime.ledger import write_ledger_file
from qdspace.util.ports import free_port

START_TIMEOUT_S = 60.0
MEMBER_FUNDS_WEI = 10**18


def _reap(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class ChainProcess:
    """The embedded chain as a child process on a fixed loopback port."""

    state_dir: Path
    python: str = sys.executable
    env: dict[str, str] | None = None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    _reaper: weakref.finalize[[subprocess.Popen[bytes]], ChainProcess] | None = field(
        default=None, repr=False
    )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.state_dir.parent / "chain.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def deployment(self) -> Deployment:
        """Where the anchor contract is (deployed by the chain process on first start)."""
        try:
            return Deployment.read(self.state_dir / DEPLOYMENT_FILE)
        except LedgerError as exc:
            raise NodeError(f"chain: {exc}") from None

    def start(self) -> None:
        """Start (or restart) the chain and wait until it answers."""
        if self.running:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        cmd = [self.python, "-m", "qdspace.ledger.chain", "--port", str(self.port)]
        cmd += ["--state-dir", str(self.state_dir)]
        env = {**(os.environ if self.env is None else self.env), **process_log_env(self.log_path)}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,  # the chain rotates its log
                start_new_session=True,
            )
        # a network dropped without stop() (or the interpreter exiting) takes its chain along
        self._reaper = weakref.finalize(self, _reap, self.process)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            endpoint = read_endpoint(self.state_dir)
            if endpoint is not None and endpoint.pid == self.process.pid:
                return
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise NodeError(f"chain process exited while starting; {self.log_path}:\n{tail}")
            if time.monotonic() > deadline:
                self.stop()
                raise NodeError(f"chain did not come up in {START_TIMEOUT_S:.0f}s")
            time.sleep(0.05)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def detach(self) -> None:
        """Let the chain outlive this object and this interpreter (stop it by its pid)."""
        if self._reaper is not None:
            self._reaper.detach()
            self._reaper = None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the chain fsyncs and exits), SIGKILL only if it does not."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL: the chain vanishes as in a crash (its journal keeps what it acknowledged)."""
        if self.running:
            assert self.process is not None
            self.process.kill()
            self.process.wait()

    def provision(self, directory: Path) -> str:
        """Give the member in ``directory`` a funded account and its ``ledger.json``."""
        key_path = NodeLayout(directory).chain_key
        if key_path.exists():
            from qdspace.ledger.keys import load_signer

            address = load_signer(key_path).address
        else:
            address = new_key_file(key_path).address
        dep = self.deployment
        try:
            fund_from_dev_account(self.url, address, MEMBER_FUNDS_WEI)
        except LedgerError as exc:
            raise NodeError(f"chain: funding {directory.name}'s account failed: {exc}") from None
        write_ledger_file(directory, self.url, dep.address, dep.chain_id)
        return address
