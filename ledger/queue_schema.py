"""What the leaf queue stores: its three tables, a batch's states, and the rows read back.

Storage is slim: one index row per leaf (``(kind, ref_id) -> seq``, for lookups and
exactly-once enqueueing) and the hashes packed into one row per run of leaves enqueued
together (how that packing is written and read is :mod:`qdspace.ledger.queue_leaves`).
A batch is a run of consecutive ``seq`` of one kind, so sealing writes one ``ledger_batch``
row and leaves are never updated; the row then journals the batch's transaction as it
moves ``sealed -> signed -> anchored`` (the crash-safe moves are :mod:`qdspace.ledger.queue`).

The schema is its own room because two readers need it without the queue's code: the
migration ``0003_ledger`` must match it (a unit test compares the two), and the typed rows
(:class:`Batch`, :class:`StoredLeaf`) are what the anchorer, proofs and the node's API pass
around. Works on SQLite and PostgreSQL; the tables have their own ``MetaData``. In a node's
database the migration makes them; a standalone queue gets them from :func:`ensure_schema`
(a no-op where they exist).
"""

from __future__ import annotations

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
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Row

from qdspace.ledger.leaves import MAX_REF_ID
from qdspace.ledger.merkle import HASH_SIZE

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

# The leaves themselves, packed: one row per run of up to ``queue_leaves.CHUNK_LEAVES`` ``seq``
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
_H = HASH_SIZE


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
