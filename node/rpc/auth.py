"""Peer authentication, authorisation and admission for every incoming call, in one interceptor.

TLS already refused certificates not issued by the authority or expired. Here the
certificate the handshake verified is read back, checked against the authority's
revocation list (a stale list refuses everybody: revocation fails closed), turned
into a :class:`Peer`, and the caller's role is checked against the method's access
list. Every decision is logged with peer and method.

Only then is the request admitted and decoded: the interceptor takes the raw bytes
(the servicers' deserializers are moved behind the gate), so a caller who is refused
never gets a byte parsed, a request over its method's size cap is RESOURCE_EXHAUSTED,
bytes that are not the method's message are INVALID_ARGUMENT with one log line (no
traceback to flood the log with), and so are NaN or infinite numbers. Each call takes a
token of its member's request rate right after authentication, before its role is
checked (a member over it is RESOURCE_EXHAUSTED with a ``retry-after`` trailer, logged
once and then summed up, not a line per call), and holds a slot while it runs
(`node.rpc.limits`). Open streams are re-checked every
``STREAM_RECHECK_S``: when the member is revoked, or the CRL went stale, the stream
ends with UNAUTHENTICATED instead of feeding a member that is no longer one. Uploads
(client-streaming calls: a federated update, a masked input, a job's initial model) are
re-checked the same way, as each message arrives and while the servicer works, so an
upload a member started before its revocation is refused, not accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from cryptography import x509
from google.protobuf.message import Message

from qdspace.node.errors import IdentityError, NulInString, WireFormatError
from qdspace.node.identity.certs import MemberIdentity, identity_of
from qdspace.node.identity.directory import FingerprintMismatch
from qdspace.node.identity.revocation import RevocationList, StaleRevocationList
from qdspace.node.rpc.acl import allowed_roles
from qdspace.node.rpc.codes import status_code
from qdspace.node.rpc.limits import (
    CallCaps,
    CallLimiter,
    LimitExceeded,
    NumberOutOfRange,
    RateExceeded,
    check_values,
    max_request_bytes,
)
from qdspace.node.rpc.wrap import PerMethod

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


#: the trailer saying when a call refused for its member's request rate may be retried
RETRY_AFTER = "retry-after"


class Refused(Exception):
    """``retry_after_s``: a `RETRY_AFTER` trailer (0: none); ``logged``: whether the refusal
    has its log line (not each of a flood's: `rate_refusal`), ``note`` added to it."""

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        retry_after_s: int = 0,
        *,
        logged: bool = True,
        note: str = "",
    ):
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.logged = logged
        self.note = note


def rate_refusal(exc: RateExceeded) -> Refused:
    """A call over its member's request rate, answered with its retry-after trailer and
    logged only where the flood is to be reported (`node.rpc.member_rates`)."""
    note = f" ({exc.refused} refused since the last line)" if exc.refused > 1 else ""
    return Refused(status_code(exc), str(exc), exc.retry_after_s, logged=exc.report, note=note)


Pinned = Callable[[str], str | None]


class PeerAuthenticator:
    """Turns a verified TLS peer certificate into a Peer, or refuses it.

    ``pinned`` gives the certificate fingerprint the member directory names for a
    member id (None: not listed, e.g. a static peer); a caller presenting another
    certificate, such as an old one kept after a renewal, is refused.
    """

    def __init__(self, revocations: RevocationList, pinned: Pinned | None = None):
        self._revocations = revocations
        self._pinned = pinned
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
            except (ValueError, IdentityError) as exc:  # an unreadable certificate: identity
                raise Refused(status_code(IdentityError), f"bad certificate: {exc}") from None
            self._cache[pem] = identity
        self.check_standing(identity)
        return Peer(identity, address)

    def check_standing(self, identity: MemberIdentity) -> None:
        """Refuse a revoked member, and everybody while the revocation list is stale; and
        a member whose certificate is not the one the member directory names."""
        expected = self._pinned(identity.member_id) if self._pinned is not None else None
        if expected is not None and expected != identity.fingerprint:
            raise Refused(
                status_code(FingerprintMismatch),
                f"certificate sha256 {identity.fingerprint[:16]}... of member {identity.name} "
                f"is not the one its directory entry names ({expected[:16]}...)",
            )
        try:
            revoked = self._revocations.is_revoked(identity.serial)
        except StaleRevocationList as exc:
            raise Refused(status_code(exc), str(exc)) from None
        if revoked:
            raise Refused(
                grpc.StatusCode.UNAUTHENTICATED,
                f"certificate of member {identity.name} (serial {identity.serial:x}) is revoked",
            )


def authorise(peer: Peer, method: str) -> None:
    if peer.role not in allowed_roles(method):
        raise Refused(grpc.StatusCode.PERMISSION_DENIED, f"role {peer.role} may not call {method}")


STREAM_RECHECK_S = 1.0

