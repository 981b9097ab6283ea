"""The outbox: protocol messages waiting to be sent to peers.

A node never sends a protocol message from inside a state change. The message is
queued here in the same transaction that saves the state it answers (a negotiation's
reply, a transfer's acknowledgement, a deletion receipt), and a sender drains the
queue afterwards, retrying with back-off. So a crash can neither lose a reply whose
state change committed nor send one whose state change rolled back (the
transactional-outbox pattern).

Why separate: every message-producing aggregate writes here, and nothing here
depends on them; the sender only needs this module.

Invariants: a message is queued once per (peer, message id): queueing it again (a
handler retried after a crash or a concurrent update) is ignored, so the peer is not
sent a second copy. Messages go out oldest first; a failure records its error (cut to
2,000 characters) and when to try again, and every attempt is counted.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Integer,
    LargeBinary,
    Select,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    func,
    select,
    update,
)
from sqlmodel.sql.sqltypes import UTCDateTime

from qdspace.connector.contract_store.common import CONTRACT_METADATA, ID_LENGTH, TableStore

outbox_table = Table(
    "contract_outbox",
    CONTRACT_METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("peer_id", String(ID_LENGTH), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("process_id", String(ID_LENGTH), nullable=False),
    Column("message_id", String(ID_LENGTH), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("next_attempt_at", UTCDateTime(), nullable=False, index=True),
    Column("attempts", Integer, nullable=False),
    Column("sent_at", UTCDateTime(), nullable=True),
    Column("last_error", Text, nullable=True),
    UniqueConstraint("peer_id", "message_id", name="uq_contract_outbox_message"),
)


@functools.cache
def _due_statement(limit: int, excluding: bool) -> Select[Any]:
    """The dispatcher's poll (twice a second on every node, busy or idle), built once per
    limit: its cache key is memoised and only ``now`` (and the peers left out, when
    `excluding`) is bound per call; building it per call cost SQLAlchemy more than the
    query (bench/PROFILE-negotiation.md, round 4)."""
    table = outbox_table
    statement = select(table).where(
        table.c.sent_at.is_(None), table.c.next_attempt_at <= bindparam("now")
    )
    if excluding:
        statement = statement.where(table.c.peer_id.not_in(bindparam("busy", expanding=True)))
    return statement.order_by(table.c.id).limit(limit)


@dataclass(frozen=True)
class OutboxMessage:
    """A protocol message to send to `peer_id`; `payload` is the node's wire encoding."""

    peer_id: str
    kind: str
    process_id: str
    message_id: str
    payload: bytes


@dataclass(frozen=True)
class PendingMessage:
    id: int
    message: OutboxMessage
    attempts: int
    created_at: datetime
    last_error: str | None


@dataclass(frozen=True)
class PeerBacklog:
    """What the outbox owes one peer: its undelivered messages, the oldest queued, the
    next attempt due, the most attempts any of them took and the last error recorded."""

    peer_id: str
    undelivered: int
    oldest_queued_at: datetime
    next_attempt_at: datetime
    attempts: int
    last_error: str | None


class OutboxStore(TableStore):
    """Queue, list due, and mark sent or failed."""

    _enqueue: Any = None

    def enqueue_in(
        self, connection: Connection, messages: Iterable[OutboxMessage], at: datetime
    ) -> None:
        """`enqueue` within the caller's transaction."""
        rows = [
            {
                "peer_id": m.peer_id,
                "kind": m.kind,
                "process_id": m.process_id,
                "message_id": m.message_id,
                "payload": m.payload,
                "created_at": at,
                "next_attempt_at": at,
                "attempts": 0,
            }
            for m in messages
        ]
        if rows:
            if self._enqueue is None:  # built once per store (the dialect's INSERT)
                self._enqueue = self._upsert(outbox_table).on_conflict_do_nothing(
                    index_elements=["peer_id", "message_id"]
                )
            connection.execute(self._enqueue, rows)

    def enqueue(self, messages: Iterable[OutboxMessage], at: datetime) -> None:
        """Queue messages (a message id already queued for that peer is ignored)."""
        with self.engine.begin() as connection:
            self.enqueue_in(connection, messages, at)

    def due_messages(
        self, now: datetime, limit: int = 100, exclude: frozenset[str] = frozenset()
    ) -> list[PendingMessage]:
        """Unsent messages whose next attempt is due, oldest first (none for the peers in
        `exclude`)."""
        params: dict[str, Any] = {"now": now}
        if exclude:
            params["busy"] = sorted(exclude)
        with self.engine.connect() as connection:
            rows = connection.execute(_due_statement(limit, bool(exclude)), params).all()
        return [
            PendingMessage(
                id=row.id,
                message=OutboxMessage(
                    row.peer_id, row.kind, row.process_id, row.message_id, bytes(row.payload)
                ),
                attempts=row.attempts,
                created_at=row.created_at,
                last_error=row.last_error,
            )
            for row in rows
        ]

    def backlog(self) -> int:
        """How many messages wait to be delivered (due now or later)."""
        statement = select(func.count()).where(outbox_table.c.sent_at.is_(None))
        with self.engine.connect() as connection:
            return int(connection.execute(statement).scalar_one())

    def owed(self) -> list[PeerBacklog]:
        """The undelivered messages by peer (the peer owed the most first): two
        statements, the counts grouped, then each peer's error of the message tried last
        (its next attempt the latest: a failure moves it on by the backoff)."""
        table = outbox_table
        unsent = table.c.sent_at.is_(None)
        grouped = (
            select(
                table.c.peer_id,
                func.count(),
                func.min(table.c.created_at),
                func.min(table.c.next_attempt_at),
                func.max(table.c.attempts),
            )
            .where(unsent)
            .group_by(table.c.peer_id)
        )
        errors = (
            select(table.c.peer_id, table.c.last_error)
            .where(unsent, table.c.last_error.is_not(None))
            .order_by(table.c.next_attempt_at)
        )
        with self.engine.connect() as connection:
            counts = connection.execute(grouped).all()
            last = {row.peer_id: row.last_error for row in connection.execute(errors)}
        owed = [
            PeerBacklog(peer, n, oldest, due, attempts, last.get(peer))
            for peer, n, oldest, due, attempts in counts
        ]
        return sorted(owed, key=lambda b: (-b.undelivered, b.peer_id))

    def mark_sent(self, message_id: int, at: datetime) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(outbox_table)
                .where(outbox_table.c.id == message_id)
                .values(sent_at=at, attempts=outbox_table.c.attempts + 1)
            )

    def mark_failed(self, message_id: int, error: str, retry_at: datetime) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(outbox_table)
                .where(outbox_table.c.id == message_id)
                .values(
                    last_error=error[:2000],
                    next_attempt_at=retry_at,
                    attempts=outbox_table.c.attempts + 1,
                )
            )
