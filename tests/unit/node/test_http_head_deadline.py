"""A connection whose request head is late is closed (`HeadDeadlineH11`), on a real
uvicorn server: with nothing sent, half a head, or half a next head after a response;
a whole head with a slow body, and a prompt request, are served. (Before, a connection
sending half a request was held for as long as its client liked: 300 of them held 300
sockets of a host serving every tenant, before any token was checked.)"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
import uvicorn

from qdspace.node import http_listener
from qdspace.node.http_listener import HeadDeadlineH11

pytestmark = pytest.mark.asyncio


async def _app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
    assert scope["type"] == "http"
    body = b""
    while True:
        message = await receive()  # type: ignore[operator]
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b"ok:" + body})  # type: ignore[operator]


@pytest.fixture
async def port(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[int]:
    monkeypatch.setattr(http_listener, "HEAD_TIMEOUT_S", 0.5)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(_app, http=HeadDeadlineH11, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    yield sock.getsockname()[1]
    server.should_exit = True
    await asyncio.wait_for(task, 10)


async def _closed(reader: asyncio.StreamReader) -> bool:
    """Whether the server closed the connection within 5 s (reading to its end)."""
    try:
        await asyncio.wait_for(reader.read(), 5)
    except TimeoutError:
        return False
    return True


async def test_nothing_or_half_a_head_is_closed(port: int) -> None:
    silent = await asyncio.open_connection("127.0.0.1", port)
    half = await asyncio.open_connection("127.0.0.1", port)
    half[1].write(b"GET / HTTP/1.1\r\nHost: x\r\n")
    await half[1].drain()
    assert await _closed(silent[0]) and await _closed(half[0])
    for _reader, writer in (silent, half):
        writer.close()


async def test_a_slow_body_and_a_prompt_request_are_served_and_a_late_next_head_closed(
    port: int,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(1.0)  # twice the head's deadline: the body is the app's to wait for
    writer.write(b"slow")
    await writer.drain()
    answer = await asyncio.wait_for(reader.readuntil(b"ok:slow"), 5)
    assert answer.startswith(b"HTTP/1.1 200")
    writer.write(b"GET / HTTP/1.1\r\nHo")  # half of a next head on the kept-alive connection
    await writer.drain()
    assert await _closed(reader)
    writer.close()
