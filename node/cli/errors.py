"""The CLI's one error handler: a known error is one line on stderr, never a traceback.

Every command is wrapped in :func:`clean_errors`. The errors it knows are the
project's own (node, connector, inference, ledger, federation); a failed call to a node arrives as a
:class:`~qdspace.node.client.ClientError` (a ``NodeError``) whose message already
names the route, the status and the problem's detail. The exit code comes from the
node's one fault table (:mod:`qdspace.node.faults`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from qdspace.connector.errors import ConnectorError
from qdspace.federation.errors import FederationError
from qdspace.inference.errors import InferenceError
from qdspace.ledger.errors import LedgerError
from qdspace.node.errors import NodeError

F = TypeVar("F", bound=Callable[..., Any])
err = Console(stderr=True)

KNOWN_ERRORS: tuple[type[Exception], ...] = (
    NodeError,
    ConnectorError,
    InferenceError,
    LedgerError,
    FederationError,
)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` as the CLI's one-line error (markup escaped) and return the exit
    to raise: ``raise fail(...)``."""
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def clean_errors(fn: F) -> F:
    """Known errors become one line on stderr and exit code 1, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KNOWN_ERRORS as exc:
            from qdspace.node import faults  # only on the error path: `--help` stays quick

            raise fail(str(exc), faults.exit_code(exc)) from None

    return wrapper  # type: ignore[return-value]
