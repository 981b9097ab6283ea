"""Behaviour around every gRPC call, whatever its kind, written once.

A gRPC method handler holds one of four behaviours (unary or streaming request, unary or
streaming response), and a streaming response may be an async generator or a coroutine
that writes to its context. Interceptors that must hold something for the whole call
(a quota slot, a timer and the request id) would each spell out the four kinds and the
two streaming styles; `around_calls` does it once, given an async context manager that is
entered before the behaviour starts and left after its last message (or its failure: the
manager sees the exception, a cancelled stream included).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc

Behavior = Callable[..., Any]
# (the call's context, whether the call streams in either direction) -> held for the call
Around = Callable[[grpc.aio.ServicerContext, bool], AbstractAsyncContextManager[object]]

_KINDS = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


def around_calls(handler: grpc.RpcMethodHandler, around: Around) -> grpc.RpcMethodHandler:
    """The same handler, its behaviour run inside ``around`` (module docstring)."""
    for attribute, make in _KINDS:
        behavior = getattr(handler, attribute)
        if behavior is not None:
            return make(
                _wrap(behavior, around, attribute != "unary_unary"),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler  # pragma: no cover - a handler always has one of the four


def _wrap(behavior: Behavior, around: Around, stream: bool) -> Behavior:
    if inspect.isasyncgenfunction(behavior):

        async def generated(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with around(context, stream):
                async for item in behavior(request, context):
                    yield item

        return generated

    async def called(request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with around(context, stream):
            return await behavior(request, context)

    return called


class PerMethod:
    """Each method's wrapped handler, built the first time the method is called and reused
    while the servicer hands over the same handler: for a server interceptor whose wrapper
    keeps nothing per call (building it on every call cost more than running it;
    bench/PROFILE-negotiation.md, round 5). Only methods that have a handler are kept, so
    a caller naming unknown methods cannot grow it."""

    def __init__(self, wrap: Callable[[str, grpc.RpcMethodHandler], grpc.RpcMethodHandler]) -> None:
        self._wrap = wrap
        self._built: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def __call__(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        built = self._built.get(method)
        if built is not None and built[0] is handler:
            return built[1]
        wrapped = self._wrap(method, handler)
        self._built[method] = (handler, wrapped)
        return wrapped
