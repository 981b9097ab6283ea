"""Packing leaves into chunks: how the queue writes leaves and reads their hashes back.

Leaves are numbered per kind (``seq``) as they arrive and never change afterwards. A bulk
enqueue is one transaction of small index inserts (``ledger_leaf_ref``) plus a few blobs
(``ledger_leaf_chunk``: up to :data:`CHUNK_LEAVES` consecutive leaves per row), so storing a
million leaves costs a million index entries but only dozens of hash rows, and sealing
reads a batch's leaf hashes as a few slices. Enqueueing is exactly-once: an id seen before
with the same record hash is a no-op that returns its old ``seq``; with another hash it
raises :class:`LeafConflict` and nothing of the call is stored.

This is the storage half of :class:`qdspace.ledger.queue.LeafQueue`, kept apart from the
batch journal because its concern is throughput (optimistic inserts, ``json_each`` on
SQLite, raw ``executemany`` elsewhere), while the journal's concern is crash safety.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import count, repeat

from sqlalchemy import Engine, func, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from qdspace.ledger.errors import LedgerError, UnknownLeaf
from qdspace.ledger.leaves import (
    MAX_REF_ID,
    Leaf,
    check_ref_id,
    check_ref_ids,
    kind_code,
    packed_leaf_hashes,
    record_digests,
)
from qdspace.ledger.merkle import HASH_SIZE
from qdspace.ledger.queue_schema import (
    Enqueued,
    Pending,
    StoredLeaf,
    batch_table,
    chunk_table,
    ref_table,
)

CHUNK_LEAVES = 16_384  # leaves per packed row: blobs of 512 KiB, a bounded read per lookup
_ENQUEUE_RETRIES = 5
_H = HASH_SIZE


class LeafConflict(LedgerError, ValueError):
    """A reference id was enqueued before with different record bytes."""


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


class LeafStore:
    """Enqueue leaves and read them back; :class:`~qdspace.ledger.queue.LeafQueue` adds batches."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()

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
        """The queued leaf for ``(kind, ref_id)``; UnknownLeaf if it was never enqueued
        (an id no leaf can have, `check_ref_id`, is not looked up: PostgreSQL refuses a
        NUL in any string, and a regulator's lookup of one was a server error)."""
        code = kind_code(kind)
        try:
            check_ref_id(ref_id)
        except LedgerError:
            raise UnknownLeaf(
                f"no {kind} with id {ref_id[:40]!r} was ever anchored or queued "
                f"(a reference id is 1..{MAX_REF_ID} printable characters)"
            ) from None
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
                .limit(limit)  # a run holds at least one leaf
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
