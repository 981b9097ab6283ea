"""Sealed pages: the consumer's received rows, encrypted one page per delivery and order.

Why pages: a transfer delivers thousands of rows per batch, and sealing each row on its
own (one AES-GCM call, a nonce and a tag, ~400 bytes of ciphertext in the row index)
was a third of the consumer's store time. A page is one ciphertext for the rows of one
delivery (a group of batches, or a stream event) of one order, under that order's data
key (`data_keys`); the row index (`received`) keeps, per record, which page and slot
hold its current version. Crypto-erasure is unchanged: destroying the order's key
makes every page of that order unreadable.

Bound to where the rows belong: a page's AAD is its agreement, order and source, and
its plaintext starts with the seq of every slot, so a row index entry that points at a
page of another place, at another slot, or under another seq no longer opens (the
reader also checks the slot's record key and version against the index).

No dead content: a slot whose record is later replaced or withdrawn, and a slot of a
record that was already held when the page was written (a re-delivery), is blanked by
rewriting its page (`compact`), or the page is deleted when no live slot is left, in
the same transaction. A withdrawn record's content is therefore gone, as it was when
each row was its own ciphertext.

Plaintext layout: one format byte, the JSON array of slot seqs, a newline, then the
rows: joined by newlines (``L``; rows of a batch are newline-free), or, when a row
holds a newline (a stream event may), each prefixed by its 4-byte length (``P``). An
empty slot is a blank.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    delete,
    select,
    update,
)
from sqlmodel.sql.sqltypes import UTCDateTime

from qdspace.connector.contract_errors import ContractStoreError, RecordEnvelopeError
from qdspace.connector.contract_store.common import CONTRACT_METADATA, ID_LENGTH
from qdspace.connector.contract_store.data_keys import DataKeys
from qdspace.connector.contract_store.received_model import ROW_COLUMNS
from qdspace.connector.transfer_wire import record_envelopes, record_meta

received_page_table = Table(
    "contract_received_page",
    CONTRACT_METADATA,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("agreement_id", String(ID_LENGTH), nullable=False),
    Column("order_id", String(ID_LENGTH), nullable=False),
    Column("source_id", String(ID_LENGTH), nullable=False),
    Column("nonce", LargeBinary, nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
    Index("ix_contract_received_page_order", "agreement_id", "order_id"),
)
_PAGE_CONTEXT = b"qdspace.v1/received-page\x00"
_LINES, _PREFIXED = b"L", b"P"
_LENGTH = struct.Struct(">I")


def page_aad(agreement_id: str, order_id: str, source_id: str) -> bytes:
    """What a page's ciphertext is bound to: the agreement, order and source it came by."""
    return _PAGE_CONTEXT + f"{agreement_id}\x00{order_id}\x00{source_id}".encode()


def seal(
    cipher: AESGCM,
    aad: bytes,
    seqs: Sequence[int],
    payloads: Sequence[bytes],
) -> tuple[bytes, bytes]:
    """(nonce, ciphertext) of one page: slot i holds `payloads[i]` (b"": blank), seq `seqs[i]`."""
    head = orjson.dumps(list(seqs))
    # the line form in one join (the slot seqs hold no newline): one copy of the rows
    plain = b"\n".join([_LINES + head, *payloads])
    if not payloads or plain.count(b"\n") != len(payloads):
        parts = [_PREFIXED, head, b"\n"]
        for payload in payloads:
            parts += (_LENGTH.pack(len(payload)), payload)
        plain = b"".join(parts)
    nonce = os.urandom(12)
    return nonce, cipher.encrypt(nonce, plain, aad)


