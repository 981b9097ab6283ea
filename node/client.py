"""How a CLI command finds and calls its running node, without loading the node.

Most commands (``catalog``, ``negotiate``, ``contracts``, ``order close``, ``fl join``'s
negotiation) only talk to a node that is already running: the node holds the keys,
the stores and the peer channels. Such a command needs the node's address
(``DIR/run/runtime.json``, written by the node on start), its operator token and an
HTTP client -- not the server stack that writes them. This module is therefore kept
to the standard library at import time; ``httpx`` is imported when a call is made.
Importing ``node.run`` here would cost seconds on every command (uvicorn, FastAPI,
gRPC, SQLAlchemy, web3), which is what issue 21 measured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from qdspace.node.errors import NodeError
from qdspace.node.layout import NodeLayout

if TYPE_CHECKING:
    import httpx

DEFAULT_TIMEOUT_S = 300.0


class NodeNotRunning(NodeError):
    """The node directory has no ``run/runtime.json``: its node is not running."""


def runtime_file(directory: Path) -> Path:
    """``DIR/run/runtime.json``."""
    return NodeLayout(directory).runtime


def read_runtime(directory: Path) -> dict[str, object] | None:
    """The running node's published runtime record, or None if it is not running."""
    try:
        data: dict[str, object] = json.loads(runtime_file(directory).read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    return data


def operator_client(directory: Path, timeout: float = DEFAULT_TIMEOUT_S) -> httpx.Client:
    """An HTTP client on the running node's operator API, with its bearer token."""
    import httpx

    directory = directory.resolve()
    runtime = read_runtime(directory)
    if runtime is None:
        raise NodeNotRunning(f"node in {directory} is not running (no run/runtime.json)")
    try:
        token = NodeLayout(directory).operator_token.read_text().strip()
    except OSError as exc:
        raise NodeNotRunning(f"{NodeLayout(directory).operator_token}: {exc.strerror}") from None
    return httpx.Client(
        base_url=str(runtime["api"]), headers={"Authorization": f"Bearer {token}"}, timeout=timeout
    )
