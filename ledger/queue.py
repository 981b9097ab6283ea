"""The durable leaf queue and batch journal, in the node's own database (SQLAlchemy Core).

Leaves are numbered per kind (``seq``) as they arrive and never change afterwards (how they
are stored is :mod:`qdspace.ledger.queue_leaves`, the tables :mod:`qdspace.ledger.queue_schema`).
A batch is a run of consecutive ``seq`` of one kind, so sealing writes one row and leaves
are never updated. A batch moves ``sealed -> signed -> anchored``; the signed raw
transaction and its nonce are committed *before* it is sent, so after a crash the same
bytes are resent (or their receipt found) and the batch is never anchored twice. The
unique root is a second guard, the contract refusing a known root the third.

Several transactions may be in flight at once (the anchorer's window, consecutive nonces).
:meth:`LeafQueue.mark_window_signed` journals a whole window in *one* database
transaction before any of it is sent: after a crash either every nonce of the window is
journaled with its signed bytes (and is resent or found mined, in nonce order) or none is
(and nothing was sent), so a crash mid-window neither reuses a nonce nor leaves a gap.

Every move is a compare-and-set on the batch's state (:meth:`LeafQueue._move`): a move from
a state the batch has already left fails loudly instead of overwriting the journal.
"""

from __future__ import annotations

import time

from sqlalchemy import and_, func, insert, select, update

from qdspace.ledger.errors import LedgerError, NotAnchored
from qdspace.ledger.leaves import kind_code
from qdspace.ledger.merkle import root_of_packed, unpack
from qdspace.ledger.queue_leaves import LeafStore
from qdspace.ledger.queue_schema import (
    ANCHORED,
    SEALED,
    SIGNED,
    Batch,
    StoredLeaf,
    batch_table,
)
from qdspace.ledger.tx import SignedAnchor


