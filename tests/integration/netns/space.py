"""The data space's services on the namespaces of a :class:`~.hosts.Lan`.

Each piece runs as it would on its own machine, reached only through its address:

- :class:`Chain`: ``python -m qdspace.ledger.chain --host IP`` (the embedded EVM the
  nodes anchor on), and each member's funded account and ``ledger.json`` naming it;
- :class:`Postgres`: a throw-away cluster (``initdb`` into a directory owned by
  ``postgres``; the server refuses to run as root) listening on its host's IP only, with
  password (SCRAM) logins from the subnet and one database per member that asks;
- :class:`AuthorityService`: ``qdspace authority serve`` on its host's IP (HTTPS, its
  certificate naming that IP), and ``qdspace authority enroll`` codes;
- :class:`Member`: a node directory made on the member's host by ``qdspace node join``
  (nothing but the authority's URL and a code) and its ``qdspace node start`` process,
  its three listeners (peer gRPC, operator and regulator APIs, all TLS) bound to the
  member's IP, its certificate naming that IP, its secrets (the database URL) in files.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import ssl
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from qdspace.ledger.chain import DEPLOYMENT_FILE, read_endpoint
from qdspace.ledger.deploy import Deployment, fund_from_dev_account
from qdspace.ledger.keys import new_key_file
from qdspace.node.client import OperatorClient
from qdspace.node.config import NodeSettings
from qdspace.node.layout import AuthorityLayout, NodeLayout
from qdspace.node.runtime.ledger import write_ledger_file

from .hosts import Host, Service, wait_for

PG_BIN = Path(os.environ.get("QDSPACE_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_PORT = 5432
CHAIN_PORT = 8545
AUTHORITY_PORT = 9443
GRPC_PORT = 7443
API_PORT = 8443
REGULATOR_PORT = 9443
MEMBER_FUNDS_WEI = 10**18
START_TIMEOUT_S = 90.0


def qdspace(*args: str) -> list[str]:
    """The ``qdspace`` CLI as run on a host (this interpreter, this checkout)."""
    return [sys.executable, "-m", "qdspace", *args]


def pg_binaries() -> Path | None:
    """PostgreSQL's server binaries, when installed (``$QDSPACE_PG_BIN`` or the newest)."""
    if (PG_BIN / "postgres").exists():
        return PG_BIN
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    return found[-1].parent if found else None


@dataclass
class Chain:
    host: Host
    state_dir: Path
    service: Service | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host.ip}:{CHAIN_PORT}"

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "qdspace.ledger.chain", "--host", self.host.ip]
        argv += ["--port", str(CHAIN_PORT), "--state-dir", str(self.state_dir)]
        self.service = service = self.host.spawn("chain", argv)
        wait_for(
            "the chain to publish its endpoint",
            lambda: (
                (e := read_endpoint(self.state_dir)) is not None and e.pid == service.process.pid
            ),
            START_TIMEOUT_S,
            watch=[service],
        )

    def provision(self, directory: Path) -> str:
        """A funded account for the member in ``directory`` and its ``ledger.json``."""
        address = new_key_file(NodeLayout(directory).chain_key).address
        dep = Deployment.read(self.state_dir / DEPLOYMENT_FILE)
        fund_from_dev_account(self.url, address, MEMBER_FUNDS_WEI)
        write_ledger_file(directory, self.url, dep.address, dep.chain_id)
        return address


