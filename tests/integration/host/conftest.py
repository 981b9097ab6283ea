"""Fixtures of the managed-host tests: a host directory and its process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from qdspace.node.client import OperatorClient, http_client
from qdspace.node.host.config import HostLayout
from qdspace.node.localnet.network import LocalNetwork

DEADLINE_S = 60.0
T = TypeVar("T")


def qdspace(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qdspace", *args], capture_output=True, text=True, timeout=120
    )


def eventually(probe: Callable[[], T | None], what: str) -> T:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.1)
    pytest.fail(f"not within {DEADLINE_S:.0f}s: {what}")


@dataclass
class Host:
    workdir: Path
    directory: Path
    net: LocalNetwork
    api_port: int
    ports: dict[str, int]
    tokens: dict[str, str] = field(default_factory=dict)
    regulator_ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    #: what runs ``host start`` (after the interpreter), and variables added to its environment
    launcher: tuple[str, ...] = ("-m", "qdspace")
    env: dict[str, str] = field(default_factory=dict)

    @property
    def files(self) -> HostLayout:
        return HostLayout(self.directory)

    @property
    def api(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def log(self) -> Path:
        return self.workdir / "host.log"

    def client(self, token: str) -> httpx.Client:
        return http_client(self.api, token, 60.0, ca_file=self.files.tls.ca_cert)

    def operator(self, tenant: str) -> OperatorClient:
        """The tenant's operator API through the host's one listener, with its token."""
        return OperatorClient(
            self.api, self.tokens[tenant], timeout=120, ca_file=self.files.tls.ca_cert
        )

    def add_tenant(self, name: str, role: str, *options: str) -> None:
        """``qdspace host tenant add`` (its gRPC port from `ports`) and its operator token."""
        done = qdspace("host", "tenant", "add", "--dir", str(self.directory), "--name", name,
                       "--role", role, "--authority", str(self.net.authority_dir),
                       "--grpc-port", str(self.ports[name]), *options)  # fmt: skip
        assert done.returncode == 0, done.stderr
        out = self.workdir / f"{name}.token"
        done = qdspace("host", "tenant", "token", "--dir", str(self.directory), "--name", name,
                       "--out", str(out))  # fmt: skip
        assert done.returncode == 0, done.stderr
        self.tokens[name] = out.read_text().strip()

    def host_token(self) -> str:
        return self.files.host_token.read_text().strip()

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, *self.launcher, "host", "start", "--dir", str(self.directory)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **self.env} if self.env else None,
            )
        process = self.process

        def up() -> bool:
            assert process.poll() is None, self.log.read_text()[-3000:]
            if not self.files.runtime.exists():
                return False
            try:
                with self.client("") as anonymous:
                    return anonymous.get("/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        eventually(up, "the host to serve")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.process = None
