"""The live subscriptions a consumer holds, kept so that they outlive a stream and a restart.

Why a store: a subscription to a supplier's live inspections is meant to run for months,
watched by SPC, and it lived in memory only. A provider that restarted (an upgrade, a
crash) ended the stream, and the consumer's monitoring stopped for good without anyone
asking it to; a consumer that restarted forgot every subscription. A subscription is now
recorded once its provider opened the stream, with what it needs to resume: the agreement
and provider, the purpose and characteristic, the SPC spec it was asked with, the
provider's stream position when it opened (``since``: the stream resumes after it, or
after the last row stored from it, whichever is later, so the rows stored while either
side was down arrive in order and none twice), and the baseline its monitor established
(``centre``, ``sigma``: a resumed monitor judges with the same limits instead of taking a
new baseline from whatever arrives first after the restart). The alerts its monitor
raises are kept with it (`raised_alerts`), each in the transaction that queues its notice
to the provider, at most `MAX_RAISED_PER_SUBSCRIPTION` of them. It ends once, with the
reason: the operator ended it, its agreement was purged, or the provider refused it
(an agreement ended or expired); an ended subscription is never resumed.

Invariants: one row per subscription id, and per raised alert id; ``since``, ``centre``
and ``sigma`` are set at most once; ``ended_at`` and ``end_reason`` are set once,
together, and never cleared.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import Column, Engine, Float, Index, String, Table, Text, func, select, update
from sqlmodel.sql.sqltypes import UTCDateTime

from qdspace.connector.contract_store.common import (
    CONTRACT_METADATA,
    ID_LENGTH,
    TableStore,
    count_rows,
    listing,
)
from qdspace.connector.contract_store.notices import alert_columns, alert_of, alert_values
from qdspace.connector.contract_store.outbox import OutboxMessage, OutboxStore
from qdspace.connector.spc import QualityAlert, SpcSpec

#: the longest position a provider may name (a 64-bit cursor's digits)
POSITION_LENGTH = 32
#: the longest reason kept for a subscription's end
REASON_LENGTH = 1000

subscription_table = Table(
    "contract_subscription",
    CONTRACT_METADATA,
    Column("subscription_id", String(ID_LENGTH), primary_key=True),
    Column("agreement_id", String(ID_LENGTH), nullable=False),
    Column("provider", String(ID_LENGTH), nullable=False),
    Column("purpose", String(ID_LENGTH), nullable=False),
    Column("characteristic", String(ID_LENGTH), nullable=False),
    Column("spec_json", Text, nullable=False),
    Column("since", String(POSITION_LENGTH), nullable=True),
    Column("centre", Float, nullable=True),
    Column("sigma", Float, nullable=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("ended_at", UTCDateTime(), nullable=True),
    Column("end_reason", Text, nullable=True),
)

#: the SPC alerts this node's subscriptions raised (each also sent to the provider): the
#: consumer's own record of them, read newest first a page at a time
raised_alert_table = Table(
    "contract_raised_alert",
    CONTRACT_METADATA,
    Column("alert_id", String(ID_LENGTH), primary_key=True),
    Column("subscription_id", String(ID_LENGTH), nullable=False, index=True),
    *alert_columns(),
    Column("raised_at", UTCDateTime(), nullable=False),
    Index("ix_contract_raised_alert_listing", "raised_at", "alert_id"),
)
#: the most alerts one subscription keeps and sends: a provider's values can be made to
#: raise one per row (each beyond 3 sigma), and the provider keeps 10,000 of a sender's
#: (`notices.MAX_RECEIVED_PER_SENDER`); past it an alert is counted and logged only
MAX_RAISED_PER_SUBSCRIPTION = 10_000


def spec_json(spec: SpcSpec) -> str:
    return json.dumps(
        {
            "lsl": spec.lsl,
            "usl": spec.usl,
            "centre": spec.centre,
            "sigma": spec.sigma,
            "baseline_size": spec.baseline_size,
            "cpk_window": spec.cpk_window,
            "cpk_threshold": spec.cpk_threshold,
        },
        sort_keys=True,
    )


def spec_from_json(text: str) -> SpcSpec:
    data: dict[str, Any] = json.loads(text)
    return SpcSpec(**data)


@dataclass(frozen=True)
class StoredSubscription:
    """A subscription as recorded (see the module docstring)."""

    subscription_id: str
    agreement_id: str
    provider: str
    purpose: str
    characteristic: str
    spec: SpcSpec
    created_at: datetime
    since: str | None = None
    centre: float | None = None
    sigma: float | None = None
    ended_at: datetime | None = None
    end_reason: str | None = None

    @property
    def active(self) -> bool:
        return self.ended_at is None


class SubscriptionStore(TableStore):
    """Record, resume and end a consumer's live subscriptions, and keep their alerts."""

    def __init__(self, engine: Engine, outbox: OutboxStore) -> None:
        super().__init__(engine)
        self._outbox = outbox

    def add(self, sub: StoredSubscription) -> None:
        """Record a subscription whose provider opened the stream (once; a repeat is kept)."""
        with self.engine.begin() as connection:
            connection.execute(
                self._upsert(subscription_table)
                .values(
                    subscription_id=sub.subscription_id,
                    agreement_id=sub.agreement_id,
                    provider=sub.provider,
                    purpose=sub.purpose,
                    characteristic=sub.characteristic,
                    spec_json=spec_json(sub.spec),
                    since=sub.since,
                    centre=sub.centre,
                    sigma=sub.sigma,
                    created_at=sub.created_at,
                )
                .on_conflict_do_nothing(index_elements=["subscription_id"])
            )

    def set_baseline(self, subscription_id: str, centre: float, sigma: float) -> None:
        """The centre and sigma its monitor established (kept from the first time)."""
        table = subscription_table
        with self.engine.begin() as connection:
            connection.execute(
                update(table)
                .where(table.c.subscription_id == subscription_id, table.c.centre.is_(None))
                .values(centre=centre, sigma=sigma)
            )

    def end(self, subscription_id: str, at: datetime, reason: str) -> bool:
        """End it with `reason`; False when it was ended before (the first reason stays)."""
        table = subscription_table
        with self.engine.begin() as connection:
            done = connection.execute(
                update(table)
                .where(table.c.subscription_id == subscription_id, table.c.ended_at.is_(None))
                .values(ended_at=at, end_reason=reason[:REASON_LENGTH])
            )
        return bool(done.rowcount)

    def find(self, subscription_id: str) -> StoredSubscription | None:
        table = subscription_table
        with self.engine.connect() as connection:
            row = connection.execute(
                select(table).where(table.c.subscription_id == subscription_id)
            ).first()
        return None if row is None else _stored(row)

    def active(self) -> list[StoredSubscription]:
        """The subscriptions not ended, oldest first (what a restarted node resumes)."""
        table = subscription_table
        query = (
            select(table)
            .where(table.c.ended_at.is_(None))
            .order_by(table.c.created_at, table.c.subscription_id)
        )
        with self.engine.connect() as connection:
            return [_stored(row) for row in connection.execute(query)]

    def record_alert(
        self,
        subscription_id: str,
        notice: QualityAlert,
        at: datetime,
        outbox: Iterable[OutboxMessage] = (),
    ) -> Literal["kept", "repeat", "full"]:
        """Keep an alert the subscription raised and queue `outbox` (its notice to the
        provider) in one transaction: ``kept``; ``repeat`` when kept before, ``full`` when
        the subscription keeps `MAX_RAISED_PER_SUBSCRIPTION` already (nothing is queued)."""
        table = raised_alert_table
        with self.engine.begin() as connection:
            held = connection.execute(
                select(func.count()).where(table.c.subscription_id == subscription_id)
            ).scalar_one()
            if held >= MAX_RAISED_PER_SUBSCRIPTION:
                return "full"
            kept = connection.execute(
                self._upsert(table)
                .values(subscription_id=subscription_id, raised_at=at, **alert_values(notice))
                .on_conflict_do_nothing(index_elements=["alert_id"])
                .returning(table.c.alert_id)  # (rowcount is not reliable on every driver)
            ).first()
            if kept is None:
                return "repeat"
            self._outbox.enqueue_in(connection, outbox, at)
        return "kept"

    def raised_alerts(
        self,
        subscription_id: str | None = None,
        *,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[QualityAlert]:
        """The alerts this node's subscriptions (or one) raised, in the order raised
        (``newest_first``: the other way), ``limit`` of them (None: all)."""
        table = raised_alert_table
        statement = select(table)
        if subscription_id is not None:
            statement = statement.where(table.c.subscription_id == subscription_id)
        order = (table.c.raised_at, table.c.alert_id)
        statement = listing(statement, order, limit=limit, newest_first=newest_first)
        with self.engine.connect() as connection:
            return [alert_of(row) for row in connection.execute(statement)]

    def count_raised_alerts(self, subscription_id: str | None = None) -> int:
        table = raised_alert_table
        where = [] if subscription_id is None else [table.c.subscription_id == subscription_id]
        return count_rows(self.engine, table, *where)


def _stored(row: Any) -> StoredSubscription:
    return StoredSubscription(
        subscription_id=row.subscription_id,
        agreement_id=row.agreement_id,
        provider=row.provider,
        purpose=row.purpose,
        characteristic=row.characteristic,
        spec=spec_from_json(row.spec_json),
        created_at=row.created_at,
        since=row.since,
        centre=row.centre,
        sigma=row.sigma,
        ended_at=row.ended_at,
        end_reason=row.end_reason,
    )
