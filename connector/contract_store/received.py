"""The consumer's mirror: the provider's records received under agreements.

Received rows are the consumer's copy of the provider's records: one row per
(agreement, record key), the highest version seen (see the record envelope in
`connector.transfer_wire`). Pulling the same records again, over several transfers or the
live stream, concurrently or not, stores each once (keep-once); a later version
replaces the row, a tombstone withdraws it (kept, without content, so a late copy of
an older version cannot bring it back), and every correction and withdrawal is kept
in an audit trail (`received_changes`) with the hash of what arrived. A row, and a
tombstone, is only accepted for an order its agreement covers (and not deleted), with
only the fields it grants, while it is in force, and only ever touches that agreement's
rows. Each row is stored encrypted under its order's data key
(`data_keys`), bound to where it belongs: in a sealed page, one ciphertext per
delivery and order (`received_pages`); rows stored before pages keep a ciphertext of
their own, and readers open both. How a delivery is written is `received_write`; this
module reads the copy, erases an order (the digest of its deletion receipt covers
exactly the records held) and ties a batch to the transfer cursor.

Why separate: this is the only aggregate that holds another member's data, and the
one written on the hot path of every transfer batch and stream event; its invariants
(keep-once, highest version wins, scope, encryption) are about that data, not about
the processes that deliver it.

Crash safety: a pulled batch is stored and the consumer's transfer cursor advanced in
one transaction (`commit_transfer_batch`). A batch committed twice (a crash between
commit and acknowledgement) changes nothing the second time, and a crash before the
commit leaves the cursor where the stored rows stop. A live stream resumes after the
highest seq a committed delivery brought (`last_received_seq`, one row per source).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import cache
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidTag
from sqlalchemy import Connection, Engine, Integer, and_, delete, false, func, select
from sqlalchemy.types import TypeEngine

from qdspace.connector.agreement import deletion_digest_of_bytes
from qdspace.connector.contract_errors import ContractStoreError
from qdspace.connector.contract_store.agreements import AgreementStore
from qdspace.connector.contract_store.common import (
    DriverStatement,
    TableStore,
    count_rows,
    listing,
    saving,
    utc_now,
)
from qdspace.connector.contract_store.data_keys import DataKeys, row_aad
from qdspace.connector.contract_store.received_model import (
    Deletion,
    IncomingRow,
    IncomingRun,
    MirrorResult,
    MirrorVersion,
    ReceivedChange,
    ReceivedRow,
    agreement_no_of,
    change_table,
    received_agreement_table,
    received_row_table,
    received_source_table,
)
from qdspace.connector.contract_store.received_pages import Pages, slot_payload, slot_payloads
from qdspace.connector.contract_store.received_write import MirrorWriter, count_change
from qdspace.connector.contract_store.transfers import TransferStore
from qdspace.connector.transfer import TransferProcess

__all__ = [
    "Deletion",
    "IncomingRow",
    "IncomingRun",
    "MirrorResult",
    "MirrorVersion",
    "ReceivedChange",
    "ReceivedRow",
    "ReceivedStore",
    "change_table",
    "received_agreement_table",
    "received_row_table",
]


class Held(NamedTuple):
    """A held row's index entry as its readers take it from the driver (`held_statement`:
    these columns, in this order)."""

    id: int
    agreement_id: str
    order_id: str
    source_id: str
    seq: int
    received_at: datetime
    record_key: str
    version: int
    page_id: int | None
    slot: int | None
    nonce: bytes
    ciphertext: bytes


@cache
def held_statement(*, order: bool, newest: bool, limit: bool) -> DriverStatement:
    """The rows held under an agreement (``agreement_id``) after an id, not withdrawn (of
    one order), in id order (``newest``: the other way), at most a number of them: its
    parameters in that order. A range of ``ix_contract_received_row_agreement`` each
    (0021_received_by_agreement), read by the driver: through SQLAlchemy's rows the read
    of 20,000 took 110-220 ms, most of a subscription chart's first draw."""
    table = received_row_table
    number = (
        f"SELECT {received_agreement_table.c.agreement_no.name} FROM "
        f"{received_agreement_table.name} WHERE agreement_id = ?"
    )
    sql = (
        f"SELECT {', '.join(Held._fields)} FROM {table.name} "
        f"WHERE agreement_no = ({number}) AND id > ? AND withdrawn = ?"
    )
    binds: list[TypeEngine[Any]] = [
        table.c.agreement_id.type,
        table.c.id.type,
        table.c.withdrawn.type,
    ]
    if order:
        sql += " AND order_id = ?"
        binds.append(table.c.order_id.type)
    sql += f" ORDER BY id{' DESC' if newest else ''}"
    if limit:
        sql += " LIMIT ?"
        binds.append(Integer())
    return DriverStatement(sql, binds, [table.c[name].type for name in Held._fields])


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
        self._transfers = transfers
        self._pages = Pages(keys, received_row_table)
        self._writer = MirrorWriter(engine, keys, agreements, self._pages)

    def store_received_rows(
        self,
        agreement_id: str,
        source_id: str,
        rows: Iterable[IncomingRow] | IncomingRun,
        at: datetime,
    ) -> MirrorResult:
        """Mirror rows of a live stream (seq = provider cursor) into the copy held under
        the agreement: new records are added, later versions replace, tombstones
        withdraw; anything already held (a re-delivery, a record seen on a pull) is not
        stored again."""
        with self.engine.begin() as connection:
            given = rows if isinstance(rows, IncomingRun) else list(rows)
            return self._writer.store_rows(connection, agreement_id, source_id, given, at)

    def commit_transfer_batch(
        self,
        before: TransferProcess,
        after: TransferProcess,
        rows: Sequence[IncomingRow] | IncomingRun,
        at: datetime,
    ) -> MirrorResult:
        """Mirror a verified batch and save the consumer's advanced cursor in one transaction.

        The seq of each row must be its offset in the transfer. A batch committed twice
        (a crash between commit and acknowledgement) changes nothing the second time, and
        a crash before commit leaves the cursor where the rows stop. A pull that asked
        for one order (`order_id`) takes rows of that order only.
        """
        expected = range(before.checkpoint.offset, after.checkpoint.offset)
        if isinstance(rows, IncomingRun):
            follows = range(rows.first, rows.end) == expected
        else:
            follows = [row.seq for row in rows] == list(expected)
        if not follows:
            raise ContractStoreError(
                f"transfer {after.transfer_id}: batch rows must have seq "
                f"{before.checkpoint.offset}..{after.checkpoint.offset - 1}"
            )
        with saving(self.engine, f"transfer {after.transfer_id}") as connection:
            result = self._writer.store_rows(
                connection,
                after.agreement_id,
                after.transfer_id,
                rows,
                at,
                only_order=after.order_id,
            )
            self._transfers.save_transfer_in(connection, before, after)
        return result

    def received_changes(
        self,
        agreement_id: str | None = None,
        record_key: str | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ReceivedChange]:
        """The audit trail of corrections and withdrawals received, oldest first (ties in
        the key's order, so that pages of ``limit`` from ``offset`` never overlap)."""
        table = change_table
        statement = select(table)
        if agreement_id is not None:
            statement = statement.where(table.c.agreement_id == agreement_id)
        if record_key is not None:
            statement = statement.where(table.c.record_key == record_key)
        c = table.c
        order = (c.received_at, c.version, c.agreement_id, c.record_key)
        statement = listing(statement, order, limit=limit, offset=offset)
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
        """The highest seq a delivery of this source (a transfer or a stream) brought and
        committed: its resume cursor, None when nothing yet. Kept per source and moved
        forward with every delivery (`contract_received_source`), so it counts rows that
        were copies of what was held as received too, and an erasure does not move it
        back (a resume never brings erased rows in again)."""
        return self.received_source(source_id)[0]

    def delivered(self, source_id: str) -> int:
        """How many rows the deliveries of this source brought (copies of rows held
        included, replays of a delivery not), kept with its cursor: 0 when none yet."""
        return self.received_source(source_id)[1]

    def received_source(self, source_id: str) -> tuple[int | None, int]:
        """(`last_received_seq`, `delivered`) of a source, in one read: what a resumed
        stream takes up."""
        t = received_source_table
        with self.engine.connect() as connection:
            row = connection.execute(
                select(t.c.seq, t.c.delivered).where(t.c.source_id == source_id)
            ).first()
        return (None, 0) if row is None else (int(row.seq), int(row.delivered))

    def _payloads(
        self, connection: Connection, records: Sequence[Any], at: datetime
    ) -> list[bytes]:
        """The bytes of held rows: from their sealed pages (each page opened once), or
        from their own ciphertext (rows stored before pages)."""
        paged = [r for r in records if r.page_id is not None]
        opened = self._pages.open_pages(connection, (r.page_id for r in paged), at)
        if len(paged) == len(records):  # every row in a page: their envelopes in one pass
            return slot_payloads(opened, records)
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
        params: list[Any] = [agreement_id, after_id, False]
        if order_id is not None:
            params.append(order_id)
        if limit is not None:
            params.append(limit)
        read = held_statement(order=order_id is not None, newest=False, limit=limit is not None)
        return self._read(read, params)

    def received_newest(self, agreement_id: str, count: int) -> list[ReceivedRow]:
        """The newest `count` records held under an agreement (by id), oldest first."""
        read = held_statement(order=False, newest=True, limit=True)
        return self._read(read, [agreement_id, 0, False, count])[::-1]

    def received_since(self, agreement_id: str, after_id: int) -> list[ReceivedRow]:
        """The records held under an agreement with ids above `after_id`, in id order,
        decrypted: what was added since a reader saw `after_id` (`MirrorVersion`). A range
        of the agreement's (agreement, id) entries, so a reader that follows the copy reads
        what is new, not the agreement's whole index (through the (agreement, key) index
        six new rows of 20,000 cost 20 ms: every row held was found and sorted)."""
        read = held_statement(order=False, newest=False, limit=False)
        return self._read(read, [agreement_id, after_id, False])

    def mirror_version(self, agreement_id: str) -> MirrorVersion | None:
        """Where the copy held under the agreement stands; None before its first delivery."""
        table = received_agreement_table
        find = select(table.c.revision, table.c.rewrites).where(
            table.c.agreement_id == agreement_id
        )
        with self.engine.connect() as connection:
            row = connection.execute(find).first()
        return None if row is None else MirrorVersion(int(row.revision), int(row.rewrites))

    def _read(self, statement: DriverStatement, params: Sequence[Any]) -> list[ReceivedRow]:
        with self.engine.connect() as connection:
            records = list(map(Held._make, statement.all(connection, params)))
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
            number = agreement_no_of(agreement_id)
            statement = statement.where(received_row_table.c.agreement_no == number)
        with self.engine.connect() as connection:
            return int(connection.execute(statement).scalar_one())

    def stored_rows(self) -> int:
        """Every row the mirror keeps, for a quota on stored rows: the records held, the
        tombstones of withdrawn ones and the trail of changes (each correction a row)."""
        return sum(count_rows(self.engine, t) for t in (received_row_table, change_table))

    def erase_order_in(
        self, connection: Connection, agreement_id: str, order_id: str, at: datetime
    ) -> Deletion:
        """Within the caller's transaction: delete the rows of one order under one
        agreement, with their tombstones and audit trail, and destroy their data key.
        The returned `Deletion` covers exactly the records held (current versions;
        tombstones hold nothing), as a deletion receipt must."""
        # counted first: it locks the agreement's mirror row before any of its rows, in
        # the order a delivery takes them (`received_write`)
        count_change(connection, agreement_id, rewrite=True)
        table = received_row_table
        number = agreement_no_of(agreement_id)
        where = and_(table.c.agreement_no == number, table.c.order_id == order_id)
        read = held_statement(order=True, newest=False, limit=False)
        records = list(map(Held._make, read.all(connection, [agreement_id, 0, False, order_id])))
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
