"""What a suspended tenant's port answers: UNAVAILABLE, saying the host suspended it.

Stopping a tenant's gRPC server ends its open streams, but a closed port tells a peer
only "connection refused", as if the host were down. So while a tenant is suspended its
port serves a stand-in with the tenant's own certificate (mutual TLS as before) whose
every method, whatever its name or kind, ends the call at once with UNAVAILABLE and a
message naming the suspension: the peer's operator learns what happened and that the
call may work later.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from qdspace.node.errors import PortInUseError
from qdspace.node.identity.member import MemberKeys
from qdspace.node.rpc.server import server_credentials
from qdspace.util.urls import host_port


class _Refuse(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, message: str) -> None:
        self._message = message

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        message = self._message

        async def refuse(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, message)

        return grpc.stream_stream_rpc_method_handler(refuse)


class RefusingServer:
    """A gRPC server on a suspended tenant's port that refuses every call."""

    def __init__(self, keys: MemberKeys, host: str, port: int, message: str) -> None:
        self._server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        self._server.add_generic_rpc_handlers((_Refuse(message),))
        address = host_port(host, port)  # an IPv6 host in brackets: gRPC refuses ::1:7443
        try:
            bound = self._server.add_secure_port(address, server_credentials(keys))
        except RuntimeError as exc:
            raise PortInUseError(f"cannot bind gRPC port {address}: {exc}") from None
        if bound == 0:
            raise PortInUseError(f"cannot bind gRPC port {address}: already in use")
        self.port = bound

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop(0)
