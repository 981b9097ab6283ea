"""The client and the anchorer against a hostile JSON-RPC endpoint (often a third party's
hosted service): a real HTTP server in this process answering as the test scripts it.

An endpoint that trickles its answer, sends more than the client reads, cuts its answer
off, quotes fees or gas over the node's caps, answers the receipt of another transaction,
or refuses every transaction with "nonce too low" must cost the node neither a hang, nor
memory, nor fees it did not agree to, nor a batch recorded ANCHORED that is not, nor a new
signed transaction every pass. Each case failed on the code before it (a hang, 1.2 GiB, an
untranslated ``ChunkedEncodingError``, a signed 3e15-wei fee, an ANCHORED batch, six
signed transactions for one root).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from eth_account import Account
from eth_account.typed_transactions import TypedTransaction
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from sqlalchemy import create_engine

from qdspace.ledger.anchor_policy import AnchorPolicy
from qdspace.ledger.anchorer import Anchorer
from qdspace.ledger.client import MAX_ANSWER_BYTES, LedgerClient
from qdspace.ledger.errors import ChainUnavailable, FeeAboveCap
from qdspace.ledger.keys import ChainSigner
from qdspace.ledger.proofs import build_proof, verify_proof
from qdspace.ledger.queue import LeafQueue
from qdspace.ledger.queue_schema import ANCHORED, SEALED, SIGNED, ensure_schema

from .rpc_server import JsonRpcServer

pytestmark = pytest.mark.integration

CONTRACT = "0x" + "cc" * 20
CHAIN_ID = 424242
ANCHORED_TOPIC = "0x" + keccak(text="Anchored(bytes32,uint8,uint64,address,uint64,uint64)").hex()
GWEI = 10**9


def _word(n: int) -> str:
    return "0x" + n.to_bytes(32, "big").hex()


class Endpoint(JsonRpcServer):
    """A scriptable JSON-RPC endpoint; `sent` holds every raw transaction it was given."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.nonce = 0
        self.base_fee: int | None = GWEI
        self.tip = GWEI
        self.gas_price = GWEI
        self.estimate = 80_000
        self.send_error: str | None = None
        self.receipt: str = "none"  # none | mined | other
        self.head = 100
        self.blocks: dict[int, str] = {}  # block hashes other than `_word(number)`
        self.mined_in = 123  # the block a `mined` receipt names
        super().__init__()

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            result = self.call(request["method"], request.get("params") or [])
        except RuntimeError as exc:
            error = {"code": -32000, "message": str(exc)}
            return {"jsonrpc": "2.0", "id": request["id"], "error": error}
        return {"jsonrpc": "2.0", "id": request["id"], "result": result}

    def call(self, method: str, params: list[Any]) -> Any:
        if method == "eth_chainId":
            return hex(CHAIN_ID)
        if method == "eth_getCode":
            return "0x6000"
        if method == "eth_getTransactionCount":
            return hex(self.nonce)
        if method == "eth_blockNumber":
            return hex(self.head)
        if method == "eth_getBlockByNumber":
            number = self.head if params[0] == "latest" else int(params[0], 16)
            digest = self.blocks.get(number, _word(number))
            block: dict[str, Any] = {"number": hex(number), "hash": digest, "timestamp": "0x1"}
            if self.base_fee is not None:
                block["baseFeePerGas"] = hex(self.base_fee)
            return block
        if method == "eth_maxPriorityFeePerGas":
            return hex(self.tip)
        if method == "eth_gasPrice":
            return hex(self.gas_price)
        if method == "eth_estimateGas":
            return hex(self.estimate)
        if method == "eth_call":  # lookup(): never anchored
            return "0x" + "00" * 160
        if method == "eth_getLogs":
            return []
        if method == "eth_sendRawTransaction":
            self.sent.append(params[0])
            if self.send_error:
                raise RuntimeError(self.send_error)
            return "0x" + keccak(HexBytes(params[0])).hex()
        if method == "eth_getTransactionReceipt":
            return self._receipt(params[0])
        raise RuntimeError(f"unsupported {method}")

    def _receipt(self, asked: str) -> dict[str, Any] | None:
        """`mined`: a success receipt with an ``Anchored`` log of the root sent; `other`:
        the same, for another transaction than the one asked."""
        if self.receipt == "none" or not self.sent:
            return None
        raw = HexBytes(self.sent[-1])
        data = bytes(TypedTransaction.from_bytes(raw).as_dict()["data"])
        sender = Account.recover_transaction(raw)
        tx_hash = asked if self.receipt == "mined" else _word(0xBAD)
        account = "0x" + "00" * 12 + sender[2:].lower()
        # anchor(root, leaf count, kind): the log carries them as the contract's would
        root, count, kind = ("0x" + data[i : i + 32].hex() for i in (4, 36, 68))
        topics = [ANCHORED_TOPIC, root, kind, account]
        block, digest = hex(self.mined_in), self.blocks.get(self.mined_in, _word(self.mined_in))
        log = {
            "address": CONTRACT, "topics": topics, "logIndex": "0x0",
            "data": count + _word(self.mined_in)[2:] + _word(1)[2:],
            "blockNumber": block, "transactionHash": tx_hash, "blockHash": digest,
        }  # fmt: skip
        return {
            "transactionHash": tx_hash, "blockNumber": block, "blockHash": digest,
            "status": "0x1", "logs": [log],
        }  # fmt: skip


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    fake = Endpoint()
    yield fake
    fake.close()


