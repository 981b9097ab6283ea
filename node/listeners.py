"""The node's HTTP listeners: operator API and regulator API, each TLS, each its own socket.

A node has three listeners (the peer gRPC server is `node.rpc.server`): the operator
API, which the operator's tools call with the operator token, and the regulator API,
which regulators call with their credentials. Each binds to its own host and port, so
a site can put the operator API on an internal address and the regulator API behind
its public proxy. All are bound before anything starts, so a taken port is one clear
error (`PortInUseError`, naming the listener) and nothing half-started.

Both HTTP listeners speak only TLS. By default they present the member's certificate
(issued by the space's CA, with the SANs ``localhost``, the member name and
``127.0.0.1``), so a client that trusts the space CA verifies them; an operator can
give the operator API a certificate of its own (``api_tls_cert_file`` /
``api_tls_key_file``, e.g. from cert-manager). The files are loaded here once before
the servers start, so a missing or mismatched file is a `ConfigError`, not a traceback
from inside uvicorn.

The run file (``DIR/run/runtime.json``) records the listeners as ``https://`` URLs and
the CA file a local client verifies them with (`runtime_record`).
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from qdspace.node.config import NodeSettings
from qdspace.node.errors import ConfigError, PortInUseError
from qdspace.util.urls import host_port

#: wildcard addresses are recorded for local clients as the loopback of their family
LOOPBACK_OF = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def bind_socket(what: str, host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free one) for ``what``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted connections only when the
    # socket says it is TCP; without it a response's body waited ~40 ms (Nagle + delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortInUseError(
            f"cannot bind {what} port {host_port(host, port)}: {exc.strerror}"
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def check_server_tls(cert: Path, key: Path, what: str) -> None:
    """Load ``cert``/``key`` as a TLS server would; a `ConfigError` naming them if not."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} TLS: {exc.filename} not found") from None
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{what} TLS: cannot load {cert} with {key}: {exc}") from None


def https_url(host: str, port: int) -> str:
    """``https://host:port`` for a local client (a wildcard host becomes loopback)."""
    host = LOOPBACK_OF.get(host, host)
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def runtime_record(
    settings: NodeSettings, grpc_port: int, api_port: int, regulator_port: int
) -> dict[str, object]:
    """The listener part of the run file: ``grpc``, ``api``, ``regulator``, ``ca_file``.

    ``ca_file`` is the space CA when the operator API presents the member certificate,
    None when it presents an operator-provided one (the client then verifies against
    the system's trust store, or ``--ca-file``). ``regulator_ca_file`` is always the
    space CA (the regulator listener presents the member certificate).
    """
    ca = str(settings.layout.ca_cert)
    return {
        "grpc": f"{settings.grpc_host}:{grpc_port}",
        "api": https_url(settings.api_host, api_port),
        "regulator": https_url(settings.regulator_host, regulator_port),
        "ca_file": ca if settings.api_tls_cert_file is None else None,
        "regulator_ca_file": ca,
    }
