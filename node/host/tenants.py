"""Making a host and its tenants: ``qdspace host init`` and ``qdspace host tenant add``.

A tenant is enrolled with the authority exactly as a self-hosted member is, through the
same functions (`node.init.init_node` with the authority's directory at hand,
`node.join.join_node` with its URL and a one-time code): its own keys made here, its own
certificate and member id. The one difference is where the private files go: through a
`sealing.SealedKeyFiles` under a fresh data key, so no tenant secret is ever written in
the clear, not even while the directory is assembled.
"""

from __future__ import annotations

import secrets
import shutil
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qdspace.node.config import NodeSettings, NodeSettingsAsWritten
from qdspace.node.errors import ConfigError
from qdspace.node.host.config import (
    HOST_TOKEN_ENV,
    MASTER_KEY_ENV,
    HostLayout,
    HostSettings,
    read_host_secret,
)
from qdspace.node.host.errors import HostError, UnknownTenant
from qdspace.node.host.names import check_name, check_new_name
from qdspace.node.host.quotas import QuotaSettings
from qdspace.node.host.registry import Registry, TenantRecord, now
from qdspace.node.host.sealing import MasterKey, SealedKeyFiles, new_key
from qdspace.node.identity.certs import build_ca_cert, cert_to_pem, key_to_pem, new_tls_key
from qdspace.node.layout import NodeLayout
from qdspace.util.files import write_atomic
from qdspace.util.urls import host_port

HOST_CA_VALID_DAYS = 3650


class TenantSettings(NodeSettingsAsWritten):
    """A tenant's ``node.json`` as written, never under the ``QDSPACE_*`` variables of the
    process reading it: those are the host's, or its operator's shell's (``QDSPACE_DB_URL``
    meant for a node on the same machine), never every tenant's. Every read of a tenant's
    settings goes through here, above all one written back (``tenant dsp``): loaded as a
    node, ``QDSPACE_DB_URL`` was saved into each tenant's ``node.json`` and the host
    opened them all on that one database, where one tenant's staff read another's rows."""


def init_host(directory: Path, settings: HostSettings) -> HostLayout:
    """Create the host directory: settings, master key, host token, listener TLS."""
    from qdspace.node.authority.tls import ensure_server_cert

    directory = directory.resolve()
    files = HostLayout(directory)
    if files.config.exists():
        raise ConfigError(f"a host already exists in {directory}")
    if directory.exists() and any(directory.iterdir()):
        raise ConfigError(f"{directory} is not empty; choose a new directory for the host")
    directory.mkdir(parents=True, exist_ok=True)
    if files.master_key == directory / files.master_key.name:  # not from $QDSPACE_HOST_KEY_FILE
        write_atomic(files.master_key, new_key().hex().encode() + b"\n", mode=0o600)
    load_master_key(files)  # a key from a secret file is checked now, not at the first add
    if files.host_token == directory / files.host_token.name:
        write_atomic(files.host_token, secrets.token_hex(24).encode() + b"\n", mode=0o600)
    tls = files.tls
    tls.directory.mkdir(parents=True, exist_ok=True)
    ca_key = new_tls_key()
    ca_cert = build_ca_cert(
        "qdspace host",
        ca_key,
        valid_days=HOST_CA_VALID_DAYS,
        common_name=f"qdspace host {directory.name} operator CA",
    )
    write_atomic(tls.ca_key, key_to_pem(ca_key), mode=0o600)
    write_atomic(tls.ca_cert, cert_to_pem(ca_cert), mode=0o644)
    ensure_server_cert(tls, ca_cert, ca_key, settings.hostnames)
    files.tenants.mkdir(exist_ok=True)
    settings.save(directory)  # last: its presence makes a host
    return files


def load_master_key(files: HostLayout) -> MasterKey:
    text = read_host_secret(files.master_key, "host master key", MASTER_KEY_ENV)
    return MasterKey.parse(text, str(files.master_key))


def load_host_token(files: HostLayout) -> str:
    token = read_host_secret(files.host_token, "host operator token", HOST_TOKEN_ENV)
    if len(token) < 16:
        raise ConfigError(f"host operator token {files.host_token} is shorter than 16 characters")
    return token


def tenant_key_files(files: HostLayout, master: MasterKey, name: str) -> SealedKeyFiles:
    """The sealed key files of tenant ``name`` (its data key unwrapped by ``master``)."""
    return SealedKeyFiles.open(master, name, files.wrapped_key(name))


