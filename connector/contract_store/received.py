"""The consumer's mirror: the provider's records received under agreements.

Received rows are the consumer's copy of the provider's records: one row per
(agreement, record key), the highest version seen (see the record envelope in
`connector.transfer_wire`). Pulling the same records again, over several transfers or the
live stream, concurrently or not, stores each once (keep-once); a later version
replaces the row, a tombstone withdraws it (kept, without content, so a late copy of
an older version cannot bring it back), and every correction and withdrawal is kept
in an audit trail (`received_changes`) with the hash of what arrived. A row, and a
tombstone, is only accepted for an order its agreement covers, and only ever touches
that agreement's rows. Each row is stored encrypted under its order's data key
(`data_keys`), bound to where it belongs.

Why separate: this is the only aggregate that holds another member's data, and the
one written on the hot path of every transfer batch and stream event; its invariants
(keep-once, highest version wins, scope, encryption) are about that data, not about
the processes that deliver it.

Crash safety: a pulled batch is stored and the consumer's transfer cursor advanced in
one transaction (`commit_transfer_batch`). A batch committed twice (a crash between
commit and acknowledgement) changes nothing the second time, and a crash before the
commit leaves the cursor where the stored rows stop. A live stream resumes after the
highest seq it stored (`last_received_seq`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidTag
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    UniqueConstraint,
    and_,
    bindparam,
    delete,
    false,
    func,
    select,
)
from sqlmodel.sql.sqltypes import UTCDateTime

from qdspace.connector.agreement import deletion_digest_of_bytes
from qdspace.connector.contract_errors import (
    ContractDenied,
    ContractStoreError,
    ForeignRecordError,
)
from qdspace.connector.contract_store.agreements import AgreementStore
from qdspace.connector.contract_store.common import (
    CONTRACT_METADATA,
    ID_LENGTH,
    TableStore,
    saving,
    utc_now,
)
from qdspace.connector.contract_store.data_keys import DataKeys, row_aad
from qdspace.connector.contract_store.received_pages import Pages, index_page, slot_payload
from qdspace.connector.contract_store.transfers import TransferStore
from qdspace.connector.negotiation import Role
from qdspace.connector.transfer import TransferProcess
from qdspace.connector.transfer_wire import RecordMeta, record_meta
from qdspace.policies.evaluate import order_in_scope

received_row_table = Table(
    "contract_received_row",
    CONTRACT_METADATA,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("agreement_id", String(ID_LENGTH), nullable=False),
    Column("order_id", String(ID_LENGTH), nullable=False),
    Column("source_id", String(ID_LENGTH), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("nonce", LargeBinary, nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("record_key", String(ID_LENGTH), nullable=False),
    Column("version", BigInteger, nullable=False, server_default="1"),
    Column("withdrawn", Boolean, nullable=False, server_default=false()),
    # where the content is: a sealed page and its slot (`received_pages`); rows stored
    # before pages, and tombstones, have none (their own nonce and ciphertext instead)
    Column("page_id", BigInteger, nullable=True),
    Column("slot", Integer, nullable=True),
    UniqueConstraint("agreement_id", "record_key", name="uq_contract_received_record"),
    Index("ix_contract_received_row_source", "source_id", "seq"),
)
change_table = Table(
    "contract_received_change",
    CONTRACT_METADATA,
    Column("agreement_id", String(ID_LENGTH), primary_key=True),
    Column("record_key", String(ID_LENGTH), primary_key=True),
    Column("version", BigInteger, primary_key=True, autoincrement=False),
    Column("order_id", String(ID_LENGTH), nullable=False),
    Column("withdrawn", Boolean, nullable=False),
    Column("content_sha256", String(64), nullable=False),
    Column("source_id", String(ID_LENGTH), nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
)


class IncomingRow(NamedTuple):
    """One row received under an agreement: its canonical JSON bytes, as the chain covered
    (a tuple: one is made for every row received)."""

    seq: int
    order_id: str
    payload: bytes


@dataclass(frozen=True)
class ReceivedRow:
    """The current version of one record received under an agreement."""

    id: int
    agreement_id: str
    order_id: str
    source_id: str
    seq: int
    payload: bytes
    received_at: datetime
    record_key: str = ""
    version: int = 1

    def decode(self) -> dict[str, Any]:
        value = json.loads(self.payload)
        assert isinstance(value, dict)
        return value


@dataclass(frozen=True)
class ReceivedChange:
    """One correction (version > 1) or withdrawal of a received record: the audit trail.

    `content_sha256` is the SHA-256 of the row's bytes as they arrived (a tombstone's
    for a withdrawal); the provider's ledger anchors its own records' versions."""

    agreement_id: str
    record_key: str
    version: int
    order_id: str
    withdrawn: bool
    content_sha256: str
    source_id: str
    received_at: datetime


@dataclass(frozen=True)
class MirrorResult:
    """What one delivery did to the consumer's copy."""

    added: int = 0
    replaced: int = 0
    withdrawn: int = 0
    unchanged: int = 0

    @property
    def changed(self) -> int:
        return self.added + self.replaced + self.withdrawn


