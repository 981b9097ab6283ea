"""A local data space of real node processes on loopback: the demo and the tests use it.

Each member is its own ``qdspace node start`` process with its own directory, keys
and SQLite file; the network grows with the project (a chain process, a managed
host) by adding members and services here, not in the demo or the fixtures.

With ``hosts`` some members are instead tenants of a managed host (`hosting`): one
``qdspace host start`` process per host, its tenants enrolled with the same authority,
peers of every member and every member theirs (`LocalNetwork.participants`). Tenants
keep their SQLite files inside the host's directory, also when ``pg_url`` is given.

With ``pg_url`` (a PostgreSQL server, as in ``QDSPACE_TEST_PG_URL``) every member's
database is instead a schema of its own on that server, created with the network and
dropped by `LocalNetwork.drop_databases`, so the whole network runs on PostgreSQL.

A node's or host's stdout and stderr go to its ``logs/process.log``, which the process
rotates itself, as its own log (`node.logs.keep_output_bounded`): the nodes of a demo
left running outlive this process, so nothing here may be the one that reads or cuts it.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx
from sqlalchemy import create_engine, text

from qdspace.connector.storage import normalise_url
from qdspace.node.client import OperatorClient, http_client
from qdspace.node.client_transport import read_runtime
from qdspace.node.errors import ConfigError, NodeError
from qdspace.node.identity.authority import Authority
from qdspace.node.identity.member import MemberKeys, load_member_keys
from qdspace.node.init import init_node
from qdspace.node.layout import NodeLayout
from qdspace.node.localnet.chain import ChainProcess
from qdspace.node.localnet.hosting import HostProcess, HostSpec, Participant, TenantMember
from qdspace.node.localnet.line import LineProcess
from qdspace.node.logs import process_log_env
from qdspace.util.ports import free_port, port_range

START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class MemberSpec:
    name: str
    role: str


REFERENCE_MEMBERS = (
    MemberSpec("sunarc", "oem"),
    MemberSpec("cellex", "supplier"),
    MemberSpec("polycell", "supplier"),
    MemberSpec("regulator", "regulator"),
)
#: the wafer maker runs no servers: a testing house hosts it (the demo's host)
REFERENCE_HOSTS = (
    HostSpec("testhouse", "Testhouse Hosting", (MemberSpec("siliwafer", "supplier"),)),
)


@dataclass
class MemberProcess:
    spec: MemberSpec
    directory: Path
    grpc_port: int
    api_port: int
    regulator_port: int
    process: subprocess.Popen[bytes] | None = None
    token: str = field(default="", repr=False)
    #: the member's database ("" = the SQLite file in its directory)
    pg_url: str = field(default="", repr=False)

    @property
    def layout(self) -> NodeLayout:
        """The paths of this member's node directory."""
        return NodeLayout(self.directory)

    @property
    def db_url(self) -> str:
        return self.pg_url or self.layout.sqlite_url

    @property
    def api_url(self) -> str:
        """The operator API (TLS, the member certificate; verified against `ca_file`)."""
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def regulator_url(self) -> str:
        """The regulator API: its own TLS listener, regulator credentials only."""
        return f"https://127.0.0.1:{self.regulator_port}"

    @property
    def ca_file(self) -> Path:
        """The space CA, which issued the certificate the member's listeners present."""
        return self.layout.ca_cert

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        """stdout and stderr of the process, kept bounded by the node (`node.logs`)."""
        return self.layout.process_log

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def keys(self) -> MemberKeys:
        """The member's keys, read from its node directory (the regulator's signing key)."""
        return load_member_keys(self.directory)

    def operator(self, timeout: float = 30.0) -> OperatorClient:
        """The member's operator API: one method per route, failures as ClientError."""
        return OperatorClient(self.api_url, self.token, timeout=timeout, ca_file=self.ca_file)

    def client(self, timeout: float = 30.0, token: str | None = None) -> httpx.Client:
        """A raw HTTPS client on the operator API with the operator token, or ``token``
        ("": none) instead (for deliberately unusual requests)."""
        bearer = self.token if token is None else token
        return http_client(self.api_url, bearer, timeout, ca_file=self.ca_file)

    def regulator_client(self, credential: str = "", timeout: float = 30.0) -> httpx.Client:
        """A raw HTTPS client on the regulator listener, bearing ``credential`` (if any)."""
        return http_client(self.regulator_url, credential, timeout, ca_file=self.ca_file)