def unseal(
    cipher: AESGCM, aad: bytes, nonce: bytes, ciphertext: bytes
) -> tuple[list[int], list[bytes]]:
    """The slot seqs and rows of a page; ContractStoreError when it fails its check."""
    try:
        plain = cipher.decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise ContractStoreError("a received page fails its integrity check") from None
    head_end = plain.index(b"\n")
    seqs: list[int] = orjson.loads(plain[1:head_end])
    if plain[:1] == _LINES:
        payloads = plain[head_end + 1 :].split(b"\n")
    else:
        payloads, at = [], head_end + 1
        while at < len(plain):
            (size,) = _LENGTH.unpack_from(plain, at)
            payloads.append(plain[at + 4 : at + 4 + size])
            at += 4 + size
    if len(payloads) != len(seqs):
        raise ContractStoreError("a received page's slots do not match its seqs")
    return seqs, payloads


class OpenPage(NamedTuple):
    """A page opened: where it belongs, and its slots' seqs and rows (b"": blank)."""

    agreement_id: str
    order_id: str
    source_id: str
    seqs: list[int]
    payloads: list[bytes]


class Pages:
    """Write, read and compact the sealed pages of the consumer's received rows."""

    def __init__(self, keys: DataKeys, rows: Table) -> None:
        self._keys = keys
        self._rows = rows  # the row index: which page and slot hold each record

    def insert(
        self,
        connection: Connection,
        cipher: AESGCM,
        place: tuple[str, str, str],
        seqs: Sequence[int],
        payloads: Sequence[bytes],
        received_at: datetime,
    ) -> int:
        """Seal and store one page (agreement, order, source = `place`); its id."""
        agreement_id, order_id, source_id = place
        nonce, ciphertext = seal(cipher, page_aad(*place), seqs, payloads)
        values = {
            "agreement_id": agreement_id,
            "order_id": order_id,
            "source_id": source_id,
            "nonce": nonce,
            "ciphertext": ciphertext,
            "received_at": received_at,
        }
        inserted = connection.execute(
            received_page_table.insert().values(values).returning(received_page_table.c.id)
        )
        return int(inserted.scalar_one())

    def open_pages(
        self, connection: Connection, page_ids: Iterable[int], at: datetime, lock: bool = False
    ) -> dict[int, OpenPage]:
        """The pages asked for, opened (`lock`: held for update until the transaction
        ends, on a database that locks rows, so two writers never rewrite one page)."""
        table = received_page_table
        wanted = sorted(set(page_ids))
        opened: dict[int, OpenPage] = {}
        for start in range(0, len(wanted), 500):
            statement = select(table).where(table.c.id.in_(wanted[start : start + 500]))
            for page in connection.execute(statement.with_for_update() if lock else statement):
                cipher = self._keys.key_in(connection, page.agreement_id, page.order_id, False, at)
                place = (page.agreement_id, page.order_id, page.source_id)
                seqs, payloads = unseal(
                    cipher, page_aad(*place), bytes(page.nonce), bytes(page.ciphertext)
                )
                opened[int(page.id)] = OpenPage(*place, seqs, payloads)
        return opened

    def blank(self, connection: Connection, dead: dict[int, set[int]], at: datetime) -> None:
        """Blank these slots (page id -> slots no row points at any more: their records
        were replaced or withdrawn), and delete a page left with no live slot."""
        opened = self.open_pages(connection, dead, at, lock=True)
        for page_id, page in opened.items():
            kept = [b"" if i in dead[page_id] else p for i, p in enumerate(page.payloads)]
            self._rewrite(connection, page_id, page, kept, at)

    def compact(
        self,
        connection: Connection,
        agreement_no: int,
        slot_keys: dict[int, list[str]],
        at: datetime,
    ) -> None:
        """Blank every slot of these pages just written (page id -> record key per slot)
        that no received row points at (the record was held already), and delete a
        page left without a live slot. `agreement_no`: the pages' agreement's number in
        the row index (`received_agreement_table`)."""
        rows = self._rows
        for page_id, keys in slot_keys.items():
            live: set[int] = set()
            unique = sorted(set(keys))
            for start in range(0, len(unique), 500):
                live.update(
                    int(slot)
                    for slot in connection.scalars(
                        select(rows.c.slot).where(
                            rows.c.agreement_no == agreement_no,
                            rows.c.page_id == page_id,
                            rows.c.record_key.in_(unique[start : start + 500]),
                        )
                    )
                )
            if not live:
                self.delete(connection, [page_id])
            elif len(live) < len(keys):
                page = self.open_pages(connection, [page_id], at, lock=True)[page_id]
                kept = [p if i in live else b"" for i, p in enumerate(page.payloads)]
                self._rewrite(connection, page_id, page, kept, at)

    def _rewrite(
        self, connection: Connection, page_id: int, page: OpenPage, kept: list[bytes], at: datetime
    ) -> None:
        if not any(kept):
            self.delete(connection, [page_id])
            return
        cipher = self._keys.key_in(connection, page.agreement_id, page.order_id, False, at)
        place = (page.agreement_id, page.order_id, page.source_id)
        nonce, ciphertext = seal(cipher, page_aad(*place), page.seqs, kept)
        connection.execute(
            update(received_page_table)
            .where(received_page_table.c.id == page_id)
            .values(nonce=nonce, ciphertext=ciphertext)
        )

    @staticmethod
    def delete(connection: Connection, page_ids: Sequence[int]) -> None:
        table = received_page_table
        for start in range(0, len(page_ids), 500):
            connection.execute(delete(table).where(table.c.id.in_(page_ids[start : start + 500])))

    @staticmethod
    def erase(connection: Connection, agreement_id: str, order_id: str) -> None:
        table = received_page_table
        connection.execute(
            delete(table).where(table.c.agreement_id == agreement_id, table.c.order_id == order_id)
        )