@dataclass(frozen=True)
class Deletion:
    """What `erase_order_in` removed: how many records, and the digest of their
    canonical bytes (`deletion_digest_of_bytes`), for the receipt."""

    agreement_id: str
    order_id: str
    row_count: int
    content_sha256: str


_ROW_COLUMNS = (
    "agreement_id",
    "order_id",
    "source_id",
    "seq",
    "nonce",
    "ciphertext",
    "received_at",
    "record_key",
    "version",
    "withdrawn",
    "page_id",
    "slot",
)
_REPLACED_COLUMNS = _ROW_COLUMNS[1:]


def _change(
    agreement_id: str, source_id: str, row: IncomingRow, meta: RecordMeta, at: datetime
) -> dict[str, Any]:
    return {
        "agreement_id": agreement_id,
        "record_key": meta.key,
        "version": meta.version,
        "order_id": row.order_id,
        "withdrawn": meta.withdrawn,
        "content_sha256": hashlib.sha256(row.payload).hexdigest(),
        "source_id": source_id,
        "received_at": at,
    }


class ReceivedStore(TableStore):
    """Mirror deliveries, read the copy and its audit trail, erase an order's rows."""

    def __init__(
        self,
        engine: Engine,
        keys: DataKeys,
        agreements: AgreementStore,
        transfers: TransferStore,
    ) -> None:
        super().__init__(engine)
        self._keys = keys
        self._agreements = agreements
        self._transfers = transfers
        self._pages = Pages(keys, received_row_table)
        self._row_sql: tuple[str, tuple[str, ...] | None] | None = None

    def _row_upsert(self) -> tuple[str, tuple[str, ...] | None]:
        """The driver SQL of the received-row upsert and, for a positional driver, the
        order of its parameters (compiled once; a page is one executemany): a record
        not held is inserted, one held is replaced only by a higher version."""
        if self._row_sql is None:
            table = received_row_table
            statement = self._upsert(table).values({name: bindparam(name) for name in _ROW_COLUMNS})
            excluded = statement.excluded
            statement = statement.on_conflict_do_update(
                index_elements=["agreement_id", "record_key"],
                set_={name: excluded[name] for name in _REPLACED_COLUMNS},
                where=table.c.version < excluded.version,
            )
            compiled = statement.compile(dialect=self.engine.dialect)
            order = tuple(compiled.positiontup or ()) if compiled.positional else None
            self._row_sql = (compiled.string, order)
        return self._row_sql

    def _check_orders(
        self, connection: Connection, agreement_id: str, rows: Sequence[IncomingRow]
    ) -> None:
        """Every row, and every tombstone, must be of an order the agreement covers, and
        arrive while it is in force (a purge terminates it before it deletes)."""
        stored = self._agreements.agreement_in(connection, agreement_id, hold=True)
        if stored.role is not Role.CONSUMER:
            raise ForeignRecordError(f"agreement {agreement_id}: we are not its consumer")
        if stored.terminated_at is not None:
            raise ContractDenied(f"agreement {agreement_id} terminated: its rows are refused")
        policy = stored.signed.agreement.policy
        for order in {row.order_id for row in rows}:
            if not order_in_scope(policy, order):
                raise ForeignRecordError(
                    f"agreement {agreement_id} does not cover order {order!r}: its rows are refused"
                )

    def _held(
        self, connection: Connection, agreement_id: str, keys: Iterable[str]
    ) -> dict[str, tuple[int, bool, int | None]]:
        """record key -> (version, withdrawn, page id) of the records of `keys` held now
        (one indexed lookup per chunk, in the driver's SQL)."""
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        held: dict[str, tuple[int, bool, int | None]] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            sql = (
                "SELECT record_key, version, withdrawn, page_id FROM contract_received_row "
                f"WHERE agreement_id = {mark} AND record_key IN ({', '.join([mark] * len(chunk))})"
            )
            for key, version, withdrawn, page in connection.exec_driver_sql(
                sql, (agreement_id, *chunk)
            ):
                held[key] = (int(version), bool(withdrawn), None if page is None else int(page))
        return held

    def _store_rows(
        self,
        connection: Connection,
        agreement_id: str,
        source_id: str,
        rows: Sequence[IncomingRow],
        at: datetime,
    ) -> MirrorResult:
        """Keep-once without a look-up for the common case: a first version (not a
        tombstone) of a record whose key nothing else in the delivery touches is written
        by the upsert alone, which stores it only when it is not held (the statement's
        row count tells how many were new). Every other row (a correction, a tombstone,
        and any row sharing their key) is decided against what is held, as is every row
        of a delivery in which a sample of first versions is held already (a re-delivery:
        looking up is cheaper than writing and undoing). Either way is exact.
        Rows with content go into one sealed page per order (`received_pages`)."""
        if not rows:
            return MirrorResult()
        metas = [record_meta(row.payload) for row in rows]
        self._check_orders(connection, agreement_id, rows)
        careful = {m.key for m in metas if m.version > 1 or m.withdrawn}
        firsts = [m.key for m in metas if m.key not in careful]
        if self._held(connection, agreement_id, firsts[:: max(1, len(firsts) // 8)]):
            careful.update(firsts)  # a re-delivery, likely: cheaper to look up than to write
        held = self._held(connection, agreement_id, careful) if careful else {}
        stale: set[int] = set()  # pages whose slots a replacement or withdrawal empties
        chosen: dict[str, tuple[IncomingRow, RecordMeta]] = {}  # careful key -> its winner
        changes: list[dict[str, Any]] = []
        plain = replaced = withdrawn = unchanged = added = 0
        content: list[tuple[IncomingRow, RecordMeta]] = []
        seen: set[str] = set()  # first versions written (a second copy is held by then)
        for row, meta in zip(rows, metas, strict=True):
            if meta.key not in careful:
                if meta.key in seen:
                    unchanged += 1
                else:
                    seen.add(meta.key)
                    content.append((row, meta))
                    plain += 1
                continue
            before = held.get(meta.key)
            if before is not None and before[0] >= meta.version:
                unchanged += 1  # a copy of what is held, or older
                continue
            held[meta.key] = (meta.version, meta.withdrawn, None)
            if before is not None and before[2] is not None:
                stale.add(before[2])
            if meta.withdrawn:
                withdrawn += before is not None and not before[1]
                unchanged += before is None or before[1]
            elif before is None or before[1]:
                added += 1
            else:
                replaced += 1
            chosen[meta.key] = (row, meta)
            if meta.version > 1 or meta.withdrawn:
                changes.append(_change(agreement_id, source_id, row, meta, at))
        content += chosen.values()
        stored, slot_keys = self._write(connection, agreement_id, source_id, content, at)
        if not len(chosen) <= stored <= len(content):
            raise ContractStoreError(f"the database reported {stored} received rows stored")
        new = stored - len(chosen)  # the careful winners all apply: decided above
        added += new
        unchanged += plain - new
        if new < plain:  # some were held already: their slots hold nothing live
            pages = set(slot_keys)
            if new == 0:  # a re-delivery: a page of none but its rows goes whole
                gone = [p for p, keys in slot_keys.items() if chosen.keys().isdisjoint(keys)]
                self._pages.delete(connection, gone)
                pages.difference_update(gone)
            self._pages.compact(connection, agreement_id, pages, at, slot_keys)
        if stale:
            self._pages.compact(connection, agreement_id, stale, at)
        if changes:
            connection.execute(
                self._upsert(change_table)
                .values(changes)
                .on_conflict_do_nothing(index_elements=["agreement_id", "record_key", "version"])
            )
        return MirrorResult(added, replaced, withdrawn, unchanged)

    def _write(
        self,
        connection: Connection,
        agreement_id: str,
        source_id: str,
        content: list[tuple[IncomingRow, RecordMeta]],
        at: datetime,
    ) -> tuple[int, dict[int, list[str]]]:
        """Upsert the rows chosen: the content of each order sealed in one page and its
        index rows written by one statement, tombstones (no content) by another. Returns
        how many rows the database stored and the record key of every slot of each
        page written."""
        dialect = self.engine.dialect
        stamp = received_row_table.c.received_at.type.dialect_impl(dialect).bind_processor(dialect)
        received_at: Any = stamp(at) if stamp is not None else at
        by_order: dict[str, list[tuple[IncomingRow, RecordMeta]]] = {}
        tombstones: list[tuple[Any, ...]] = []
        for row, meta in content:
            if meta.withdrawn:
                tombstones.append(  # in _ROW_COLUMNS order
                    (
                        *(agreement_id, row.order_id, source_id, row.seq, b"", b""),
                        *(received_at, meta.key, meta.version, True, None, None),
                    )
                )
            else:
                by_order.setdefault(row.order_id, []).append((row, meta))
        stored = 0
        if tombstones:
            sql, order = self._row_upsert()
            params: list[Any] = (
                [dict(zip(_ROW_COLUMNS, record, strict=True)) for record in tombstones]
                if order is None
                else list(map(itemgetter(*(_ROW_COLUMNS.index(n) for n in order)), tombstones))
            )
            stored += connection.exec_driver_sql(sql, params).rowcount
        slot_keys: dict[int, list[str]] = {}
        for order_id, items in by_order.items():
            cipher = self._keys.key_in(connection, agreement_id, order_id, True, at)
            seqs = [row.seq for row, _ in items]
            payloads = [row.payload for row, _ in items]
            keys = [meta.key for _, meta in items]
            versions = [meta.version for _, meta in items]
            place = (agreement_id, order_id, source_id)
            page = self._pages.insert(connection, cipher, place, seqs, payloads, at)
            slot_keys[page] = keys
            stored += index_page(connection, place, received_at, page, keys, seqs, versions)
        return stored, slot_keys

    def store_received_rows(
        self, agreement_id: str, source_id: str, rows: Iterable[IncomingRow], at: datetime
    ) -> MirrorResult:
        """Mirror rows of a live stream (seq = provider cursor) into the copy held under
        the agreement: new records are added, later versions replace, tombstones
        withdraw; anything already held (a re-delivery, a record seen on a pull) is not
        stored again."""
        with self.engine.begin() as connection:
            return self._store_rows(connection, agreement_id, source_id, list(rows), at)

    def commit_transfer_batch(
        self,
        before: TransferProcess,
        after: TransferProcess,
        rows: Sequence[IncomingRow],
        at: datetime,
    ) -> MirrorResult:
        """Mirror a verified batch and save the consumer's advanced cursor in one transaction.

        The seq of each row must be its offset in the transfer. A batch committed twice
        (a crash between commit and acknowledgement) changes nothing the second time, and
        a crash before commit leaves the cursor where the rows stop.
        """
        expected = range(before.checkpoint.offset, after.checkpoint.offset)
        if [row.seq for row in rows] != list(expected):
            raise ContractStoreError(
                f"transfer {after.transfer_id}: batch rows must have seq "
                f"{before.checkpoint.offset}..{after.checkpoint.offset - 1}"
            )
        with saving(self.engine, f"transfer {after.transfer_id}") as connection:
            result = self._store_rows(connection, after.agreement_id, after.transfer_id, rows, at)
            self._transfers.save_transfer_in(connection, before, after)
        return result

    def received_changes(
        self, agreement_id: str | None = None, record_key: str | None = None
    ) -> list[ReceivedChange]:
        """The audit trail of corrections and withdrawals received, oldest first."""
        table = change_table
        statement = select(table).order_by(table.c.received_at, table.c.version)
        if agreement_id is not None:
            statement = statement.where(table.c.agreement_id == agreement_id)
        if record_key is not None:
            statement = statement.where(table.c.record_key == record_key)
        with self.engine.connect() as connection:
            found = connection.execute(statement).all()
        return [
            ReceivedChange(
                r.agreement_id,
                r.record_key,
                int(r.version),
                r.order_id,
                bool(r.withdrawn),
                r.content_sha256,
                r.source_id,
                r.received_at,
            )
            for r in found
        ]

    def last_received_seq(self, source_id: str) -> int | None:
        """The highest seq stored for a stream (its resume cursor), None when nothing yet."""
        with self.engine.connect() as connection:
            value = connection.execute(
                select(func.max(received_row_table.c.seq)).where(
                    received_row_table.c.source_id == source_id
                )
            ).scalar_one()
        return None if value is None else int(value)

    def _payloads(
        self, connection: Connection, records: Sequence[Any], at: datetime
    ) -> list[bytes]:
        """The bytes of held rows: from their sealed pages (each page opened once), or
        from their own ciphertext (rows stored before pages)."""
        opened = self._pages.open_pages(
            connection, (r.page_id for r in records if r.page_id is not None), at
        )
        payloads = []
        for row in records:
            if row.page_id is not None:
                payloads.append(slot_payload(opened, row))
                continue
            cipher = self._keys.key_in(connection, row.agreement_id, row.order_id, False, at)
            aad = row_aad(row.agreement_id, row.order_id, row.source_id, row.seq)
            try:
                payloads.append(cipher.decrypt(bytes(row.nonce), bytes(row.ciphertext), aad))
            except InvalidTag:
                raise ContractStoreError(
                    f"received row {row.source_id}#{row.seq} fails its integrity check"
                ) from None
        return payloads

    def received_rows(
        self,
        agreement_id: str,
        order_id: str | None = None,
        *,
        after_id: int = 0,
        limit: int | None = None,
    ) -> list[ReceivedRow]:
        """The records held under an agreement (of one order), decrypted, each once in its
        current version (withdrawn ones are not held); page with `after_id` (the `id` of
        the last row seen) and `limit`."""
        table = received_row_table
        statement = select(table).where(
            table.c.agreement_id == agreement_id,
            table.c.id > after_id,
            table.c.withdrawn == false(),
        )
        if order_id is not None:
            statement = statement.where(table.c.order_id == order_id)
        with self.engine.connect() as connection:
            records = connection.execute(statement.order_by(table.c.id).limit(limit)).all()
            payloads = self._payloads(connection, records, utc_now())
        return [
            ReceivedRow(
                int(r.id),
                r.agreement_id,
                r.order_id,
                r.source_id,
                int(r.seq),
                payload,
                r.received_at,
                r.record_key,
                int(r.version),
            )
            for r, payload in zip(records, payloads, strict=True)
        ]

    def count_received(self, agreement_id: str | None = None) -> int:
        """How many records are held (each once, withdrawn ones not)."""
        statement = (
            select(func.count())
            .select_from(received_row_table)
            .where(received_row_table.c.withdrawn == false())
        )
        if agreement_id is not None:
            statement = statement.where(received_row_table.c.agreement_id == agreement_id)
        with self.engine.connect() as connection:
            return int(connection.execute(statement).scalar_one())

    def erase_order_in(
        self, connection: Connection, agreement_id: str, order_id: str, at: datetime
    ) -> Deletion:
        """Within the caller's transaction: delete the rows of one order under one
        agreement, with their tombstones and audit trail, and destroy their data key.
        The returned `Deletion` covers exactly the records held (current versions;
        tombstones hold nothing), as a deletion receipt must."""
        table = received_row_table
        where = and_(table.c.agreement_id == agreement_id, table.c.order_id == order_id)
        held = and_(where, table.c.withdrawn == false())
        records = connection.execute(select(table).where(held).order_by(table.c.id)).all()
        payloads = self._payloads(connection, records, at) if records else []
        count, digest = deletion_digest_of_bytes(payloads)
        connection.execute(delete(table).where(where))
        self._pages.erase(connection, agreement_id, order_id)
        connection.execute(
            delete(change_table).where(
                change_table.c.agreement_id == agreement_id,
                change_table.c.order_id == order_id,
            )
        )
        self._keys.destroy_in(connection, agreement_id, order_id, at)
        return Deletion(agreement_id, order_id, count, digest)
