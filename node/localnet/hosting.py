"""A managed host in the local network: one ``qdspace host start`` process serving tenants.

The reference scenario's wafer maker runs no servers: a testing house hosts it. Here
the launcher makes that host as its operator would (``host init``, ``host tenant add``
enrolled with the network's authority by its directory: each tenant its own member id,
certificate and keys, sealed under the host's master key), gives every tenant the
other members as peers, and runs the host as one process beside the member nodes.
Other members reach a tenant at its own gRPC port with its own certificate, exactly
as they reach a node; its staff reach its operator API at the host's one listener
with the tenant's token (`TenantMember.operator`).

The tenant's token is read through the host's sealing (`node.host.tenants.tenant_token`),
kept in memory only: no plaintext copy is written next to the sealed one.
"""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from qdspace.node.client import OperatorClient, http_client
from qdspace.node.errors import NodeError
from qdspace.node.logs import process_log_env

if TYPE_CHECKING:
    from qdspace.node.localnet.network import MemberSpec

HOSTS_DIR = "hosts"


class Participant(Protocol):
    """A member of the network, self-hosted (`MemberProcess`) or hosted (`TenantMember`)."""

    @property
    def spec(self) -> MemberSpec: ...

    @property
    def grpc_address(self) -> str: ...

    def operator(self, timeout: float = 30.0) -> OperatorClient: ...


@dataclass(frozen=True)
class HostSpec:
    """A managed host: ``name`` is its directory (``WORKDIR/hosts/<name>``) and its name
    in the network's process list; ``tenants`` are the members it serves."""

    name: str
    display_name: str
    tenants: tuple[MemberSpec, ...]


@dataclass
class TenantMember:
    """A member served by a host: its own gRPC port, its API at the host's listener."""

    spec: MemberSpec
    host: HostProcess
    grpc_port: int
    member_id: str = ""
    token: str = field(default="", repr=False)

    @property
    def directory(self) -> Path:
        """Its node directory inside the host (secret files sealed)."""
        return self.host.directory / "tenants" / self.spec.name

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def api_url(self) -> str:
        """The host's operator listener: the tenant's token picks its API there."""
        return self.host.api_url

    def operator(self, timeout: float = 30.0) -> OperatorClient:
        """The tenant's operator API through the host, with the tenant's own token."""
        return OperatorClient(self.api_url, self.token, timeout=timeout, ca_file=self.host.ca_file)


class HostProcess:
    """Create, start and stop one managed host and its tenants."""

    def __init__(self, spec: HostSpec, workdir: Path, python: str, env: dict[str, str]):
        self.spec = spec
        self.directory = workdir / HOSTS_DIR / spec.name
        self.python = python
        self.env = env
        self.api_port = 0
        self.tenants: dict[str, TenantMember] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self._terminated = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def api_url(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def ca_file(self) -> Path:
        """The CA of the host's operator listener (its own, not the space's)."""
        from qdspace.node.host.config import HostLayout

        return HostLayout(self.directory).tls.ca_cert

    @property
    def log_path(self) -> Path:
        """stdout and stderr of the process (the host's own log is ``logs/host.log``),
        kept bounded by the host (`node.logs`)."""
        return self.directory / "logs" / "process.log"

    @property
    def host_log(self) -> Path:
        return self.directory / "logs" / "host.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def create(
        self, authority_dir: Path, api_port: int, ports: dict[str, int], peers: dict[str, str]
    ) -> None:
        """``host init`` and one ``host tenant add`` per tenant, at ``ports[name]``, each
        enrolled with ``authority_dir`` and given ``peers`` (but itself) as its peers."""
        from qdspace.node.host.config import HostSettings
        from qdspace.node.host.tenants import Enrollment, add_tenant, init_host, tenant_token
        from qdspace.node.init import add_peers

        self.api_port = api_port
        init_host(self.directory, HostSettings(api_port=api_port))
        for spec in self.spec.tenants:
            record = add_tenant(
                self.directory,
                spec.name,
                spec.role,
                Enrollment(authority_dir=authority_dir),
                grpc_port=ports[spec.name],
            )
            tenant = TenantMember(spec, self, record.grpc_port, record.member_id)
            tenant.token = tenant_token(self.directory, spec.name)
            add_peers(tenant.directory, {n: a for n, a in peers.items() if n != spec.name})
            self.tenants[spec.name] = tenant

    def spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._terminated = False
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [self.python, "-m", "qdspace", "host", "start", "--dir", str(self.directory)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**self.env, **process_log_env(self.log_path)},  # the host rotates it
                start_new_session=True,
            )

    def runtime(self) -> dict[str, Any] | None:
        """``HOST/run/host.json`` of this process (pid, URLs, tenants), or None yet."""
        from qdspace.node.host.client import read_host_runtime

        record = read_host_runtime(self.directory)
        if record is None or self.process is None or record.get("pid") != self.process.pid:
            return None
        return record

    def wait_ready(self, timeout: float) -> None:
        """Until the listener answers and every tenant serves; a failed tenant is an error."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise NodeError(f"host {self.name} exited while starting; {self.log_path}:\n{tail}")
            record = self.runtime()
            if record is not None:
                failed = {
                    n: t for n, t in record["tenants"].items() if t.get("status") != "serving"
                }
                if failed:
                    raise NodeError(
                        f"host {self.name}: tenants not serving: {', '.join(sorted(failed))}; "
                        f"see {self.host_log}"
                    )
                try:
                    with http_client(self.api_url, "", 2.0, ca_file=self.ca_file) as probe:
                        if probe.get("/healthz").status_code == 200:
                            return
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        raise NodeError(f"host {self.name} did not serve in {timeout:.0f}s; see {self.log_path}")

    def terminate(self) -> None:
        """SIGTERM, once: the host stops its tenants gracefully (a second SIGTERM, after
        its event loop has gone, would kill it mid-shutdown)."""
        if self.running and self.process is not None and not self._terminated:
            self.process.send_signal(signal.SIGTERM)
            self._terminated = True

    def stop(self, timeout: float) -> int | None:
        """SIGTERM, wait, SIGKILL if it does not stop; its exit code (None: never started)."""
        if self.process is None:
            return None
        self.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def tenant_list(self) -> list[dict[str, Any]]:
        """What ``qdspace host tenant list`` shows: the host-management API, host token."""
        from qdspace.node.host.client import call_host

        record = self.runtime()
        if record is None:
            raise NodeError(f"host {self.name} is not running")
        listed: list[dict[str, Any]] = call_host(self.directory, record, "GET", "/host/v1/tenants")
        return listed

    def describe(self) -> dict[str, Any]:
        return {
            "display_name": self.spec.display_name,
            "dir": str(self.directory),
            "api": self.api_url,
            "ca_file": str(self.ca_file),
            "log": str(self.host_log),
            "pid": self.process.pid if self.running and self.process is not None else None,
            "tenants": {
                n: {
                    "role": t.spec.role,
                    "member_id": t.member_id,
                    "grpc": t.grpc_address,
                    "dir": str(t.directory),
                }
                for n, t in self.tenants.items()
            },
        }
