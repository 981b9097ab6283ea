"""Leaving the host with the member: ``qdspace host tenant export``.

A tenant's directory is already a node directory (`config`), so the export is a copy
and an unseal: the certificate, CA, CRL, ``node.json`` and the rest copied as they are,
every sealed secret (signing key, TLS key, key-encryption key, pseudonym secret,
operator token, chain key) decrypted into a plain 0600 file (what a self-hosted node's
default key-file reader, `identity.keyfiles.PLAIN`, reads), and the SQLite store copied
with SQLite's backup API (`runtime.backup.backup_sqlite`: one consistent snapshot even
if a suspended tenant's ledger thread still writes). Agreements, duties, receipts and
received data live in that store, so they travel with it. A tenant on its own PostgreSQL
database keeps pointing at it: its URL (it may carry a password) goes into a 0600 file
of the export, never into ``node.json``, and the operator starts the node with
``QDSPACE_DB_URL_FILE`` naming that file.

Two processes must never serve one member (they would answer its peers with diverging
stores and both sign as it), hence the rules: a tenant is exported only when the host
is not running or the tenant is suspended; it is marked suspended in the registry
before anything is copied, and stays so (``exported_to`` names where it went) until
``tenant remove`` deletes the host's copy, which for an exported tenant purges nothing
(the member lives on, with its data, elsewhere).

The export is assembled in a hidden folder next to the destination and renamed into
place only when complete: a failed export leaves no half-written node directory. It is
never assembled inside the host directory (`check_destination`): sealing keeps a
tenant's secrets out of the clear wherever the host's disk is copied, and another
tenant's ``files`` folder is where that tenant's staff name files to read.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qdspace.node.errors import ConfigError
from qdspace.node.host.config import SEALED_DB_URL_FILE, WRAPPED_KEY_FILE, HostLayout
from qdspace.node.host.errors import TenantActive
from qdspace.node.host.registry import Registry, TenantState
from qdspace.node.host.sealing import FILE_MAGIC, SealedKeyFiles
from qdspace.node.host.tenants import TenantSettings, load_master_key, tenant_key_files
from qdspace.node.layout import CONFIG_FILE, DATABASE_FILE, LOGS_DIR, RUN_DIR
from qdspace.node.runtime.backup import backup_sqlite
from qdspace.util.files import write_atomic

#: the exported PostgreSQL URL, 0600, for QDSPACE_DB_URL_FILE
DB_URL_FILE = "database-url"
#: what is not copied: the host's wrapping of the secrets, the store (copied by SQLite's
#: backup API instead), the host process's run and log folders
_SKIPPED = {
    WRAPPED_KEY_FILE,
    SEALED_DB_URL_FILE,
    DATABASE_FILE,
    f"{DATABASE_FILE}-wal",
    f"{DATABASE_FILE}-shm",
    f"{DATABASE_FILE}-journal",
    RUN_DIR,
    LOGS_DIR,
}


@dataclass(frozen=True)
class ExportResult:
    name: str
    member_id: str
    destination: Path
    unsealed: tuple[str, ...]  # the secret files written in the clear (0600), relative
    db_url_file: Path | None  # PostgreSQL: the file QDSPACE_DB_URL_FILE must name
    database_bytes: int  # SQLite: the size of the copied store


@dataclass(frozen=True)
class Ports:
    """The exported node's listeners (None: the tenant's, or the node default)."""

    grpc_port: int | None = None
    api_port: int | None = None
    regulator_port: int | None = None
    advertise_peer: str | None = None


def check_destination(out: Path, host: Path) -> Path:
    """``out`` resolved, when it is a new (or empty) directory outside the host directory
    ``host`` (resolved): an export is the tenant's secrets in the clear, and inside the
    host directory they lie where its backups and its tenants' folders are (in another
    tenant's ``files`` folder its staff read the exported signing key back as a labels
    file's first line)."""
    out = out.resolve()
    if out.is_relative_to(host):
        raise ConfigError(
            f"{out} is inside the host directory {host}: an export holds the tenant's keys "
            "in the clear, so it goes to a directory outside it; nothing was exported"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an empty directory; export into a new one")
    if not out.parent.is_dir():
        raise ConfigError(f"directory {out.parent} does not exist")
    return out


def _is_sealed(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(FILE_MAGIC)) == FILE_MAGIC


def _unseal_all(staging: Path, key_files: SealedKeyFiles) -> list[str]:
    """Every sealed file under ``staging`` decrypted in place into a plain 0600 file."""
    unsealed: list[str] = []
    for path in sorted(p for p in staging.rglob("*") if p.is_file() and not p.is_symlink()):
        if _is_sealed(path):
            plain = key_files.read(path, "sealed file")
            write_atomic(path, plain, mode=0o600)
            unsealed.append(str(path.relative_to(staging)))
    return unsealed


def _node_json(source: Path, staging: Path, ports: Ports) -> str:
    """The tenant's ``node.json`` as written (relative paths stay relative), with the
    chosen ports; checked as a node would load it. Returns the member id it names."""
    from qdspace.node.config import NodeSettings

    settings: NodeSettings = TenantSettings.load(source)  # a clear error if damaged
    data: dict[str, Any] = json.loads((source / CONFIG_FILE).read_text())
    default_api = NodeSettings.model_fields["api_port"].default
    data["grpc_port"] = settings.grpc_port if ports.grpc_port is None else ports.grpc_port
    api_port = settings.api_port or default_api  # a tenant's is 0: the host serves its API
    data["api_port"] = api_port if ports.api_port is None else ports.api_port
    if ports.regulator_port is not None:
        data["regulator_port"] = ports.regulator_port
    if ports.advertise_peer is not None:
        data["advertise_peer"] = ports.advertise_peer
    write_atomic(staging / CONFIG_FILE, json.dumps(data, indent=2).encode() + b"\n")
    TenantSettings.load(staging)  # what `node start` will read, checked now
    return settings.member_id


def export_tenant(
    directory: Path, name: str, out: Path, ports: Ports | None = None
) -> ExportResult:
    """Export tenant ``name`` of the host in ``directory`` into the new node directory
    ``out`` (see the module). The tenant is left suspended in the host."""
    from qdspace.node.host.client import running_host

    files = HostLayout(directory.resolve())
    registry = Registry(files.directory)
    record = registry.get(name)
    out = check_destination(out, files.directory)
    running = running_host(files.directory) is not None
    if running and record.state is not TenantState.SUSPENDED:
        raise TenantActive(
            f"tenant {name} is being served by the running host and could write meanwhile: "
            f"suspend it first (`qdspace host tenant suspend --dir {directory} --name {name}`) "
            "or stop the host; nothing was exported"
        )
    key_files = tenant_key_files(files, load_master_key(files), name)
    source = files.tenant(name)
    was = (record.state, record.reason)
    reason = f"exported to {out}; remove it with `qdspace host tenant remove`"
    registry.set_state(name, TenantState.SUSPENDED, "exporting")  # before anything is read
    staging = out.parent / f".{out.name}.export-partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        shutil.copytree(source, staging, symlinks=True, ignore=lambda _d, n: _SKIPPED & set(n))
        os.chmod(staging, 0o700)
        member_id = _node_json(source, staging, ports or Ports())
        unsealed = _unseal_all(staging, key_files)
        db_url_file: Path | None = None
        size = 0
        sealed_url = files.sealed_db_url(name)
        if sealed_url.exists():  # its own PostgreSQL: it keeps pointing there
            url = key_files.read(sealed_url, "database URL")
            write_atomic(staging / DB_URL_FILE, url.strip() + b"\n", mode=0o600)
            db_url_file = out / DB_URL_FILE
        elif (source / DATABASE_FILE).exists():
            size = backup_sqlite(source / DATABASE_FILE, staging / DATABASE_FILE).bytes
        if out.exists():
            out.rmdir()  # empty (checked); the rename below takes its place
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        registry.set_state(name, *was)
        raise
    registry.mark_exported(name, str(out), reason)
    return ExportResult(name, member_id, out, tuple(unsealed), db_url_file, size)