class LeafQueue(LeafStore):
    """Enqueue leaves, seal them into batches, journal each batch's transaction."""

    def seal(self, kind: str, max_leaves: int) -> Batch | None:
        """Seal up to ``max_leaves`` pending leaves of ``kind`` into one batch (None if none)."""
        code = kind_code(kind)
        with self._lock, self.engine.begin() as conn:
            last = self._last_sealed(conn, kind)
            end = min(last + max_leaves, self._next_seq(conn, code) - 1)
            if end <= last:
                return None
            packed = self._packed_hashes(conn, code, last + 1, end)
            batch_id = conn.execute(
                insert(batch_table).values(
                    kind=kind,
                    seq_from=last + 1,
                    seq_to=end,
                    leaf_count=end - last,
                    root=root_of_packed(packed),
                    state=SEALED,
                    sealed_at=time.time(),
                    attempts=0,
                )
            ).inserted_primary_key
            assert batch_id is not None
            row = conn.execute(select(batch_table).where(batch_table.c.id == batch_id[0])).one()
        return Batch.from_row(row)

    def batches(self, *states: str, newest: int | None = None) -> list[Batch]:
        """Batches in the given states (all if none given), oldest first; with ``newest``,
        only that many of the latest (a node seals a batch every few seconds, so its
        anchored batches grow by thousands a day: a page lists the newest)."""
        query = select(batch_table)
        if states:
            query = query.where(batch_table.c.state.in_(states))
        if newest is not None:
            query = query.order_by(batch_table.c.id.desc()).limit(newest)
        else:
            query = query.order_by(batch_table.c.id)
        with self.engine.connect() as conn:
            found = [Batch.from_row(r) for r in conn.execute(query)]
        return found[::-1] if newest is not None else found

    def anchored_in_blocks(self, first: int, last: int) -> list[Batch]:
        """The anchored batches mined in blocks ``first`` to ``last``, oldest first (read
        by the database, not every anchored batch made into a `Batch` and filtered)."""
        c = batch_table.c
        query = (
            select(batch_table)
            .where(c.state == ANCHORED, c.block_number >= first, c.block_number <= last)
            .order_by(c.id)
        )
        with self.engine.connect() as conn:
            return [Batch.from_row(r) for r in conn.execute(query)]

    def anchored_spans(self, kind: str, low: int, high: int) -> list[tuple[int, int]]:
        """The ``(seq_from, seq_to)`` of the anchored batches of ``kind`` holding any leaf
        from ``low`` to ``high``: the batch holding ``low`` found by one index seek, then
        those starting up to ``high`` (``uq_ledger_batch_start``), not every batch."""
        c = batch_table.c
        with self.engine.connect() as conn:
            first = conn.execute(
                select(c.seq_from)
                .where(c.kind == kind, c.seq_from <= low)
                .order_by(c.seq_from.desc())
                .limit(1)
            ).scalar_one_or_none()
            rows = conn.execute(
                select(c.seq_from, c.seq_to)
                .where(
                    c.kind == kind,
                    c.seq_from >= (low if first is None else first),
                    c.seq_from <= high,
                    c.state == ANCHORED,
                )
                .order_by(c.seq_from)
            ).all()
        return [(int(a), int(b)) for a, b in rows if b >= low]

    def state_counts(self) -> dict[str, int]:
        """How many batches are in each state."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(batch_table.c.state, func.count()).group_by(batch_table.c.state)
            ).all()
        return {SEALED: 0, SIGNED: 0, ANCHORED: 0} | {str(s): int(n) for s, n in rows}

    def batch(self, batch_id: int) -> Batch:
        """One batch by id."""
        with self.engine.connect() as conn:
            row = conn.execute(select(batch_table).where(batch_table.c.id == batch_id)).first()
        if row is None:
            raise LedgerError(f"no batch {batch_id}")
        return Batch.from_row(row)

    def batch_with_root(self, root: bytes) -> Batch | None:
        """The batch whose root is ``root`` (roots are unique), if this queue holds one."""
        with self.engine.connect() as conn:
            row = conn.execute(select(batch_table).where(batch_table.c.root == root)).first()
        return None if row is None else Batch.from_row(row)

    def batch_of(self, leaf: StoredLeaf) -> Batch:
        """The batch holding ``leaf``; NotAnchored if it is still pending."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(batch_table).where(
                    batch_table.c.kind == leaf.kind,
                    batch_table.c.seq_from <= leaf.seq,
                    batch_table.c.seq_to >= leaf.seq,
                )
            ).first()
        if row is None:
            raise NotAnchored(f"{leaf.kind} {leaf.ref_id!r} is queued but not yet in a batch")
        return Batch.from_row(row)

    def leaf_hashes(self, batch: Batch) -> list[bytes]:
        """The batch's leaf hashes in tree order."""
        return unpack(self.packed_leaf_hashes(batch))

    def packed_leaf_hashes(self, batch: Batch) -> bytes:
        """The batch's leaf hashes in tree order, packed (what the Merkle tree is built from)."""
        with self.engine.connect() as conn:
            return self._packed_hashes(conn, kind_code(batch.kind), batch.seq_from, batch.seq_to)

    def mark_signed(
        self, batch: Batch, signed: SignedAnchor, chain_id: int, contract: str
    ) -> Batch:
        """Journal the signed transaction before it is sent (only from ``sealed``)."""
        return self._move(
            batch,
            SEALED,
            state=SIGNED,
            raw_tx=signed.raw,
            tx_hash=signed.tx_hash,
            nonce=signed.nonce,
            sender=signed.sender,
            chain_id=chain_id,
            contract=contract,
            sent_at=time.time(),
            attempts=batch.attempts + 1,
        )

    def mark_window_signed(
        self, window: list[tuple[Batch, SignedAnchor]], chain_id: int, contract: str
    ) -> list[Batch]:
        """Journal a window of signed transactions (all from ``sealed``) in one transaction:
        all of them or, if any batch moved meanwhile, none (LedgerError)."""
        now = time.time()
        with self.engine.begin() as conn:
            for batch, signed in window:
                done = conn.execute(
                    update(batch_table)
                    .where(and_(batch_table.c.id == batch.id, batch_table.c.state == SEALED))
                    .values(
                        state=SIGNED,
                        raw_tx=signed.raw,
                        tx_hash=signed.tx_hash,
                        nonce=signed.nonce,
                        sender=signed.sender,
                        chain_id=chain_id,
                        contract=contract,
                        sent_at=now,
                        attempts=batch.attempts + 1,
                    )
                ).rowcount
                if done != 1:  # leaving the block by an exception rolls the window back
                    raise LedgerError(f"batch {batch.id} is no longer {SEALED}")
            ids = [b.id for b, _ in window]
            rows = conn.execute(
                select(batch_table).where(batch_table.c.id.in_(ids)).order_by(batch_table.c.id)
            ).all()
        by_id = {int(r._mapping["id"]): Batch.from_row(r) for r in rows}
        return [by_id[i] for i in ids]

    def mark_anchored(
        self,
        batch: Batch,
        tx_hash: bytes,
        block_number: int,
        block_hash: bytes,
        chain_id: int,
        contract: str,
        sender: str | None = None,
    ) -> Batch:
        """Record the mined transaction of a batch; ``sender``: the account the chain
        says anchored the root, where that is known to differ from what was recorded
        (a root another member anchored first, with the same leaves)."""
        moved = {} if sender is None else {"sender": sender}
        return self._move(
            batch,
            batch.state,
            state=ANCHORED,
            tx_hash=tx_hash,
            block_number=block_number,
            block_hash=block_hash,
            chain_id=chain_id,
            contract=contract,
            anchored_at=time.time(),
            last_error=None,
            **moved,
        )

    def mark_reorganised(self, batch: Batch, error: str) -> Batch:
        """An anchored batch whose block the chain no longer has (a reorganisation took it,
        and its transaction is in no other block): back to signed where we hold the
        signed transaction (resent as it is: the same nonce and bytes, so it is never
        anchored twice), else (a root another member anchored) back to sealed."""
        gone: dict[str, object] = {"block_number": None, "block_hash": None, "anchored_at": None}
        if batch.raw_tx is not None and batch.nonce is not None:
            return self._move(batch, ANCHORED, state=SIGNED, last_error=error, **gone)
        return self._move(
            batch,
            ANCHORED,
            state=SEALED,
            tx_hash=None,
            nonce=None,
            sent_at=None,
            last_error=error,
            **gone,
        )

    def mark_unsent(self, batch: Batch, error: str) -> Batch:
        """Forget a signed transaction that can no longer be mined (its nonce was used)."""
        return self._move(
            batch,
            SIGNED,
            state=SEALED,
            raw_tx=None,
            tx_hash=None,
            nonce=None,
            sent_at=None,
            last_error=error,
        )

    def note_error(self, batch: Batch, error: str) -> None:
        """Remember why the last attempt failed (shown to operators)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(batch_table).where(batch_table.c.id == batch.id).values(last_error=error)
            )

    def _move(self, batch: Batch, from_state: str, **values: object) -> Batch:
        with self.engine.begin() as conn:
            done = conn.execute(
                update(batch_table)
                .where(and_(batch_table.c.id == batch.id, batch_table.c.state == from_state))
                .values(**values)
            ).rowcount
            if done != 1:
                raise LedgerError(f"batch {batch.id} is no longer {from_state}")
            row = conn.execute(select(batch_table).where(batch_table.c.id == batch.id)).one()
        return Batch.from_row(row)

    def anchored_between(self, since: float, until: float) -> list[Batch]:
        """Anchored batches whose transaction was mined (recorded) in ``[since, until)``."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(batch_table)
                .where(
                    batch_table.c.state == ANCHORED,
                    batch_table.c.anchored_at >= since,
                    batch_table.c.anchored_at < until,
                )
                .order_by(batch_table.c.id)
            )
            return [Batch.from_row(r) for r in rows]
