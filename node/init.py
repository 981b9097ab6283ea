"""Creating a node directory: keys, certificate, settings and operator token, all or nothing."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

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


class _AsGiven(NodeSettings):
    """Settings of the values given only (what ``node init`` writes to ``node.json``)."""

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
        # the values given, without the QDSPACE_* environment or secret files: a secret
        # there (QDSPACE_DB_URL_FILE) belongs to the process, never to node.json
        settings = _AsGiven(
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
    """Add ``peers`` to ``node.json``; only that key is rewritten (what the environment or
    secret files supply stays out of the file)."""
    settings = NodeSettings.load(directory)  # a clear error for a missing or broken node
    path = settings.layout.config
    data = json.loads(path.read_text())
    data["peers"] = NodeSettings._addresses({**data.get("peers", {}), **peers})
    write_atomic(path, json.dumps(data, indent=2).encode() + b"\n")
    return NodeSettings.load(directory)
