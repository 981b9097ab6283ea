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

Which closures bind the consumer (the rule a data-protection officer would expect): a
deletion receipt states that data was deleted, so it is signed for what was held. An
agreement that names its orders bounds its closures itself (one per order named, each
outside refused), and each binds: at its deadline the consumer answers it, with a
receipt of zero rows if it never received any, so that the provider sees the duty it
expects answered. An agreement whose order scope is open (it names no order, or every
order but some: `open_order_scope`; a negotiation narrows the scope to the consumer's
orders, an agreement made otherwise may not) would let the provider "close" any order
id it invents, and have the consumer sign, anchor and send a receipt for each (300 invented
closures were 300 receipts for orders never held). Under such an agreement a closure
binds only while something of its order is held here (its data key is live): the
closure is kept (data of the order received after it, before its deadline, is still
deleted on time), but one that reaches its deadline with nothing held lapses without
a receipt, an anchor or a message, in the sweep and in a purge alike. Those kept with
nothing held are at most `MAX_UNHELD_CLOSURES` per agreement at a time (a closure a
peer reports beyond that is refused, `NotificationQuotaError`), and lapsed ones are
dropped as new ones arrive, so an invented closure costs one bounded row, for a
while, and nothing signed. (The provider, not knowing what the consumer held, sees
such a duty of an order the consumer never received go unanswered.)

A closure dates a deadline, so the consumer's runtime checks the provider's date
before it is recorded (`node.runtime.contracts_notices`); the provider dates each
consumer's closure no earlier than the latest of that consumer's agreements concerned
was signed (`close_order`): an order closed before an agreement was made starts that
agreement's retention at its signing, the agreed retention is never cut short.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Engine,
    Row,
    String,
    Table,
    and_,
    delete,
    false,
    func,
    literal,
    or_,
    select,
)
from sqlmodel.sql.sqltypes import UTCDateTime

from qdspace.connector.agreement import SignedReceipt
from qdspace.connector.contract_errors import (
    ContractDenied,
    ContractStoreError,
    NotificationQuotaError,
)
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
from qdspace.policies.model import Policy
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
#: How many closures of orders nothing is held of one agreement with an open order scope
#: may have kept here at a time (see the module's docstring)
MAX_UNHELD_CLOSURES = 10_000
#: an order id no order has (ids are printable): a scope that admits it admits orders
#: it does not name
_UNNAMED_ORDER = "\x00"


def open_order_scope(policy: Policy) -> bool:
    """Whether an agreement's order scope admits orders it does not name (it names none,
    or every order but some): under it a provider may close any order id at all."""
    return order_in_scope(policy, _UNNAMED_ORDER)


