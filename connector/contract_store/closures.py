"""Order closures and the deletion duties they start.

When a provider closes an order, every agreement it gave whose scope covers the order
records the closure; an agreement with a delete duty (`policies.retention`) then owes
the deletion of that order's rows by a deadline. The provider records closures and
tells consumers; the consumer records the same closure, deletes when the deadline
comes (`shred`) and answers with a signed receipt; the provider checks the receipt
against the duty it computed (`record_receipt`); `duties` reports every duty's status,
in SQL, a page at a time. A consumer leaving the data space answers every duty at once,
before its deadline (`holdings` tells `connector.purge` what is held and answered).

Why separate: a duty is not stored, it is derived from the agreement's policy and the
closure each time it is looked at; this module is where that derivation meets the
aggregates it reads (agreements, receipts) and the ones a deletion writes (the
mirror and its keys, receipts, the outbox).

Invariants: a closure is recorded once, with the deadline its duty gives (the first
close time stands). A deletion is all or nothing: the order's rows, tombstones and
audit trail go, its data key is destroyed (see `data_keys`), and the signed receipt
and the message carrying it are stored, in one transaction; a receipt that does not
describe exactly what was deleted aborts it. A receipt is recorded only as the answer
to a recorded duty, and only if its claims match it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Column, Engine, String, Table, false, func, select
from sqlmodel.sql.sqltypes import UTCDateTime

from qdspace.connector.agreement import SignedReceipt
from qdspace.connector.contract_errors import ContractDenied, ContractStoreError
from qdspace.connector.contract_store.agreements import AgreementStore, held_as
from qdspace.connector.contract_store.common import (
    CONTRACT_METADATA,
    ID_LENGTH,
    TableStore,
    listing,
)
from qdspace.connector.contract_store.data_keys import data_key_table
from qdspace.connector.contract_store.outbox import OutboxMessage, OutboxStore
from qdspace.connector.contract_store.receipts import ReceiptStore, receipt_table, receipted
from qdspace.connector.contract_store.received import Deletion, ReceivedStore, received_row_table
from qdspace.connector.negotiation import Role
from qdspace.connector.purge import Holding
from qdspace.policies.evaluate import order_in_scope
from qdspace.policies.retention import (
    check_receipt_claims,
    deletion_duty,
)

closure_table = Table(
    "contract_order_closure",
    CONTRACT_METADATA,
    Column("agreement_id", String(ID_LENGTH), primary_key=True),
    Column("order_id", String(ID_LENGTH), primary_key=True),
    Column("closed_at", UTCDateTime(), nullable=False),
    Column("deadline", UTCDateTime(), nullable=True, index=True),
)


class _AnsweredMeanwhile(Exception):
    """Rolls back a deletion whose duty another transaction answered first."""


@dataclass(frozen=True)
class OrderClosure:
    agreement_id: str
    order_id: str
    closed_at: datetime
    deadline: datetime | None


class ClosureStore(TableStore):
    """Record closures; fulfil (consumer) and check (provider) the duties they start."""

    def __init__(
        self,
        engine: Engine,
        agreements: AgreementStore,
        received: ReceivedStore,
        receipts: ReceiptStore,
        outbox: OutboxStore,
    ) -> None:
        super().__init__(engine)
        self._agreements = agreements
        self._received = received
        self._receipts = receipts
        self._outbox = outbox

    def record_order_closed(
        self, agreement_id: str, order_id: str, closed_at: datetime
    ) -> OrderClosure:
        """Record that the provider closed `order_id` (idempotent: the first time stands)."""
        with self.engine.begin() as connection:
            stored = self._agreements.agreement_in(connection, agreement_id)
            duty = deletion_duty(stored.signed.agreement.policy, closed_at, order_id)
            deadline = None if duty is None else duty.deadline
            statement = self._upsert(closure_table).on_conflict_do_nothing(
                index_elements=["agreement_id", "order_id"]
            )
            connection.execute(
                statement.values(
                    agreement_id=agreement_id,
                    order_id=order_id,
                    closed_at=closed_at,
                    deadline=deadline,
                )
            )
        closure = self.closure(agreement_id, order_id)
        assert closure is not None
        return closure

    def close_order(self, provider_id: str, order_id: str, closed_at: datetime) -> list[str]:
        """Provider side: record the closure for every agreement it gave whose scope covers
        the order; returns those agreement ids (their consumers must be told)."""
        concerned = [
            stored.agreement_id
            for stored in self._agreements.concerning_order(provider_id, order_id)
            if order_in_scope(stored.signed.agreement.policy, order_id)
        ]
        for agreement_id in concerned:
            self.record_order_closed(agreement_id, order_id, closed_at)
        return concerned

    def closure(self, agreement_id: str, order_id: str) -> OrderClosure | None:
        table = closure_table
        with self.engine.connect() as connection:
            row = connection.execute(
                select(table).where(
                    table.c.agreement_id == agreement_id, table.c.order_id == order_id
                )
            ).first()
        if row is None:
            return None
        return OrderClosure(row.agreement_id, row.order_id, row.closed_at, row.deadline)

    def closures(
        self, agreement_id: str | None = None, *, limit: int | None = None, offset: int = 0
    ) -> list[OrderClosure]:
        """The closures recorded (of one agreement), by agreement and order, ``limit``
        from ``offset`` (None: all)."""
        table = closure_table
        statement = select(table)
        if agreement_id is not None:
            statement = statement.where(table.c.agreement_id == agreement_id)
        order = (table.c.agreement_id, table.c.order_id)
        statement = listing(statement, order, limit=limit, offset=offset)
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        return [OrderClosure(r.agreement_id, r.order_id, r.closed_at, r.deadline) for r in rows]

    def closed_orders(self, agreement_id: str) -> dict[str, datetime]:
        """order id -> close time, for the policy gate (`closed_orders=`)."""
        return {c.order_id: c.closed_at for c in self.closures(agreement_id)}

    def expired_closures(self, now: datetime) -> list[OrderClosure]:
        """Consumer side: closures past their deadline that have no receipt yet."""
        table = closure_table
        statement = (
            select(table)
            .where(
                held_as(table.c.agreement_id, Role.CONSUMER),
                table.c.deadline.is_not(None),
                table.c.deadline <= now,
                ~receipted(table.c.agreement_id, table.c.order_id),
            )
            .order_by(table.c.deadline, table.c.agreement_id, table.c.order_id)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        return [OrderClosure(r.agreement_id, r.order_id, r.closed_at, r.deadline) for r in rows]

    def shred(
        self,
        agreement_id: str,
        order_id: str,
        at: datetime,
        make_receipt: Callable[[Deletion], tuple[SignedReceipt, Sequence[OutboxMessage]]],
    ) -> SignedReceipt | None:
        """Delete the rows of one order under one agreement, destroy their data key, and
        store the signed receipt `make_receipt` builds, all in one transaction.

        The receipt covers exactly the records held (current versions; tombstones hold
        nothing); tombstones and the audit trail of the order go with them. None when a
        receipt for the duty was stored meanwhile (a sweep and a purge racing): then
        nothing of this attempt is kept, and no second receipt is sent."""
        try:
            with self.engine.begin() as connection:
                deletion = self._received.erase_order_in(connection, agreement_id, order_id, at)
                signed, outbox = make_receipt(deletion)
                receipt = signed.receipt
                if (receipt.agreement_id, receipt.order_id, receipt.row_count) != (
                    agreement_id,
                    order_id,
                    deletion.row_count,
                ) or receipt.content_sha256 != deletion.content_sha256:
                    raise ContractStoreError("the receipt does not describe what was deleted")
                if not self._receipts.save_receipt_in(connection, signed):
                    raise _AnsweredMeanwhile
                self._outbox.enqueue_in(connection, outbox, at)
        except _AnsweredMeanwhile:  # rolled back: a concurrent deletion answered it first
            return None
        return signed

    def record_receipt(self, signed: SignedReceipt) -> bool:
        """Provider side: store a receipt whose signature the caller verified; it must
        answer a duty of an agreement given, for an order in its scope (closed or, for a
        consumer deleting early, not yet). True when stored; False when the duty holds
        a receipt already (nothing written: the caller anchors nothing either).

        Why the scope and the length: a consumer signs its own receipts, so without them
        one agreement let it store (and have us anchor) a receipt for every order id it
        could invent, each as long as it liked."""
        receipt = signed.receipt
        for name, value in (("receipt id", receipt.receipt_id), ("order id", receipt.order_id)):
            if not value or len(value) > ID_LENGTH:
                raise ContractDenied(f"receipt: {name} of {len(value)} characters")
        with self.engine.begin() as connection:
            stored = self._agreements.agreement_in(connection, receipt.agreement_id)
            closure = connection.execute(
                select(closure_table).where(
                    closure_table.c.agreement_id == receipt.agreement_id,
                    closure_table.c.order_id == receipt.order_id,
                )
            ).first()
            duty = deletion_duty(
                stored.signed.agreement.policy,
                None if closure is None else closure.closed_at,
                receipt.order_id,
            )
            if duty is None:
                raise ContractStoreError(f"agreement {receipt.agreement_id} has no delete duty")
            if not order_in_scope(stored.signed.agreement.policy, receipt.order_id):
                raise ContractDenied(
                    f"receipt {receipt.receipt_id}: order {receipt.order_id} is not in the "
                    f"scope of agreement {receipt.agreement_id}"
                )
            check_receipt_claims(
                duty,
                agreement_id=receipt.agreement_id,
                consumer_id=receipt.consumer_id,
                row_count=receipt.row_count,
                content_sha256=receipt.content_sha256,
                order_id=receipt.order_id,
            )
            return self._receipts.save_receipt_in(connection, signed)

    def holdings(self) -> list[Holding]:
        """Consumer side: per (agreement held as consumer, order), what is held (rows,
        a live data key, a closure) and whether a receipt answers it (for `plan_purge`)."""
        rows, keys, closures = received_row_table, data_key_table, closure_table
        counted = func.count().filter(rows.c.withdrawn == false())
        consumer = Role.CONSUMER
        facts: list[Holding] = []
        with self.engine.connect() as connection:
            for r in connection.execute(
                select(rows.c.agreement_id, rows.c.order_id, counted)
                .where(held_as(rows.c.agreement_id, consumer))
                .group_by(rows.c.agreement_id, rows.c.order_id)
            ):
                facts.append(Holding(r[0], r[1], rows=int(r[2])))
            for r in connection.execute(
                select(keys.c.agreement_id, keys.c.order_id).where(
                    held_as(keys.c.agreement_id, consumer), keys.c.wrapped_key.is_not(None)
                )
            ):
                facts.append(Holding(r[0], r[1], key_live=True))
            for r in connection.execute(
                select(closures.c.agreement_id, closures.c.order_id).where(
                    held_as(closures.c.agreement_id, consumer)
                )
            ):
                facts.append(Holding(r[0], r[1], closed=True))
            # the duties answered, from the receipts' columns (none of them parsed)
            answered = select(receipt_table.c.agreement_id, receipt_table.c.order_id)
            for r in connection.execute(answered):
                facts.append(Holding(r[0], r[1], receipted=True))
        return facts
