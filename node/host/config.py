"""The host directory and its settings, written down once.

::

    HOST/
    ├── host.json              settings (HostSettings): listen addresses, tenant ports
    ├── host.key               the host master key, hex (0600; or $QDSPACE_HOST_KEY_FILE)
    ├── host.token             the host operator's bearer token (0600; or
    │                          $QDSPACE_HOST_TOKEN_FILE): manages tenants, reads no data
    ├── host.lock              held while tenants.json is rewritten
    ├── tenants.json           the registry: each tenant's member id, role, port, state
    ├── tls/                   the operator listener's own CA and server certificate
    │   ├── ca.key / ca.crt    (clients verify the listener against tls/ca.crt)
    │   └── server.key / server.crt
    ├── run/host.json          pid, URLs and tenant addresses while the host runs
    └── tenants/<name>/        an ordinary node directory (node.json, node.db, tls.crt,
                               ca.crt, crl.pem, ...) whose secret files are sealed
                               (`node.host.sealing`), plus data.key: its wrapped data key,
                               and db-url.secret: its own database URL, sealed, if any

A tenant's directory is a node directory on purpose: leaving the host is a copy and an
unseal, not a conversion. The host's settings never come from ``QDSPACE_*`` variables
meant for a node (one ``QDSPACE_DB_URL`` would point every tenant at one database); only
the two secrets above have variables of their own. A tenant's settings are read without
them (`tenants.TenantSettings`), but its chain settings (``ledger.json``, read by the
node's own code) let ``QDSPACE_LEDGER_*`` win, so a host started with a chain URL,
contract, chain id or key file (or ``QDSPACE_CHAIN_KEY``) in its environment would
anchor every tenant there, signing for all with the one key and paying for all from one
account: `check_environment` refuses to start then.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from qdspace.node.errors import ConfigError
from qdspace.node.host.names import check_name
from qdspace.node.host.quotas import QuotaSettings
from qdspace.node.layout import AuthorityLayout
from qdspace.node.secret_files import read_secret_file
from qdspace.util.files import write_atomic

HOST_CONFIG = "host.json"
MASTER_KEY_FILE = "host.key"
HOST_TOKEN_FILE = "host.token"
HOST_LOCK_FILE = "host.lock"
REGISTRY_FILE = "tenants.json"
TLS_DIR = "tls"
TENANTS_DIR = "tenants"
WRAPPED_KEY_FILE = "data.key"
#: a tenant's own database URL (it may carry a password), sealed like its keys
SEALED_DB_URL_FILE = "db-url.secret"
RUN_DIR = "run"
RUNTIME_FILE = "host.json"

MASTER_KEY_ENV = "QDSPACE_HOST_KEY_FILE"
HOST_TOKEN_ENV = "QDSPACE_HOST_TOKEN_FILE"

#: a node's chain account variables: each tenant has its own (``host tenant ledger``);
#: the tuning ones (``QDSPACE_LEDGER_MAX_FEE_GWEI``...) may apply to all alike
TENANT_CHAIN_VARIABLES = (
    "QDSPACE_LEDGER_RPC_URL",
    "QDSPACE_LEDGER_CONTRACT",
    "QDSPACE_LEDGER_CHAIN_ID",
    "QDSPACE_LEDGER_KEY_FILE",
    "QDSPACE_CHAIN_KEY",
)

DEFAULT_API_PORT = 8600
DEFAULT_TENANT_PORTS = "7600-7699"
#: the HTTP routes' worker threads (anyio's own number)
DEFAULT_HTTP_WORKER_THREADS = 40


@dataclass(frozen=True)
class HostLayout:
    """The paths of the host directory ``directory`` (see the module's tree)."""

    directory: Path

    @property
    def config(self) -> Path:
        return self.directory / HOST_CONFIG

    @property
    def master_key(self) -> Path:
        chosen = os.environ.get(MASTER_KEY_ENV)
        return Path(chosen) if chosen else self.directory / MASTER_KEY_FILE

    @property
    def host_token(self) -> Path:
        chosen = os.environ.get(HOST_TOKEN_ENV)
        return Path(chosen) if chosen else self.directory / HOST_TOKEN_FILE

    @property
    def lock(self) -> Path:
        return self.directory / HOST_LOCK_FILE

    @property
    def registry(self) -> Path:
        return self.directory / REGISTRY_FILE

    @property
    def tls(self) -> AuthorityLayout:
        """The listener's CA and server certificate (named as an authority's are)."""
        return AuthorityLayout(self.directory / TLS_DIR)

    @property
    def tenants(self) -> Path:
        return self.directory / TENANTS_DIR

    def tenant(self, name: str) -> Path:
        """A tenant's node directory; the name is checked (no path gets through)."""
        return self.tenants / check_name(name)

    def wrapped_key(self, name: str) -> Path:
        return self.tenant(name) / WRAPPED_KEY_FILE

    def sealed_db_url(self, name: str) -> Path:
        return self.tenant(name) / SEALED_DB_URL_FILE

    @property
    def runtime(self) -> Path:
        return self.directory / RUN_DIR / RUNTIME_FILE


def parse_port_range(text: str) -> tuple[int, int]:
    """``"7600-7699"`` (or one port ``"7600"``) as (first, last); ValueError if not."""
    first, sep, last = text.partition("-")
    try:
        lo, hi = int(first), int(last if sep else first)
    except ValueError:
        raise ValueError(f"tenant port range {text!r} is not FIRST-LAST") from None
    if not 0 < lo <= hi < 65536:
        raise ValueError(f"tenant port range {text!r} is not within 1-65535, first <= last")
    return lo, hi


class HostSettings(BaseModel):
    """``host.json``: where the host listens and which ports its tenants get."""

    model_config = ConfigDict(extra="forbid")

    #: the one HTTPS operator listener of the host (every tenant's API, by token)
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=DEFAULT_API_PORT, ge=0, le=65535)
    #: names and addresses the listener's certificate carries
    hostnames: list[str] = Field(default_factory=lambda: ["localhost", "127.0.0.1"])
    #: where tenants' peer gRPC servers listen, and the ports handed out to new tenants
    tenant_grpc_host: str = "127.0.0.1"
    tenant_grpc_ports: str = DEFAULT_TENANT_PORTS
    #: ports for the tenants' regulator APIs, FIRST-LAST ("" = none: a tenant's regulator
    #: API is served only when it has a port, given at ``tenant add --regulator-port``)
    tenant_regulator_ports: str = ""
    #: the host name other members dial for a tenant ("" = tenant_grpc_host)
    advertise_host: str = ""
    shutdown_grace_s: float = Field(default=5.0, ge=0)
    #: every tenant's quota unless it has its own (``host tenant quota``; null: no limit)
    quota: QuotaSettings = Field(default_factory=QuotaSettings)
    #: worker threads for the tenants' blocking work in gRPC handlers and jobs (null:
    #: asyncio's own number, min(32, CPUs + 4)) and in HTTP routes; idle ones are lent
    #: to whoever has work (all but one to one tenant), a freed one goes to the waiting
    #: tenant holding the fewest (`node.host.workers`)
    worker_threads: int | None = Field(default=None, ge=2, le=1024)
    http_worker_threads: int = Field(default=DEFAULT_HTTP_WORKER_THREADS, ge=2, le=1024)
    log_level: str = "INFO"

    @field_validator("tenant_grpc_ports")
    @classmethod
    def _ports(cls, text: str) -> str:
        parse_port_range(text)
        return text

    @field_validator("tenant_regulator_ports")
    @classmethod
    def _regulator_ports(cls, text: str) -> str:
        if text:
            parse_port_range(text)
        return text

    @property
    def port_range(self) -> tuple[int, int]:
        return parse_port_range(self.tenant_grpc_ports)

    @property
    def regulator_range(self) -> tuple[int, int] | None:
        return (
            parse_port_range(self.tenant_regulator_ports) if self.tenant_regulator_ports else None
        )

    @classmethod
    def load(cls, directory: Path) -> HostSettings:
        path = HostLayout(directory).config
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            hint = f"run `qdspace host init --dir {directory}`"
            raise ConfigError(f"{path} not found: {hint}") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{path}: {where}: {first['msg']}") from None

    def save(self, directory: Path) -> None:
        text = json.dumps(self.model_dump(mode="json"), indent=2) + "\n"
        write_atomic(HostLayout(directory).config, text.encode())


def read_host_secret(path: Path, what: str, variable: str) -> str:
    """A host secret file (the master key, the host token), stripped."""
    if os.environ.get(variable):
        return read_secret_file(path, variable).strip()
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path} (or set ${variable})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from None


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse (`ConfigError`) a host environment naming a chain account: every tenant's
    chain settings would take it (see the module)."""
    wanted = {name.upper() for name in TENANT_CHAIN_VARIABLES}
    found = sorted(name for name, value in environ.items() if value and name.upper() in wanted)
    if found:
        raise ConfigError(
            f"{found[0]} is set for the host: every tenant would anchor with it (one chain "
            "account signing and paying for all); give each tenant its own with `qdspace "
            "host tenant ledger` and unset it"
        )