Behavior = Callable[[Any, grpc.aio.ServicerContext], Any]


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps every handler so that no servicer code runs, and no request byte is decoded,
    for a caller who is not authenticated, authorised and admitted (module docstring)."""

    def __init__(
        self,
        authenticator: PeerAuthenticator,
        limiter: CallLimiter | None = None,
        recheck_s: float = STREAM_RECHECK_S,
    ):
        self._auth = authenticator
        self._limiter = limiter or CallLimiter(CallCaps())
        self._recheck_s = recheck_s
        self.reported: set[tuple[str, str]] = set()  # (method, error type) with a traceback
        self._gated = PerMethod(self._gate)  # the gate keeps nothing per call

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        return self._gated(details.method, handler)

    def _gate(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        call = _Call(self, method, handler.request_deserializer)
        serializer = handler.response_serializer
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                call.unary(handler.unary_unary, streaming_request=False),
                response_serializer=serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                call.unary(handler.stream_unary, streaming_request=True),
                response_serializer=serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                call.stream(handler.unary_stream, streaming_request=False),
                response_serializer=serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            call.stream(handler.stream_stream, streaming_request=True),
            response_serializer=serializer,
        )


class _Call:
    """One method's gate: authenticate, authorise, admit, decode; then watch streams."""

    def __init__(
        self,
        interceptor: AuthInterceptor,
        method: str,
        deserialize: Callable[[bytes], Any] | None,
    ):
        self._auth = interceptor._auth
        self._limiter = interceptor._limiter
        self._recheck_s = interceptor._recheck_s
        self._reported = interceptor.reported
        self.method = method
        self._deserialize = deserialize
        self._max_bytes = max_request_bytes(method)

    async def _refuse(self, context: grpc.aio.ServicerContext, refusal: Refused) -> NoReturn:
        if refusal.logged:
            peer = _CURRENT_PEER.get(None)
            who = f"{peer.name} at {peer.address}" if peer is not None else context.peer()
            logger.warning(
                "refused %s from %s: %s%s", self.method, who, refusal.reason, refusal.note
            )
        trailer = ((RETRY_AFTER, str(refusal.retry_after_s)),) if refusal.retry_after_s else ()
        await context.abort(refusal.code, refusal.reason, trailer)
        raise refusal  # abort raises; this keeps type checkers honest

    async def admit(self, context: grpc.aio.ServicerContext, *, stream: bool) -> Callable[[], None]:
        """The caller's peer set for the handler and its slot held; aborts otherwise."""
        address = context.peer()
        try:
            peer = self._auth.authenticate(context.auth_context(), address)
            try:
                self._limiter.pace(peer.member_id, peer.name)
            except RateExceeded as exc:
                raise rate_refusal(exc) from None
            authorise(peer, self.method)
            try:
                release = self._limiter.acquire(peer.member_id, peer.name, stream=stream)
            except LimitExceeded as exc:
                raise Refused(status_code(exc), str(exc)) from None
        except Refused as refusal:
            await self._refuse(context, refusal)
        _CURRENT_PEER.set(peer)
        return release

    async def _failed(self, context: grpc.aio.ServicerContext, exc: Exception) -> NoReturn:
        """A servicer failed unexpectedly: INTERNAL to the caller without details, and the
        traceback logged once per method and error type (a caller who found a way to make
        a method fail cannot flood the log with tracebacks); an abort passes through."""
        if isinstance(exc, grpc.aio.AbortError) or context.done():
            raise exc
        key = (self.method, type(exc).__name__)
        if key in self._reported:
            logger.error("%s failed: %s: %s (traceback logged before)", self.method, key[1], exc)
        else:
            self._reported.add(key)
            logger.error("%s failed: %s: %s", self.method, key[1], exc, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, f"{self.method} failed on this node")
        raise exc

    def _served(self) -> None:
        """The one line of an admitted call (a refused one has its refusal line instead)."""
        peer = current_peer()
        logger.info(
            "grpc %s peer=%s role=%s addr=%s", self.method, peer.name, peer.role, peer.address
        )

    async def decode(self, raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        """The request message, or an abort naming what is wrong with the bytes."""
        size = len(raw)
        if size > self._max_bytes:
            await self._refuse(
                context,
                Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"request of {size} bytes; {self.method} accepts at most {self._max_bytes}",
                ),
            )
        if self._deserialize is None:
            return raw
        try:
            message = self._deserialize(raw)
        except Exception as exc:  # any decoder failure is the caller's bytes
            reason = f"request is not a valid message for {self.method} ({type(exc).__name__})"
            await self._refuse(context, Refused(status_code(WireFormatError), reason))
        try:
            if isinstance(message, Message):  # (a chunked upload's own decoder gives bytes)
                check_values(message)
        except (NumberOutOfRange, NulInString) as exc:
            await self._refuse(context, Refused(status_code(exc), str(exc)))
        return message

    async def _requests(
        self, raw: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        async for item in raw:
            yield await self.decode(item, context)

    async def request(self, raw: Any, streaming: bool, context: grpc.aio.ServicerContext) -> Any:
        if streaming:  # each message is decoded (and may be refused) as it arrives
            self._served()
            return self._requests(raw, context)
        request = await self.decode(raw, context)
        self._served()
        return request

    def unary(self, behavior: Behavior, *, streaming_request: bool) -> Behavior:
        if streaming_request:
            return self.upload(behavior)

        async def wrapped(raw: Any, context: grpc.aio.ServicerContext) -> Any:
            release = await self.admit(context, stream=False)
            try:
                request = await self.request(raw, False, context)
                try:
                    return await behavior(request, context)
                except Exception as exc:
                    await self._failed(context, exc)
            finally:
                release()

        return wrapped

    def upload(self, behavior: Behavior) -> Behavior:
        """A client-streaming call (an upload): its caller's standing is re-checked as its
        messages arrive and while the servicer works on them, as an open stream's is; a
        caller revoked mid-upload is refused (UNAUTHENTICATED) and the servicer's
        work cancelled, so the upload is never accepted."""

        async def uploaded(raw: Any, context: grpc.aio.ServicerContext) -> Any:
            release = await self.admit(context, stream=True)
            try:
                lost: list[BaseException] = []
                request = self._rechecked(await self.request(raw, True, context), context, lost)
                task = asyncio.ensure_future(behavior(request, context))
                await self._until_done(task, context, lost)
                if lost:  # refused as a message arrived: whatever the servicer made of it
                    if task.done() and not task.cancelled():
                        task.exception()  # (the abort, or what it turned it into) is void
                    raise lost[0]
                try:
                    return await task
                except Exception as exc:
                    await self._failed(context, exc)
            finally:
                release()

        return uploaded

    async def _rechecked(
        self,
        requests: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
        lost: list[BaseException],
    ) -> AsyncIterator[Any]:
        """An upload's `requests`, while the caller stays in good standing (checked at
        most every `recheck_s` as messages arrive); the refusal is kept in `lost`."""
        peer = current_peer()
        checked = time.monotonic()
        async for request in requests:
            if time.monotonic() - checked > self._recheck_s:
                try:
                    self._auth.check_standing(peer.identity)
                except Refused as refusal:
                    try:
                        await self._refuse(context, refusal)
                    except BaseException as exc:
                        lost.append(exc)
                        raise
                checked = time.monotonic()
            yield request

    def stream(self, behavior: Behavior, *, streaming_request: bool) -> Behavior:
        if inspect.isasyncgenfunction(behavior):

            async def generated(raw: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                release = await self.admit(context, stream=True)
                try:
                    request = await self.request(raw, streaming_request, context)
                    try:
                        async for item in self._watched(behavior(request, context), context):
                            yield item
                    except Exception as exc:
                        await self._failed(context, exc)
                finally:
                    release()

            return generated

        async def written(raw: Any, context: grpc.aio.ServicerContext) -> None:
            # a servicer that writes with context.write (grpc's Health/Watch)
            release = await self.admit(context, stream=True)
            try:
                request = await self.request(raw, streaming_request, context)
                task = asyncio.ensure_future(behavior(request, context))
                await self._until_done(task, context)
                try:
                    await task
                except Exception as exc:
                    await self._failed(context, exc)
            finally:
                release()

        return written

    async def _watched(
        self, items: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """`items`, while the caller stays in good standing (re-checked every few seconds)."""
        iterator = aiter(items)
        peer = current_peer()
        checked = time.monotonic()
        try:
            while True:
                step = asyncio.ensure_future(anext(iterator))
                await self._until_done(step, context)
                try:
                    item = step.result()
                except StopAsyncIteration:
                    return
                if time.monotonic() - checked > self._recheck_s:  # a stream that never waits
                    try:
                        self._auth.check_standing(peer.identity)
                    except Refused as refusal:
                        await self._refuse(context, refusal)
                    checked = time.monotonic()
                yield item
        finally:
            with contextlib.suppress(RuntimeError, StopAsyncIteration):
                await items.aclose()  # type: ignore[attr-defined]

    async def _until_done(
        self,
        task: asyncio.Future[Any],
        context: grpc.aio.ServicerContext,
        lost: list[BaseException] | None = None,
    ) -> None:
        """Wait for `task`, re-checking the caller's standing; cancel it and abort when lost
        (`lost`: a refusal already made elsewhere, which ends the wait at once)."""
        peer = current_peer()
        while True:
            done, _ = await asyncio.wait({task}, timeout=self._recheck_s)
            if done:
                return
            if lost:  # refused already (the call is aborted): the work is not wanted
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                return
            try:
                self._auth.check_standing(peer.identity)
            except Refused as refusal:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                await self._refuse(context, refusal)