@dataclass
class Postgres:
    host: Host
    bin: Path
    data: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="qdn-pg-")))
    service: Service | None = None

    def _psql(self, sql: str) -> None:
        argv = [str(self.bin / "psql"), "-h", str(self.data), "-p", str(PG_PORT)]
        argv += ["-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql]
        self.host.run(argv, user="postgres")

    def start(self) -> None:
        shutil.chown(self.data, "postgres", "postgres")
        cluster = self.data / "cluster"
        initdb = [str(self.bin / "initdb"), "-D", str(cluster), "-U", "postgres", "-E", "UTF8"]
        initdb += ["--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions"]
        self.host.run(initdb, user="postgres", timeout=180)
        subnet = self.host.ip.rsplit(".", 1)[0]
        with (cluster / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {subnet}.0/24 scram-sha-256\n")
        argv = [str(self.bin / "postgres"), "-D", str(cluster), "-p", str(PG_PORT)]
        for setting in (
            f"listen_addresses={self.host.ip}",
            f"unix_socket_directories={self.data}",
            "fsync=off",
            "synchronous_commit=off",
            "max_connections=40",
            "shared_buffers=32MB",
        ):
            argv += ["-c", setting]
        self.service = service = self.host.spawn("postgres", argv, user="postgres")
        ready = [str(self.bin / "pg_isready"), "-q", "-h", self.host.ip, "-p", str(PG_PORT)]
        wait_for(
            "PostgreSQL to accept connections",
            lambda: self.host.run(ready, check=False).returncode == 0,
            START_TIMEOUT_S,
            poll_s=0.5,
            watch=[service],
        )

    def create_database(self, name: str) -> str:
        """A login and a database owned by it; the URL a node on another host connects with."""
        password = secrets.token_urlsafe(16)
        self._psql(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'")
        self._psql(f'CREATE DATABASE "{name}" OWNER "{name}"')
        return f"postgresql+psycopg://{name}:{password}@{self.host.ip}:{PG_PORT}/{name}"

    def stop(self) -> None:
        if self.service is not None and self.service.running:
            import signal

            self.service.process.send_signal(signal.SIGINT)  # fast shutdown
            self.service.stop()
        shutil.rmtree(self.data, ignore_errors=True)


@dataclass
class AuthorityService:
    host: Host
    directory: Path
    service: Service | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host.ip}:{AUTHORITY_PORT}"

    def init(self, space: str) -> None:
        self.host.run(qdspace("authority", "init", "--dir", str(self.directory), "--space", space))

    def start(self) -> None:
        argv = qdspace("authority", "serve", "--dir", str(self.directory), "--host", self.host.ip)
        argv += ["--port", str(AUTHORITY_PORT), "--hostname", self.host.ip]
        argv += ["--allow-local-endpoints"]  # the hosts publish their 10.x addresses
        self.service = service = self.host.spawn("authority", argv)
        runtime = AuthorityLayout(self.directory).runtime

        def published() -> bool:
            try:
                return bool(json.loads(runtime.read_text())["pid"] == service.process.pid)
            except (OSError, ValueError, KeyError):
                return False

        wait_for("the authority service's run file", published, START_TIMEOUT_S, watch=[service])

    def enroll(self, name: str, role: str) -> str:
        """A one-time enrollment code for ``name`` as ``role`` (the command's last line)."""
        argv = qdspace("authority", "enroll", "--dir", str(self.directory), "--name", name)
        done = self.host.run([*argv, "--role", role, "--ttl", "30m"])
        return done.stdout.strip().splitlines()[-1].strip()

    def revoke(self, name: str) -> None:
        argv = qdspace("authority", "revoke", "--dir", str(self.directory), "--member", name)
        self.host.run([*argv, "--reason", "left the data space"])


@dataclass
class Member:
    host: Host
    name: str
    role: str
    directory: Path
    #: environment of the node process beyond the LAN's (QDSPACE_DB_URL_FILE, ...)
    env: dict[str, str] = field(default_factory=dict)
    service: Service | None = None

    @property
    def api_url(self) -> str:
        return f"https://{self.host.ip}:{API_PORT}"

    @property
    def regulator_url(self) -> str:
        return f"https://{self.host.ip}:{REGULATOR_PORT}"

    @property
    def peer_address(self) -> str:
        return f"{self.host.ip}:{GRPC_PORT}"

    @property
    def ca_file(self) -> Path:
        """The space CA: it issued the certificate every listener of the node presents."""
        return NodeLayout(self.directory).ca_cert

    @property
    def token(self) -> str:
        return NodeLayout(self.directory).operator_token.read_text().strip()

    def _secret_file(self, label: str, value: str) -> Path:
        path = self.directory.parent / f".{self.name}.{label}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(value + "\n")
        return path

    def join(self, authority_url: str, code: str) -> None:
        """``qdspace node join`` on this host: keys made here, a certificate by CSR.

        The code is a secret: it reaches the command in a file, not on its command line."""
        code_file = self._secret_file("code", code)
        argv = qdspace("node", "join", "--dir", str(self.directory))
        argv += ["--authority-url", authority_url, "--code-file", str(code_file)]
        argv += ["--hostname", self.host.ip]  # the listeners' certificate names the IP
        argv += ["--advertise", self.peer_address]
        for listener, port in (
            ("grpc", GRPC_PORT),
            ("api", API_PORT),
            ("regulator", REGULATOR_PORT),
        ):
            argv += [f"--{listener}-host", self.host.ip, f"--{listener}-port", str(port)]
        try:
            self.host.run(argv)
        finally:
            code_file.unlink()

    def use_database(self, url: str) -> None:
        """The node's database URL (with its password) from a file: QDSPACE_DB_URL_FILE."""
        self.env["QDSPACE_DB_URL_FILE"] = str(self._secret_file("db-url", url))

    def configure(self, **settings: Any) -> NodeSettings:
        """Change settings in node.json (before the node starts)."""
        updated = NodeSettings.load(self.directory).model_copy(update=settings)
        updated.save()
        return updated

    def settings(self) -> NodeSettings:
        return NodeSettings.load(self.directory)

    def start(self) -> None:
        env = {**self.host.lan.env, **self.env}
        argv = qdspace("node", "start", "--dir", str(self.directory))
        self.service = service = self.host.spawn("node", argv, env=env)
        verify = ssl.create_default_context(cafile=str(self.ca_file))
        wait_for(
            f"{self.name}'s /readyz",
            lambda: (
                httpx.get(f"{self.api_url}/readyz", timeout=3, verify=verify).status_code == 200
            ),
            START_TIMEOUT_S,
            watch=[service],
        )

    def operator(self, timeout: float = 60.0) -> OperatorClient:
        return OperatorClient(self.api_url, self.token, timeout=timeout, ca_file=self.ca_file)
