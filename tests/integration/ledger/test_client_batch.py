"""The client's JSON-RPC batch requests against an endpoint that answers badly.

The anchorer sends its window and polls receipts in batch requests; an endpoint that
answers a batch with one error object, with answers missing, with no JSON or with a
malformed receipt must make the call fail as ``ChainUnavailable`` (the anchorer retries,
a verifier reports the chain as unreachable), never with a stray KeyError or TypeError.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from qdspace.ledger.client import LedgerClient
from qdspace.ledger.errors import ChainUnavailable

pytestmark = pytest.mark.integration

Answer = Callable[[list[dict[str, Any]]], bytes]
CONTRACT = "0x" + "11" * 20
TX = bytes(range(32))


@pytest.fixture
def endpoint() -> Iterator[Callable[[Answer], LedgerClient]]:
    servers: list[ThreadingHTTPServer] = []

    def start(answer: Answer) -> LedgerClient:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                data = answer(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        host, port = server.server_address[:2]
        return LedgerClient(f"http://{host!s}:{port}", CONTRACT, timeout_s=5)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _receipt(**overrides: Any) -> dict[str, Any]:
    good = {
        "transactionHash": "0x" + TX.hex(),
        "blockNumber": "0x5",
        "blockHash": "0x" + "22" * 32,
        "status": "0x1",
        "logs": [],
    }
    return good | overrides


def _each(result: Callable[[dict[str, Any]], Any]) -> Answer:
    def answer(body: list[dict[str, Any]] | dict[str, Any]) -> bytes:
        if isinstance(body, dict):  # one call comes as a plain request
            return json.dumps({"jsonrpc": "2.0", "id": body["id"], "result": result(body)}).encode()
        return json.dumps(
            [{"jsonrpc": "2.0", "id": r["id"], "result": result(r)} for r in body]
        ).encode()

    return answer


def test_a_well_formed_batch_answer_is_read(
    endpoint: Callable[[Answer], LedgerClient],
) -> None:
    client = endpoint(_each(lambda r: _receipt() if r["id"] == 0 else None))
    first, second = client.receipts([TX, bytes(32)])
    assert first is not None and first.block_number == 5 and first.succeeded
    assert first.anchored == () and second is None


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        (lambda body: b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600}}', "refused a batch"),
        (lambda body: b"[]", "incompletely"),
        (lambda body: b"<html>busy</html>", "no JSON"),
        (_each(lambda r: _receipt(blockNumber=None)), "malformed receipt"),
        (_each(lambda r: _receipt(status="0xzz")), "malformed receipt"),
        (_each(lambda r: _receipt(logs=[{"address": CONTRACT, "topics": "x"}])), "malformed"),
        (
            _each(
                lambda r: _receipt(
                    logs=[
                        {
                            "address": CONTRACT,
                            "topics": [
                                "0x" + "aa" * 32,  # not the Anchored topic: ignored
                                "0x" + "00" * 32,
                                "0x" + "00" * 32,
                                "0x" + "00" * 32,
                            ],
                            "data": "0x",
                            "logIndex": "0x0",
                        }
                    ]
                )
            ),
            None,
        ),
    ],
)
def test_a_bad_batch_answer_is_a_chain_failure_not_a_crash(
    endpoint: Callable[[Answer], LedgerClient], answer: Answer, says: str | None
) -> None:
    client = endpoint(answer)
    if says is None:
        (receipt,) = client.receipts([TX])
        assert receipt is not None and receipt.anchored == ()
        return
    with pytest.raises(ChainUnavailable, match=says):
        client.receipts([TX, bytes(32)])
    if "receipt" not in says and says != "malformed":  # the batch itself was bad
        with pytest.raises(ChainUnavailable, match=says):
            client.send_raw_many([b"\x01\x02", b"\x03"])


def test_one_call_goes_as_a_plain_request(endpoint: Callable[[Answer], LedgerClient]) -> None:
    """So that ``max_in_flight = 1`` works with an endpoint that refuses batch requests."""
    bodies: list[Any] = []

    def answer(body: Any) -> bytes:
        bodies.append(body)
        if isinstance(body, list):
            return b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"no batches"}}'
        return json.dumps({"jsonrpc": "2.0", "id": body["id"], "result": _receipt()}).encode()

    client = endpoint(answer)
    (receipt,) = client.receipts([TX])
    assert receipt is not None and receipt.tx_hash == TX
    assert client.receipt(TX) == receipt
    assert all(isinstance(b, dict) for b in bodies)
