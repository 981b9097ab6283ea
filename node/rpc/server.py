"""Builds the node's gRPC server: mutual TLS, the auth interceptor, services, health.

The transport's receive limit is the largest message any method accepts (one chunk of
a chunked federation upload); each method's own, smaller cap and the per-peer call
caps are enforced by the interceptor (`node.rpc.limits`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from qdspace.node.errors import PortInUseError
from qdspace.node.identity.member import MemberKeys
from qdspace.node.metrics import NodeMetrics
from qdspace.node.rpc.auth import AuthInterceptor, PeerAuthenticator
from qdspace.node.rpc.client import CHANNEL_OPTIONS
from qdspace.node.rpc.limits import TRANSPORT_MAX_BYTES, CallCaps, CallLimiter
from qdspace.node.rpc.observe import ObserveCalls
from qdspace.util.urls import host_port

#: What the server sends; a peer's download is chunked too, this is only the ceiling.
SERVER_MAX_SEND_BYTES = 64 * 1024 * 1024

logger = logging.getLogger("node.rpc")

Registrar = Callable[[grpc.aio.Server], None]


def server_credentials(keys: MemberKeys) -> grpc.ServerCredentials:
    """Client certificates are required and must chain to the authority."""
    return grpc.ssl_server_credentials(
        [(keys.tls_key_pem, keys.cert_pem)],
        root_certificates=keys.ca_pem,
        require_client_auth=True,
    )


class PeerServer:
    """The started gRPC server, its bound port and its health servicer."""

    def __init__(
        self, server: grpc.aio.Server, port: int, health_servicer: health.aio.HealthServicer
    ):
        self.server = server
        self.port = port
        self.health = health_servicer

    async def start(self) -> None:
        await self.server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


def build_server(
    keys: MemberKeys,
    authenticator: PeerAuthenticator,
    registrars: Sequence[Registrar],
    host: str,
    port: int,
    limiter: CallLimiter | None = None,
    metrics: NodeMetrics | None = None,
    admission: Sequence[grpc.aio.ServerInterceptor] = (),
) -> PeerServer:
    """``admission``: interceptors that run before authentication and decoding (a managed
    host's per-tenant quotas, `node.host.admission`), so a call they refuse costs next
    to nothing."""
    options = [o for o in CHANNEL_OPTIONS if not o[0].startswith("grpc.max_")]
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if metrics is not None:  # outermost: a refused call is timed and logged with its id too
        interceptors.append(ObserveCalls(metrics))
    interceptors.extend(admission)
    interceptors.append(AuthInterceptor(authenticator, limiter or CallLimiter(CallCaps())))
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            *options,
            ("grpc.max_receive_message_length", TRANSPORT_MAX_BYTES),
            ("grpc.max_send_message_length", SERVER_MAX_SEND_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    for register in registrars:
        register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = host_port(host, port)  # an IPv6 host in brackets: gRPC refuses ::1:7443
    try:
        bound = server.add_secure_port(address, server_credentials(keys))
    except RuntimeError as exc:
        raise PortInUseError(f"cannot bind gRPC port {address}: {exc}") from None
    if bound == 0:
        raise PortInUseError(f"cannot bind gRPC port {address}: already in use")
    return PeerServer(server, bound, health_servicer)