_REPLACE = ", ".join(
    f"{name} = excluded.{name}"
    for name in ROW_COLUMNS
    if name not in ("agreement_no", "agreement_id", "record_key")  # the conflict's own key
)
_COLUMNS = ", ".join(ROW_COLUMNS)
_UPSERT = (
    " ON CONFLICT (agreement_no, record_key) DO UPDATE SET "
    f"{_REPLACE} WHERE contract_received_row.version < excluded.version"
)
# One statement per page, whatever its size: the slots' keys, seqs and versions go in
# as one JSON document (SQLite) or three arrays (PostgreSQL), not as a bound parameter
# set per row. A record not held is inserted, one held is replaced only by a higher
# version (the same rule as the row-wise upsert).
_SQLITE_INDEX = (
    f"INSERT INTO contract_received_row ({_COLUMNS}) "
    "SELECT ?, ?, ?, ?, json_extract(value, '$[1]'), x'', x'', ?, json_extract(value, '$[0]'), "
    "json_extract(value, '$[2]'), 0, ?, key "
    f"FROM json_each(?) WHERE true{_UPSERT}"
)
_POSTGRES_INDEX = (
    f"INSERT INTO contract_received_row ({_COLUMNS}) "
    "SELECT %s, %s, %s, %s, u.seq, ''::bytea, ''::bytea, %s, u.key, u.version, false, %s, "
    "u.slot - 1 FROM unnest(%s::varchar[], %s::bigint[], %s::bigint[]) "
    f"WITH ORDINALITY AS u(key, seq, version, slot){_UPSERT}"
)
# The common page (every transfer batch, most stream events): seqs that run on by one
# from the first slot, and one version for all. Only the keys go in, as a JSON array of
# strings (SQLite: `value` is the key's text as it is, no `json_extract` per slot, and
# the document is a third of the size); seq = first + slot. Same rows, same upsert.
_SQLITE_RUN = (
    f"INSERT INTO contract_received_row ({_COLUMNS}) "
    "SELECT ?, ?, ?, ?, ? + key, x'', x'', ?, value, ?, 0, ?, key "
    f"FROM json_each(?) WHERE true{_UPSERT}"
)
_POSTGRES_RUN = (
    f"INSERT INTO contract_received_row ({_COLUMNS}) "
    "SELECT %s, %s, %s, %s, %s + u.slot - 1, ''::bytea, ''::bytea, %s, u.key, %s, false, %s, "
    f"u.slot - 1 FROM unnest(%s::varchar[]) WITH ORDINALITY AS u(key, slot){_UPSERT}"
)


