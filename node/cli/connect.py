"""How a command names the node it calls: ``--dir``, or ``--api-url`` and ``--token-file``.

A node on this machine is found through its directory (``--dir DIR``: the run file
the node publishes on start, its operator token and the CA that verifies its TLS
certificate). A node anywhere else is named by its operator API's address and a file
holding its token (``--api-url URL --token-file PATH``, or the ``QDSPACE_API_URL`` /
``QDSPACE_TOKEN_FILE`` environment variables); ``--ca-file`` / ``QDSPACE_CA_FILE`` names
the CA certificate to verify it with (default: the system's trust store). A token is
never a command-line argument (every user of the machine can read those with ``ps``);
the ``QDSPACE_TOKEN`` environment variable still works, for scripts written before the
file existed. Both lead to the same :class:`~qdspace.node.client.OperatorClient`.
``--dir`` wins over the environment; giving ``--dir`` and ``--api-url`` on one command
line is a usage error, as is an address without a token.

Also here: ``--json`` output, shared by every listing command. Typer and the standard
library only: the client (and httpx) is imported when a command connects.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from qdspace.node.client import (
    API_URL_ENV,
    CA_FILE_ENV,
    DEFAULT_TIMEOUT_S,
    TOKEN_ENV,
    TOKEN_FILE_ENV,
)

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
        help="the node's operator API (https://host:port), instead of --dir",
        show_envvar=True,
    ),
]
TokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        envvar=TOKEN_FILE_ENV,
        help=f"a file holding the node's operator token (with --api-url; or ${TOKEN_ENV})",
        show_envvar=True,
    ),
]
CaFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--ca-file",
        envvar=CA_FILE_ENV,
        help="CA certificate (PEM) to verify the node's API with (with --api-url)",
        show_envvar=True,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON")]


def _no_password(url: str) -> str:
    """A database URL on a command line must not carry a password (``ps`` shows it)."""
    from urllib.parse import urlsplit

    try:
        password = urlsplit(url).password if url else None
    except ValueError:
        password = None  # not a URL the store would open either: it says so on start
    if password:
        raise typer.BadParameter(
            "a database URL with a password on the command line shows in the process list "
            "and the shell history; put the URL in a file and set QDSPACE_DB_URL_FILE to it"
        )
    return url


DbUrlOpt = Annotated[
    str,
    typer.Option(
        callback=_no_password,
        help="database URL (default: SQLite in DIR); one with a password goes in a file "
        "named by $QDSPACE_DB_URL_FILE, never on the command line",
    ),
]


@dataclass(frozen=True)
class Target:
    """The node a command calls: a local directory, or an address, token and CA."""

    directory: Path | None = None
    api_url: str | None = None
    token: str | None = field(default=None, repr=False)
    ca_file: Path | None = None

    def client(self, timeout: float = DEFAULT_TIMEOUT_S) -> OperatorClient:
        """An operator-API client on the node (ClientError if it cannot be found)."""
        from qdspace.node.client import OperatorClient

        if self.directory is not None:
            return OperatorClient.from_directory(self.directory, timeout)
        assert self.api_url is not None and self.token is not None
        return OperatorClient(self.api_url, self.token, timeout=timeout, ca_file=self.ca_file)


def _explicit(api_url: str) -> bool:
    """Whether ``--api-url`` was given rather than inherited from the environment."""
    return api_url != os.environ.get(API_URL_ENV)


def read_token(token_file: Path | None) -> str | None:
    """The token in ``token_file`` (stripped), else ``$QDSPACE_TOKEN``; a usage error if
    the file cannot be read or is empty."""
    if token_file is None:
        return os.environ.get(TOKEN_ENV) or None
    try:
        token = token_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise typer.BadParameter(f"{token_file}: {reason}", param_hint="--token-file") from None
    if not token:
        raise typer.BadParameter(f"{token_file} is empty", param_hint="--token-file")
    return token


def target(
    directory: Path | None,
    api_url: str | None,
    token_file: Path | None,
    ca_file: Path | None = None,
) -> Target:
    """The node named by ``--dir`` or ``--api-url``/``--token-file``; a usage error otherwise."""
    if directory is not None:
        if api_url and _explicit(api_url):
            raise typer.BadParameter("give --dir or --api-url, not both", param_hint="--api-url")
        return Target(directory=directory)
    if not api_url:
        raise typer.BadParameter(
            f"name the node: --dir DIR, or --api-url URL and --token-file PATH "
            f"(or ${API_URL_ENV} and ${TOKEN_FILE_ENV})",
            param_hint="--dir / --api-url",
        )
    token = read_token(token_file)
    if not token:
        raise typer.BadParameter(
            f"--api-url needs the node's operator token (--token-file, ${TOKEN_FILE_ENV} "
            f"or ${TOKEN_ENV})",
            param_hint="--token-file",
        )
    return Target(api_url=api_url, token=token, ca_file=ca_file)


def subcommand_target(
    ctx: typer.Context,
    directory: Path | None = None,
    api_url: str | None = None,
    token_file: Path | None = None,
    ca_file: Path | None = None,
) -> Target:
    """The node named after a group's subcommand, else before it, where the group's
    callback left it in ``ctx.obj`` (``contracts --dir D show ...``)."""
    if directory is not None or api_url or ctx.obj is None:
        return target(directory, api_url, token_file, ca_file)
    found: Target = ctx.obj
    return found


_R = TypeVar("_R")
#: the options by which a command names the node it calls, in the order ``--help`` shows
_NODE_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("directory", DirOpt),
    ("api_url", ApiUrlOpt),
    ("token_file", TokenFileOpt),
    ("ca_file", CaFileOpt),
)


def calls_node(command: Callable[..., _R]) -> Callable[..., _R]:
    """Give a command that calls a node the four options that name it (``--dir``,
    ``--api-url``, ``--token-file``, ``--ca-file``) and hand it the named :class:`Target`
    as its ``target`` parameter, so each command states only its own options.

    Typer reads a command's options off its signature; the wrapper's signature is the
    command's, ``target`` replaced by the four options (after the command's own, as they
    were listed by hand before)."""
    signature = inspect.signature(command, eval_str=True)
    if "target" not in signature.parameters:
        raise TypeError(f"{command.__name__} takes no `target` parameter")
    own = [p for p in signature.parameters.values() if p.name != "target"]
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=hint)
        for name, hint in _NODE_OPTIONS
    ]

    @functools.wraps(command)
    def wrapper(
        *args: Any,
        directory: Path | None = None,
        api_url: str | None = None,
        token_file: Path | None = None,
        ca_file: Path | None = None,
        **kwargs: Any,
    ) -> _R:
        named = target(directory, api_url, token_file, ca_file)
        return command(*args, target=named, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {
        **{p.name: p.annotation for p in own},
        **dict(_NODE_OPTIONS),
        "return": signature.return_annotation,
    }
    return wrapper


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout, nothing else (for scripts and ``jq``)."""
    typer.echo(json.dumps(value, indent=2, default=str))
