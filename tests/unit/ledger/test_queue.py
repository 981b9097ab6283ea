"""The durable leaf queue on a real SQLite file (and PostgreSQL when QDSPACE_TEST_PG_URL is set)."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from qdspace.ledger.errors import LedgerError, NotAnchored, UnknownLeaf
from qdspace.ledger.leaves import Leaf, UnknownKind, leaf_preimage
from qdspace.ledger.merkle import leaf_hash, root_of
from qdspace.ledger.queue import LeafQueue
from qdspace.ledger.queue_leaves import LeafConflict
from qdspace.ledger.queue_schema import ANCHORED, SEALED, SIGNED, ensure_schema
from qdspace.ledger.tx import SignedAnchor


def _sqlite(tmp_path: Path) -> Engine:
    return create_engine(f"sqlite:///{tmp_path / 'node.db'}")


@pytest.fixture
def queue(
    db_backend: str, tmp_path: Path, postgres_schema: Callable[[str], Engine]
) -> Iterator[LeafQueue]:
    """The queue on a SQLite file, or in a fresh PostgreSQL schema (``tests/conftest.py``)."""
    if db_backend == "sqlite":
        engine = _sqlite(tmp_path)
        ensure_schema(engine)
        yield LeafQueue(engine)
        engine.dispose()
    else:
        engine = postgres_schema("ledger")
        ensure_schema(engine)
        yield LeafQueue(engine)


def _signed(tag: bytes, nonce: int = 0) -> SignedAnchor:
    return SignedAnchor(b"raw-" + tag, tag.ljust(32, b"\0"), nonce, "0x" + "ab" * 20)


def test_leaf_commits_to_kind_id_and_record() -> None:
    leaf = Leaf.of("agreement", "a-1", b"{}")
    assert leaf.hash() == leaf_hash(leaf_preimage("agreement", "a-1", leaf.record_sha256))
    assert leaf.hash() != Leaf.of("agreement", "a-2", b"{}").hash()
    assert leaf.hash() != Leaf.of("inspection", "a-1", b"{}").hash()
    assert leaf.hash() != Leaf.of("agreement", "a-1", b"{ }").hash()
    with pytest.raises(UnknownKind, match="unknown leaf kind 'invoice'"):
        Leaf.of("invoice", "x", b"")
    with pytest.raises(LedgerError, match="printable"):
        Leaf.of("agreement", "", b"")


def test_enqueue_is_durable_and_idempotent(queue: LeafQueue) -> None:
    first = queue.enqueue("inspection", "insp-1", b"row-1")
    again = queue.enqueue("inspection", "insp-1", b"row-1")
    assert again == first
    second = queue.enqueue("inspection", "insp-2", b"row-2")
    other = queue.enqueue("agreement", "insp-1", b"row-1")
    assert (first.seq, second.seq, other.seq) == (1, 2, 1)
    with pytest.raises(LeafConflict, match="inspection 'insp-1' was anchored with other"):
        queue.enqueue("inspection", "insp-1", b"tampered")
    # a fresh queue object on the same database sees everything (it is in the database)
    assert LeafQueue(queue.engine).leaf("inspection", "insp-2") == second
    with pytest.raises(UnknownLeaf, match="no inspection with id 'nope'"):
        queue.leaf("inspection", "nope")


def test_bulk_enqueue_with_repeats_keeps_one_leaf_per_id(queue: LeafQueue) -> None:
    queue.enqueue("inspection", "i-3", b"3")
    leaves = [Leaf.of("inspection", f"i-{i}", str(i).encode()) for i in range(6)]
    stored = queue.enqueue_leaves([*leaves, leaves[0]])
    assert [s.ref_id for s in stored] == [*(f"i-{i}" for i in range(6)), "i-0"]
    assert queue.pending("inspection").count == 6
    assert sorted(s.seq for s in {s.seq: s for s in stored}.values()) == list(range(1, 7))


def test_seal_takes_consecutive_leaves_per_kind(queue: LeafQueue) -> None:
    queue.enqueue_leaves([Leaf.of("inspection", f"i-{i}", bytes([i])) for i in range(7)])
    queue.enqueue("agreement", "a-1", b"a")
    first = queue.seal("inspection", 3)
    second = queue.seal("inspection", 3)
    third = queue.seal("inspection", 3)
    assert first and second and third
    assert [(b.seq_from, b.seq_to, b.leaf_count) for b in (first, second, third)] == [
        (1, 3, 3),
        (4, 6, 3),
        (7, 7, 1),
    ]
    assert queue.seal("inspection", 3) is None
    assert queue.pending("inspection").count == 0
    assert queue.pending("agreement").count == 1
    hashes = queue.leaf_hashes(second)
    assert second.root == root_of(hashes)
    assert hashes == [queue.leaf("inspection", f"i-{i}").leaf_hash for i in (3, 4, 5)]
    assert queue.batch_of(queue.leaf("inspection", "i-4")).id == second.id
    with pytest.raises(NotAnchored, match="agreement 'a-1' is queued but not yet in a batch"):
        queue.batch_of(queue.leaf("agreement", "a-1"))


def test_batch_states_move_forward_only(queue: LeafQueue) -> None:
    queue.enqueue("deletion_receipt", "d-1", b"d")
    batch = queue.seal("deletion_receipt", 10)
    assert batch is not None and batch.state == SEALED
    signed = queue.mark_signed(batch, _signed(b"t1"), 7, "0x" + "cd" * 20)
    assert (signed.state, signed.nonce, signed.raw_tx) == (SIGNED, 0, b"raw-t1")
    with pytest.raises(LedgerError, match=f"batch {batch.id} is no longer sealed"):
        queue.mark_signed(batch, _signed(b"t2"), 7, "0x" + "cd" * 20)
    unsent = queue.mark_unsent(signed, "nonce used")
    assert (unsent.state, unsent.raw_tx, unsent.last_error) == (SEALED, None, "nonce used")
    resigned = queue.mark_signed(unsent, _signed(b"t3", 1), 7, "0x" + "cd" * 20)
    done = queue.mark_anchored(resigned, b"\x01" * 32, 12, b"\x02" * 32, 7, "0x" + "cd" * 20)
    assert (done.state, done.block_number, done.attempts) == (ANCHORED, 12, 2)
    assert queue.state_counts() == {SEALED: 0, SIGNED: 0, ANCHORED: 1}
    assert queue.anchored_between(0, 2**40) == [done]


def test_a_window_of_signed_transactions_is_journaled_whole_or_not_at_all(
    queue: LeafQueue,
) -> None:
    """The anchorer's nonce window: every nonce journaled with its bytes in one transaction,
    or (one batch having moved meanwhile) none, so a crash can neither skip nor reuse one."""
    contract = "0x" + "cd" * 20
    for i in range(4):
        queue.enqueue("inspection", f"w-{i}", bytes([i]))
    batches = [queue.seal("inspection", 1) for _ in range(4)]
    assert all(b is not None for b in batches)
    first, second, third, fourth = [b for b in batches if b is not None]
    queue.mark_signed(third, _signed(b"elsewhere", 99), 7, contract)  # moved meanwhile
    window = [(first, _signed(b"n5", 5)), (second, _signed(b"n6", 6)), (third, _signed(b"n7", 7))]
    with pytest.raises(LedgerError, match=f"batch {third.id} is no longer sealed"):
        queue.mark_window_signed(window, 7, contract)
    assert [b.state for b in queue.batches()] == [SEALED, SEALED, SIGNED, SEALED]
    assert queue.batch(first.id).nonce is None and queue.batch(first.id).attempts == 0
    journaled = queue.mark_window_signed(
        [(first, _signed(b"n5", 5)), (second, _signed(b"n6", 6)), (fourth, _signed(b"n7", 7))],
        7,
        contract,
    )
    assert [(b.id, b.state, b.nonce, b.raw_tx) for b in journaled] == [
        (first.id, SIGNED, 5, b"raw-n5"),
        (second.id, SIGNED, 6, b"raw-n6"),
        (fourth.id, SIGNED, 7, b"raw-n7"),
    ]
    assert all(b.attempts == 1 and b.chain_id == 7 and b.contract == contract for b in journaled)
    with pytest.raises(LedgerError, match="no longer sealed"):  # a window is signed once
        queue.mark_window_signed([(first, _signed(b"again", 8))], 7, contract)


def test_bulk_records_span_packed_rows_and_seal_across_them(
    queue: LeafQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    # many packed rows from few leaves
    monkeypatch.setattr("qdspace.ledger.queue_leaves.CHUNK_LEAVES", 4)
    refs = [f"EL-{i:03d}" for i in range(11)]
    records = [f'{{"n":{i}}}'.encode() for i in range(11)]
    assert queue.enqueue_records("inspection", refs[:6], records[:6]) == 6
    queue.enqueue("inspection", refs[6], records[6])  # a one-leaf row in between
    assert queue.enqueue_records("inspection", refs, records) == 4  # 7 known, 4 new
    expected = [Leaf.of("inspection", r, d) for r, d in zip(refs, records, strict=True)]
    for i, leaf in enumerate(expected):
        stored = queue.leaf("inspection", leaf.ref_id)
        assert (stored.seq, stored.record_sha256, stored.leaf_hash) == (
            i + 1,
            leaf.record_sha256,
            leaf.hash(),
        )
    assert [s.ref_id for s in queue.recent("inspection", 6)] == refs[:4:-1]
    pending = queue.pending("inspection")
    assert pending.count == 11 and pending.oldest_at is not None
    batches = [queue.seal("inspection", 5) for _ in range(3)]
    assert [(b.seq_from, b.seq_to) for b in batches if b] == [(1, 5), (6, 10), (11, 11)]
    for b in batches:
        assert b is not None
        hashes = queue.leaf_hashes(b)
        assert hashes == [x.hash() for x in expected[b.seq_from - 1 : b.seq_to]]
        assert b.root == root_of(hashes)
    with pytest.raises(LeafConflict, match="'EL-003' was anchored with other content"):
        queue.enqueue_records("inspection", ["EL-100", "EL-003"], [b"new", b"changed"])
    with pytest.raises(UnknownLeaf):  # all or nothing: the new id of that call is not stored
        queue.leaf("inspection", "EL-100")
    with pytest.raises(LeafConflict, match="'EL-200' was anchored with other content"):
        queue.enqueue_records("inspection", ["EL-200", "EL-200"], [b"one", b"two"])
    with pytest.raises(LedgerError, match="printable"):
        queue.enqueue_records("inspection", ["ok", "bad\nid"], [b"", b""])
    with pytest.raises(LedgerError, match="2 reference ids but 1 records"):
        queue.enqueue_records("inspection", ["a", "b"], [b""])
    assert queue.enqueue_records("inspection", [], []) == 0
    assert queue.pending("inspection").count == 0


def test_the_newest_batches_and_the_anchored_spans_of_a_range_are_read_by_index(
    queue: LeafQueue,
) -> None:
    """The console lists the newest anchored batches and the API marks a page of leaves
    anchored or not: both read only the batches they need (a node seals thousands a
    day), and give what every batch read and filtered gives."""
    rnd = random.Random(11)
    for round_ in range(40):
        kind = rnd.choice(("inspection", "agreement"))
        leaves = [
            Leaf.of(kind, f"{kind}-{round_}-{i}", bytes([i])) for i in range(rnd.randint(1, 6))
        ]
        queue.enqueue_leaves(leaves)
        batch = queue.seal(kind, rnd.randint(1, 4))
        if batch is not None and rnd.random() < 0.7:
            signed = queue.mark_signed(batch, _signed(bytes([round_])), 7, "0x" + "cd" * 20)
            tx, block = bytes([round_]) * 32, 100 + round_
            queue.mark_anchored(signed, tx, block, b"\x02" * 32, 7, "0x" + "cd" * 20)
    every = queue.batches()
    anchored = [b for b in every if b.state == ANCHORED]
    assert queue.batches(ANCHORED, newest=5) == anchored[-5:]
    assert queue.batches(newest=1000) == every
    for kind in ("inspection", "agreement"):
        top = max(b.seq_to for b in every if b.kind == kind) + 3
        for _ in range(30):
            low = rnd.randint(1, top)
            high = rnd.randint(low, top)
            want = [
                (b.seq_from, b.seq_to)
                for b in anchored
                if b.kind == kind and b.seq_to >= low and b.seq_from <= high
            ]
            assert queue.anchored_spans(kind, low, high) == want, (kind, low, high)
    assert queue.anchored_in_blocks(110, 120) == [
        b for b in anchored if b.block_number is not None and 110 <= b.block_number <= 120
    ]
