"""The client and the anchorer against an endpoint whose answers are well-formed HTTP but
no honest JSON-RPC: numbers SQLite cannot hold or with a sign, batch answers that are no
list of answers, bodies web3 cannot read, logs too short to decode.

Each must be a `ChainUnavailable` naming the endpoint, the anchorer reporting the chain
unreachable and no batch recorded ANCHORED. Before: a receipt in block ``-0x5`` recorded
the batch ANCHORED in block -5; a receipt block, a ``lookup`` block or a head over 2**63
raised SQLite's ``OverflowError`` every pass while the anchorer reported the chain
reachable; a batch answer of ``5``, ``null`` or ``{"id": [1]}`` escaped as a
``TypeError``, a non-object answer to a web3 call as web3's ``BadResponseFormat``, a short
log as eth_abi's ``InsufficientDataBytes``.

The endpoint is `test_hostile_endpoint.Endpoint`: a real HTTP server in this process.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from qdspace.ledger.client import LedgerClient
from qdspace.ledger.errors import ChainUnavailable
from qdspace.ledger.queue_schema import ANCHORED

from .test_hostile_endpoint import ANCHORED_TOPIC, CONTRACT, Endpoint, _anchorer, _word

pytestmark = pytest.mark.integration

HUGE = "0x" + "f" * 20  # beyond 2**64
_HONEST = object()


class Garbling(Endpoint):
    """`Endpoint`, rewriting what the test says: the receipt's ``blockNumber``, the
    ``lookup`` answer's block, the head, the logs; or `whole`, answered to every request in
    place of any JSON-RPC answer."""

    def __init__(self) -> None:
        self.receipt_block: str | None = None
        self.lookup_block: int | None = None
        self.head_answer: str | None = None
        self.log_data: str | None = None
        self.block_hash: Any = _HONEST
        self.whole: Any = _HONEST
        super().__init__()

    def call(self, method: str, params: list[Any]) -> Any:
        if method == "eth_getBlockByNumber" and self.block_hash is not _HONEST:
            block = dict(super().call(method, params))
            block.pop("hash")
            if self.block_hash is not None:
                block["hash"] = self.block_hash
            return block
        if method == "eth_blockNumber" and self.head_answer is not None:
            return self.head_answer
        if method == "eth_call" and self.lookup_block is not None:  # lookup(): anchored
            words = (1, 1, 0x11, self.lookup_block, 1)
            return "0x" + "".join(_word(w)[2:] for w in words)
        if method == "eth_getLogs" and self.log_data is not None:
            return [self._log(self.log_data)]
        return super().call(method, params)

    def _receipt(self, asked: str) -> dict[str, Any] | None:
        receipt: dict[str, Any] | None = super()._receipt(asked)
        if receipt is not None and self.receipt_block is not None:
            receipt["blockNumber"] = self.receipt_block
        return receipt

    @staticmethod
    def _log(data: str) -> dict[str, Any]:
        return {
            "address": CONTRACT, "topics": [ANCHORED_TOPIC, _word(1), _word(1), _word(0x11)],
            "data": data, "logIndex": "0x0", "blockNumber": "0x1", "transactionHash": _word(5),
            "blockHash": _word(1), "transactionIndex": "0x0", "removed": False,
        }  # fmt: skip

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        endpoint, honest = self, super()._handler()

        class Handler(honest):  # type: ignore[valid-type,misc]
            def do_POST(self) -> None:
                if endpoint.whole is _HONEST:
                    return super().do_POST()  # type: ignore[no-any-return]
                self.rfile.read(int(self.headers["Content-Length"]))
                data = json.dumps(endpoint.whole).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return None

        return Handler


@pytest.fixture
def garbling() -> Iterator[Garbling]:
    fake = Garbling()
    yield fake
    fake.close()


@pytest.mark.parametrize(
    ("block", "why"),
    [("-0x5", "'-0x5'"), (HUGE, f"'{HUGE}'"), ("0x8000000000000000", "'0x8000000000000000'")],
)
def test_a_receipt_block_with_a_sign_or_beyond_sqlite_anchors_nothing(
    garbling: Garbling, block: str, why: str
) -> None:
    anchorer, queue = _anchorer(garbling)
    anchorer.enqueue("agreement", "ag-1", b"record")
    garbling.receipt, garbling.receipt_block = "mined", block
    with pytest.raises(ChainUnavailable, match=rf"malformed receipt: blockNumber {why}, not a"):
        anchorer.step(force=True)
    assert queue.batches(ANCHORED) == []
    assert not anchorer.status().chain_reachable
    garbling.receipt_block = None  # the honest answer (the test's own check that it can pass)
    anchorer.step(force=True)
    assert [b.block_number for b in queue.batches(ANCHORED)] == [garbling.mined_in]


def test_a_lookup_block_beyond_sqlite_adopts_nothing(garbling: Garbling) -> None:
    """The nonce is refused and the contract says the root is anchored, in block 2**64-1:
    the anchorer would adopt that anchoring (`Anchorer._adopt_if_anchored`)."""
    client = LedgerClient(garbling.url, CONTRACT, timeout_s=5)
    garbling.lookup_block = 2**64 - 1
    with pytest.raises(ChainUnavailable, match="the block of a root 0xffffffffffffffff, not a"):
        client.lookup(b"\1" * 32)
    anchorer, queue = _anchorer(garbling)
    anchorer.enqueue("agreement", "ag-1", b"record")
    garbling.send_error = "nonce too low"
    with pytest.raises(ChainUnavailable, match="the block of a root"):
        anchorer.step(force=True)
    assert queue.batches(ANCHORED) == [] and not anchorer.status().chain_reachable
    garbling.lookup_block = 7
    anchorer.step(force=True)
    assert [b.block_number for b in queue.batches(ANCHORED)] == [7]


def test_a_head_beyond_sqlite_is_the_chain_unavailable(garbling: Garbling) -> None:
    anchorer, queue = _anchorer(garbling, reorg_depth=6)
    anchorer.enqueue("agreement", "ag-1", b"record")
    garbling.receipt = "mined"
    anchorer.step(force=True)
    garbling.head_answer = HUGE
    anchorer._reorg_checked = float("-inf")  # (checked at most every REORG_CHECK_S)
    with pytest.raises(ChainUnavailable, match="a head block 0xffffffffffffffffffff, not a"):
        anchorer.step()
    assert not anchorer.status().chain_reachable
    assert [b.block_number for b in queue.batches(ANCHORED)] == [garbling.mined_in]


@pytest.mark.parametrize(
    "whole",
    [5, None, "ab", [{"id": [1], "result": None}, {"id": 0}], [{"id": True}, {"id": 1}], [1, 2]],
)
def test_an_answer_that_is_no_list_of_json_rpc_answers_is_refused(
    garbling: Garbling, whole: Any
) -> None:
    client = LedgerClient(garbling.url, CONTRACT, timeout_s=5)
    garbling.whole = whole
    for ask in (
        lambda: client.receipts([b"\1" * 32, b"\2" * 32]),
        lambda: client.receipt(b"\1" * 32),
        lambda: client.block_hashes([1, 2]),
    ):
        with pytest.raises(ChainUnavailable, match="not a list of JSON-RPC answers"):
            ask()
    reads: tuple[Callable[[], object], ...] = (
        client.latest_block,
        lambda: client.block_timestamp(1),
        lambda: client.chain_id,
    )
    for read in reads:
        with pytest.raises(ChainUnavailable, match="answered what web3 cannot read"):
            read()
    garbling.whole = _HONEST
    assert client.latest_block() == garbling.head


def test_a_log_too_short_to_decode_is_the_chain_unavailable(garbling: Garbling) -> None:
    client = LedgerClient(garbling.url, CONTRACT, timeout_s=5)
    garbling.log_data = "0x01"
    with pytest.raises(ChainUnavailable, match="malformed log"):
        client.anchoring_tx(b"\0" * 31 + b"\1", 1)
    with pytest.raises(ChainUnavailable, match="malformed log"):
        client.anchored_by("0x" + "00" * 19 + "11", 0, 5)
    garbling.log_data = "0x" + _word(3)[2:] + _word(1)[2:] + _word(1)[2:]
    (event,) = client.anchored_by("0x" + "00" * 19 + "11", 0, 5)
    assert event.leaf_count == 3


@pytest.mark.parametrize("hash_", [None, 5, "0xzz"])
def test_a_block_without_a_hash_is_the_chain_unavailable(garbling: Garbling, hash_: Any) -> None:
    """(None: the block has no ``hash`` at all; a KeyError reached the caller.)"""
    client = LedgerClient(garbling.url, CONTRACT, timeout_s=5)
    garbling.block_hash = hash_
    with pytest.raises(ChainUnavailable):
        client.block_hash(1)
    garbling.block_hash = _HONEST
    assert client.block_hash(1) is not None
