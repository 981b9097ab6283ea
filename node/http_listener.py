"""uvicorn as the node's HTTPS listeners run it: the node owns SIGTERM, and a stop is prompt.

uvicorn's own graceful shutdown waits, without a bound by default, until every
connection is gone. Over TLS that wait is long for a connection nobody uses: closing an
idle keep-alive connection sends the TLS ``close_notify`` and then waits for the peer's
(asyncio's ``ssl_shutdown_timeout``, 30 s), and a peer's pooled HTTP client answers only
when it next touches the connection. A live data stream (``GET /data/{pid}`` on the DSP
listener) never completes on its own. So stopping a node that a peer had talked to took
as long as the slowest of these, and a test harness killed it after its 20 s.

`NodeHttpServer` stops in this order: it stops accepting, sets ``draining`` (a live
stream watches it and ends its body: the consumer resumes from its last position
later), lets each in-flight request finish within ``grace`` seconds
(``timeout_graceful_shutdown``; what is still running then is cancelled), and drops
every connection that has no request in flight as soon as its last response has left
the buffer, without waiting for the peer's half of the TLS close. What is left when the
grace is over is dropped as well.

`HeadDeadlineH11` closes a connection whose request head (request line and headers) has
not arrived whole within `HEAD_TIMEOUT_S` of the connection (or of its last response):
uvicorn times only idle keep-alive connections, so 300 connections each sending half a
request held 300 sockets and their buffers for as long as their clients liked, before any
token was checked (one process serves every tenant of a host).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

#: how long a stop lets in-flight requests finish, unless the settings say
#: (``shutdown_grace_s``)
DEFAULT_GRACE_S = 5.0
#: how often the stopping server looks for connections with nothing in flight
SWEEP_S = 0.05
#: how long a connection with nothing in flight and an empty buffer is left before it is
#: dropped (the kernel's send buffer is out of sight: a short linger lets it drain)
LINGER_S = 0.2


def _idle(connection: Any) -> bool:
    """No request in flight on this uvicorn connection (h11 or httptools protocol)."""
    cycle = getattr(connection, "cycle", None)
    return cycle is None or bool(cycle.response_complete)


class NodeHttpServer(uvicorn.Server):
    """uvicorn without its own signal handling, with a prompt stop (module docstring)."""

    def __init__(self, config: uvicorn.Config, draining: asyncio.Event | None = None) -> None:
        super().__init__(config)
        #: set when the stop begins; long-lived responses end when they see it
        self.draining = draining if draining is not None else asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.draining.set()
        sweeper = asyncio.create_task(self._drop_idle())
        try:
            await super().shutdown(sockets)
        finally:
            sweeper.cancel()
            for connection in list(self.server_state.connections):
                connection.transport.abort()  # still there after the grace

    async def _drop_idle(self) -> None:
        """Drop each connection with nothing in flight once its buffer has drained."""
        loop = asyncio.get_running_loop()
        seen: dict[int, float] = {}
        while True:
            now = loop.time()
            for connection in list(self.server_state.connections):
                transport = connection.transport
                if not _idle(connection) or transport.get_write_buffer_size():
                    seen.pop(id(connection), None)
                    continue
                if now - seen.setdefault(id(connection), now) >= LINGER_S:
                    transport.abort()
            await asyncio.sleep(SWEEP_S)


#: how long a connection may take to send a request's head (a slow client gets 10 s)
HEAD_TIMEOUT_S = 10.0


class HeadDeadlineH11(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head is late (see the
    module docstring). Its timer runs while the peer owes a head (`h11.IDLE`): from the
    connection, and from the first byte of a next request (an idle keep-alive connection
    is uvicorn's to time)."""

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # a head begun, not whole yet
            self._await_head()
        else:
            self._head_arrived()

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_arrived()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_late)

    def _head_arrived(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()