def _anchorer(endpoint: Endpoint, **policy: Any) -> tuple[Anchorer, LeafQueue]:
    engine = create_engine("sqlite://")
    ensure_schema(engine)
    queue = LeafQueue(engine)
    client = LedgerClient(endpoint.url, CONTRACT, expected_chain_id=CHAIN_ID, timeout_s=5)
    signer = ChainSigner.from_hex("11" * 32, source="test")
    rules = {"max_leaves": 10, "max_age_s": 0, "receipt_timeout_s": 0.3, "receipt_poll_s": 0.05}
    return Anchorer(queue, client, signer, AnchorPolicy(**(rules | policy))), queue


def test_fees_and_gas_over_the_caps_are_not_signed(endpoint: Endpoint) -> None:
    anchorer, queue = _anchorer(endpoint)
    anchorer.enqueue("agreement", "ag-1", b"record")
    endpoint.base_fee = endpoint.tip = 10**15  # 1,000,000 gwei a gas unit
    with pytest.raises(FeeAboveCap, match="over this node's cap of 500 gwei"):
        anchorer.step(force=True)
    assert endpoint.sent == [] and anchorer.status().last_error is not None
    assert "max_fee_gwei" in str(anchorer.status().last_error)

    endpoint.base_fee = None  # a chain without EIP-1559: one gas price
    endpoint.gas_price = 501 * GWEI
    with pytest.raises(FeeAboveCap, match="a gas price of 501 gwei"):
        anchorer.step(force=True)
    assert endpoint.sent == []

    estimating, _ = _anchorer(endpoint, gas=None)  # gas estimated by the endpoint
    estimating.enqueue("agreement", "ag-2", b"record")
    endpoint.gas_price, endpoint.estimate = GWEI, 10_000_000
    client = estimating.client
    with pytest.raises(FeeAboveCap, match=r"gas limit of 12500000 .* cap of 1000000"):
        client.sign_anchor(estimating.signer, b"\1" * 32, 1, 1, 0)
    assert endpoint.sent == [] and queue.batches(ANCHORED) == []

    endpoint.base_fee, endpoint.tip = 400 * GWEI, 2 * GWEI  # payable now: capped, signed
    signed = client.sign_anchor(anchorer.signer, b"\1" * 32, 1, 1, 0, gas=120_000)
    tx = TypedTransaction.from_bytes(HexBytes(signed.raw)).as_dict()
    assert tx["maxFeePerGas"] == 500 * GWEI and tx["chainId"] == CHAIN_ID


def test_the_receipt_of_another_transaction_anchors_nothing(endpoint: Endpoint) -> None:
    anchorer, queue = _anchorer(endpoint)
    anchorer.enqueue("agreement", "ag-1", b"record")
    endpoint.receipt = "other"
    with pytest.raises(ChainUnavailable, match=r"receipt of transaction 0x0+bad when asked"):
        anchorer.step(force=True)
    assert queue.batches(ANCHORED) == []
    endpoint.receipt = "mined"  # the honest answer (the test's own check that it can pass)
    anchorer.step(force=True)
    assert len(queue.batches(ANCHORED)) == 1


def test_a_refused_transaction_is_signed_again_only_after_a_pause(endpoint: Endpoint) -> None:
    anchorer, queue = _anchorer(endpoint, resign_first_s=0.5, resign_max_s=60)
    anchorer.enqueue("agreement", "ag-1", b"record")
    endpoint.send_error = "nonce too low"
    for n in range(6):
        endpoint.nonce = 5 + n  # the endpoint says the account's count moved on
        anchorer.step(force=True)
    assert len(endpoint.sent) == 2, "signed again every pass"  # at once, once
    (batch,) = queue.batches(SEALED)
    assert "nonce too low" in (batch.last_error or "")
    time.sleep(0.6)
    anchorer.step(force=True)
    assert len(endpoint.sent) == 3  # after the pause, once
    for _ in range(3):
        anchorer.step(force=True)
    assert len(endpoint.sent) == 3  # the next pause is twice as long
    nonces = {TypedTransaction.from_bytes(HexBytes(r)).as_dict()["nonce"] for r in endpoint.sent}
    assert len(nonces) == 3
    delays = [AnchorPolicy().resign_delay(n) for n in (1, 2, 3, 20)]
    assert delays == [0.0, 2.0, 4.0, 900.0]


