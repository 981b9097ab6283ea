"""``qdspace authority serve``: the authority as an HTTPS service (`node.authority`).

Typer only at import; the server stack (uvicorn, FastAPI) loads when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from qdspace.node.cli.errors import clean_errors


@clean_errors
def authority_serve(
    directory: Annotated[Path, typer.Option("--dir", help="authority directory")],
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTPS port (0: any free port)")] = 9443,
    hostname: Annotated[
        list[str] | None,
        typer.Option(
            help="DNS name or IP members reach the service at (repeatable; its TLS "
            "certificate names them; default localhost and 127.0.0.1)"
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="log level")] = "INFO",
) -> None:
    """Serve the CA certificate, CRL, enrollment and the signed member directory over HTTPS."""
    from qdspace.node.authority.server import serve_authority
    from qdspace.node.authority.tls import DEFAULT_HOSTNAMES
    from qdspace.node.logs import setup_logging

    setup_logging(log_level)
    names = hostname or ([host, *DEFAULT_HOSTNAMES] if host not in ("0.0.0.0", "::") else [])
    serve_authority(directory, host, port, names or list(DEFAULT_HOSTNAMES))


def mount(authority_app: typer.Typer) -> None:
    authority_app.command("serve")(authority_serve)