def tenant_token(directory: Path, name: str) -> str:
    """The operator token of tenant ``name`` (for the SME's staff), decrypted."""
    files = HostLayout(directory.resolve())
    Registry(files.directory).get(name)
    key_files = tenant_key_files(files, load_master_key(files), name)
    token_file = NodeLayout(files.tenant(name)).operator_token
    return key_files.read(token_file, "operator token").decode().strip()


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _allocate_port(
    host: str, ports: tuple[int, int], used: set[int], what: str = "tenant_grpc_ports"
) -> int:
    lo, hi = ports
    for port in range(lo, hi + 1):
        if port not in used and _port_free(host, port):
            return port
    raise HostError(f"no free port left in {lo}-{hi} (host.json {what})")


def _ports(
    settings: HostSettings, used: set[int], grpc_port: int | None, regulator_port: int | None
) -> tuple[int, int]:
    """The new tenant's gRPC port and regulator port (0: none), each given or allocated."""
    for given in (grpc_port, regulator_port):
        if given and given in used:
            raise HostError(f"port {given} is another tenant's")
    host = settings.tenant_grpc_host
    grpc = grpc_port if grpc_port is not None else _allocate_port(host, settings.port_range, used)
    if regulator_port is not None:
        return grpc, regulator_port
    ports = settings.regulator_range
    if ports is None:
        return grpc, 0
    return grpc, _allocate_port(host, ports, used | {grpc}, "tenant_regulator_ports")


@dataclass(frozen=True)
class Enrollment:
    """How a new tenant gets its certificate: a local authority directory, or the
    authority service's URL and a one-time code."""

    authority_dir: Path | None = None
    authority_url: str = ""
    code: str = ""
    hostnames: Sequence[str] = ()

    def __post_init__(self) -> None:
        if (self.authority_dir is None) == (not self.authority_url):
            raise ConfigError("give the authority's directory or its URL and a code, not both")
        if self.authority_url and not self.code:
            raise ConfigError("joining by URL needs the enrollment code")


def add_tenant(
    directory: Path,
    name: str,
    role: str,
    enrollment: Enrollment,
    *,
    grpc_port: int | None = None,
    regulator_port: int | None = None,
    dsp_port: int | None = None,
    db_url: str = "",
    quota: dict[str, Any] | None = None,
) -> TenantRecord:
    """Enroll a new tenant and add it to the book (served from the next ``host start``).
    ``dsp_port``: its Dataspace Protocol listener's port (none: no DSP).
    ``db_url``: its own database (default SQLite in its directory), kept sealed.
    Nothing of it is left behind if a step fails (a spent code stays spent). ``quota``:
    its own quota values (others the host's defaults); none: it follows the defaults."""
    files = HostLayout(directory.resolve())
    settings = HostSettings.load(files.directory)
    master = load_master_key(files)
    check_name(name)
    own = QuotaSettings.of(settings.quota.quota().with_changes(quota)) if quota else None
    registry = Registry(files.directory)
    with registry.editing() as book:
        existing = set(book.tenants)
        if files.tenants.is_dir():
            existing |= {p.name for p in files.tenants.iterdir()}
        check_new_name(name, existing)
        used = _ports_of(book.tenants.values())
        port, regulator = _ports(settings, used, grpc_port, regulator_port)
        if dsp_port is not None:
            _check_dsp_port(dsp_port, used | {port, regulator})
        target = files.tenant(name)
        data_key = new_key()
        key_files = SealedKeyFiles(name, data_key)
        try:
            node = _enroll(target, name, role, enrollment, settings, port, key_files)
            if regulator:
                node = node.model_copy(update={"regulator_port": regulator})
                node.save()
            if dsp_port is not None:  # on the host its gRPC listens on, as a node's
                node = node.model_copy(update=_dsp_settings(settings, node, dsp_port))
                node.save()
            if db_url:  # it may carry a password: sealed, never in node.json
                key_files.write(files.sealed_db_url(name), db_url.encode())
            write_atomic(files.wrapped_key(name), master.wrap(name, data_key), mode=0o600)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        stamp = now()
        record = TenantRecord(
            name=name,
            member_id=node.member_id,
            role=node.role,
            grpc_port=port,
            regulator_port=regulator,
            dsp_port=dsp_port or 0,
            added_at=stamp,
            changed_at=stamp,
            quota=own,
        )
        book.tenants[name] = record
    return record


