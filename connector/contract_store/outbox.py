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
sent a second copy. Messages go out oldest first, and a process's messages to a peer in
the order they were queued: one is not due while an earlier one of the same process and
peer is still owed (failed and waiting for its retry; once set aside it holds nothing
back). A failure records its error (cut to 2,000 characters) and when to try again, and
every attempt is counted.

A peer that cannot be reached is tried until it can. A peer that answers and refuses
the message (`mark_failed` with ``refused``) is tried again too, since some refusals
pass (its directory has not caught up with us yet), but refusals in a row are counted,
and the caller sets a message aside once they reach its limit (`set_aside`): kept, with
its last error, no longer due, listed apart in `owed` (``refused``), and queued again
only when the operator asks (`retry_refused`).

A delivered message is kept for a while (`prune_sent`, run by the node's contract jobs
for messages delivered more than `OUTBOX_KEEP_DAYS` ago), then deleted.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Index,
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
    text,
    update,
)
from sqlmodel.sql.sqltypes import UTCDateTime

from qdspace.connector.contract_store.common import CONTRACT_METADATA, ID_LENGTH, TableStore

#: how long a delivered message is kept (`prune_sent`)
OUTBOX_KEEP_DAYS = 30
#: the rows the partial indexes hold
_UNSENT = text("sent_at IS NULL")

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
    #: refusals in a row (a failure of another kind starts the count over)
    Column("refusals", Integer, nullable=False, server_default="0"),
    #: when the message was set aside after its refusals (no longer tried); NULL: tried
    Column("refused_at", UTCDateTime(), nullable=True),
    UniqueConstraint("peer_id", "message_id", name="uq_contract_outbox_message"),
    # the undelivered messages alone (a node keeps every message it sent): the poll's
    # scan in queue order, and each message's earlier ones of its process (revision
    # 0027_outbox_unsent)
    Index("ix_contract_outbox_unsent", "id", sqlite_where=_UNSENT, postgresql_where=_UNSENT),
    Index(
        "ix_contract_outbox_unsent_process",
        "peer_id",
        "process_id",
        "id",
        sqlite_where=_UNSENT,
        postgresql_where=_UNSENT,
    ),
)


@functools.cache
def _due_statement(limit: int, excluding: bool) -> Select[Any]:
    """The dispatcher's poll (twice a second on every node, busy or idle), built once per
    limit: its cache key is memoised and only ``now`` (and the peers left out, when
    `excluding`) is bound per call; building it per call cost SQLAlchemy more than the
    query (bench/PROFILE-negotiation.md, round 4)."""
    table = outbox_table
    earlier = table.alias("earlier")
    # a message waits while one queued before it for the same process and peer is still
    # owed (not set aside): the peer gets a process's messages in the order they were
    # decided, never a suspension before the start it suspends
    held = (
        select(earlier.c.id)
        .where(
            earlier.c.peer_id == table.c.peer_id,
            earlier.c.process_id == table.c.process_id,
            earlier.c.id < table.c.id,
            earlier.c.sent_at.is_(None),
            earlier.c.refused_at.is_(None),
        )
        .exists()
    )
    statement = select(table).where(
        table.c.sent_at.is_(None),
        table.c.refused_at.is_(None),
        table.c.next_attempt_at <= bindparam("now"),
        ~held,
    )
    if excluding:
        statement = statement.where(table.c.peer_id.not_in(bindparam("busy", expanding=True)))
    return statement.order_by(table.c.id).limit(limit)


def _tried_last(row: Any) -> tuple[datetime, datetime]:
    """A failed message's place among its peer's: the latest next attempt (a failure moves
    it on by the backoff), then the latest set aside."""
    return row.next_attempt_at, row.refused_at or row.next_attempt_at


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
    refusals: int = 0  # refusals in a row so far


