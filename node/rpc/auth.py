"""Peer authentication and authorisation for every incoming call, in one interceptor.

TLS already refused certificates not issued by the authority or expired. Here the
certificate the handshake verified is read back, checked against the authority's
revocation list, turned into a :class:`Peer`, and the caller's role is checked
against the method's access list. Every decision is logged with peer and method.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography import x509

from node.errors import IdentityError
from node.identity.certs import MemberIdentity, identity_of
from node.identity.revocation import RevocationList
from node.rpc.acl import allowed_roles

logger = logging.getLogger("node.rpc")

_CURRENT_PEER: contextvars.ContextVar[Peer] = contextvars.ContextVar("qdspace_peer")


@dataclass(frozen=True)
class Peer:
    """An authenticated caller."""

    identity: MemberIdentity
    address: str

    @property
    def name(self) -> str:
        return self.identity.name

    @property
    def role(self) -> str:
        return self.identity.role

    @property
    def member_id(self) -> str:
        return self.identity.member_id


def current_peer() -> Peer:
    """The caller of the RPC being served; set by :class:`AuthInterceptor`."""
    return _CURRENT_PEER.get()


class Refused(Exception):
    def __init__(self, code: grpc.StatusCode, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class PeerAuthenticator:
    """Turns a verified TLS peer certificate into a Peer, or refuses it."""

    def __init__(self, revocations: RevocationList):
        self._revocations = revocations
        self._cache: dict[bytes, MemberIdentity] = {}

    def authenticate(self, auth_context: dict[str, list[bytes]], address: str) -> Peer:
        pems = auth_context.get("x509_pem_cert")
        if not pems:
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, "no client certificate")
        pem = pems[0]
        identity = self._cache.get(pem)
        if identity is None:
            try:
                identity = identity_of(x509.load_pem_x509_certificate(pem))
            except (ValueError, IdentityError) as exc:
                raise Refused(grpc.StatusCode.UNAUTHENTICATED, f"bad certificate: {exc}") from None
            self._cache[pem] = identity
        if self._revocations.is_revoked(identity.serial):
            raise Refused(
                grpc.StatusCode.UNAUTHENTICATED,
                f"certificate of member {identity.name} (serial {identity.serial:x}) is revoked",
            )
        return Peer(identity, address)


def authorise(peer: Peer, method: str) -> None:
    if peer.role not in allowed_roles(method):
        raise Refused(grpc.StatusCode.PERMISSION_DENIED, f"role {peer.role} may not call {method}")


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps every handler so that no servicer code runs for an unauthorised caller."""

    def __init__(self, authenticator: PeerAuthenticator):
        self._auth = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        method: str = details.method
        gate = self._gate(method)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(gate, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(gate, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(gate, handler.stream_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream(gate, handler.stream_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _gate(self, method: str) -> Callable[[grpc.aio.ServicerContext], Awaitable[Peer]]:
        async def gate(context: grpc.aio.ServicerContext) -> Peer:
            address = context.peer()
            try:
                peer = self._auth.authenticate(context.auth_context(), address)
                authorise(peer, method)
            except Refused as refusal:
                logger.warning("refused %s from %s: %s", method, address, refusal.reason)
                await context.abort(refusal.code, refusal.reason)
                raise  # abort raises; this keeps type checkers honest
            logger.info("grpc %s peer=%s role=%s addr=%s", method, peer.name, peer.role, address)
            _CURRENT_PEER.set(peer)
            return peer

        return gate


def _wrap_unary(
    gate: Callable[[grpc.aio.ServicerContext], Awaitable[Peer]],
    behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]],
) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await gate(context)
        return await behavior(request, context)

    return wrapped


def _wrap_stream(
    gate: Callable[[grpc.aio.ServicerContext], Awaitable[Peer]],
    behavior: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]],
) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await gate(context)
        async for item in behavior(request, context):
            yield item

    return wrapped
