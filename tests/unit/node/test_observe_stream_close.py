"""A stream whose caller goes away mid-write is timed as cancelled, and closed cleanly.

`ObserveCalls` sets the call's request id in a context variable and puts the old value
back when the call ends. A server stream whose caller cancelled while a reply waited to
be written (flow control: the caller stopped reading) leaves the wrapped generator
suspended at its ``yield``; the event loop closes it later from a task of its own, in
another context, where the token cannot be used: before, every such stream logged an
ERROR traceback ("Task exception was never retrieved ... was created in a different
Context"), and was timed under the code UNKNOWN, as a fault of the call would be; and
gRPC's own ERROR for the failed write ("ExecuteBatchError raised in core", a traceback)
is one INFO line in a node's log. A real gRPC server and client on loopback, no doubles.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from prometheus_client import generate_latest

from qdspace.node.logs import GRPC_CORE_LOGGER, REQUEST_ID, quiet_callers_gone
from qdspace.node.metrics import NodeMetrics
from qdspace.node.rpc.observe import ObserveCalls

SERVICE, METHOD = "qdspace.test.Firehose", "Pour"


def _counts(metrics: NodeMetrics) -> dict[str, float]:
    """The latency histogram's sample count of the test's method, by status code label."""
    lines = generate_latest(metrics.registry).decode().splitlines()
    wanted = [line for line in lines if "handling_seconds_count" in line and METHOD in line]
    return {
        line.split('code="', 1)[1].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in wanted
    }


async def _stream_abandoned_mid_write(metrics: NodeMetrics) -> list[dict[str, Any]]:
    problems: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: problems.append(ctx))
    seen_ids: list[str | None] = []

    async def pour(request: bytes, context: Any) -> AsyncIterator[bytes]:
        seen_ids.append(REQUEST_ID.get())
        while True:  # replies faster than the caller reads: the writes wait on it
            yield b"x" * 1_000_000

    handler = grpc.unary_stream_rpc_method_handler(pour)
    server = grpc.aio.server(interceptors=[ObserveCalls(metrics)])
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {METHOD: handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_stream(f"/{SERVICE}/{METHOD}")(
                b"", metadata=(("x-request-id", "req-abandoned-1"),)
            )
            async for _ in call:
                break  # one reply, then stop reading
            await asyncio.sleep(0.5)  # the server's next writes wait on flow control
            call.cancel()
        for _ in range(10):  # the loop closes the abandoned generator in a task of its own
            await asyncio.sleep(0.1)
            gc.collect()
    finally:
        await server.stop(None)
    assert seen_ids == ["req-abandoned-1"]  # the call ran under its caller's request id
    return problems


def test_an_abandoned_stream_is_timed_and_closed_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    quiet_callers_gone()  # as the node's logging set-up does
    metrics = NodeMetrics()
    with caplog.at_level(logging.INFO):
        problems = asyncio.run(_stream_abandoned_mid_write(metrics))
    context_errors = [
        p for p in problems if "different Context" in repr(p.get("exception", p.get("message")))
    ]
    assert context_errors == [], context_errors
    # in the latency histogram once, as cancelled by its caller (not UNKNOWN: no fault)
    assert _counts(metrics) == {"CANCELLED": 1}
    assert REQUEST_ID.get() is None  # nothing leaked into this context
    # gRPC's own "ExecuteBatchError raised in core" for the write that found the caller
    # gone (when it comes: it races the server's learning of the cancel) is one INFO line
    core = [r for r in caplog.records if r.name == GRPC_CORE_LOGGER]
    assert all(r.levelno == logging.INFO and r.exc_info is None for r in core), core
    assert all("its caller went away" in r.getMessage() for r in core)