@dataclass(frozen=True)
class PeerBacklog:
    """What the outbox owes one peer: its undelivered messages still tried, the oldest
    queued, the next attempt due, the most attempts any of them took, the last error
    recorded, and the messages set aside after the peer refused them (`refused`; the
    others' fields are None when every message to the peer is set aside)."""

    peer_id: str
    undelivered: int
    oldest_queued_at: datetime | None
    next_attempt_at: datetime | None
    attempts: int
    last_error: str | None
    refused: int = 0
    refused_error: str | None = None


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
                refusals=row.refusals,
            )
            for row in rows
        ]

    def queued_for(self, peer_id: str, process_id: str) -> tuple[int, int]:
        """(owed, all) messages queued for one process of one peer (owed: not sent and
        not set aside)."""
        table = outbox_table.c
        unsent = func.count(table.id).filter(table.sent_at.is_(None), table.refused_at.is_(None))
        statement = select(func.count(), unsent).where(
            table.peer_id == peer_id, table.process_id == process_id
        )
        with self.engine.connect() as connection:
            total, waiting = connection.execute(statement).one()  # (peer, process) index
        return int(waiting), int(total)

    def hasten(self, peer_id: str, process_id: str, now: datetime) -> int:
        """Make what one process of one peer is owed due now (its backoff cut short: the
        peer asked again, so it is there to take it); how many messages that was."""
        table = outbox_table
        statement = (
            update(table)
            .where(
                table.c.peer_id == peer_id,
                table.c.process_id == process_id,
                table.c.sent_at.is_(None),
                table.c.refused_at.is_(None),
                table.c.next_attempt_at > now,
            )
            .values(next_attempt_at=now)
        )
        with self.engine.begin() as connection:
            return int(connection.execute(statement).rowcount or 0)

    def prune_sent(self, before: datetime, limit: int = 10_000) -> int:
        """Delete up to `limit` messages delivered before `before` (oldest first); how
        many. Why: a node kept every message it ever sent, so each answer a member's
        request made (a negotiation's, a DSP start's) stayed forever. What was delivered
        is the peer's now; a handler that queues a message again is a retry of moments
        ago, long before a delivered message is pruned, so it is still not sent twice."""
        table = outbox_table
        oldest = (
            select(table.c.id)
            .where(table.c.sent_at.is_not(None), table.c.sent_at < before)
            .order_by(table.c.id)
            .limit(limit)
        )
        with self.engine.begin() as connection:
            gone = connection.execute(table.delete().where(table.c.id.in_(oldest)))
        return int(gone.rowcount or 0)

    def backlog(self) -> int:
        """How many messages are not delivered: due now or later, or set aside after the
        peer's refusals (a node about to be deleted still owes those)."""
        statement = select(func.count()).where(outbox_table.c.sent_at.is_(None))
        with self.engine.connect() as connection:
            return int(connection.execute(statement).scalar_one())

    def owed(self) -> list[PeerBacklog]:
        """The undelivered messages by peer (the peer owed the most first), counted here
        from one read of the undelivered rows (`ix_contract_outbox_unsent`: grouped or
        ordered in SQL, the database walked every message ever sent by the index of its
        grouping or order, 73 ms at 200,000 sent); each peer's error of the message tried
        last (its next attempt the latest: a failure moves it on by the backoff) and of
        the one set aside last."""
        table = outbox_table
        statement = select(
            table.c.peer_id,
            table.c.refused_at,
            table.c.created_at,
            table.c.next_attempt_at,
            table.c.attempts,
            table.c.last_error,
        ).where(table.c.sent_at.is_(None))
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        groups: dict[tuple[str, bool], list[Any]] = {}
        for row in rows:
            groups.setdefault((row.peer_id, row.refused_at is None), []).append(row)
        owed: dict[str, PeerBacklog] = {}
        for (peer, still_tried), held in groups.items():
            before = owed.get(peer) or PeerBacklog(peer, 0, None, None, 0, None)
            failed = [r for r in held if r.last_error is not None]
            error = max(failed, key=_tried_last).last_error if failed else None
            if still_tried:
                owed[peer] = replace(
                    before,
                    undelivered=len(held),
                    oldest_queued_at=min(r.created_at for r in held),
                    next_attempt_at=min(r.next_attempt_at for r in held),
                    attempts=max(r.attempts for r in held),
                    last_error=error,
                )
            else:
                owed[peer] = replace(before, refused=len(held), refused_error=error)
        return sorted(owed.values(), key=lambda b: (-b.undelivered, -b.refused, b.peer_id))

    def mark_sent(self, message_id: int, at: datetime) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(outbox_table)
                .where(outbox_table.c.id == message_id)
                .values(sent_at=at, attempts=outbox_table.c.attempts + 1)
            )

    def mark_failed(
        self, message_id: int, error: str, retry_at: datetime, *, refused: bool = False
    ) -> None:
        """A failed attempt: its error, when to try again, and whether the peer refused
        it (counted in a row) or could not be reached or failed (the count starts over)."""
        refusals = outbox_table.c.refusals + 1 if refused else 0
        self._failed(message_id, error, next_attempt_at=retry_at, refusals=refusals)

    def set_aside(self, message_id: int, error: str, at: datetime) -> None:
        """The peer refused the message once more, its last try: kept, no longer due."""
        refusals = outbox_table.c.refusals + 1
        self._failed(message_id, error, refusals=refusals, refused_at=at)

    def _failed(self, message_id: int, error: str, **values: Any) -> None:
        """Record a failed attempt (its error cut to 2,000 characters, counted) and
        `values`."""
        table = outbox_table
        with self.engine.begin() as connection:
            connection.execute(
                update(table)
                .where(table.c.id == message_id)
                .values(last_error=error[:2000], attempts=table.c.attempts + 1, **values)
            )

    def retry_refused(self, peer_id: str, now: datetime) -> int:
        """Queue again the messages to `peer_id` set aside after its refusals (due now,
        no refusal counted); returns how many."""
        table = outbox_table
        with self.engine.begin() as connection:
            result = connection.execute(
                update(table)
                .where(
                    table.c.peer_id == peer_id,
                    table.c.sent_at.is_(None),
                    table.c.refused_at.is_not(None),
                )
                .values(refused_at=None, refusals=0, next_attempt_at=now)
            )
            return int(result.rowcount)
