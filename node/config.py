"""Node settings: one pydantic-settings class, loaded once from ``DIR/node.json``.

Environment variables prefixed ``QDSPACE_`` override the file (``QDSPACE_DB_URL``,
``QDSPACE_API_PORT``...), so a container can point a node at PostgreSQL without
editing its directory. Secrets come from files too (``QDSPACE_DB_URL_FILE``,
``/run/secrets``: `qdspace.node.secret_files`).

Three listeners, each on its own address: peer gRPC (mutual TLS), the operator API
(TLS with the member certificate, or ``api_tls_cert_file``/``api_tls_key_file``) and the
regulator API (``regulator_host``/``regulator_port``, TLS, regulator credentials only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from qdspace.node.errors import ConfigError
from qdspace.node.layout import NodeLayout
from qdspace.node.rpc.limits import (
    DEFAULT_PER_PEER_BURST,
    DEFAULT_PER_PEER_CALLS,
    DEFAULT_PER_PEER_RATE,
    DEFAULT_PER_PEER_STREAMS,
    DEFAULT_SERVER_CALLS,
)
from qdspace.node.secret_files import FileEnvSource, secrets_dir
from qdspace.util.files import write_atomic
from qdspace.util.hosts import is_host_port
from qdspace.util.urls import plain_https

if TYPE_CHECKING:
    from qdspace.connector.offer_choices import OfferChoice
    from qdspace.connector.storage import QualityStore
    from qdspace.federation.member_floor import MemberFloor

DEFAULT_HOST = "127.0.0.1"
DEFAULT_GRPC_PORT = 7443
DEFAULT_API_PORT = 8443
DEFAULT_REGULATOR_PORT = 9443
DEFAULT_DSP_TOKEN_TTL_S = 300
#: how often a node following an authority service re-fetches the member directory
DEFAULT_DIRECTORY_REFRESH_S = 30.0
DEFAULT_OUTBOX_REFUSED_AFTER = 12
#: new negotiations one member may open with this node (as provider) in any hour
DEFAULT_NEGOTIATIONS_PER_HOUR = 600
#: new transfer processes one member may open with this node (as provider) in any hour
DEFAULT_TRANSFERS_PER_HOUR = 3600
#: quality cases one member may open with this node in any hour
DEFAULT_CASES_PER_HOUR = 120
#: bytes of quality case data (its openings and moves) this node keeps from one member
DEFAULT_CASE_BYTES_PER_MEMBER = 256 * 2**20
#: root-cause trace questions of one customer this node answers in an hour (10 at once)
DEFAULT_TRACES_PER_HOUR = 120
#: free disk a node keeps for its own records (`node.disk_room`)
DEFAULT_MIN_FREE_DISK_MIB = 1024
#: how often it re-fetches the revocation list (a revoked member is refused within this)
DEFAULT_CRL_REFRESH_S = 60.0
#: the most rounds of a federated job this node joins as a member, and the delta it
#: counts a job's epsilon at (`federation.member_floor`'s defaults, tested equal)
DEFAULT_FL_MAX_ROUNDS = 1_000
DEFAULT_FL_EPSILON_DELTA = 1e-5


def check_authority_url(url: str) -> str:
    """``https://HOST[:PORT]`` (no trailing slash), or "" for none; ValueError otherwise."""
    parts = urlsplit(url)
    if url and (parts.scheme != "https" or not parts.hostname):
        raise ValueError(f"authority URL {url!r} must be https://HOST[:PORT]")
    return url.rstrip("/")


def check_advertised(address: str) -> str:
    """``host:port`` to publish in the member directory, or ""; ValueError otherwise. The
    directory's own rule (`util.hosts`): the authority would refuse anything else, later."""
    if address and not is_host_port(address):
        raise ValueError(
            f"advertise_peer {address[:300]!r} is not host:port (a DNS name, an IPv4 "
            "address or a bracketed IPv6 address, and a port 1-65535)"
        )
    return address


def check_advertised_dsp(url: str) -> str:
    """``https://HOST[:PORT]`` other members reach the DSP listener at, or ""."""
    if not url:
        return url
    try:
        parts = plain_https(url)
    except ValueError as exc:
        raise ValueError(f"advertise_dsp {url[:200]!r} {exc}") from None
    if parts.path not in ("", "/"):
        raise ValueError(f"advertise_dsp {url[:200]!r} must be https://HOST[:PORT]: no path")
    if parts.port == 0:
        raise ValueError(f"advertise_dsp {url[:200]!r}: port 0 is not reachable")
    return url.rstrip("/")


