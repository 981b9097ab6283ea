"""The endpoint comes to serve another chain while the anchorer runs (a hosted service
pointed at another network, a dev chain started afresh), and comes back.

Before, the chain id was asked once and compared once, at start: the anchorer went on
signing for, sending to and reading from whatever answered (a batch queued after a dev
chain restart was anchored on the new chain; a head gone back was not noticed at all).
Now each pass looks first (`qdspace.ledger.chain_watch`): nothing is signed, sent or read
there, the status says what changed, and anchoring goes on once our chain is back.

The endpoint is `test_hostile_endpoint.Endpoint` (a real HTTP server in this process,
scripted) and the embedded chain as a real process, stopped and started afresh on the
same port.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from qdspace.ledger.anchor_policy import AnchorPolicy
from qdspace.ledger.anchorer import Anchorer
from qdspace.ledger.chain_watch import AnchoredBlock, what_changed
from qdspace.ledger.client import LedgerClient
from qdspace.ledger.deploy import fund_from_dev_account
from qdspace.ledger.errors import ChainSwapped, ChainUnavailable
from qdspace.ledger.keys import ChainSigner, new_key_file
from qdspace.ledger.queue import LeafQueue
from qdspace.ledger.queue_schema import ANCHORED, SEALED, SIGNED, ensure_schema
from qdspace.ledger.rpc_answers import ChainView

from .conftest import ONE_ETH, ChainProcess
from .test_hostile_endpoint import CHAIN_ID, CONTRACT, Endpoint

pytestmark = pytest.mark.integration

KEY = "0123456789abcdef0123456789abcdef"  # a hosted endpoint's API key, in its URL path


class Swappable(Endpoint):
    """`Endpoint` whose chain id the test changes, and that has no block above its head
    when `no_block_above_head` (as an honest node answers)."""

    def __init__(self) -> None:
        self.chain_id = CHAIN_ID
        self.no_block_above_head = False
        super().__init__()

    def call(self, method: str, params: list[Any]) -> Any:
        if method == "eth_chainId":
            return hex(self.chain_id)
        if (
            method == "eth_getBlockByNumber"
            and self.no_block_above_head
            and params[0] != "latest"
            and int(params[0], 16) > self.head
        ):
            return None
        return super().call(method, params)


@pytest.fixture
def endpoint() -> Iterator[Swappable]:
    fake = Swappable()
    yield fake
    fake.close()


def _anchorer(endpoint: Endpoint, **policy: Any) -> tuple[Anchorer, LeafQueue]:
    engine = create_engine("sqlite://")
    ensure_schema(engine)
    queue = LeafQueue(engine)
    url = f"{endpoint.url}/v3/{KEY}"
    client = LedgerClient(url, CONTRACT, expected_chain_id=CHAIN_ID, timeout_s=5)
    signer = ChainSigner.from_hex("11" * 32, source="test")
    rules = {"max_leaves": 10, "max_age_s": 0, "receipt_timeout_s": 0.3, "receipt_poll_s": 0.05}
    return Anchorer(queue, client, signer, AnchorPolicy(**(rules | policy))), queue


def _anchor(anchorer: Anchorer, ref_id: str) -> None:
    """Queue a leaf and anchor it in a pass (which looks at the chain first)."""
    before = len(anchorer.queue.batches(ANCHORED))
    anchorer.enqueue("agreement", ref_id, ref_id.encode())
    anchorer.step(force=True)
    assert len(anchorer.queue.batches(ANCHORED)) == before + 1


def _nothing_signed(queue: LeafQueue, anchored: int) -> None:
    """`anchored` batches anchored before, and the one queued since sealed, unsigned."""
    assert len(queue.batches(ANCHORED)) == anchored and queue.batches(SIGNED) == []
    (waiting,) = queue.batches(SEALED)
    assert waiting.raw_tx is None and waiting.nonce is None


def test_another_chain_id_stops_signing_and_reading_until_ours_is_back(
    endpoint: Swappable, caplog: pytest.LogCaptureFixture
) -> None:
    anchorer, queue = _anchorer(endpoint)
    endpoint.receipt, endpoint.head = "mined", 124
    _anchor(anchorer, "ag-1")
    (first,) = queue.batches(ANCHORED)
    sent = len(endpoint.sent)

    endpoint.chain_id = 1  # the URL now reaches another network
    anchorer.enqueue("agreement", "ag-2", b"ag-2")
    for _ in range(3):
        with pytest.raises(ChainSwapped, match=r"chain id 424242 -> 1, highest block seen 124"):
            anchorer.step(force=True)
    assert len(endpoint.sent) == sent, "signed and sent to another chain"
    _nothing_signed(queue, 1)
    status = anchorer.status()
    assert not status.chain_reachable and status.last_error is not None
    assert f"chain at {endpoint.url}/v3/… is no longer chain 424242" in status.last_error
    assert KEY not in status.last_error
    assert "Point rpc_url back at chain 424242" in status.last_error
    with pytest.raises(ChainSwapped):  # no proof is checked against another chain
        anchorer.client.lookup(first.root)
    with pytest.raises(ChainUnavailable):
        anchorer.client.receipts([first.tx_hash or b""])
    errors = [r for r in caplog.records if r.levelname == "ERROR" and "no longer" in r.message]
    assert len(errors) == 1  # said once, not every pass

    endpoint.chain_id = CHAIN_ID  # ours again: anchoring goes on where it stopped
    anchorer.step(force=True)
    assert len(queue.batches(ANCHORED)) == 2 and len(endpoint.sent) == sent + 1
    assert anchorer.status().chain_reachable and anchorer.status().last_error is None
    assert anchorer.client.lookup(first.root) is None  # (the scripted contract knows none)
    assert "answers at" in caplog.text and "again; anchoring goes on" in caplog.text


def test_a_head_gone_back_beyond_the_reorg_depth_stops_anchoring(endpoint: Swappable) -> None:
    anchorer, queue = _anchorer(endpoint, reorg_depth=6)
    endpoint.receipt, endpoint.head = "mined", 124
    _anchor(anchorer, "ag-1")
    endpoint.head = 200
    _anchor(anchorer, "ag-2")  # the pass saw head 200
    sent = len(endpoint.sent)

    endpoint.head = 193  # 7 blocks back: more than a reorganisation of 6 can take
    anchorer.enqueue("agreement", "ag-3", b"ag-3")
    with pytest.raises(ChainSwapped, match=r"head went back from block 200 to 193, more than"):
        anchorer.step(force=True)
    assert len(endpoint.sent) == sent
    _nothing_signed(queue, 2)

    endpoint.head = 194  # within the reorg depth of the highest head: ours
    anchorer.step(force=True)
    assert len(queue.batches(ANCHORED)) == 3 and len(endpoint.sent) == sent + 1


def test_a_head_below_an_anchored_block_is_judged_by_that_blocks_hash(
    endpoint: Swappable,
) -> None:
    """With a reorg depth of 64, a head 3 blocks back is no swap by itself; but the batch
    anchored in block 123 lies above it: a chain without that block cannot prove it (and
    `recheck_recent` looked only from the head down). A chain that still has the block (a
    load-balanced service answering from a node a few blocks behind) is ours."""
    anchorer, queue = _anchorer(endpoint, reorg_depth=64)
    endpoint.receipt, endpoint.head = "mined", 124
    _anchor(anchorer, "ag-1")

    endpoint.head = 120  # behind, but it has block 123 as recorded
    _anchor(anchorer, "ag-2")
    sent = len(endpoint.sent)

    endpoint.no_block_above_head = True
    anchorer.enqueue("agreement", "ag-3", b"ag-3")
    with pytest.raises(ChainSwapped, match=r"its head 120 is below block 123, where batch 2 was"):
        anchorer.step(force=True)
    assert len(endpoint.sent) == sent
    _nothing_signed(queue, 2)

    endpoint.head = 125  # block 123 is back, as recorded
    endpoint.mined_in = 125
    anchorer.step(force=True)
    assert len(queue.batches(ANCHORED)) == 3 and len(endpoint.sent) == sent + 1


# -- a dev chain started afresh, on the real embedded chain -------------------------------


def _nonce_at(url: str, signer: ChainSigner) -> int:
    """How many transactions `signer` ever sent to the chain at `url`."""
    return LedgerClient(url, CONTRACT, timeout_s=5).pending_nonce(signer.address)


def test_a_dev_chain_started_afresh_is_never_anchored_to(
    chain: ChainProcess, signer: ChainSigner, queue: LeafQueue, tmp_path: Path
) -> None:
    """Chain A anchors three batches; it stops and a fresh chain B (same chain id, same
    contract address, the account funded again) answers on the same port. Nothing is
    signed for B: not while its head is below A's, not once it has grown past A's head
    (A's anchored block is not B's), not by an anchorer started afresh against it (the
    node restarted). When A is back, the batch that waited is anchored on A."""
    anchorer = Anchorer(queue, chain.client(), signer, AnchorPolicy(max_leaves=1, max_age_s=0))
    for i in range(3):
        anchorer.enqueue("agreement", f"ag-{i}", f"agreement {i}".encode())
    assert anchorer.flush(30)
    high = anchorer.client.latest_block()
    anchored = queue.batches(ANCHORED)
    assert len(anchored) == 3
    chain.stop()

    fresh = ChainProcess(tmp_path / "chain-b", chain.port)  # the dev chain started afresh
    fresh.start()
    try:
        assert fresh.deployment.address == chain.deployment.address
        fund_from_dev_account(fresh.url, signer.address, ONE_ETH)
        low = fresh.client().latest_block()
        anchorer.enqueue("agreement", "ag-3", b"agreement 3")
        with pytest.raises(ChainSwapped, match=rf"highest block seen {high} -> head {low}\)"):
            anchorer.step(force=True)
        assert not anchorer.flush(1.0)  # a flush waits, as for a chain that is down
        status = anchorer.status()
        assert not status.chain_reachable and "chain id 424242 -> 424242" in str(status.last_error)

        other = new_key_file(tmp_path / "other.key")
        while fresh.client().latest_block() <= high + 2:  # B's head passes A's
            fund_from_dev_account(fresh.url, other.address, 1)
        block = anchored[-1].block_number
        with pytest.raises(ChainSwapped, match=rf"its block {block} is 0x"):
            anchorer.step(force=True)
        restarted = Anchorer(queue, chain.client(), signer, AnchorPolicy(max_leaves=1))
        with pytest.raises(ChainSwapped, match=rf"its block {block} is 0x"):
            restarted.step(force=True)
        assert _nonce_at(fresh.url, signer) == 0, "a transaction was sent to chain B"
        _nothing_signed(queue, 3)
    finally:
        fresh.stop()

    chain.start()  # A is back, with its blocks
    assert anchorer.flush(30)
    assert len(queue.batches(ANCHORED)) == 4
    assert _nonce_at(chain.url, signer) == 4
    assert [b.block_number for b in queue.batches(ANCHORED)[:3]] == [
        b.block_number for b in anchored
    ]


# -- the rules, one by one (`what_changed` is pure) ----------------------------------------

_OURS = AnchoredBlock(7, 100, b"\1" * 32)


@pytest.mark.parametrize(
    ("view", "high", "depth", "trusted", "said"),
    [
        (ChainView(1, 120, 100, _OURS.hash), 110, 0, True, "it serves chain id 1"),
        (ChainView(CHAIN_ID, 109, 100, _OURS.hash), 110, 0, True, "went back from block 110"),
        (ChainView(CHAIN_ID, 105, 100, _OURS.hash), 110, 5, True, None),  # a reorg's worth
        (ChainView(CHAIN_ID, 99, 100, _OURS.hash), 0, 5, False, None),  # a node behind
        (ChainView(CHAIN_ID, 99, 100, None), 0, 5, True, "its head 99 is below block 100"),
        (ChainView(CHAIN_ID, 120, 100, b"\2" * 32), 110, 0, True, None),  # reorg_depth's
        (ChainView(CHAIN_ID, 120, 100, b"\2" * 32), 110, 0, False, "its block 100 is 0x0202"),
        (ChainView(CHAIN_ID, 103, 100, b"\2" * 32), 0, 5, False, None),  # within the depth
    ],
)
def test_what_shows_another_chain(
    view: ChainView, high: int, depth: int, trusted: bool, said: str | None
) -> None:
    found = what_changed(CHAIN_ID, high, depth, view, _OURS, trusted)
    assert found == said if said is None else said in str(found)


def test_the_operators_live_probe_says_unreachable_on_another_chain(
    endpoint: Swappable,
) -> None:
    """`/v1/ledger/status` and ``/readyz`` probe the chain live: before, they asked only
    for a head, and called a chain of another id (or one the watch holds) reachable."""
    from qdspace.node.runtime.ledger import probe_chain

    anchorer, _ = _anchorer(endpoint)
    endpoint.receipt, endpoint.head = "mined", 124
    _anchor(anchorer, "ag-1")
    prober = LedgerClient(endpoint.url, CONTRACT, expected_chain_id=CHAIN_ID, timeout_s=5)
    seen = probe_chain(prober, CHAIN_ID, anchorer.client.held)
    assert seen.reachable and seen.latest_block == 124 and seen.error is None

    endpoint.chain_id = 1
    seen = probe_chain(prober, CHAIN_ID, anchorer.client.held)
    assert not seen.reachable and seen.latest_block == 124
    assert seen.error == (
        f"chain at {endpoint.url} serves chain id 1, the node anchors to chain id {CHAIN_ID}"
    )
    anchorer.enqueue("agreement", "ag-2", b"ag-2")  # a pass with work looks at once
    with pytest.raises(ChainSwapped):
        anchorer.step(force=True)
    endpoint.chain_id = CHAIN_ID  # the id is back, but the watch has not looked again yet
    held = anchorer.client.held
    assert held is not None
    seen = probe_chain(prober, CHAIN_ID, held)
    assert not seen.reachable and seen.error == held
