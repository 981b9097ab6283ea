"""Deletion receipts: the consumer's signed statements that it deleted an order's rows.

A consumer that deletes the rows of a closed order under a delete duty signs a
receipt (how many records, the digest of their canonical bytes, when) and sends it to
the provider; both keep it. The consumer keeps its own to know the duty is done; the
provider keeps the consumer's as its evidence, for the duty report and the ledger.

Why separate: a receipt is evidence, written once and then only read, by both sides,
while the duty it answers (`closures`) is derived from policy and a closure and is
re-evaluated at every look. Whether a receipt may be recorded at all (does it answer
a recorded duty, do its claims hold) is the duty's question and is asked there; this
module only keeps receipts.

Invariants: at most one receipt per duty (agreement, order), by a unique key; storing
a receipt again is a no-op, so a retried delivery of the same receipt, or the
consumer's own second attempt, changes nothing.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Connection,
    Index,
    LargeBinary,
    String,
    Table,
    UniqueConstraint,
    select,
)
from sqlmodel.sql.sqltypes import UTCDateTime

from qdspace.connector.agreement import SignedReceipt, receipt_from_bytes
from qdspace.connector.contract_store.common import (
    CONTRACT_METADATA,
    ID_LENGTH,
    TableStore,
    count_rows,
    listing,
)

receipt_table = Table(
    "contract_deletion_receipt",
    CONTRACT_METADATA,
    Column("receipt_id", String(64), primary_key=True),
    Column("agreement_id", String(ID_LENGTH), nullable=False),
    Column("order_id", String(ID_LENGTH), nullable=False),
    Column("consumer_id", String(ID_LENGTH), nullable=False),
    Column("canonical", LargeBinary, nullable=False),
    Column("signature", LargeBinary, nullable=False),
    Column("row_count", BigInteger, nullable=False),
    Column("content_sha256", String(64), nullable=False),
    Column("deleted_at", UTCDateTime(), nullable=False),
    UniqueConstraint("agreement_id", "order_id", name="uq_contract_receipt_duty"),
    # listings in the order of deletion (pages, the newest: revision 0019)
    Index("ix_contract_receipt_deleted", "deleted_at", "receipt_id"),
)


def receipted(
    agreement_id: ColumnElement[str], order_id: ColumnElement[str]
) -> ColumnElement[bool]:
    """An SQL condition: a receipt is held for the duty of (`agreement_id`, `order_id`)
    (for another aggregate's query over its own rows)."""
    table = receipt_table
    return (
        select(table.c.agreement_id, table.c.order_id)
        .where(table.c.agreement_id == agreement_id, table.c.order_id == order_id)
        .exists()
    )


class ReceiptStore(TableStore):
    """Keep and list deletion receipts."""

    def save_receipt_in(self, connection: Connection, signed: SignedReceipt) -> bool:
        """Keep a receipt within the caller's transaction; False (and nothing written)
        when one is held for its duty already."""
        receipt = signed.receipt
        statement = self._upsert(receipt_table).on_conflict_do_nothing()
        result = connection.execute(
            statement.values(
                receipt_id=receipt.receipt_id,
                agreement_id=receipt.agreement_id,
                order_id=receipt.order_id,
                consumer_id=receipt.consumer_id,
                canonical=receipt.canonical_bytes(),
                signature=signed.signature,
                row_count=receipt.row_count,
                content_sha256=receipt.content_sha256,
                deleted_at=receipt.deleted_at,
            ).returning(receipt_table.c.receipt_id)  # (rowcount is not reliable on every driver)
        )
        return result.first() is not None

    def receipt(self, receipt_id: str) -> SignedReceipt | None:
        """One receipt by its id (a regulator's look-up), None when none is held."""
        table = receipt_table
        with self.engine.connect() as connection:
            row = connection.execute(
                select(table.c.canonical, table.c.signature).where(table.c.receipt_id == receipt_id)
            ).first()
        if row is None:
            return None
        return SignedReceipt(receipt_from_bytes(bytes(row.canonical)), bytes(row.signature))

    def receipts(
        self,
        agreement_id: str | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
        newest_first: bool = False,
    ) -> list[SignedReceipt]:
        """The receipts held (of one agreement) in the order of their deletion times
        (``newest_first``: the reverse), ``limit`` from ``offset``."""
        table = receipt_table
        statement = select(table)
        if agreement_id is not None:
            statement = statement.where(table.c.agreement_id == agreement_id)
        order = (table.c.deleted_at, table.c.receipt_id)
        statement = listing(statement, order, limit=limit, offset=offset, newest_first=newest_first)
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        return [
            SignedReceipt(receipt_from_bytes(bytes(r.canonical)), bytes(r.signature)) for r in rows
        ]

    def count_receipts(self) -> int:
        """How many receipts are held."""
        return count_rows(self.engine, receipt_table)