class OfferSetting(BaseModel):
    """One standard asset's terms as this provider chooses them (`connector.offer_choices`)."""

    model_config = ConfigDict(extra="forbid")

    offered: bool = True  # false: not in the catalog at all
    purposes: list[str] | None = None  # among the asset's
    fields: list[str] | None = None  # among the fields its standard offer shares
    retention_days: int | None = None  # 1 to 3650 days
    receipt: bool | None = None  # a signed deletion receipt
    framework: str | None = None  # only for members the authority attests signed it

    def choice(self) -> OfferChoice:
        from qdspace.connector.offer_choices import OfferChoice

        return OfferChoice(
            self.offered,
            None if self.purposes is None else frozenset(self.purposes),
            None if self.fields is None else frozenset(self.fields),
            self.retention_days,
            self.receipt,
            self.framework,
        )


class FederationFloorSetting(BaseModel):
    """What this node accepts of a federated job's terms before it joins as a member
    (`federation.member_floor`): the coordinator writes the terms, this node decides.

    ``min_noise_multiplier`` or ``max_epsilon`` ask for differential privacy (a job
    without DP is then refused); the defaults ask for none and join jobs of at most
    ``DEFAULT_FL_MAX_ROUNDS`` rounds, with or without secure aggregation. The
    ``max_total_*`` caps count the updates sent to one coordinator over all its jobs
    (`federation.member_budget`): unset, a multiple of the per-job caps.
    """

    model_config = ConfigDict(extra="forbid")  # a misspelt floor must not be no floor

    # noise on what the coordinator sees of this node's update, times the clip
    min_noise_multiplier: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    # epsilon this node's updates may spend over all of a job's rounds
    max_epsilon: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    # the delta that epsilon is counted at (not the job's: a coordinator picks that)
    epsilon_delta: float = Field(default=DEFAULT_FL_EPSILON_DELTA, gt=0, lt=1)
    require_secure_aggregation: bool = False
    max_rounds: int = Field(default=DEFAULT_FL_MAX_ROUNDS, ge=1)
    # epsilon and updates this node's releases may spend at one coordinator, over all
    # its jobs (a new job id is no new budget); unset: member_budget.TOTAL_JOBS times
    # max_epsilon (none counted without it) and max_rounds
    max_total_epsilon: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    max_total_rounds: int | None = Field(default=None, ge=1)

    def floor(self) -> MemberFloor:
        from qdspace.federation.member_floor import MemberFloor

        return MemberFloor(
            self.min_noise_multiplier,
            self.max_epsilon,
            self.epsilon_delta,
            self.require_secure_aggregation,
            self.max_rounds,
            self.max_total_epsilon,
            self.max_total_rounds,
        )