def test_a_batch_whose_block_was_reorganised_away_is_sent_again(
    endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    """Mined in block 123, which a reorganisation replaces: the batch goes back to signed
    and its very same transaction is sent again; mined again in block 125, it is recorded
    there. A proof handed out before names block 123: it fails (every byte of a proof is
    checked), saying that the chain moved the transaction and to fetch the proof again,
    and the proof fetched again holds. Without
    ``reorg_depth`` (the embedded chain's default) nothing is checked."""
    anchorer, queue = _anchorer(endpoint, reorg_depth=64)
    anchorer.enqueue("agreement", "ag-1", b"record")
    endpoint.receipt, endpoint.head = "mined", 124
    anchorer.step(force=True)
    (first,) = queue.batches(ANCHORED)
    assert first.block_number == 123 and len(endpoint.sent) == 1
    before = build_proof(queue, "agreement", "ag-1")
    assert verify_proof(before, anchorer.client).valid

    endpoint.blocks[123] = _word(0xFEED)  # another block 123 now; the transaction dropped
    endpoint.receipt, endpoint.head = "none", 126
    anchorer._reorg_checked = float("-inf")  # (checked at most every REORG_CHECK_S)
    anchorer.step()
    (back,) = queue.batches(SIGNED)
    assert back.id == first.id and back.block_number is None
    assert "block 123 was reorganised away with its transaction" in caplog.text
    assert endpoint.sent == [endpoint.sent[0]] * 2  # the same signed bytes again

    endpoint.receipt, endpoint.mined_in, endpoint.head = "mined", 125, 130
    anchorer.step()
    (again,) = queue.batches(ANCHORED)
    assert again.block_number == 125 and again.tx_hash == first.tx_hash
    assert again.block_hash == bytes.fromhex(_word(125)[2:])
    verdict = verify_proof(before, anchorer.client)
    assert not verdict.valid
    (block,) = [c for c in verdict.checks if not c.ok and c.name == "block"]
    assert "chain says 125, proof says 123: the chain holds this transaction" in block.detail
    assert "fetch the proof again" in block.detail
    assert verify_proof(build_proof(queue, "agreement", "ag-1"), anchorer.client).valid

    calm, calm_queue = _anchorer(endpoint)  # reorg_depth 0
    calm.enqueue("agreement", "ag-2", b"record")
    endpoint.mined_in = 127
    calm.step(force=True)
    endpoint.blocks[127], endpoint.receipt = _word(0xBEEF), "none"
    calm.step()
    assert len(calm_queue.batches(ANCHORED)) == 1  # not looked at again


# -- transport ---------------------------------------------------------------------------


def _raw_server(serve: Callable[[socket.socket], None]) -> Iterator[str]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            _read_request(conn)  # all of it: closing on unread bytes resets the connection
            try:
                serve(conn)
            except OSError:
                pass
            finally:
                conn.close()

    threading.Thread(target=run, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    listener.close()


def _read_request(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += conn.recv(65536)


def _receipt_call(url: str, timeout_s: float = 1.0) -> BaseException | None:
    """What asking `url` for a receipt raised (None: it answered), within 30 s."""
    client = LedgerClient(url, CONTRACT, timeout_s=timeout_s)
    box: dict[str, BaseException | None] = {}

    def ask() -> None:
        try:
            client.receipt(b"\1" * 32)
            box["raised"] = None
        except BaseException as exc:
            box["raised"] = exc

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "the call hangs"
    return box["raised"]


def test_an_answer_trickled_a_byte_at_a_time_is_given_up_on() -> None:
    def drip(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        conn.sendall(b"Content-Length: 1000\r\n\r\n")
        for _ in range(1000):  # 1 KB over 200 s, each read well within the timeout
            conn.sendall(b" ")
            time.sleep(0.2)

    for url in _raw_server(drip):
        raised = _receipt_call(url, timeout_s=1.0)
        assert isinstance(raised, ChainUnavailable), raised
        assert "did not finish its answer within 1 s" in str(raised)


@pytest.mark.parametrize("declared", [True, False])
def test_an_answer_over_the_size_cap_is_refused(declared: bool) -> None:
    size = MAX_ANSWER_BYTES + (1 << 20)

    def huge(conn: socket.socket) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        head += b"Content-Length: %d\r\n\r\n" % size if declared else b"Connection: close\r\n\r\n"
        conn.sendall(head + b'{"jsonrpc":"2.0","id":0,"result":null,"pad":"')
        block = b"A" * (1 << 20)
        for _ in range(size >> 20):
            conn.sendall(block)

    for url in _raw_server(huge):
        raised = _receipt_call(url, timeout_s=10.0)
        assert isinstance(raised, ChainUnavailable), raised
        assert f"answered more than {MAX_ANSWER_BYTES >> 20} MiB" in str(raised)


def test_an_answer_cut_off_midway_is_the_chain_unavailable() -> None:
    def cut(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        conn.sendall(b"100\r\n" + b"A" * 40)  # a chunk of 256 bytes, then the socket closes

    for url in _raw_server(cut):
        raised = _receipt_call(url)
        assert isinstance(raised, ChainUnavailable), raised