def held(agreement_id: ColumnElement[str], order_id: ColumnElement[str]) -> ColumnElement[bool]:
    """An SQL condition: something of (agreement, order) is held here. Its data key is
    live from the first row received (rows are stored encrypted under it) until the
    deletion that erases them destroys it (`data_keys`)."""
    keys = data_key_table.c
    return (
        select(keys.agreement_id)
        .where(
            keys.agreement_id == agreement_id,
            keys.order_id == order_id,
            keys.wrapped_key.is_not(None),
        )
        .exists()
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
        self,
        agreement_id: str,
        order_id: str,
        closed_at: datetime,
        *,
        now: datetime | None = None,
    ) -> OrderClosure:
        """Record that the provider closed `order_id` (idempotent: the first time stands).

        ``now`` marks a closure a peer reported (the consumer's side): under an agreement
        with an open order scope, one of an order nothing is held of is kept only within
        `MAX_UNHELD_CLOSURES` (those lapsed by ``now`` are dropped first), else refused."""
        with self.engine.begin() as connection:
            stored = self._agreements.agreement_in(connection, agreement_id)
            policy = stored.signed.agreement.policy
            duty = deletion_duty(policy, closed_at, order_id)
            deadline = None if duty is None else duty.deadline
            if now is not None and open_order_scope(policy):
                self._make_room(connection, agreement_id, order_id, now)
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

    def _make_room(
        self, connection: Connection, agreement_id: str, order_id: str, now: datetime
    ) -> None:
        """Refuse a new closure of an order nothing is held of under `agreement_id` when
        `MAX_UNHELD_CLOSURES` such are kept; those lapsed (past their deadline, or with
        no duty at all, and unanswered) go first: they bind nothing any more."""
        c = closure_table.c
        mine = c.agreement_id == agreement_id
        this = and_(mine, c.order_id == order_id)
        if connection.execute(select(func.count()).where(this)).scalar_one():
            return  # recorded before: a repeat takes no room
        if connection.execute(select(held(literal(agreement_id), literal(order_id)))).scalar():
            return  # something of the order is held: the closure binds
        unheld = and_(
            mine, ~held(c.agreement_id, c.order_id), ~receipted(c.agreement_id, c.order_id)
        )
        lapsed = or_(c.deadline.is_(None), c.deadline <= now)
        connection.execute(delete(closure_table).where(unheld, lapsed))
        kept = connection.execute(select(func.count()).where(unheld)).scalar_one()
        if kept >= MAX_UNHELD_CLOSURES:
            raise NotificationQuotaError(
                f"agreement {agreement_id} already has {kept} closures of orders nothing "
                f"is held of kept here (limit {MAX_UNHELD_CLOSURES})"
            )

    def _binding(self, connection: Connection, rows: Sequence[Row[Any]]) -> list[Row[Any]]:
        """The closures among `rows` (each with its ``held`` flag) that bind: something of
        the order is held, or the agreement names its orders (the module's docstring)."""
        scope_open: dict[str, bool] = {}
        found = []
        for row in rows:
            if not row.held and row.agreement_id not in scope_open:
                stored = self._agreements.agreement_in(connection, row.agreement_id)
                scope_open[row.agreement_id] = open_order_scope(stored.signed.agreement.policy)
            if row.held or not scope_open[row.agreement_id]:
                found.append(row)
        return found

    def close_order(self, provider_id: str, order_id: str, closed_at: datetime) -> list[str]:
        """Provider side: record the closure for every agreement it gave whose scope covers
        the order; returns those agreement ids (their consumers must be told).

        Each consumer's closures are dated `closed_at`, or the signing of the latest of its
        agreements concerned where that is later (one date, so one message tells it, and
        within what it accepts: the module's docstring)."""
        concerned = [
            stored.signed.agreement
            for stored in self._agreements.concerning_order(provider_id, order_id)
            if order_in_scope(stored.signed.agreement.policy, order_id)
        ]
        dated: dict[str, datetime] = {}
        for terms in concerned:
            dated[terms.consumer_id] = max(dated.get(terms.consumer_id, closed_at), terms.agreed_at)
        for terms in concerned:
            self.record_order_closed(terms.agreement_id, order_id, dated[terms.consumer_id])
        return [terms.agreement_id for terms in concerned]

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
        """Consumer side: closures past their deadline that have no receipt yet and bind
        (a lapsed one, of an order nothing is held of under an agreement with an open
        order scope, is left out: nothing to delete, no receipt to sign)."""
        table = closure_table
        statement = (
            select(table, held(table.c.agreement_id, table.c.order_id).label("held"))
            .where(
                held_as(table.c.agreement_id, Role.CONSUMER),
                table.c.deadline.is_not(None),
                table.c.deadline <= now,
                ~receipted(table.c.agreement_id, table.c.order_id),
            )
            .order_by(table.c.deadline, table.c.agreement_id, table.c.order_id)
        )
        with self.engine.connect() as connection:
            rows = self._binding(connection, connection.execute(statement).all())
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
            closed = select(
                closures.c.agreement_id,
                closures.c.order_id,
                held(closures.c.agreement_id, closures.c.order_id).label("held"),
            ).where(held_as(closures.c.agreement_id, consumer))
            for r in self._binding(connection, connection.execute(closed).all()):
                facts.append(Holding(r.agreement_id, r.order_id, closed=True))
            # the duties answered, from the receipts' columns (none of them parsed)
            answered = select(receipt_table.c.agreement_id, receipt_table.c.order_id)
            for r in connection.execute(answered):
                facts.append(Holding(r[0], r[1], receipted=True))
        return facts
