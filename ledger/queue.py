"""The durable leaf queue and batch journal, in the node's own database (SQLAlchemy Core).

Leaves are numbered per kind (``seq``) as they arrive and never change afterwards. Storage is
slim: one index row per leaf (``(kind, ref_id) -> seq``, for lookups and exactly-once
enqueueing) and the hashes packed into one row per run of leaves enqueued together, so a
bulk enqueue is one transaction of small index inserts plus a few blobs, and sealing reads
a batch's leaf hashes as a few slices. A batch is a run of consecutive ``seq`` of one kind,
so sealing writes one row and leaves are never updated. A batch moves ``sealed -> signed ->
anchored``; the signed raw transaction and its nonce are committed *before* it is sent, so
after a crash the same bytes are resent (or their receipt found) and the batch is never
anchored twice. The unique root is a second guard, the contract refusing a known root the
third.

Works on SQLite and PostgreSQL; the tables have their own ``MetaData``. In a node's database
the migration ``0003_ledger`` makes them; a standalone queue gets them from
:func:`ensure_schema` (a no-op where they exist).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from itertools import count, repeat
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
    SmallInteger,
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

from qdspace.ledger.client import SignedAnchor
from qdspace.ledger.errors import LedgerError, NotAnchored, UnknownLeaf
from qdspace.ledger.leaves import (
    MAX_REF_ID,
    Leaf,
    check_ref_ids,
    kind_code,
    packed_leaf_hashes,
    record_digests,
)
from qdspace.ledger.merkle import HASH_SIZE, root_of_packed, unpack

metadata = MetaData()

# One row per leaf, only what a lookup by reference id needs: ``(kind, ref_id) -> seq``.
# WITHOUT ROWID on SQLite keeps it a single B-tree, so a leaf costs one index insert.
ref_table = Table(
    "ledger_leaf_ref",
    metadata,
    Column("kind", SmallInteger, primary_key=True, autoincrement=False),
    Column("ref_id", String(MAX_REF_ID), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    sqlite_with_rowid=False,
)

# The leaves themselves, packed: one row per run of up to CHUNK_LEAVES consecutive ``seq``
# written in one enqueue call, holding the reference ids (a JSON array), the record hashes
# and the leaf hashes (32 bytes each, in ``seq`` order).
chunk_table = Table(
    "ledger_leaf_chunk",
    metadata,
    Column("kind", SmallInteger, primary_key=True, autoincrement=False),
    Column("seq_from", BigInteger, primary_key=True, autoincrement=False),
    Column("leaf_count", Integer, nullable=False),
    Column("enqueued_at", Float, nullable=False),
    Column("ref_ids", Text, nullable=False),
    Column("record_sha256", LargeBinary, nullable=False),
    Column("leaf_hash", LargeBinary, nullable=False),
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
CHUNK_LEAVES = 16_384  # leaves per packed row: blobs of 512 KiB, a bounded read per lookup
_ENQUEUE_RETRIES = 5
_H = HASH_SIZE


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


@dataclass(frozen=True, slots=True)
class Enqueued:
    """What an enqueue call did: each input's ``seq`` and leaf hash, and how many were new."""

    kind: str
    seqs: Sequence[int]
    leaf_hashes: bytes  # packed, in input order
    enqueued_at: Sequence[float]
    fresh: int

    def stored(self, ref_ids: Sequence[str], record_sha256s: Sequence[bytes]) -> list[StoredLeaf]:
        """One :class:`StoredLeaf` per input (for callers that want objects)."""
        h = self.leaf_hashes
        return [
            StoredLeaf(self.kind, seq, ref, sha, h[i * _H : (i + 1) * _H], at)
            for i, (seq, ref, sha, at) in enumerate(
                zip(self.seqs, ref_ids, record_sha256s, self.enqueued_at, strict=True)
            )
        ]