class LocalNetwork:
    """Create, start and stop a set of member nodes under one work directory."""

    def __init__(
        self,
        workdir: Path,
        members: Iterable[MemberSpec] = REFERENCE_MEMBERS,
        *,
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        chain: bool = True,
        pg_url: str | None = None,
        hosts: Iterable[HostSpec] = (),
    ):
        try:
            port_range()  # a QDSPACE_PORT_RANGE naming no ports: one line, not a traceback
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.workdir = workdir.resolve()
        self.specs = list(members)
        self.host_specs = list(hosts)
        names = [s.name for s in self.specs]
        names += [n for h in self.host_specs for n in (h.name, *(t.name for t in h.tenants))]
        if len(set(names)) != len(names):
            raise ValueError(f"member and host names must differ: {names}")
        self.python = python
        # a local demo/test network may move its nodes' contract clock (runtime.contracts_clock)
        self.env = {**os.environ, "QDSPACE_CLOCK_CONTROL": "1", **(env or {})}
        self.authority_dir = self.workdir / "authority"
        self.members: dict[str, MemberProcess] = {}
        #: managed hosts by name, and the members they serve (`create` fills both)
        self.hosts: dict[str, HostProcess] = {}
        self.tenants: dict[str, TenantMember] = {}
        #: simulated plant equipment and line connectors (`localnet.line`), by name
        self.line: dict[str, LineProcess] = {}
        # a PostgreSQL server for every member's database (a schema each); None: SQLite files
        self.pg_url = normalise_url(pg_url) if pg_url else None
        self.pg_schemas: list[str] = []
        # one embedded EVM chain process for every node (ledger anchoring); chain=False: none
        self.chain: ChainProcess | None = (
            ChainProcess(self.workdir / "chain" / "state", python, self.env) if chain else None
        )

    def __getitem__(self, name: str) -> MemberProcess:
        return self.members[name]

    @property
    def participants(self) -> dict[str, Participant]:
        """Every member of the space: the self-hosted nodes, then the hosted tenants."""
        return {**self.members, **self.tenants}

    # -- creation ------------------------------------------------------------------------

    def create(self) -> None:
        Authority.init(self.authority_dir, "qdspace-demo")
        if self.chain is not None:
            self.chain.start()
        ports = {s.name: (free_port(), free_port(), free_port()) for s in self.specs}
        tenant_ports = {t.name: free_port() for h in self.host_specs for t in h.tenants}
        everyone = {name: f"127.0.0.1:{p[0]}" for name, p in ports.items()}
        everyone |= {name: f"127.0.0.1:{port}" for name, port in tenant_ports.items()}
        for spec in self.specs:
            peers = {name: a for name, a in everyone.items() if name != spec.name}
            directory = self.workdir / "nodes" / spec.name
            db_url = self._create_database(spec.name) if self.pg_url else ""
            init_node(
                directory,
                self.authority_dir,
                name=spec.name,
                role=spec.role,
                grpc_port=ports[spec.name][0],
                api_port=ports[spec.name][1],
                regulator_port=ports[spec.name][2],
                db_url=db_url,
                peers=peers,
            )
            member = MemberProcess(spec, directory, *ports[spec.name], pg_url=db_url)
            member.token = NodeLayout(directory).operator_token.read_text().strip()
            self.members[spec.name] = member
            if self.chain is not None:
                self.chain.provision(directory)
        for host_spec in self.host_specs:  # tenants anchor to no chain here
            host = HostProcess(host_spec, self.workdir, self.python, self.env)
            host.create(self.authority_dir, free_port(), tenant_ports, everyone)
            self.hosts[host.name] = host
            self.tenants |= host.tenants

    def _create_database(self, name: str) -> str:
        """A fresh schema for member ``name`` on the PostgreSQL server; its connection URL."""
        assert self.pg_url is not None
        schema = f"qdspace_net_{secrets.token_hex(4)}_{name}"
        engine = create_engine(self.pg_url)
        try:
            with engine.begin() as connection:
                connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        finally:
            engine.dispose()
        self.pg_schemas.append(schema)
        separator = "&" if "?" in self.pg_url else "?"
        return f"{self.pg_url}{separator}options=-csearch_path%3D{schema}"

    def drop_databases(self) -> None:
        """Drop the members' PostgreSQL schemas (after `stop`); nothing for SQLite files."""
        if not self.pg_url or not self.pg_schemas:
            return
        engine = create_engine(self.pg_url)
        try:
            with engine.begin() as connection:
                for schema in self.pg_schemas:
                    connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        finally:
            engine.dispose()
        self.pg_schemas.clear()

    # -- processes -----------------------------------------------------------------------

    def start(self, names: Iterable[str] | None = None) -> None:
        """Start the members ``names`` (default: all, and the hosts with their tenants)."""
        chosen = list(names or self.members)
        hosts = list(self.hosts.values()) if names is None else []
        if self.chain is not None:
            self.chain.start()  # no-op while running; restarts a stopped chain on its port
        try:
            for name in chosen:
                self._spawn(self.members[name])
            for host in hosts:
                host.spawn()
            for name in chosen:
                self.wait_ready(name)
            for host in hosts:
                host.wait_ready(START_TIMEOUT_S)
        except BaseException:
            # one that failed to start leaves no others running behind it (a caller's
            # fixture or the demo never reaches its stop when start raises)
            self.stop(None if names is None else chosen)
            raise

    def _spawn(self, member: MemberProcess) -> None:
        member.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = member.log_path.open("ab")
        member.process = subprocess.Popen(
            [self.python, "-m", "qdspace", "node", "start", "--dir", str(member.directory)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**self.env, **process_log_env(member.log_path)},  # the node rotates it
            start_new_session=True,
        )
        log.close()

    def wait_ready(self, name: str, timeout: float = START_TIMEOUT_S) -> None:
        member = self.members[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not member.running:
                tail = member.log_path.read_text(errors="replace")[-2000:]
                raise NodeError(
                    f"node {name} exited while starting; log {member.log_path}:\n{tail}"
                )
            runtime = read_runtime(member.directory)
            if runtime and runtime.get("pid") == member.process.pid:  # type: ignore[union-attr]
                try:
                    with member.client(timeout=2) as probe:
                        if probe.get("/healthz").status_code == 200:
                            return
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        raise NodeError(
            f"node {name} did not become ready in {timeout:.0f}s; see {member.log_path}"
        )

    def stop(self, names: Iterable[str] | None = None, timeout: float = 20.0) -> dict[str, int]:
        """SIGTERM, wait, and SIGKILL only what does not stop; returns exit codes (by
        member, and by host when all stop)."""
        codes: dict[str, int] = {}
        if names is None:  # the line first: its connectors write into the nodes
            for line in reversed(self.line.values()):  # connectors before their sources
                line.stop()
        chosen = [self.members[n] for n in (names or self.members)]
        for member in chosen:
            if member.running:
                member.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        if names is None:  # the hosts go with the nodes, in parallel
            for host in self.hosts.values():
                host.terminate()
        for member in chosen:
            if member.process is None:
                continue
            try:
                codes[member.spec.name] = member.process.wait(timeout)
            except subprocess.TimeoutExpired:
                member.process.kill()
                codes[member.spec.name] = member.process.wait()
        if names is None:
            for host in self.hosts.values():
                code = host.stop(timeout)
                if code is not None:
                    codes[host.name] = code
        if names is None and self.chain is not None:
            self.chain.stop()
        return codes

    def leave_running(self) -> Path:
        """Hand the running nodes and chain over to a later ``stop_left_running``.

        The chain is detached from this interpreter (else it is reaped when this
        process exits, stranding nodes whose ``ledger.json`` names it), and every
        process is recorded with its pid in ``WORKDIR/run/processes.json``.
        """
        from qdspace.node.localnet.left_running import RunningProcess, write_processes

        processes = [
            RunningProcess(name, m.process.pid, str(m.directory))
            for name, m in self.members.items()
            if m.process is not None and m.running
        ]
        processes += [
            RunningProcess(name, line.process.pid, line.marker)
            for name, line in self.line.items()
            if line.process is not None and line.running
        ]
        processes += [  # its directory is on its command line: ``host start --dir HOST``
            RunningProcess(name, h.process.pid, str(h.directory))
            for name, h in self.hosts.items()
            if h.process is not None and h.running
        ]
        if self.chain is not None and self.chain.running and self.chain.pid is not None:
            self.chain.detach()
            processes.append(RunningProcess("chain", self.chain.pid, str(self.chain.state_dir)))
        return write_processes(self.workdir, processes)

    def kill(self, name: str) -> None:
        member = self.members[name]
        if member.running:
            member.process.kill()  # type: ignore[union-attr]
            member.process.wait()  # type: ignore[union-attr]

    def __enter__(self) -> LocalNetwork:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def describe(self) -> dict[str, object]:
        return {
            "authority": str(self.authority_dir),
            "chain": self.chain.url if self.chain is not None else None,
            "members": {
                n: {
                    "role": m.spec.role,
                    "dir": str(m.directory),
                    "grpc": m.grpc_address,
                    "api": m.api_url,
                    "regulator": m.regulator_url,
                    "ca_file": str(m.ca_file),
                    "database": "postgresql" if m.pg_url else "sqlite",
                }
                for n, m in self.members.items()
            },
            "hosts": {n: h.describe() for n, h in self.hosts.items()},
        }

    def write_manifest(self) -> Path:
        path = self.workdir / "network.json"
        path.write_text(json.dumps(self.describe(), indent=2))
        return path
