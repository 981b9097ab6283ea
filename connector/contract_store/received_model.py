"""The consumer's mirror, its tables and values: received rows and their audit trail.

Why separate: the reading side (`received`), the writing side (`received_write`) and
the sealed pages (`received_pages`) share these; each module stays about one thing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import count, repeat
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    UniqueConstraint,
    false,
    select,
)
from sqlmodel.sql.sqltypes import UTCDateTime

from qdspace.connector.contract_store.common import CONTRACT_METADATA, ID_LENGTH

#: the agreements rows were received under, each by a small number of this node's own
#: (`agreement_no`): the row index's unique key is (agreement number, record key), not
#: (agreement id, record key), so an index entry is ~45 bytes instead of ~80, and a
#: delivery's random record keys dirty fewer index pages (0012_received_agreement_no;
#: bench/PROFILE-transfer.md, consumer store, round 6). A number is never reused: its
#: row is never deleted, so a number once given stays that agreement's
received_agreement_table = Table(
    "contract_received_agreement",
    CONTRACT_METADATA,
    Column("agreement_no", Integer, primary_key=True),
    Column("agreement_id", String(ID_LENGTH), nullable=False),
    # how often what is held under the agreement changed (`revision`: rows added,
    # replaced, withdrawn or erased), and how often other than by rows added
    # (`rewrites`): a reader that saw every row up to an id and the same `rewrites` has
    # only to read the rows after it (`MirrorVersion`; 0016_received_revision)
    Column("revision", BigInteger, nullable=False, server_default="0"),
    Column("rewrites", BigInteger, nullable=False, server_default="0"),
    UniqueConstraint("agreement_id", name="uq_contract_received_agreement"),
)
received_row_table = Table(
    "contract_received_row",
    CONTRACT_METADATA,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    # the agreement (its number in `contract_received_agreement`), the record's key
    # within it: keys are the provider's choice and unique only per agreement
    Column("agreement_no", Integer, nullable=False),
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
    UniqueConstraint("agreement_no", "record_key", name="uq_contract_received_record_no"),
    # one agreement's rows in the order they came (0021_received_by_agreement): the
    # newest, a page after an id and what came since are ranges of it; through the
    # unique index above they were every row of the agreement read and sorted
    Index("ix_contract_received_row_agreement", "agreement_no", "id"),
)


def agreement_no_of(agreement_id: str) -> ColumnElement[int]:
    """The number of an agreement in the row index, as a scalar subquery (NULL, which
    matches no row, for an agreement nothing was received under): what a reader of the
    rows of one agreement filters on, so that the unique index serves the look-up."""
    table = received_agreement_table
    found = select(table.c.agreement_no).where(table.c.agreement_id == agreement_id)
    return found.scalar_subquery()


#: where each source's deliveries stop (`last_received_seq`): the highest seq a delivery
#: of that transfer or subscription brought, moved forward once per delivery (it used to
#: be read from an index of every row by (source, seq): a B-tree insert per record), and
#: how many rows its deliveries brought (`delivered`: a subscription's count of rows
#: received, which outlives the process that counted them)
received_source_table = Table(
    "contract_received_source",
    CONTRACT_METADATA,
    Column("source_id", String(ID_LENGTH), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("delivered", BigInteger, nullable=False, server_default="0"),
)
#: the columns a received record is written with (all but the surrogate id), in the order
#: the write path builds its value tuples
ROW_COLUMNS = (
    "agreement_no",
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

    @classmethod
    def run(cls, first: int, orders: Sequence[str], payloads: Sequence[bytes]) -> list[IncomingRow]:
        """The rows of one batch, seq `first` on: made in C (`tuple.__new__` of this
        class, as the named tuple's own `__new__` does, without its Python call per row:
        a third of the consumer's main-thread time per batch went to that)."""
        if len(orders) != len(payloads):
            raise ValueError(f"{len(orders)} orders for {len(payloads)} rows")
        made = map(tuple.__new__, repeat(cls), zip(count(first), orders, payloads))
        return cast(list[IncomingRow], list(made))


class IncomingRun:
    """Rows of consecutive seqs as columns: seq `first` on, the order and bytes of each.

    What a pull gathers for one commit (`extend`: batch after batch) and hands to the
    store as it is: one list of orders and one of payloads, no `IncomingRow` tuple per
    row (making them was ~0.13 µs per row on the node's main thread, and the store only
    took them apart again). Iterating gives the `IncomingRow`s."""

    __slots__ = ("first", "orders", "payloads")

    def __init__(self, first: int, orders: list[str], payloads: list[bytes]) -> None:
        if len(orders) != len(payloads):
            raise ValueError(f"{len(orders)} orders for {len(payloads)} rows")
        self.first = first
        self.orders = orders
        self.payloads = payloads

    def extend(self, first: int, orders: Sequence[str], payloads: Sequence[bytes]) -> None:
        """Append the rows of the next batch (seq `first` on: where these stop)."""
        if first != self.first + len(self.payloads):
            raise ValueError(f"rows from seq {first} do not follow seq {self.end - 1}")
        if len(orders) != len(payloads):
            raise ValueError(f"{len(orders)} orders for {len(payloads)} rows")
        self.orders += orders
        self.payloads += payloads

    @property
    def end(self) -> int:
        """The seq after the last row."""
        return self.first + len(self.payloads)

    def __len__(self) -> int:
        return len(self.payloads)

    def __iter__(self) -> Iterator[IncomingRow]:
        return iter(IncomingRow.run(self.first, self.orders, self.payloads))


class ReceivedRow(NamedTuple):
    """The current version of one record received under an agreement. A named tuple (as
    `IncomingRow`): a chart's history builds 20,000 of them, and a frozen dataclass's
    ``__init__`` cost ~2.5 us each of it."""

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
class MirrorVersion:
    """Where the copy held under an agreement stands (`ReceivedStore.mirror_version`).

    `revision` moves with every change of what is held, `rewrites` with every change
    other than rows added (a record replaced, withdrawn, a withdrawn one sent again, an
    order erased: their rows keep their ids or go). A reader that holds
    every row up to id N, read at `rewrites` w, and now sees w again has only to read
    the rows with ids above N (`received_since`): a row added gets an id above every id
    held before it, because the deliveries under one agreement are serialised
    (`received_write`)."""

    revision: int
    rewrites: int


@dataclass(frozen=True)
class Deletion:
    """What `erase_order_in` removed: how many records, and the digest of their
    canonical bytes (`deletion_digest_of_bytes`), for the receipt."""

    agreement_id: str
    order_id: str
    row_count: int
    content_sha256: str
