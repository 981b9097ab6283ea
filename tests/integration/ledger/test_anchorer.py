"""The anchorer against a real chain process: batching, crash recovery, a chain outage."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import event

from qdspace.ledger.anchor_policy import AnchorPolicy
from qdspace.ledger.anchorer import Anchorer
from qdspace.ledger.client import LedgerClient
from qdspace.ledger.errors import WrongChain
from qdspace.ledger.keys import ChainSigner
from qdspace.ledger.leaves import KIND_CODES, Leaf
from qdspace.ledger.queue import LeafQueue
from qdspace.ledger.queue_schema import ANCHORED, SEALED, SIGNED, Batch
from qdspace.ledger.tx import ANCHOR_GAS, GAS_MARGIN

from .conftest import ChainProcess

pytestmark = pytest.mark.integration


def anchored_events(client: LedgerClient) -> list[bytes]:
    """Every root the contract ever emitted ``Anchored`` for, in chain order."""
    logs = client.w3.eth.get_logs({"address": client.address, "fromBlock": 0, "toBlock": "latest"})
    return [bytes(entry["topics"][1]) for entry in logs]


def assert_each_leaf_anchored_once(
    queue: LeafQueue,
    client: LedgerClient,
    total: int,
    signer: ChainSigner,
    kind: str = "inspection",
) -> list[Batch]:
    batches = queue.batches()
    assert {b.state for b in batches} == {ANCHORED}
    covered = [seq for b in batches if b.kind == kind for seq in range(b.seq_from, b.seq_to + 1)]
    assert sorted(covered) == list(range(1, total + 1))  # every leaf, none twice
    for b in batches:
        entry = client.lookup(b.root)
        assert entry is not None, f"batch {b.id} root missing on chain"
        assert (entry.leaf_count, entry.kind, entry.anchorer) == (
            b.leaf_count,
            KIND_CODES[b.kind],
            signer.address,
        )
        assert entry.block_number == b.block_number
        assert client.anchoring_tx(b.root, entry.block_number) == b.tx_hash
    events = anchored_events(client)
    assert sorted(events) == sorted(b.root for b in batches)  # one Anchored event per batch
    # one transaction per batch: the account sent exactly as many as there are batches
    assert client.pending_nonce(signer.address) == len(batches)
    return batches


def test_batches_seal_by_size_and_by_age(
    chain: ChainProcess, signer: ChainSigner, queue: LeafQueue
) -> None:
    offset = [0.0]
    anchorer = Anchorer(
        queue,
        chain.client(),
        signer,
        AnchorPolicy(max_leaves=4, max_age_s=60),
        clock=lambda: time.time() + offset[0],
    )
    for i in range(9):
        anchorer.enqueue("inspection", f"insp-{i}", f"verdict {i}".encode())
    anchorer.enqueue("agreement", "agr-1", b"agreement bytes")
    report = anchorer.step()
    assert (report.sealed, report.anchored) == (2, 2)  # two full batches; 1 + 1 leaves wait
    assert queue.pending("inspection").count == 1 and queue.pending("agreement").count == 1
    offset[0] = 61.0
    report = anchorer.step()
    assert (report.sealed, report.anchored) == (2, 2)
    assert anchorer.status().pending == dict.fromkeys(KIND_CODES, 0)
    client = chain.client()
    batches = assert_each_leaf_anchored_once(queue, client, 9, signer)
    assert [(b.kind, b.leaf_count) for b in batches] == [
        ("inspection", 4),
        ("inspection", 4),
        ("inspection", 1),
        ("agreement", 1),
    ]


def _journal_signed(queue: LeafQueue, client: LedgerClient, signer: ChainSigner) -> Batch:
    """What the anchorer does up to the moment it would send: seal, sign, journal."""
    batch = queue.seal("inspection", 100)
    assert batch is not None
    signed = client.sign_anchor(
        signer, batch.root, batch.leaf_count, 1, client.pending_nonce(signer.address)
    )
    return queue.mark_signed(batch, signed, client.chain_id, client.address)


@pytest.mark.parametrize("sent_before_crash", [False, True])
def test_restart_in_the_middle_of_sending_anchors_once(
    chain: ChainProcess, signer: ChainSigner, queue: LeafQueue, sent_before_crash: bool
) -> None:
    client = chain.client()
    queue.enqueue_leaves([Leaf.of("inspection", f"i-{i}", bytes([i])) for i in range(5)])
    batch = _journal_signed(queue, client, signer)
    if sent_before_crash:
        assert batch.raw_tx is not None
        client.send_raw(batch.raw_tx)
    # the process "crashed" here; a new anchorer starts on the same database
    restarted = Anchorer(LeafQueue(queue.engine), chain.client(), signer, AnchorPolicy())
    report = restarted.step()
    assert report.anchored == 1
    done = queue.batch(batch.id)
    assert done.state == ANCHORED and done.tx_hash == batch.tx_hash
    assert restarted.step().anchored == 0
    assert_each_leaf_anchored_once(queue, client, 5, signer)


def test_journaled_tx_whose_nonce_was_taken_is_signed_again(
    chain: ChainProcess, signer: ChainSigner, queue: LeafQueue
) -> None:
    client = chain.client()
    queue.enqueue("inspection", "i-1", b"x")
    batch = _journal_signed(queue, client, signer)
    # another tool using the same key spends the nonce before the journaled tx goes out
    other = client.sign_anchor(signer, b"\x07" * 32, 1, 5, batch.nonce or 0)
    client.send_raw(other.raw)
    anchorer = Anchorer(queue, client, signer, AnchorPolicy())
    anchorer.step()  # finds the nonce used: back to sealed
    anchorer.step()  # signs with a fresh nonce and anchors
    done = queue.batch(batch.id)
    assert done.state == ANCHORED and done.tx_hash != batch.tx_hash and done.nonce == 1
    assert sorted(anchored_events(client)) == sorted([b"\x07" * 32, done.root])


def test_fixed_gas_and_a_root_anchored_elsewhere_is_adopted_not_repeated(
    chain: ChainProcess, signer: ChainSigner, queue: LeafQueue
) -> None:
    client = chain.client()
    # the constant gas limit covers the worst case (all-non-zero calldata) with margin
    worst = client.estimate_anchor_gas(signer.address, b"\xff" * 32, 2**64 - 1, 255)
    assert worst * GAS_MARGIN <= ANCHOR_GAS
    anchorer = Anchorer(queue, client, signer, AnchorPolicy())
    anchorer.enqueue("inspection", "i-1", b"one")
    assert anchorer.step(force=True).anchored == 1
    first = queue.batches()[0]
    assert first.tx_hash is not None
    assert client.w3.eth.get_transaction(first.tx_hash)["gas"] == ANCHOR_GAS  # no estimate
    # a sealed batch whose root someone else anchored first: our fixed-gas tx reverts,
    # the anchorer finds the root on chain and records that anchoring instead
    queue.enqueue("inspection", "i-2", b"two")
    batch = queue.seal("inspection", 10)
    assert batch is not None
    other = client.sign_anchor(signer, batch.root, batch.leaf_count, 1, 1)
    client.send_raw(other.raw)
    anchorer.step()  # its nonce 1 was taken meanwhile: refused, root found, adopted
    done = queue.batch(batch.id)
    assert done.state == ANCHORED and done.tx_hash == other.tx_hash
    queue.enqueue("inspection", "i-3", b"three")
    batch = queue.seal("inspection", 10)
    assert batch is not None
    other = client.sign_anchor(signer, batch.root, batch.leaf_count, 1, 2)
    client.send_raw(other.raw)
    fresh = Anchorer(queue, client, signer, AnchorPolicy())  # asks the chain: nonce 3
    fresh.step()  # mined, reverted (AlreadyAnchored), root found, adopted
    done = queue.batch(batch.id)
    assert done.state == ANCHORED and done.tx_hash == other.tx_hash
    assert len(anchored_events(client)) == 3  # each root once
    assert fresh.step().anchored == 0
    assert client.pending_nonce(signer.address) == 4  # ours, two others, our reverted one
    assert [r.state for r in queue.batches()] == [ANCHORED] * 3


def test_chain_outage_during_anchoring_loses_nothing(
    chain: ChainProcess, signer: ChainSigner, queue: LeafQueue, tmp_path: Path
) -> None:
    policy = AnchorPolicy(
        max_leaves=15,
        max_age_s=0.1,
        tick_s=0.05,
        receipt_timeout_s=5,
        backoff_initial_s=0.05,
        backoff_max_s=0.4,
    )
    anchorer = Anchorer(queue, chain.client(), signer, policy)
    total = 240
    produced, killed = threading.Event(), threading.Event()

    def produce() -> None:
        for i in range(total):
            if i == total // 2:  # half after the kill: a pipelined anchorer on a fast machine
                killed.wait(60)  # could otherwise anchor all of it before the chain dies
            anchorer.enqueue("inspection", f"insp-{i:04d}", f"EL verdict {i}".encode())
            time.sleep(0.003)
        produced.set()

    anchorer.start()
    producer = threading.Thread(target=produce)
    producer.start()
    try:
        _wait(lambda: queue.state_counts()[ANCHORED] >= 2, "two batches anchored before the kill")
        chain.kill()  # mid-stream: leaves keep coming, batches keep sealing
        killed.set()
        _wait(lambda: not anchorer.status().chain_reachable, "anchorer noticing the outage")
        assert anchorer.status().last_error is not None
        time.sleep(0.5)
        held = queue.state_counts()
        assert held[SEALED] + held[SIGNED] + sum(anchorer.status().pending.values()) > 0
        chain.start()
        producer.join()
        _wait(lambda: produced.is_set() and anchorer.flush(timeout_s=1), "everything anchored")
    finally:
        killed.set()
        anchorer.stop()
        producer.join()
    client = chain.client()
    assert_each_leaf_anchored_once(queue, client, total, signer)
    assert anchorer.status().chain_reachable


def _wait(cond: object, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_anchorer_refuses_a_chain_it_did_not_expect(
    chain: ChainProcess, signer: ChainSigner, queue: LeafQueue
) -> None:
    dep = chain.deployment
    wrong_id = LedgerClient(chain.url, dep.address, expected_chain_id=dep.chain_id + 1)
    no_contract = LedgerClient(chain.url, signer.address, expected_chain_id=dep.chain_id)
    for client, why in ((wrong_id, "chain id"), (no_contract, "no contract")):
        anchorer = Anchorer(queue, client, signer, AnchorPolicy(max_leaves=1))
        anchorer.enqueue("inspection", "insp-1", b"verdict")
        with pytest.raises(WrongChain, match=why):
            anchorer.step(force=True)
    assert queue.batches() == []  # nothing sealed, signed or sent
    assert client.pending_nonce(signer.address) == 0


def test_an_idle_anchorer_leaves_its_database_alone_until_a_leaf_comes(
    chain: ChainProcess, signer: ChainSigner, queue: LeafQueue
) -> None:
    """Once a pass found the queue empty, the thread asks the database nothing (before: two
    queries per kind every tick), and the next enqueued leaf is still sealed by age and
    anchored."""
    policy = AnchorPolicy(max_leaves=100, max_age_s=0.1, tick_s=0.02)
    anchorer = Anchorer(queue, chain.client(), signer, policy)
    statements: list[str] = []
    event.listen(queue.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))

    def quiet_for(seconds: float) -> bool:
        statements.clear()
        time.sleep(seconds)
        return not statements

    anchorer.start()
    try:
        anchorer.enqueue("inspection", "insp-1", b"one")
        _wait(lambda: queue.state_counts()[ANCHORED] == 1, "the first leaf anchored")
        _wait(lambda: quiet_for(1.0), "no statement for 1 s (50 ticks)", timeout_s=20)
        anchorer.enqueue("inspection", "insp-2", b"two")  # below max_leaves: sealed by age
        _wait(lambda: queue.state_counts()[ANCHORED] == 2, "the next leaf anchored")
    finally:
        anchorer.stop()
    assert [b.leaf_count for b in queue.batches()] == [1, 1]
