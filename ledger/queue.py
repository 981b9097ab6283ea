"""The durable leaf queue and batch journal, in the node's own database (SQLAlchemy Core).

Leaves are numbered per kind (``seq``) as they arrive and never change afterwards. A batch
is a run of consecutive ``seq`` of one kind, so sealing writes one row and leaves are never
updated. A batch moves ``sealed -> signed -> anchored``; the signed raw transaction and its
nonce are committed *before* it is sent, so after a crash the same bytes are resent (or their
receipt found) and the batch is never anchored twice. The unique root is a second guard,
the contract refusing a known root the third.

Works on SQLite and PostgreSQL; the tables have their own ``MetaData`` and are created by
:func:`ensure_schema`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from ledger.client import SignedAnchor
from ledger.errors import LedgerError, NotAnchored, UnknownLeaf
from ledger.leaves import Leaf, kind_code
from ledger.merkle import root_of

metadata = MetaData()

leaf_table = Table(
    "ledger_leaf",
    metadata,
    Column("kind", String(32), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("ref_id", String(200), nullable=False),
    Column("record_sha256", LargeBinary(32), nullable=False),
    Column("leaf_hash", LargeBinary(32), nullable=False),
    Column("enqueued_at", Float, nullable=False),
    UniqueConstraint("kind", "ref_id", name="uq_ledger_leaf_ref"),
)

batch_table = Table(
    "ledger_batch",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("seq_from", BigInteger, nullable=False),
    Column("seq_to", BigInteger, nullable=False),
    Column("leaf_count", Integer, nullable=False),
    Column("root", LargeBinary(32), nullable=False, unique=True),
    Column("state", String(16), nullable=False),
    Column("sealed_at", Float, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("chain_id", BigInteger),
    Column("contract", String(42)),
    Column("sender", String(42)),
    Column("nonce", BigInteger),
    Column("raw_tx", LargeBinary),
    Column("tx_hash", LargeBinary(32)),
    Column("sent_at", Float),
    Column("block_number", BigInteger),
    Column("block_hash", LargeBinary(32)),
    Column("anchored_at", Float),
    UniqueConstraint("kind", "seq_from", name="uq_ledger_batch_start"),
    Index("ix_ledger_batch_state", "state", "id"),
)

SEALED, SIGNED, ANCHORED = "sealed", "signed", "anchored"
_ENQUEUE_RETRIES = 5


class LeafConflict(LedgerError, ValueError):
    """A reference id was enqueued before with different record bytes."""


def ensure_schema(engine: Engine) -> None:
    """Create the ledger tables if they are missing (idempotent)."""
    metadata.create_all(engine)


@dataclass(frozen=True, slots=True)
class StoredLeaf:
    """A queued leaf and where it sits."""

    kind: str
    seq: int
    ref_id: str
    record_sha256: bytes
    leaf_hash: bytes
    enqueued_at: float


@dataclass(frozen=True, slots=True)
class Batch:
    """One sealed batch and what is known about its transaction."""

    id: int
    kind: str
    seq_from: int
    seq_to: int
    leaf_count: int
    root: bytes
    state: str
    sealed_at: float
    attempts: int
    last_error: str | None
    chain_id: int | None
    contract: str | None
    sender: str | None
    nonce: int | None
    raw_tx: bytes | None
    tx_hash: bytes | None
    sent_at: float | None
    block_number: int | None
    block_hash: bytes | None
    anchored_at: float | None

    @classmethod
    def from_row(cls, row: Row[tuple[object, ...]]) -> Batch:
        """Map a ``ledger_batch`` row."""
        m = row._mapping
        opt_bytes = ("raw_tx", "tx_hash", "block_hash")
        values: dict[str, Any] = {
            f.name: (
                bytes(m[f.name]) if f.name in opt_bytes and m[f.name] is not None else m[f.name]
            )
            for f in fields(cls)
        }
        values["root"] = bytes(m["root"])
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Pending:
    """How many leaves of a kind wait for a batch, and since when."""

    kind: str
    count: int
    oldest_at: float | None


class LeafQueue:
    """Enqueue leaves, seal them into batches, journal each batch's transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()

    # -- leaves --------------------------------------------------------------------------

    def enqueue(self, kind: str, ref_id: str, record: bytes) -> StoredLeaf:
        """Queue one leaf durably; the same id with the same bytes again is a no-op."""
        return self.enqueue_leaves([Leaf.of(kind, ref_id, record)])[0]

    def enqueue_leaves(self, leaves: Sequence[Leaf]) -> list[StoredLeaf]:
        """Queue many leaves in one transaction per kind (what makes bulk ingest fast)."""
        out: list[StoredLeaf] = []
        by_kind: dict[str, list[Leaf]] = {}
        for leaf in leaves:
            by_kind.setdefault(leaf.kind, []).append(leaf)
        for kind, group in by_kind.items():
            kind_code(kind)
            out.extend(self._enqueue_kind(kind, group))
        return out

    def _enqueue_kind(self, kind: str, group: list[Leaf]) -> list[StoredLeaf]:
        # Optimistic first: insert all; a unique violation (an id seen before, or another
        # process taking the same seq) rolls back and we retry, looking existing ids up.
        for attempt in range(_ENQUEUE_RETRIES):
            try:
                with self._lock, self.engine.begin() as conn:
                    return self._insert_new(conn, kind, group, look_up=attempt > 0)
            except IntegrityError:
                if attempt == _ENQUEUE_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def _insert_new(
        self, conn: Connection, kind: str, group: list[Leaf], *, look_up: bool
    ) -> list[StoredLeaf]:
        ref_ids = [leaf.ref_id for leaf in group]
        if len(set(ref_ids)) != len(ref_ids):
            look_up = True
        existing = self._existing(conn, kind, ref_ids) if look_up else {}
        seq = conn.execute(
            select(func.coalesce(func.max(leaf_table.c.seq), 0)).where(leaf_table.c.kind == kind)
        ).scalar_one()
        now = time.time()
        result: list[StoredLeaf] = []
        fresh: list[StoredLeaf] = []
        for leaf in group:
            old = existing.get(leaf.ref_id)
            if old is not None:
                if old.record_sha256 != leaf.record_sha256:
                    raise LeafConflict(
                        f"{kind} {leaf.ref_id!r} was anchored with other content "
                        f"(sha256 {old.record_sha256.hex()[:16]}...); a record cannot change"
                    )
                result.append(old)
                continue
            seq += 1
            stored = StoredLeaf(kind, seq, leaf.ref_id, leaf.record_sha256, leaf.hash(), now)
            existing[leaf.ref_id] = stored
            fresh.append(stored)
            result.append(stored)
        if fresh:
            # straight to the driver's executemany: SQLAlchemy's per-row bind processing
            # of the two hash columns would cost more than hashing and storing them
            mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
            conn.exec_driver_sql(
                f"INSERT INTO {leaf_table.name} (kind, seq, ref_id, record_sha256, leaf_hash, "
                f"enqueued_at) VALUES ({', '.join([mark] * 6)})",
                [
                    (s.kind, s.seq, s.ref_id, s.record_sha256, s.leaf_hash, s.enqueued_at)
                    for s in fresh
                ],
            )
        return result

    def _existing(self, conn: Connection, kind: str, ref_ids: list[str]) -> dict[str, StoredLeaf]:
        found: dict[str, StoredLeaf] = {}
        for start in range(0, len(ref_ids), 500):
            rows = conn.execute(
                select(leaf_table).where(
                    leaf_table.c.kind == kind, leaf_table.c.ref_id.in_(ref_ids[start : start + 500])
                )
            )
            for row in rows:
                leaf = _leaf(row)
                found[leaf.ref_id] = leaf
        return found

    def leaf(self, kind: str, ref_id: str) -> StoredLeaf:
        """The queued leaf for ``(kind, ref_id)``; UnknownLeaf if it was never enqueued."""
        kind_code(kind)
        with self.engine.connect() as conn:
            row = conn.execute(
                select(leaf_table).where(leaf_table.c.kind == kind, leaf_table.c.ref_id == ref_id)
            ).first()
        if row is None:
            raise UnknownLeaf(f"no {kind} with id {ref_id!r} was ever anchored or queued")
        return _leaf(row)

    def recent(self, kind: str, limit: int = 100) -> list[StoredLeaf]:
        """The ``limit`` latest leaves of ``kind``, newest first (for operators and audits)."""
        kind_code(kind)
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(leaf_table)
                .where(leaf_table.c.kind == kind)
                .order_by(leaf_table.c.seq.desc())
                .limit(limit)
            ).all()
        return [_leaf(r) for r in rows]

    def pending(self, kind: str) -> Pending:
        """Leaves of ``kind`` not yet in any batch."""
        with self.engine.connect() as conn:
            last = self._last_sealed(conn, kind)
            count, oldest = conn.execute(
                select(func.count(), func.min(leaf_table.c.enqueued_at)).where(
                    leaf_table.c.kind == kind, leaf_table.c.seq > last
                )
            ).one()
        return Pending(kind, int(count), None if oldest is None else float(oldest))

    @staticmethod
    def _last_sealed(conn: Connection, kind: str) -> int:
        return int(
            conn.execute(
                select(func.coalesce(func.max(batch_table.c.seq_to), 0)).where(
                    batch_table.c.kind == kind
                )
            ).scalar_one()
        )

    # -- batches -------------------------------------------------------------------------

    def seal(self, kind: str, max_leaves: int) -> Batch | None:
        """Seal up to ``max_leaves`` pending leaves of ``kind`` into one batch (None if none)."""
        with self._lock, self.engine.begin() as conn:
            last = self._last_sealed(conn, kind)
            rows = conn.execute(
                select(leaf_table.c.seq, leaf_table.c.leaf_hash)
                .where(leaf_table.c.kind == kind, leaf_table.c.seq > last)
                .order_by(leaf_table.c.seq)
                .limit(max_leaves)
            ).all()
            if not rows:
                return None
            hashes = [bytes(r[1]) for r in rows]
            seq_from, seq_to = int(rows[0][0]), int(rows[-1][0])
            if seq_to - seq_from + 1 != len(rows):
                raise LedgerError(f"{kind} leaves {seq_from}..{seq_to} have gaps; queue corrupt")
            batch_id = conn.execute(
                insert(batch_table).values(
                    kind=kind,
                    seq_from=seq_from,
                    seq_to=seq_to,
                    leaf_count=len(rows),
                    root=root_of(hashes),
                    state=SEALED,
                    sealed_at=time.time(),
                    attempts=0,
                )
            ).inserted_primary_key
            assert batch_id is not None
            row = conn.execute(select(batch_table).where(batch_table.c.id == batch_id[0])).one()
        return Batch.from_row(row)

    def batches(self, *states: str) -> list[Batch]:
        """Batches in the given states (all if none given), oldest first."""
        query = select(batch_table).order_by(batch_table.c.id)
        if states:
            query = query.where(batch_table.c.state.in_(states))
        with self.engine.connect() as conn:
            return [Batch.from_row(r) for r in conn.execute(query)]

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
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(leaf_table.c.leaf_hash)
                .where(
                    leaf_table.c.kind == batch.kind,
                    leaf_table.c.seq >= batch.seq_from,
                    leaf_table.c.seq <= batch.seq_to,
                )
                .order_by(leaf_table.c.seq)
            ).all()
        return [bytes(r[0]) for r in rows]

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

    def mark_anchored(
        self,
        batch: Batch,
        tx_hash: bytes,
        block_number: int,
        block_hash: bytes,
        chain_id: int,
        contract: str,
    ) -> Batch:
        """Record the mined transaction of a batch."""
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


def _leaf(row: Row[tuple[object, ...]]) -> StoredLeaf:
    m = row._mapping
    return StoredLeaf(
        str(m["kind"]),
        int(m["seq"]),
        str(m["ref_id"]),
        bytes(m["record_sha256"]),
        bytes(m["leaf_hash"]),
        float(m["enqueued_at"]),
    )
