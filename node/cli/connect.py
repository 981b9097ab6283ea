"""How a command names the node it calls: ``--dir``, or ``--api-url`` and ``--token``.

A node on this machine is found through its directory (``--dir DIR``: the run file
the node publishes on start and its operator token). A node anywhere else is named
by its operator API's address and token (``--api-url URL --token T``, or the
``QDSPACE_API_URL`` / ``QDSPACE_TOKEN`` environment variables). Both lead to the
same :class:`~qdspace.node.client.OperatorClient`. ``--dir`` wins over the
environment; giving ``--dir`` and ``--api-url`` on one command line is a usage
error, as is an address without a token.

Also here: ``--json`` output, shared by every listing command. Typer and the standard
library only: the client (and httpx) is imported when a command connects.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from qdspace.node.client import API_URL_ENV, DEFAULT_TIMEOUT_S, TOKEN_ENV

if TYPE_CHECKING:
    from qdspace.node.client import OperatorClient

DirOpt = Annotated[
    Path | None,
    typer.Option("--dir", help="node directory (the node must be running on this machine)"),
]
ApiUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--api-url",
        envvar=API_URL_ENV,
        help="the node's operator API (http://host:port), instead of --dir",
        show_envvar=True,
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar=TOKEN_ENV,
        help="the node's operator token (with --api-url)",
        show_envvar=True,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON")]


@dataclass(frozen=True)
class Target:
    """The node a command calls: a local directory, or an address and token."""

    directory: Path | None = None
    api_url: str | None = None
    token: str | None = None

    def client(self, timeout: float = DEFAULT_TIMEOUT_S) -> OperatorClient:
        """An operator-API client on the node (ClientError if it cannot be found)."""
        from qdspace.node.client import OperatorClient

        if self.directory is not None:
            return OperatorClient.from_directory(self.directory, timeout)
        assert self.api_url is not None and self.token is not None
        return OperatorClient(self.api_url, self.token, timeout=timeout)


def _explicit(api_url: str) -> bool:
    """Whether ``--api-url`` was given rather than inherited from the environment."""
    return api_url != os.environ.get(API_URL_ENV)


def target(directory: Path | None, api_url: str | None, token: str | None) -> Target:
    """The node named by ``--dir`` or ``--api-url``/``--token``; a usage error otherwise."""
    if directory is not None:
        if api_url and _explicit(api_url):
            raise typer.BadParameter("give --dir or --api-url, not both", param_hint="--api-url")
        return Target(directory=directory)
    if not api_url:
        raise typer.BadParameter(
            f"name the node: --dir DIR, or --api-url URL and --token TOKEN "
            f"(or ${API_URL_ENV} and ${TOKEN_ENV})",
            param_hint="--dir / --api-url",
        )
    if not token:
        raise typer.BadParameter(
            f"--api-url needs the node's operator token (--token or ${TOKEN_ENV})",
            param_hint="--token",
        )
    return Target(api_url=api_url, token=token)


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout, nothing else (for scripts and ``jq``)."""
    typer.echo(json.dumps(value, indent=2, default=str))
