"""Creating a node directory: keys, certificate, settings and operator token, all or nothing.

Two ways in, one way to finish. ``qdspace node init --authority DIR`` (`init_node`) has the
authority's directory at hand (tests, the demo, a local network): it makes the keys, has the
authority sign their request and assembles the node aside, moving it in place at the end.
An offline enrollment (`install_node`) finishes a directory ``qdspace node csr`` started:
the keys are already there, the authority's certificate, trust bundle and revocation list
come back as files. Both end in `_write_node` (settings and operator token).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from cryptography.x509.oid import NameOID

from qdspace.node.config import (
    DEFAULT_API_PORT,
    DEFAULT_GRPC_PORT,
    DEFAULT_REGULATOR_PORT,
    NodeSettings,
    NodeSettingsAsWritten,
)
from qdspace.node.errors import ConfigError, IdentityError
from qdspace.node.identity.authority import Authority
from qdspace.node.identity.keyfiles import PLAIN, KeyFiles
from qdspace.node.identity.member import (
    MemberKeys,
    create_member_keys,
    install_certificate,
    random_token,
)
from qdspace.node.layout import NodeLayout
from qdspace.util.files import write_atomic


def _write_node(
    target: Path,
    keys: MemberKeys,
    *,
    directory: Path,
    space: str,
    crl_path: Path,
    grpc_port: int,
    api_port: int,
    regulator_port: int,
    db_url: str,
    peers: dict[str, str] | None,
    key_files: KeyFiles,
) -> NodeSettings:
    """Write the operator token and ``node.json`` (last: its presence makes a node) into
    ``target``; the settings name ``directory``, where the node will live."""
    # the values given, without the QDSPACE_* environment or secret files: a secret
    # there (QDSPACE_DB_URL_FILE) belongs to the process, never to node.json
    settings = NodeSettingsAsWritten(
        directory=directory,
        name=keys.identity.name,
        role=keys.identity.role,
        member_id=keys.identity.member_id,
        space=space,
        grpc_port=grpc_port,
        api_port=api_port,
        regulator_port=regulator_port,
        db_url=db_url,
        crl_path=crl_path,
        peers=peers or {},
    )
    key_files.write(NodeLayout(target).operator_token, random_token().encode())
    settings.model_copy(update={"directory": target}).save()
    return settings


def init_node(
    directory: Path,
    authority_dir: Path,
    *,
    name: str,
    role: str,
    grpc_port: int = DEFAULT_GRPC_PORT,
    api_port: int = DEFAULT_API_PORT,
    regulator_port: int = DEFAULT_REGULATOR_PORT,
    db_url: str = "",
    peers: dict[str, str] | None = None,
    key_files: KeyFiles = PLAIN,
) -> NodeSettings:
    """Create a member's directory. It is assembled aside and moved in place at the end.
    ``key_files`` writes the private files (a managed host's encrypt them)."""
    directory = directory.resolve()
    if NodeLayout(directory).config.exists():
        raise ConfigError(f"a node already exists in {directory}")
    if directory.exists() and any(directory.iterdir()):
        raise ConfigError(f"{directory} is not empty; choose a new directory for the node")
    authority = Authority.load(authority_dir.resolve())
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        keys = create_member_keys(staging, authority, name=name, role=role, key_files=key_files)
        settings = _write_node(
            staging,
            keys,
            directory=directory,
            space=authority.space,
            crl_path=authority.files.crl,
            grpc_port=grpc_port,
            api_port=api_port,
            regulator_port=regulator_port,
            db_url=db_url,
            peers=peers,
            key_files=key_files,
        )
        if directory.exists():
            directory.rmdir()
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return settings


def install_node(
    directory: Path,
    *,
    cert_pem: bytes,
    ca_pem: bytes,
    crl_pem: bytes,
    grpc_port: int = DEFAULT_GRPC_PORT,
    api_port: int = DEFAULT_API_PORT,
    regulator_port: int = DEFAULT_REGULATOR_PORT,
    db_url: str = "",
    peers: dict[str, str] | None = None,
    key_files: KeyFiles = PLAIN,
) -> NodeSettings:
    """Finish an offline enrollment: the directory holds the keys and request
    (`create_member_request`); install the certificate, the trust bundle and the authority's
    revocation list, then the settings. Nothing of a node is written if a check fails."""
    from qdspace.node.identity.certs import parse_ca_bundle
    from qdspace.node.identity.revocation import RevocationList

    directory = directory.resolve()
    files = NodeLayout(directory)
    if files.config.exists():
        raise ConfigError(
            f"a node already exists in {directory} (`qdspace node install --renew` "
            "installs a renewed certificate)"
        )
    if not files.signing_key.exists():
        raise ConfigError(f"no member keys in {directory}: start with `qdspace node csr`")
    trusted = parse_ca_bundle(ca_pem, "the authority certificate to install")
    if not trusted:
        raise IdentityError("the authority certificate to install is empty")
    write_atomic(files.crl, crl_pem, mode=0o644)
    try:
        RevocationList(trusted[0], files.crl)  # signed by the authority (first CA of the bundle)
        keys = install_certificate(directory, cert_pem, ca_pem, key_files=key_files)
    except BaseException:
        files.crl.unlink(missing_ok=True)
        raise
    space = keys.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return _write_node(
        directory,
        keys,
        directory=directory,
        space=str(space[0].value) if space else "qdspace",
        crl_path=files.crl,
        grpc_port=grpc_port,
        api_port=api_port,
        regulator_port=regulator_port,
        db_url=db_url,
        peers=peers,
        key_files=key_files,
    )


def add_peers(directory: Path, peers: dict[str, str]) -> NodeSettings:
    """Add ``peers`` to ``node.json``; only that key is rewritten (what the environment or
    secret files supply stays out of the file)."""
    settings = NodeSettings.load(directory)  # a clear error for a missing or broken node
    path = settings.layout.config
    data = json.loads(path.read_text())
    data["peers"] = NodeSettings._addresses({**data.get("peers", {}), **peers})
    write_atomic(path, json.dumps(data, indent=2).encode() + b"\n")
    return NodeSettings.load(directory)