@dataclass(slots=True)
class _Chunk:
    seq_from: int
    leaf_count: int
    enqueued_at: float
    record_sha256: bytes
    leaf_hash: bytes

    def covers(self, seq: int) -> bool:
        return self.seq_from <= seq < self.seq_from + self.leaf_count

    def at(self, seq: int) -> tuple[bytes, bytes]:
        off = (seq - self.seq_from) * _H
        return self.record_sha256[off : off + _H], self.leaf_hash[off : off + _H]


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
        """Queue many leaves, one transaction per kind; returns them in input order."""
        by_kind: dict[str, list[int]] = {}
        for i, leaf in enumerate(leaves):
            by_kind.setdefault(leaf.kind, []).append(i)
        out: list[StoredLeaf | None] = [None] * len(leaves)
        for kind, positions in by_kind.items():
            refs = [leaves[i].ref_id for i in positions]
            shas = [leaves[i].record_sha256 for i in positions]
            done = self.enqueue_digests(kind, refs, shas)
            for i, stored in zip(positions, done.stored(refs, shas), strict=True):
                out[i] = stored
        return [s for s in out if s is not None]

    def enqueue_records(self, kind: str, ref_ids: Sequence[str], records: Sequence[bytes]) -> int:
        """Queue ``records`` (canonical bytes) under ``ref_ids``; returns how many were new.

        The bulk path: no object per leaf, one transaction (all or nothing).
        """
        if len(ref_ids) != len(records):
            raise LedgerError(f"{len(ref_ids)} reference ids but {len(records)} records")
        return self.enqueue_digests(kind, ref_ids, record_digests(records)).fresh

    def enqueue_digests(
        self, kind: str, ref_ids: Sequence[str], record_sha256s: Sequence[bytes]
    ) -> Enqueued:
        """Queue leaves given their record hashes, in one transaction.

        Ids queued before with the same hash are no-ops (their old ``seq`` is returned);
        with another hash they raise LeafConflict and nothing of the call is stored.
        """
        code = kind_code(kind)
        check_ref_ids(ref_ids)
        if len(ref_ids) != len(record_sha256s):
            raise LedgerError(f"{len(ref_ids)} reference ids but {len(record_sha256s)} hashes")
        if not ref_ids:
            return Enqueued(kind, [], b"", [], 0)
        leaf_hashes = packed_leaf_hashes(kind, ref_ids, record_sha256s)
        # Optimistic first: insert all; a unique violation (an id seen before, or another
        # process taking the same seq) rolls back and we retry, looking existing ids up.
        look_up = len(set(ref_ids)) != len(ref_ids)
        for attempt in range(_ENQUEUE_RETRIES):
            try:
                with self._lock, self.engine.begin() as conn:
                    if look_up:
                        return self._insert_looked_up(
                            conn, kind, code, ref_ids, record_sha256s, leaf_hashes
                        )
                    seq = self._next_seq(conn, code)
                    now = time.time()
                    self._insert(conn, code, seq, ref_ids, record_sha256s, leaf_hashes, now)
                    n = len(ref_ids)
                    return Enqueued(kind, range(seq, seq + n), leaf_hashes, [now] * n, n)
            except IntegrityError:
                if attempt == _ENQUEUE_RETRIES - 1:
                    raise
                look_up = True
        raise AssertionError("unreachable")

    def _insert_looked_up(
        self,
        conn: Connection,
        kind: str,
        code: int,
        ref_ids: Sequence[str],
        shas: Sequence[bytes],
        leaf_hashes: bytes,
    ) -> Enqueued:
        existing = self._existing(conn, code, ref_ids)
        chunks: list[_Chunk] = []
        known: dict[str, tuple[int, bytes, bytes, float]] = {}
        for ref, seq in existing.items():
            chunk = next((c for c in chunks if c.covers(seq)), None) or self._chunk_at(
                conn, code, seq
            )
            if chunk not in chunks:
                chunks.append(chunk)
            sha, lh = chunk.at(seq)
            known[ref] = (seq, sha, lh, chunk.enqueued_at)
        seq, now = self._next_seq(conn, code), time.time()
        fresh_refs: list[str] = []
        fresh_shas: list[bytes] = []
        fresh_hashes: list[bytes] = []
        seqs: list[int] = []
        hashes: list[bytes] = []
        ats: list[float] = []
        for i, (ref, sha) in enumerate(zip(ref_ids, shas, strict=True)):
            old = known.get(ref)
            if old is not None:
                if old[1] != sha:
                    raise LeafConflict(
                        f"{kind} {ref!r} was anchored with other content "
                        f"(sha256 {old[1].hex()[:16]}...); a record cannot change"
                    )
                seqs.append(old[0])
                hashes.append(old[2])
                ats.append(old[3])
                continue
            lh = leaf_hashes[i * _H : (i + 1) * _H]
            known[ref] = (seq, sha, lh, now)
            fresh_refs.append(ref)
            fresh_shas.append(sha)
            fresh_hashes.append(lh)
            seqs.append(seq)
            hashes.append(lh)
            ats.append(now)
            seq += 1
        if fresh_refs:
            first = seq - len(fresh_refs)
            packed = b"".join(fresh_hashes)
            self._insert(conn, code, first, fresh_refs, fresh_shas, packed, now)
        return Enqueued(kind, seqs, b"".join(hashes), ats, len(fresh_refs))

    @staticmethod
    def _insert(
        conn: Connection,
        code: int,
        first: int,
        ref_ids: Sequence[str],
        shas: Sequence[bytes],
        leaf_hashes: bytes,
        now: float,
    ) -> None:
        rows = []
        for lo in range(0, len(ref_ids), CHUNK_LEAVES):
            hi = min(lo + CHUNK_LEAVES, len(ref_ids))
            refs_json = json.dumps(list(ref_ids[lo:hi]), separators=(",", ":"))
            _insert_refs(conn, code, first + lo, ref_ids[lo:hi], refs_json)
            rows.append(
                {
                    "kind": code,
                    "seq_from": first + lo,
                    "leaf_count": hi - lo,
                    "enqueued_at": now,
                    "ref_ids": refs_json,
                    "record_sha256": b"".join(shas[lo:hi]),
                    "leaf_hash": leaf_hashes[lo * _H : hi * _H],
                }
            )
        conn.execute(insert(chunk_table), rows)

    @staticmethod
    def _next_seq(conn: Connection, code: int) -> int:
        last = conn.execute(
            select(chunk_table.c.seq_from + chunk_table.c.leaf_count)
            .where(chunk_table.c.kind == code)
            .order_by(chunk_table.c.seq_from.desc())
            .limit(1)
        ).scalar_one_or_none()
        return 1 if last is None else int(last)

    @staticmethod
    def _chunk_at(conn: Connection, code: int, seq: int) -> _Chunk:
        c = chunk_table.c
        row = conn.execute(
            select(c.seq_from, c.leaf_count, c.enqueued_at, c.record_sha256, c.leaf_hash)
            .where(c.kind == code, c.seq_from <= seq)
            .order_by(c.seq_from.desc())
            .limit(1)
        ).first()
        if row is None or not int(row[0]) <= seq < int(row[0]) + int(row[1]):
            raise LedgerError(f"leaf {seq} of kind code {code} has no stored hashes; queue corrupt")
        return _Chunk(int(row[0]), int(row[1]), float(row[2]), bytes(row[3]), bytes(row[4]))

    def _existing(self, conn: Connection, code: int, ref_ids: Iterable[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        unique = list(dict.fromkeys(ref_ids))
        for start in range(0, len(unique), 500):
            rows = conn.execute(
                select(ref_table.c.ref_id, ref_table.c.seq).where(
                    ref_table.c.kind == code, ref_table.c.ref_id.in_(unique[start : start + 500])
                )
            )
            found.update({str(r[0]): int(r[1]) for r in rows})
        return found

    def leaf(self, kind: str, ref_id: str) -> StoredLeaf:
        """The queued leaf for ``(kind, ref_id)``; UnknownLeaf if it was never enqueued."""
        code = kind_code(kind)
        with self.engine.connect() as conn:
            seq = conn.execute(
                select(ref_table.c.seq).where(
                    ref_table.c.kind == code, ref_table.c.ref_id == ref_id
                )
            ).scalar_one_or_none()
            if seq is None:
                raise UnknownLeaf(f"no {kind} with id {ref_id!r} was ever anchored or queued")
            chunk = self._chunk_at(conn, code, int(seq))
        sha, lh = chunk.at(int(seq))
        return StoredLeaf(kind, int(seq), ref_id, sha, lh, chunk.enqueued_at)

    def recent(self, kind: str, limit: int = 100) -> list[StoredLeaf]:
        """The ``limit`` latest leaves of ``kind``, newest first (for operators and audits)."""
        code = kind_code(kind)
        c = chunk_table.c
        out: list[StoredLeaf] = []
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    c.seq_from, c.leaf_count, c.enqueued_at, c.ref_ids, c.record_sha256, c.leaf_hash
                )
                .where(c.kind == code)
                .order_by(c.seq_from.desc())
            )
            for seq_from, n, at, refs, shas, hashes in rows:
                chunk = _Chunk(int(seq_from), int(n), float(at), bytes(shas), bytes(hashes))
                for i, ref in reversed(list(enumerate(json.loads(refs)))):
                    sha, lh = chunk.at(chunk.seq_from + i)
                    out.append(
                        StoredLeaf(kind, chunk.seq_from + i, ref, sha, lh, chunk.enqueued_at)
                    )
                    if len(out) >= limit:
                        return out
        return out

    def pending(self, kind: str) -> Pending:
        """Leaves of ``kind`` not yet in any batch."""
        code = kind_code(kind)
        with self.engine.connect() as conn:
            last = self._last_sealed(conn, kind)
            waiting = self._next_seq(conn, code) - 1 - last
            if waiting <= 0:
                return Pending(kind, 0, None)
            oldest = conn.execute(
                select(chunk_table.c.enqueued_at)
                .where(chunk_table.c.kind == code, chunk_table.c.seq_from <= last + 1)
                .order_by(chunk_table.c.seq_from.desc())
                .limit(1)
            ).scalar_one()
        return Pending(kind, waiting, float(oldest))

    @staticmethod
    def _last_sealed(conn: Connection, kind: str) -> int:
        return int(
            conn.execute(
                select(func.coalesce(func.max(batch_table.c.seq_to), 0)).where(
                    batch_table.c.kind == kind
                )
            ).scalar_one()
        )

    @staticmethod
    def _packed_hashes(conn: Connection, code: int, lo: int, hi: int) -> bytes:
        """Leaf hashes of ``seq`` ``lo..hi`` (inclusive), packed; LedgerError on a gap."""
        c = chunk_table.c
        start = conn.execute(
            select(func.max(c.seq_from)).where(c.kind == code, c.seq_from <= lo)
        ).scalar_one()
        rows = conn.execute(
            select(c.seq_from, c.leaf_count, c.leaf_hash)
            .where(c.kind == code, c.seq_from >= (start or lo), c.seq_from <= hi)
            .order_by(c.seq_from)
        ).all()
        parts, expect = [], lo
        for seq_from, n, hashes in rows:
            seq_from, n = int(seq_from), int(n)
            if seq_from + n <= expect:
                continue
            if seq_from > expect:
                break
            a, b = expect - seq_from, min(n, hi + 1 - seq_from)
            parts.append(bytes(hashes)[a * _H : b * _H])
            expect = seq_from + b
        if expect != hi + 1:
            raise LedgerError(f"leaves {lo}..{hi} of kind code {code} have gaps; queue corrupt")
        return b"".join(parts)

    # -- batches -------------------------------------------------------------------------

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


def _insert_refs(
    conn: Connection, code: int, first: int, ref_ids: Sequence[str], refs_json: str
) -> None:
    """One ``ledger_leaf_ref`` row per id, numbered from ``first``, in one statement.

    On SQLite the ids travel as the JSON array already made for the packed row and are
    expanded by ``json_each`` inside the engine: one statement, no per-row binding in
    Python (about twice as fast as executemany). Elsewhere the driver's executemany gets a
    lazy iterator of small tuples, skipping SQLAlchemy's per-row bind processing.
    """
    table = ref_table.name
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(
            f"INSERT INTO {table} (kind, ref_id, seq) SELECT ?, value, ? + key FROM json_each(?)",
            (code, first, refs_json),
        )
        return
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    cursor = conn.connection.cursor()
    try:
        cursor.executemany(
            f"INSERT INTO {table} (kind, ref_id, seq) VALUES ({mark}, {mark}, {mark})",
            zip(repeat(code), ref_ids, count(first)),  # type: ignore[arg-type]
        )
    except conn.dialect.loaded_dbapi.IntegrityError as exc:
        raise IntegrityError(f"INSERT INTO {table}", None, exc) from None
    finally:
        cursor.close()
