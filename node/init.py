"""Creating a node directory: keys, certificate, settings and operator token, all or nothing."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from qdspace.node.config import (
    DEFAULT_API_PORT,
    DEFAULT_GRPC_PORT,
    DEFAULT_REGULATOR_PORT,
    NodeSettings,
)
from qdspace.node.errors import ConfigError
from qdspace.node.identity.authority import Authority
from qdspace.node.identity.member import create_member_keys, random_token
from qdspace.node.layout import NodeLayout
from qdspace.util.files import write_atomic


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
) -> NodeSettings:
    """Create a member's directory. It is assembled aside and moved in place at the end."""
    directory = directory.resolve()
    if NodeLayout(directory).config.exists():
        raise ConfigError(f"a node already exists in {directory}")
    if directory.exists() and any(directory.iterdir()):
        raise ConfigError(f"{directory} is not empty; choose a new directory for the node")
    authority = Authority.load(authority_dir.resolve())
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        keys = create_member_keys(staging, authority, name=name, role=role)
        settings = NodeSettings(
            directory=directory,
            name=name,
            role=role,
            member_id=keys.identity.member_id,
            space=authority.space,
            grpc_port=grpc_port,
            api_port=api_port,
            regulator_port=regulator_port,
            db_url=db_url,
            crl_path=authority.files.crl,
            peers=peers or {},
        )
        settings_staged = settings.model_copy(update={"directory": staging})
        settings_staged.save()
        write_atomic(NodeLayout(staging).operator_token, random_token().encode(), mode=0o600)
        if directory.exists():
            directory.rmdir()
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return settings


def add_peers(directory: Path, peers: dict[str, str]) -> NodeSettings:
    settings = NodeSettings.load(directory)
    merged = NodeSettings._addresses({**settings.peers, **peers})
    updated = settings.model_copy(update={"peers": merged})
    updated.save()
    return updated
