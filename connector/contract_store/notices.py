"""Notices peers sent us: SPC quality alerts and investigations.

A customer watching our live inspection stream under an agreement (`connector.spc`)
sends us a quality alert when it sees our process drift; a member that opens a
quality investigation with us (a traced batch, a defect) sends it too. They arrive as
notifications, which the sender retries until we acknowledge, so the same notice may
arrive more than once.

Why separate: these are the only rows written on a peer's initiative with no
agreement process behind them to bound them (a notice names its agreement and order,
but nothing here is derived from them), so they need their own guard against a
member filling the database.

Invariants (keep-once within a bound): a notice is kept once per (sender, id): a
retried notification (the same content again) is recognised and reported as not new;
the same id with other content is refused (`MessageReplayError`, nothing stored), not
acknowledged as a retry: that would tell the sender its change was delivered while we
kept the old one. Ids are the sender's, so two senders' ids never collide. Each sender
may keep at most `MAX_RECEIVED_PER_SENDER` notices of each kind here; past it, a new
one is refused (`NotificationQuotaError`) instead of stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Column, String, Table, Text, func, select
from sqlmodel.sql.sqltypes import UTCDateTime

from qdspace.connector.contract_errors import MessageReplayError, NotificationQuotaError
from qdspace.connector.contract_store.common import (
    CONTRACT_METADATA,
    ID_LENGTH,
    TableStore,
    count_rows,
    listing,
)
from qdspace.connector.spc import Investigation, QualityAlert, SpcAlert, SpcPoint
from qdspace.policies.canonical import format_datetime, parse_datetime


def alert_columns() -> list[Column[Any]]:
    """The columns an SPC alert is kept in besides its id (`alert_values`): here, and
    where a consumer keeps those its own subscriptions raised
    (`connector.contract_store.subscriptions`)."""
    return [
        Column("agreement_id", String(ID_LENGTH), nullable=False),
        Column("order_id", String(ID_LENGTH), nullable=False),
        Column("station", String(ID_LENGTH), nullable=False),
        Column("characteristic", String(ID_LENGTH), nullable=False),
        Column("rule", String(16), nullable=False),
        Column("description", Text, nullable=False),
        Column("points_json", Text, nullable=False),
        Column("alert_at", UTCDateTime(), nullable=False),
    ]


alert_table = Table(
    "contract_quality_alert",
    CONTRACT_METADATA,
    Column("sender_id", String(ID_LENGTH), primary_key=True),
    Column("alert_id", String(ID_LENGTH), primary_key=True),
    *alert_columns(),
    Column("received_at", UTCDateTime(), nullable=False, index=True),
)
investigation_table = Table(
    "contract_investigation",
    CONTRACT_METADATA,
    Column("sender_id", String(ID_LENGTH), primary_key=True),
    Column("investigation_id", String(ID_LENGTH), primary_key=True),
    Column("subject", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("batch_id", String(ID_LENGTH), nullable=False),
    Column("order_id", String(ID_LENGTH), nullable=False),
    Column("status", String(16), nullable=False),
    Column("received_at", UTCDateTime(), nullable=False, index=True),
)
#: What one peer may have kept here of each kind of notice (alerts, investigations):
#: a member flooding us is refused past it instead of filling the database.
MAX_RECEIVED_PER_SENDER = 10_000


def alert_values(notice: QualityAlert) -> dict[str, Any]:
    """An SPC alert's id and `alert_columns` values."""
    alert = notice.alert
    points = [
        {"index": p.index, "value": p.value, "at": format_datetime(p.at)} for p in alert.points
    ]
    return {
        "alert_id": notice.alert_id,
        "agreement_id": notice.agreement_id,
        "order_id": notice.order_id,
        "station": notice.station,
        "characteristic": notice.characteristic,
        "rule": alert.rule,
        "description": alert.description,
        "points_json": json.dumps(points),
        "alert_at": alert.at,
    }


def alert_of(row: Any) -> QualityAlert:
    """The alert a row of `alert_values` columns keeps."""
    points = tuple(
        SpcPoint(p["index"], p["value"], parse_datetime(p["at"]))
        for p in json.loads(row.points_json)
    )
    return QualityAlert(
        alert_id=row.alert_id,
        alert=SpcAlert(row.rule, row.description, points, row.alert_at),
        agreement_id=row.agreement_id,
        order_id=row.order_id,
        station=row.station,
        characteristic=row.characteristic,
    )


@dataclass(frozen=True)
class ReceivedAlert:
    """An SPC alert a peer sent us, with the member that sent it (its TLS identity)."""

    sender_id: str
    alert: QualityAlert


