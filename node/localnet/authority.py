"""An ``authority serve`` process for local networks, tests and benchmarks.

It binds port 0 unless told otherwise and is found through the run file the service
writes (``AUTHORITY/run/authority.json``), so parallel tests never race for a port. Its
members run on this machine (or its LAN) and publish loopback or private addresses, so it
takes them (``--allow-local-endpoints``) unless told ``allow_local_endpoints=False``. Its
stdout and stderr go to ``logs/authority.log``, which the service keeps bounded itself, as
a node does its ``process.log`` (`process_log_env`): a demo kept running runs for weeks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from qdspace.node.errors import NodeError
from qdspace.node.layout import AuthorityLayout
from qdspace.node.logs import process_log_env

START_TIMEOUT_S = 60.0


class AuthorityProcess:
    """``qdspace authority serve --dir DIR`` in its own session, logging to ``log_path``."""

    def __init__(
        self,
        directory: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        hostnames: Sequence[str] = (),
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        allow_local_endpoints: bool = True,
    ) -> None:
        self.directory = directory.resolve()
        self.allow_local_endpoints = allow_local_endpoints
        self.host, self.port, self.hostnames = host, port, list(hostnames)
        self.python, self.env = python, env
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def log_path(self) -> Path:
        return self.directory / "logs" / "authority.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = START_TIMEOUT_S) -> str:
        """Start the service and wait for its run file; its https URL."""
        runtime = AuthorityLayout(self.directory).runtime
        runtime.unlink(missing_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        args = [self.python, "-m", "qdspace", "authority", "serve", "--dir", str(self.directory)]
        args += ["--host", self.host, "--port", str(self.port)]
        for name in self.hostnames:
            args += ["--hostname", name]
        if self.allow_local_endpoints:
            args.append("--allow-local-endpoints")
        env = {**(os.environ if self.env is None else self.env), **process_log_env(self.log_path)}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise NodeError(f"authority serve exited while starting:\n{tail}")
            try:
                data = json.loads(runtime.read_text())
            except (FileNotFoundError, ValueError):
                time.sleep(0.05)
                continue
            if data.get("pid") == self.process.pid:
                self.url = str(data["url"])
                return self.url
            time.sleep(0.05)
        self.stop()
        raise NodeError(f"authority serve did not start in {timeout:.0f}s; see {self.log_path}")

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.process is None:
            return None
        if self.running:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __enter__(self) -> AuthorityProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