def set_tenant_dsp(directory: Path, name: str, port: int | None) -> TenantRecord:
    """Give a tenant a DSP listener on ``port`` (free on this host), or none (None):
    recorded in the book and in its ``node.json``, served from its next opening."""
    files = HostLayout(directory.resolve())
    settings = HostSettings.load(files.directory)
    registry = Registry(files.directory)
    with registry.editing() as book:
        record = book.tenants.get(check_name(name))
        if record is None:
            raise UnknownTenant(f"no tenant {name!r} on this host")
        if port is not None:
            others = [r for r in book.tenants.values() if r.name != record.name]
            _check_dsp_port(port, _ports_of(others) | {record.grpc_port, record.regulator_port})
        node = TenantSettings.load(files.tenant(name))  # written back: as written, no env
        if port is None:
            update: dict[str, Any] = {"dsp_port": None, "advertise_dsp": ""}
        else:
            update = _dsp_settings(settings, node, port)
        node.model_copy(update=update).save()
        record.dsp_port = port or 0
        record.changed_at = now()
        return record.model_copy()


def _ports_of(records: Iterable[TenantRecord]) -> set[int]:
    """Every port the tenants' listeners hold (gRPC, regulator API, DSP)."""
    return {p for r in records for p in (r.grpc_port, r.regulator_port, r.dsp_port) if p}


def _check_dsp_port(port: int, used: set[int]) -> None:
    if port < 1 or port in used - {0}:
        raise HostError(f"DSP port {port} is not free on this host (or not a port)")


def _dsp_settings(settings: HostSettings, node: NodeSettings, port: int) -> dict[str, Any]:
    """The tenant's DSP listener: on the host its gRPC listens on; a tenant that follows
    the authority's directory publishes it at the name the host advertises its gRPC
    ports at (providers that follow the directory take its callbacks only there)."""
    update: dict[str, Any] = {"dsp_port": port, "dsp_host": node.grpc_host}
    if node.authority_url:
        update["advertise_dsp"] = f"https://{settings.advertise_host or node.grpc_host}:{port}"
    return update


def _check_admitted(enrollment: Enrollment, name: str, role: str) -> None:
    """Refuse a code that admits another name or role than the tenant's, unspent."""
    from qdspace.node.authority.client import AuthorityClient
    from qdspace.node.identity.enrollment import EnrollmentCode
    from qdspace.node.join import pinned_ca

    url = enrollment.authority_url.rstrip("/")
    parsed = EnrollmentCode.parse(enrollment.code)
    with AuthorityClient(url, pinned_ca(url, parsed)) as authority:
        admitted = authority.preview(enrollment.code)
    if (admitted["name"], admitted["role"]) != (name, role):
        raise HostError(
            f"the enrollment code admits {admitted['name']!r} as {admitted['role']}, not "
            f"{name!r} as {role}: the tenant was not added (the code is still unused)"
        )


def _enroll(
    target: Path,
    name: str,
    role: str,
    enrollment: Enrollment,
    settings: HostSettings,
    port: int,
    key_files: SealedKeyFiles,
) -> NodeSettings:
    """The tenant's node directory, enrolled; ``node.json`` names the host's addresses."""
    advertise = host_port(settings.advertise_host or settings.tenant_grpc_host, port)
    if enrollment.authority_dir is not None:
        from qdspace.node.init import init_node

        node = init_node(
            target,
            enrollment.authority_dir,
            name=name,
            role=role,
            grpc_port=port,
            api_port=0,
            regulator_port=0,
            key_files=key_files,
        )
    else:
        from qdspace.node.join import join_node

        _check_admitted(enrollment, name, role)  # before the code is spent
        node = join_node(
            target,
            authority_url=enrollment.authority_url,
            code=enrollment.code,
            hostnames=enrollment.hostnames,
            grpc_port=port,
            api_port=0,
            regulator_port=0,
            key_files=key_files,
        )
    if node.name != name or node.role != role:
        raise HostError(
            f"the enrollment admits {node.name!r} as {node.role}, not {name!r} as {role}: "
            "the tenant was not added"
        )
    hosted = node.model_copy(
        update={
            "grpc_host": settings.tenant_grpc_host,
            "regulator_host": settings.tenant_grpc_host,
            "advertise_peer": advertise if node.authority_url else "",
        }
    )
    hosted.save()
    return hosted
