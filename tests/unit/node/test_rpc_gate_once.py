"""The server interceptors build a method's wrapped handler once, for that handler only.

`AuthInterceptor` and `ObserveCalls` keep, per method, the servicer's handler and the
form they wrapped it in (bench/PROFILE-negotiation.md, round 5). A call with the same
handler gets the same wrapper; another handler object for the method (a servicer
registered again) gets a wrapper of its own, so no call runs a stale behaviour, and a
method without a handler stays without one.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from qdspace.node.metrics import NodeMetrics
from qdspace.node.rpc.auth import AuthInterceptor
from qdspace.node.rpc.observe import ObserveCalls

METHOD = "/qdspace.v1.Negotiation/Send"


class _Details:
    method = METHOD
    invocation_metadata = ()


def _handler() -> grpc.RpcMethodHandler:
    async def behaviour(request: Any, context: Any) -> Any:
        return request

    return grpc.unary_unary_rpc_method_handler(behaviour, bytes, bytes)


def test_a_method_is_wrapped_once_per_handler_and_an_unknown_one_not_at_all() -> None:
    first, second = _handler(), _handler()
    served = {"handler": first}

    async def base(details: Any) -> grpc.RpcMethodHandler | None:
        return served["handler"] if details.method == METHOD else None

    async def run() -> None:
        auth, observe = AuthInterceptor(object()), ObserveCalls(NodeMetrics())  # type: ignore[arg-type]

        async def inner(details: Any) -> Any:
            return await auth.intercept_service(base, details)

        one = await observe.intercept_service(inner, _Details())
        again = await observe.intercept_service(inner, _Details())
        assert one is again and one is not first  # wrapped, and wrapped once
        served["handler"] = second
        other = await observe.intercept_service(inner, _Details())
        assert other is not one
        assert other.unary_unary is not one.unary_unary

        class Unknown(_Details):
            method = "/qdspace.v1.Nothing/Here"

        assert await observe.intercept_service(inner, Unknown()) is None

    asyncio.run(run())