def index_page(
    connection: Connection,
    agreement_no: int,
    place: tuple[str, str, str],
    received_at: Any,
    page_id: int,
    keys: list[str],
    seqs: Sequence[int],
    versions: list[int],
) -> int:
    """Upsert the row index of one page (slot i: `keys[i]`, `seqs[i]`, `versions[i]`;
    keys unique) of the agreement numbered `agreement_no` (`place[0]`'s number in
    `received_agreement_table`); how many rows the database stored."""
    sqlite = connection.dialect.name == "sqlite"
    first, version = seqs[0], versions[0]
    steps = range(first, first + len(seqs))
    in_run = seqs == steps if isinstance(seqs, range) else seqs == list(steps)
    if in_run and versions.count(version) == len(versions):
        if sqlite:
            run: tuple[Any, ...] = (
                agreement_no,
                *place,
                first,
                received_at,
                version,
                page_id,
                orjson.dumps(keys),
            )
            return int(connection.exec_driver_sql(_SQLITE_RUN, run).rowcount)
        run = (agreement_no, *place, first, received_at, version, page_id, keys)
        return int(connection.exec_driver_sql(_POSTGRES_RUN, run).rowcount)
    if sqlite:
        document = orjson.dumps(list(zip(keys, seqs, versions, strict=True)))
        params: tuple[Any, ...] = (agreement_no, *place, received_at, page_id, document)
        return int(connection.exec_driver_sql(_SQLITE_INDEX, params).rowcount)
    params = (agreement_no, *place, received_at, page_id, keys, list(seqs), versions)
    return int(connection.exec_driver_sql(_POSTGRES_INDEX, params).rowcount)


def slot_payload(opened: dict[int, OpenPage], row: Any) -> bytes:
    """The bytes of one received row held in a page, checked against its index entry
    (agreement, order, seq, record key, version)."""
    payload = _in_place(opened, row)
    try:
        meta = record_meta(payload)
    except RecordEnvelopeError:
        raise _broken(row, "not a record") from None
    if meta.key != row.record_key or meta.version != int(row.version):
        raise _broken(row, "another record")
    return payload


def slot_payloads(opened: dict[int, OpenPage], rows: Sequence[Any]) -> list[bytes]:
    """`slot_payload` of each of `rows`, the same bytes and the same refusals, with the
    records' envelopes read for all of them in one pass (`record_envelopes`: ~0.5 us a row
    against ~1.4 for a dict per row through `record_meta`); a row that pass refuses is
    read by `slot_payload`, whose refusal names it."""
    payloads = [_in_place(opened, row) for row in rows]
    try:
        keys, versions, _withdrawn = record_envelopes(payloads)
    except RecordEnvelopeError:
        return [slot_payload(opened, row) for row in rows]
    for row, key, version in zip(rows, keys, versions, strict=True):
        if key != row.record_key or version != int(row.version):
            raise _broken(row, "another record")
    return payloads


def _in_place(opened: dict[int, OpenPage], row: Any) -> bytes:
    """The bytes in the slot of its page that `row`'s index entry names, once the page is
    its place (agreement, order) and the slot holds its seq."""
    page = opened.get(int(row.page_id))
    slot, seq = int(row.slot), int(row.seq)
    if page is None or page.agreement_id != row.agreement_id or page.order_id != row.order_id:
        raise _broken(row, "its page is not its place")
    seqs, payloads = page.seqs, page.payloads
    if not 0 <= slot < len(payloads) or seqs[slot] != seq or not payloads[slot]:
        raise _broken(row, "not in its page")
    return payloads[slot]


def _broken(row: Any, why: str) -> ContractStoreError:
    """The error of a held row that fails its integrity check (made only then: the
    message was a tenth of a row's read)."""
    return ContractStoreError(
        f"received row {row.source_id}#{row.seq} fails its integrity check: {why}"
    )