def _same_content(row: Any, content: dict[str, Any], what: str, sender_id: str) -> None:
    """Refuse a notice whose id `row` was kept under with other content: the sender
    must not read our answer as "delivered" while its change is dropped. The message
    names neither the kept content nor the new (the sender knows what it sent)."""
    if any(getattr(row, name) != value for name, value in content.items()):
        raise MessageReplayError(
            f"{what} from {sender_id} was received before with other content; "
            "a changed notice needs a new id"
        )


class NoticeStore(TableStore):
    """Keep the alerts and investigations peers send, once each, within a bound."""

    def _keep_once(
        self, table: Table, sender_id: str, same: Any, values: dict[str, Any], what: str
    ) -> bool:
        """Insert one entry a peer sent, unless kept before (`same` names it among the
        sender's): then False if it was kept with the same content (a retry), else
        `MessageReplayError` (`what` names it). Each sender may keep at most
        `MAX_RECEIVED_PER_SENDER` in `table`."""
        mine = table.c.sender_id == sender_id
        content = {k: v for k, v in values.items() if k != "received_at"}
        held = select(*(table.c[k] for k in content)).where(mine, same)
        with self.engine.begin() as connection:
            before = connection.execute(held).first()
            if before is not None:
                _same_content(before, content, what, sender_id)
                return False
            count = connection.execute(select(func.count()).where(mine)).scalar_one()
            if count >= MAX_RECEIVED_PER_SENDER:
                raise NotificationQuotaError(
                    f"{sender_id} already has {count} {table.name} entries kept here "
                    f"(limit {MAX_RECEIVED_PER_SENDER})"
                )
            kept = connection.execute(
                self._upsert(table)
                .values(sender_id=sender_id, **values)
                .on_conflict_do_nothing()
                .returning(table.c.sender_id)  # (rowcount is not reliable on every driver)
            ).first()
            if kept is None:  # another process kept it since we looked: theirs stands
                _same_content(connection.execute(held).one(), content, what, sender_id)
                return False
        return True

    def record_alert(self, sender_id: str, notice: QualityAlert, at: datetime) -> bool:
        """Keep an SPC alert a peer sent us; False when it was kept before (a retry),
        `MessageReplayError` when its id was kept before with other content."""
        return self._keep_once(
            alert_table,
            sender_id,
            alert_table.c.alert_id == notice.alert_id,
            {**alert_values(notice), "received_at": at},
            f"quality alert {notice.alert_id}",
        )

    def record_investigation(self, sender_id: str, case: Investigation, at: datetime) -> bool:
        """Keep an investigation a peer opened with us; False when kept before (a retry),
        `MessageReplayError` when its id was kept before with other content."""
        table = investigation_table
        return self._keep_once(
            table,
            sender_id,
            table.c.investigation_id == case.investigation_id,
            {
                "investigation_id": case.investigation_id,
                "subject": case.subject,
                "description": case.description,
                "batch_id": case.batch_id,
                "order_id": case.order_id,
                "status": case.status,
                "received_at": at,
            },
            f"investigation {case.investigation_id}",
        )

    def received_alerts(
        self, sender_id: str | None = None, *, limit: int | None = None, newest_first: bool = False
    ) -> list[QualityAlert]:
        """The SPC alerts peers sent us (of one sender), in the order they arrived
        (``newest_first``: the other way), ``limit`` of them (None: all). Each peer may
        keep 10,000 here (`MAX_RECEIVED_PER_SENDER`) and a page that shows the newest
        few reads those only (the newest 20 and `count_received_alerts`: reading all
        10,000 of one peer took ~0.5 s)."""
        found = self.received_alerts_with_senders(sender_id, limit=limit, newest_first=newest_first)
        return [r.alert for r in found]

    def received_alerts_with_senders(
        self, sender_id: str | None = None, *, limit: int | None = None, newest_first: bool = False
    ) -> list[ReceivedAlert]:
        """`received_alerts`, each with the member that sent it: what an operator is shown
        (an alert says whose process drifted in whose eyes)."""
        table = alert_table
        statement = select(table)
        if sender_id is not None:
            statement = statement.where(table.c.sender_id == sender_id)
        order = (table.c.received_at, table.c.sender_id, table.c.alert_id)
        statement = listing(statement, order, limit=limit, newest_first=newest_first)
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        return [ReceivedAlert(row.sender_id, alert_of(row)) for row in rows]

    def count_received_alerts(self) -> int:
        """How many SPC alerts peers sent us are kept here."""
        return count_rows(self.engine, alert_table)

    def received_investigations(self, sender_id: str | None = None) -> list[Investigation]:
        """The investigations peers opened with us (of one sender), in the order they came."""
        table = investigation_table
        statement = select(table).order_by(table.c.received_at, table.c.investigation_id)
        if sender_id is not None:
            statement = statement.where(table.c.sender_id == sender_id)
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        return [
            Investigation(
                row.investigation_id,
                row.subject,
                row.description,
                row.batch_id,
                row.order_id,
                row.status,
            )
            for row in rows
        ]