class NodeSettings(BaseSettings):
    """Everything a node process needs to start; paths are absolute after loading."""

    model_config = SettingsConfigDict(env_prefix="QDSPACE_", extra="forbid")

    directory: Path
    name: str
    role: str
    member_id: str
    space: str = "qdspace"
    grpc_host: str = DEFAULT_HOST
    grpc_port: int = Field(DEFAULT_GRPC_PORT, ge=0, le=65535)
    api_host: str = DEFAULT_HOST
    api_port: int = Field(DEFAULT_API_PORT, ge=0, le=65535)
    # the operator API's own certificate (e.g. cert-manager's); default: the member's
    api_tls_cert_file: Path | None = None
    api_tls_key_file: Path | None = None
    regulator_host: str = DEFAULT_HOST
    regulator_port: int = Field(default=DEFAULT_REGULATOR_PORT, ge=0, le=65535)
    db_url: str = ""
    crl_path: Path | None = None
    peers: dict[str, str] = Field(default_factory=dict)
    log_level: str = "INFO"
    shutdown_grace_s: float = 5.0
    # peer-server caps (node.rpc.limits): calls in flight in all, and per member
    rpc_max_calls: int = Field(default=DEFAULT_SERVER_CALLS, ge=1)
    rpc_max_calls_per_peer: int = Field(default=DEFAULT_PER_PEER_CALLS, ge=1)
    rpc_max_streams_per_peer: int = Field(default=DEFAULT_PER_PEER_STREAMS, ge=1)
    # requests a second one member may send to this node (gRPC calls and DSP requests
    # together, a stream counting once), and how many at once after a quiet spell; past
    # them a request is refused (RESOURCE_EXHAUSTED / 429) saying when to retry
    rpc_rate_per_peer: float = Field(
        default=DEFAULT_PER_PEER_RATE, ge=0.01, le=1_000_000, allow_inf_nan=False
    )
    rpc_burst_per_peer: int = Field(default=DEFAULT_PER_PEER_BURST, ge=1, le=1_000_000)
    # refusals in a row after which the outbox sets a message aside (no longer tried;
    # ``qdspace contracts outbox --retry`` queues it again): 12 take about six minutes
    outbox_refused_after: int = Field(default=DEFAULT_OUTBOX_REFUSED_AFTER, ge=1, le=1000)
    # new negotiations one member may open with this node in any hour (either transport):
    # each is a row written on the member's initiative; past it a request is refused
    # (RESOURCE_EXHAUSTED, 429) until the hour's oldest has aged out
    negotiations_per_member_hour: int = Field(
        default=DEFAULT_NEGOTIATIONS_PER_HOUR, ge=1, le=1_000_000
    )
    # new transfer processes (pulls, DSP transfers) one member may open with this node in
    # any hour, each a row and its message history; past it refused the same way
    transfers_per_member_hour: int = Field(default=DEFAULT_TRANSFERS_PER_HOUR, ge=1, le=1_000_000)
    # quality cases (investigations, alerts; no agreement needed) one member may open
    # with this node in any hour, and the bytes of case data (its openings and moves, all
    # cases together) kept from it: past either an event is refused (RESOURCE_EXHAUSTED,
    # nothing kept; the sender's outbox retries it)
    cases_per_member_hour: int = Field(default=DEFAULT_CASES_PER_HOUR, ge=1, le=1_000_000)
    case_bytes_per_member: int = Field(default=DEFAULT_CASE_BYTES_PER_MEMBER, ge=1, le=2**40)
    # root-cause trace questions one customer may have answered here in an hour (ten at
    # once): each costs our analysis and asks our producers, who ask theirs
    traces_per_member_hour: int = Field(default=DEFAULT_TRACES_PER_HOUR, ge=1, le=1_000_000)
    # free disk (MiB) a node on SQLite keeps for its own records: ingests and rows
    # received from providers that would leave less are refused (`node.disk_room`); 0: off
    min_free_disk_mib: int = Field(default=DEFAULT_MIN_FREE_DISK_MIB, ge=0, le=2**30)
    # the authority service (``qdspace authority serve``); "" = none: static peers and a
    # CRL file kept fresh by other means (air-gapped sites, ``node init --authority``)
    authority_url: str = ""
    directory_refresh_s: float = Field(default=DEFAULT_DIRECTORY_REFRESH_S, gt=0)
    crl_refresh_s: float = Field(default=DEFAULT_CRL_REFRESH_S, gt=0)
    # host:port of the peer gRPC listener as other members reach it, published in the
    # directory; "" = grpc_host and the bound port (right when grpc_host is routable)
    advertise_peer: str = ""
    # the Dataspace Protocol 2025-1 HTTPS listener (mutual TLS; `node.dsp`): None = off,
    # 0 = any free port (recorded in the run file as ``dsp``)
    dsp_host: str = DEFAULT_HOST
    dsp_port: int | None = Field(default=None, ge=0, le=65535)
    # https://HOST[:PORT] other members reach the DSP listener at: the base of the data
    # addresses this node hands out and of the callback address it gives providers; ""
    # = dsp_host and the bound port (right when dsp_host is routable, not a wildcard:
    # a consumer takes a data address only at the DSP address it negotiated with)
    advertise_dsp: str = ""
    # how long a data-plane token of a DSP transfer start is good for (`node.dsp.edr`)
    dsp_token_ttl_s: int = Field(default=DEFAULT_DSP_TOKEN_TTL_S, ge=1, le=86_400)
    # the member's business partner number, published in its directory entry (optional;
    # the authority takes the entry only with the number it attested at enrollment)
    bpn: str | None = None
    # who may see which dataset: dataset id (or "*") -> an ODRL access policy in JSON-LD
    # (`node.runtime.access`), over DSP and gRPC alike (named for the binding it came
    # with); none: every member its role admits
    dsp_access: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # the provider's own terms for its standard assets: asset id -> fewer fields or
    # purposes, its retention, its receipt duty, or not offered (`connector.offer_choices`)
    offers: dict[str, OfferSetting] = Field(default_factory=dict)
    # the node's own data dictionary file (JSON or YAML; relative: to the directory): its
    # elements replace the package's with the same id and add new ones (issue 20)
    dictionary_file: Path | None = None
    # the least a federated job's terms must give this node for it to join as a member:
    # DP noise or epsilon, secure aggregation, rounds (`FederationFloorSetting`)
    federation_floor: FederationFloorSetting = Field(default_factory=FederationFloorSetting)

    @field_validator("dsp_access")
    @classmethod
    def _access_policies(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from qdspace.node.runtime.access import parse_access

        parse_access(value)
        return value

    @field_validator("offers")
    @classmethod
    def _offer_choices(cls, value: dict[str, OfferSetting]) -> dict[str, OfferSetting]:
        if not value:  # the standard offers (and no connector import on the CLI's path)
            return value
        from qdspace.connector.offer_choices import check_choices
        from qdspace.connector.offers import standard_assets

        standard = {a.asset_id: a for a in standard_assets("any-provider")}
        check_choices({k: v.choice() for k, v in value.items()}, standard)
        return value

    def offer_choices(self) -> dict[str, OfferChoice]:
        return {k: v.choice() for k, v in self.offers.items()}

    @field_validator("peers")
    @classmethod
    def _addresses(cls, peers: dict[str, str]) -> dict[str, str]:
        for name, address in peers.items():
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"peer {name}: address {address!r} is not host:port")
        return peers

    @model_validator(mode="after")
    def _tls_pair(self) -> NodeSettings:
        if (self.api_tls_cert_file is None) != (self.api_tls_key_file is None):
            raise ValueError("give api_tls_cert_file and api_tls_key_file together, or neither")
        return self

    @field_validator("authority_url")
    @classmethod
    def _https(cls, url: str) -> str:
        return check_authority_url(url)

    @field_validator("advertise_peer")
    @classmethod
    def _advertised(cls, address: str) -> str:
        return check_advertised(address)

    @field_validator("advertise_dsp")
    @classmethod
    def _advertised_dsp(cls, url: str) -> str:
        return check_advertised_dsp(url)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, FileEnvSource(settings_cls), file_secret_settings, init_settings)

    @property
    def layout(self) -> NodeLayout:
        """The paths of this node's directory."""
        return NodeLayout(self.directory)

    @property
    def api_tls(self) -> tuple[Path, Path]:
        """The operator API's certificate and key files (relative paths: to the directory)."""
        if self.api_tls_cert_file is None or self.api_tls_key_file is None:
            return self.layout.tls_cert, self.layout.tls_key
        return self.directory / self.api_tls_cert_file, self.directory / self.api_tls_key_file

    @property
    def database_url(self) -> str:
        return self.db_url or self.layout.sqlite_url

    @property
    def dictionary_path(self) -> Path | None:
        """The node's own dictionary file, or None: the package's default alone."""
        if self.dictionary_file is None:
            return None
        return self.directory / self.dictionary_file

    def open_store(self) -> QualityStore:
        """The node's QDM store, validating with the node's dictionary."""
        from qdspace.connector.dictionary_file import load_dictionary
        from qdspace.connector.storage import open_store

        dictionary = load_dictionary(self.dictionary_path).dictionary
        return open_store(self.database_url, dictionary)

    @property
    def operator_token_path(self) -> Path:
        return self.layout.operator_token

    @classmethod
    def load(cls, directory: Path) -> NodeSettings:
        directory = directory.resolve()
        path = NodeLayout(directory).config
        if not directory.is_dir():
            raise ConfigError(f"node directory not found: {directory}")
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"{path} not found: run `qdspace node init --dir {directory}`"
            ) from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from None
        data["directory"] = directory
        try:
            return cls(**data, _secrets_dir=secrets_dir())  # type: ignore[call-arg]
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{path}: {where}: {first['msg']}") from None

    def save(self) -> None:
        data = self.model_dump(mode="json", exclude={"directory"})
        write_atomic(self.layout.config, json.dumps(data, indent=2).encode() + b"\n")


class NodeSettingsAsWritten(NodeSettings):
    """``node.json`` as written, never under the ``QDSPACE_*`` variables of the process
    reading it: what ``node init`` writes (the values given), and what a managed host
    reads of a tenant (the host's environment is the host's, or its operator's shell's,
    never every tenant's: `node.host.tenants.TenantSettings`)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)
