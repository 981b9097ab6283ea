"""gRPC calls in the node's metrics and logs: latency by method and status, request ids.

`ObserveCalls` is the server's outermost interceptor (outside the auth interceptor, so a
refused call is timed too). It times every call into the gRPC latency histogram by full
method name (a fixed set: the node's services) and status code, and sets the request id
the caller sent as ``x-request-id`` metadata (or a fresh one) for the call's log lines,
which therefore carry the id of the operator request on the other member that caused
them. The client interceptors send the current request id with every outgoing peer call.

A call its caller ended (cancelled, or went away while a stream's reply waited to be
written) is timed as ``CANCELLED``, not ``UNKNOWN``: a dashboard that counts UNKNOWN as
the node's faults must not count consumers that disconnect.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from contextvars import Token
from typing import Any

import grpc

from qdspace.node.logs import REQUEST_ID, accepted_request_id
from qdspace.node.metrics import NodeMetrics
from qdspace.node.rpc.wrap import PerMethod, around_calls

METADATA_KEY = "x-request-id"
logger = logging.getLogger("node.rpc")


def _code(context: grpc.aio.ServicerContext, failed: bool, abandoned: bool) -> str:
    code: object = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if isinstance(code, int):  # the integer value, as grpc's aio context may hold it
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return str(status.name)
    if abandoned or (failed and context.cancelled()):  # the caller went away: no fault
        return "CANCELLED"
    return "UNKNOWN" if failed else "OK"


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == METADATA_KEY:
            return accepted_request_id(value if isinstance(value, str) else None)
    return accepted_request_id(None)


class ObserveCalls(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Times every call and sets its request id (module docstring)."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self._metrics = metrics
        self._timed = PerMethod(self._time)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        return self._timed(details.method, handler)

    def _time(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        return around_calls(handler, lambda context, _stream: self._observed(method, context))

    @asynccontextmanager
    async def _observed(
        self, method: str, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[None]:
        token = REQUEST_ID.set(_request_id(context))
        started, failed, abandoned = time.perf_counter(), True, False
        try:
            yield
            failed = False
        except (GeneratorExit, asyncio.CancelledError):
            # the call's task was cancelled (its caller cancelled, the server stops), or
            # its stream was closed before its end (a write to a caller that went away
            # failed): the caller's doing, not the call's fault
            abandoned = True
            raise
        finally:
            elapsed = time.perf_counter() - started
            code = _code(context, failed, abandoned)
            self._metrics.grpc_latency.labels(method=method, code=code).observe(elapsed)
            _reset(token)


def _reset(token: Token[str | None]) -> None:
    """Put back the request id a call replaced, in the context that set it.

    A streaming call whose caller went away while its reply waited to be written leaves
    its generator suspended at a ``yield``; the event loop later closes it from a task of
    its own, in another context, where the token is not valid (``ValueError``, logged as
    an ERROR traceback on every such stream). There the call's context is gone with its
    task, so there is nothing to put back.
    """
    with suppress(ValueError):
        REQUEST_ID.reset(token)


def with_request_id(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    """``details`` with the current request id as ``x-request-id`` metadata (the pin
    interceptors of `node.rpc.pins` add it too, so that a pinned call runs one interceptor,
    not two)."""
    request_id = REQUEST_ID.get()
    if request_id is None:
        return details
    metadata = grpc.aio.Metadata(*(details.metadata or ()))
    metadata[METADATA_KEY] = request_id
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(with_request_id(details), request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(with_request_id(details), request)


class _StreamUnary(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(with_request_id(details), requests)


class _StreamStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(with_request_id(details), requests)


def request_id_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors that send the current request id to the peer."""
    return [_UnaryUnary(), _UnaryStream(), _StreamUnary(), _StreamStream()]
