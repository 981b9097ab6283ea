"""The deletion duties of the agreements a provider gave, read in SQL a page at a time.

A duty is not stored: it is one agreement given with a delete duty and one of its orders
(`closures` explains the derivation). A provider holds one agreement per order and
partner, thousands a year, so the duties were built in Python for every agreement, with
every receipt parsed to match them, on each look at the contracts page (136 ms at 10,000
agreements, and growing with them), to show 50. Everything a duty's status needs is in
columns (the agreement's `retention_days`, the closure's `deadline`, the receipt's
`deleted_at`), so the status is an SQL expression: the store counts duties per status and
reads one page in the order someone should look at them (`ATTENTION_ORDER`, nearest
deadline first) without building the others. Only the page's receipts are parsed.

The duties, as before: per agreement given with a delete duty, one per closed order, one
per order a receipt answered before it closed (a consumer leaving the data space), and
one PENDING duty with no order when neither exists yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    case,
    func,
    literal,
    null,
    select,
    union_all,
)
from sqlmodel.sql.sqltypes import UTCDateTime

from qdspace.connector.agreement import DeletionReceipt, receipt_from_bytes
from qdspace.connector.contract_store.agreements import agreement_table
from qdspace.connector.contract_store.closures import closure_table
from qdspace.connector.contract_store.common import TableStore, listing, plain_rows
from qdspace.connector.contract_store.receipts import receipt_table
from qdspace.connector.negotiation import Role
from qdspace.policies.retention import ATTENTION_ORDER, DeletionDuty, DutyStatus


@dataclass(frozen=True)
class DutyReport:
    """A provider's view of one deletion duty, with the verified receipt if any."""

    duty: DeletionDuty
    status: DutyStatus
    receipt: DeletionReceipt | None


class DutyView(TableStore):
    """Read the deletion duties (provider side): counted by status, or a page of them."""

    def deletion_duties(
        self,
        now: datetime,
        *,
        limit: int | None = None,
        offset: int = 0,
        attention_first: bool = False,
        status: DutyStatus | None = None,
    ) -> list[DutyReport]:
        """The duties with their status at ``now``: in the order the agreements were made
        (then by order id), or ``attention_first`` (overdue, due, each by deadline, then
        pending, fulfilled late, fulfilled); only those in ``status`` when given;
        ``limit`` from ``offset`` (None: all)."""
        duties = self._duties(now).subquery()
        d = duties.c
        # the columns a report is made of (each time read is parsed: not the ordering's)
        statement = select(
            d.agreement_id,
            d.provider_id,
            d.consumer_id,
            d.retention_days,
            d.receipt_required,
            d.order_id,
            d.closed_at,
            d.receipt,
            d.status,
        )
        if status is not None:
            statement = statement.where(d.status == status.value)
        order: tuple[ColumnElement[Any], ...] = (d.agreed_at, d.agreement_id, d.order_id)
        if attention_first:
            rank = case(
                *((d.status == s.value, i) for i, s in enumerate(ATTENTION_ORDER)),
                else_=len(ATTENTION_ORDER),
            )
            order = (rank, d.deadline.is_(None), d.deadline, *order)
        statement = listing(statement, order, limit=limit, offset=offset)
        with self.engine.connect() as connection:
            rows = plain_rows(connection.execute(statement))
        return [
            DutyReport(
                DeletionDuty(
                    agreement_id=r.agreement_id,
                    provider_id=r.provider_id,
                    consumer_id=r.consumer_id,
                    retention_days=int(r.retention_days),
                    receipt_required=bool(r.receipt_required),
                    order_closed_at=r.closed_at,
                    order_id=r.order_id,
                ),
                DutyStatus(r.status),
                None if r.receipt is None else receipt_from_bytes(bytes(r.receipt)),
            )
            for r in rows
        ]

    def count_duties(self, now: datetime) -> dict[DutyStatus, int]:
        """How many duties stand in each status at ``now`` (every status, zero or not)."""
        duties = self._duties(now).subquery()
        statement = select(duties.c.status, func.count()).group_by(duties.c.status)
        with self.engine.connect() as connection:
            found = {DutyStatus(s): int(n) for s, n in connection.execute(statement)}
        return {s: found.get(s, 0) for s in ATTENTION_ORDER}

    def _duties(self, now: datetime) -> Select[Any]:
        """One row per duty: the agreement's terms, the order, its closure and deadline,
        the receipt answering it, and the status at ``now``."""
        a, c, r = agreement_table.c, closure_table.c, receipt_table.c
        # the orders of a duty: those closed, and those answered before they closed
        closed = select(c.agreement_id, c.order_id, c.closed_at.label("closed_at"), c.deadline)
        unclosed = select(
            r.agreement_id,
            r.order_id,
            null().cast(UTCDateTime()).label("closed_at"),
            null().cast(UTCDateTime()).label("deadline"),
        ).where(
            ~select(c.agreement_id)
            .where(c.agreement_id == r.agreement_id, c.order_id == r.order_id)
            .exists()
        )
        orders = union_all(closed, unclosed).subquery()
        o = orders.c
        order_id = func.coalesce(o.order_id, literal(""))
        answer = receipt_table.alias("answer")
        deleted = answer.c.deleted_at
        status = _status(deleted, o.deadline, now)
        return (
            select(
                a.agreement_id,
                a.provider_id,
                a.consumer_id,
                a.retention_days,
                a.receipt_required,
                a.agreed_at,
                order_id.label("order_id"),
                o.closed_at,
                o.deadline,
                answer.c.canonical.label("receipt"),
                status.label("status"),
            )
            .select_from(
                agreement_table.outerjoin(orders, o.agreement_id == a.agreement_id).outerjoin(
                    answer,
                    and_(answer.c.agreement_id == a.agreement_id, answer.c.order_id == order_id),
                )
            )
            .where(a.role == Role.PROVIDER.value, a.retention_days.is_not(None))
        )


def _status(
    deleted_at: ColumnElement[Any], deadline: ColumnElement[Any], now: datetime
) -> ColumnElement[str]:
    """`policies.retention.duty_status` as an SQL expression (a test keeps them alike)."""
    return case(
        (
            and_(deleted_at.is_not(None), deadline.is_not(None), deleted_at > deadline),
            DutyStatus.FULFILLED_LATE.value,
        ),
        (deleted_at.is_not(None), DutyStatus.FULFILLED.value),
        (deadline.is_(None), DutyStatus.PENDING.value),
        (deadline <= now, DutyStatus.OVERDUE.value),
        else_=DutyStatus.DUE.value,
    )
