"""Quality investigations and alerts: each party's copy of the signed event log.

Both parties of a case keep the same log of signed events (`connector.investigation`),
the opener's and the receiver's, in the order this node applied them; the state is the
fold of the log, recomputed on every append, so nothing but a legal signed move can
change it. A row per case (`contract_quality_case`) names the parties, kind, severity
and state for listing, and counts the events for compare-and-set.

Why separate: the log is written on a peer's initiative (its events arrive as
notifications) as well as ours, and each append may owe the peer a message (our own
event, or the automatic RECEIVE) that must be queued in the same commit.

Invariants:

- an event is kept once per (case, author, number). The same bytes again are a
  replay: acknowledged, nothing changes, nothing is queued. Other bytes under a used
  number are refused (`CaseReplayError`).
- every event kept was legal in the state the earlier events made (`apply`), so the
  log always folds; two appends racing on one case cannot both win (the event count is
  compared and set; the loser gets `ConcurrentUpdateError`).
- a case id is used once here, whoever opened it (the operator names a case by its id),
  so a member cannot shadow another's case by opening one under the same id;
- every event kept is dated no earlier than the events it follows
  (`investigation_time.check_order`), so a log never shows a move before what it answers;
- a peer keeps at most what its `CaseBudget` allows, checked in the transaction that
  would store more, so a refused event leaves nothing behind: at most
  `MAX_RECEIVED_PER_SENDER` cases opened here, at most ``per_hour`` of them opened within
  an hour (counted by our clock, on an index), and at most ``max_bytes`` of case data
  from it, a running total per author (`contract_quality_case_usage`) of what each kept
  event costs (`kept_bytes`), updated in the same transaction. The events of one case
  are few (the state machine allows each party three or four steps and one per action
  it owns: at most 53 each), but each may be large (an opening ~240 KB, a note 16 KB),
  so bytes, not counts, bound what a member makes this node keep.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Date,
    Engine,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    select,
    text,
    update,
)
from sqlmodel.sql.sqltypes import UTCDateTime

from qdspace.connector.contract_errors import (
    CaseReplayError,
    NotificationQuotaError,
    UnknownCaseError,
)
from qdspace.connector.contract_store.common import (
    CONTRACT_METADATA,
    ID_LENGTH,
    ConcurrentUpdateError,
    TableStore,
    count_rows,
    listing,
    plain_rows,
    saving,
)
from qdspace.connector.contract_store.notices import MAX_RECEIVED_PER_SENDER
from qdspace.connector.contract_store.outbox import OutboxMessage, OutboxStore
from qdspace.connector.investigation import (
    CaseKind,
    CaseState,
    QualityCase,
    Severity,
    apply,
    fold,
    overdue,
    overdue_from,
)
from qdspace.connector.investigation_time import check_order
from qdspace.connector.investigation_wire import SignedEvent, event_from_bytes

#: what a kept event costs beyond its signed bytes and signature: its row's keys (a case
#: id alone may take 512 bytes in UTF-8), index entries, row headers (`kept_bytes`)
ROW_OVERHEAD = 1024
#: the window of `CaseBudget.per_hour`
RATE_WINDOW = timedelta(hours=1)
#: the openings, as the partial index over them and the count that reads it both say
#: (a literal, not a bound value, so that PostgreSQL's generic plans match the index)
_OPENINGS = text("step = 'OPEN'")

case_table = Table(
    "contract_quality_case",
    CONTRACT_METADATA,
    Column("opener_id", String(ID_LENGTH), primary_key=True),
    Column("case_id", String(ID_LENGTH), primary_key=True),
    Column("receiver_id", String(ID_LENGTH), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("severity", String(32), nullable=False),
    Column("subject", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("event_count", Integer, nullable=False),
    Column("opened_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False, index=True),
    # from the fold at each append (revision 0020_case_listing), so that listings read
    # rows, not logs: how many actions are not done, and the earliest due date `overdue`
    # could name (`investigation.overdue_from`; NULL: none could)
    Column("open_actions", Integer, nullable=False, server_default="0"),
    Column("overdue_from", Date, nullable=True, index=True),
    UniqueConstraint("case_id", name="uq_contract_quality_case_id"),
)
case_event_table = Table(
    "contract_quality_case_event",
    CONTRACT_METADATA,
    Column("opener_id", String(ID_LENGTH), primary_key=True),
    Column("case_id", String(ID_LENGTH), primary_key=True),
    Column("author_id", String(ID_LENGTH), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("position", Integer, nullable=False),
    Column("step", String(16), nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("signature", LargeBinary, nullable=False),
    Column("kept_at", UTCDateTime(), nullable=False),
    # the cases a member opened here lately, counted by our clock (revision 0028)
    Index(
        "ix_contract_quality_case_event_opened",
        "author_id",
        "kept_at",
        sqlite_where=_OPENINGS,
        postgresql_where=_OPENINGS,
    ),
)
#: the bytes of case data kept here from each member (`kept_bytes` of the events it
#: authored), a running total kept in the transaction of each append (revision 0028)
case_usage_table = Table(
    "contract_quality_case_usage",
    CONTRACT_METADATA,
    Column("member_id", String(ID_LENGTH), primary_key=True),
    Column("kept_bytes", BigInteger, nullable=False),
)


#: a member's running total moved on by a cost (SQLite and PostgreSQL both spell the
#: upsert so); `_ADD_WITHIN` only while it stays within a cap (no row changed: over it)
_ADD_USAGE = text(
    f"INSERT INTO {case_usage_table.name} (member_id, kept_bytes) VALUES (:member, :cost) "
    "ON CONFLICT (member_id) DO UPDATE SET kept_bytes = "
    f"{case_usage_table.name}.kept_bytes + excluded.kept_bytes"
)
_ADD_WITHIN = text(
    f"{_ADD_USAGE.text} WHERE {case_usage_table.name}.kept_bytes + excluded.kept_bytes <= :max"
)


def kept_bytes(data_size: int, signature_size: int, subject: str | None = None) -> int:
    """What keeping one event costs, in bytes: its canonical JSON and signature and
    `ROW_OVERHEAD`, and for an opening (`subject` given) also the case row, which repeats
    the subject."""
    size = data_size + signature_size + ROW_OVERHEAD
    if subject is not None:
        size += len(subject.encode()) + ROW_OVERHEAD
    return size


def event_cost(signed: SignedEvent) -> int:
    """`kept_bytes` of a signed event."""
    event = signed.event
    subject = event.terms.subject if event.terms is not None else None
    return kept_bytes(len(event.canonical_bytes()), len(signed.signature), subject)


@dataclass(frozen=True)
class CaseBudget:
    """What one peer may make this node keep of quality cases (the node's settings
    ``case_bytes_per_member`` and ``cases_per_member_hour``): bytes of the events it
    authored, all cases together, and cases opened within any hour."""

    member_id: str
    max_bytes: int
    per_hour: int


@dataclass(frozen=True)
class CaseLog:
    """A case and the signed events it is the fold of, in the order they were applied."""

    case: QualityCase
    events: tuple[SignedEvent, ...]


@dataclass(frozen=True)
class CaseRow:
    """A case as a listing shows it, read from its row (its log not folded)."""

    case_id: str
    opener_id: str
    receiver_id: str
    kind: CaseKind
    severity: Severity
    subject: str
    state: CaseState
    opened_at: datetime
    updated_at: datetime
    open_actions: int
    overdue_actions: int

    @classmethod
    def of(cls, case: QualityCase, today: date) -> CaseRow:
        """The row a folded case lists as (what its stored row gives, `case_rows`)."""
        return cls(
            case_id=case.case_id,
            opener_id=case.opener_id,
            receiver_id=case.receiver_id,
            kind=case.terms.kind,
            severity=case.terms.severity,
            subject=case.terms.subject,
            state=case.state,
            opened_at=case.opened_at,
            updated_at=case.updated_at,
            open_actions=len(case.open_actions()),
            overdue_actions=len(overdue(case, today)),
        )


class CaseStore(TableStore):
    """Append signed events to both parties' copies; read cases back as folds."""

    def __init__(self, engine: Engine, outbox: OutboxStore) -> None:
        super().__init__(engine)
        self._outbox = outbox

    def _log_in(self, connection: Connection, opener_id: str, case_id: str) -> list[SignedEvent]:
        t = case_event_table
        rows = connection.execute(
            select(t.c.data, t.c.signature)
            .where(t.c.opener_id == opener_id, t.c.case_id == case_id)
            .order_by(t.c.position)
        ).all()
        return [SignedEvent(event_from_bytes(r.data), r.signature) for r in rows]

    def append(
        self,
        events: Sequence[SignedEvent],
        outbox: Sequence[OutboxMessage],
        at: datetime,
        budget: CaseBudget | None = None,
    ) -> bool:
        """Apply `events` (one case's, in order) and queue `outbox` in one commit; `at`:
        this node's clock.

        False when every event was held already (a replay: nothing changes, nothing is
        queued). `budget`: the peer whose events these are (and whose new case it may
        be), held to it (`NotificationQuotaError`, nothing kept); None for our own."""
        first = events[0].event
        key = (first.opener_id, first.case_id)
        with saving(self.engine, f"case {first.case_id}") as connection:
            log = self._log_in(connection, *key)
            held = {(s.event.author_id, s.event.seq): s for s in log}
            case = fold(s.event for s in log) if log else None
            count = len(log)
            new: list[SignedEvent] = []
            for signed in events:
                event = signed.event
                if (event.opener_id, event.case_id) != key:
                    raise CaseReplayError("events of different cases in one append")
                old = held.get((event.author_id, event.seq))
                if old is not None:
                    if old.event.canonical_bytes() != event.canonical_bytes():
                        raise CaseReplayError(
                            f"event {event.event_id} was received before with other content"
                        )
                    continue
                case = apply(case, event)
                check_order([s.event for s in (*log, *new)], event)
                new.append(signed)
            if not new:
                return False
            assert case is not None
            if count == 0:
                self._check_new(connection, first.case_id, budget, at)
            self._charge(connection, new, budget)
            self._insert_events(connection, new, count, at)
            self._save_case(connection, case, count, count + len(new))
            self._outbox.enqueue_in(connection, outbox, at)
        return True

    def _check_new(
        self, connection: Connection, case_id: str, budget: CaseBudget | None, at: datetime
    ) -> None:
        """A new case's id is free here (whoever opened it: the operator finds cases by id
        alone), and its opener has room."""
        taken = connection.execute(
            select(func.count()).where(case_table.c.case_id == case_id)
        ).scalar_one()
        if taken:
            raise CaseReplayError(f"case id {case_id} is already in use here")
        if budget is not None:
            self._check_quota(connection, budget, at)

    def _check_quota(self, connection: Connection, budget: CaseBudget, at: datetime) -> None:
        opener_id = budget.member_id
        held = connection.execute(
            select(func.count()).where(case_table.c.opener_id == opener_id)
        ).scalar_one()
        if held >= MAX_RECEIVED_PER_SENDER:
            raise NotificationQuotaError(
                f"{opener_id} already has {held} quality cases here "
                f"(limit {MAX_RECEIVED_PER_SENDER})"
            )
        t = case_event_table
        lately = connection.execute(
            select(func.count()).where(
                t.c.author_id == opener_id, _OPENINGS, t.c.kept_at > at - RATE_WINDOW
            )
        ).scalar_one()
        if lately >= budget.per_hour:
            raise NotificationQuotaError(
                f"member {opener_id} opened {lately} quality cases here within the hour, as "
                f"many as this node takes from one member (cases_per_member_hour "
                f"{budget.per_hour}): open it again once the hour's first has aged out"
            )

    def _charge(
        self, connection: Connection, new: list[SignedEvent], budget: CaseBudget | None
    ) -> None:
        """Add what `new` costs to its authors' running totals; refuse the budget's
        member one that would take it past ``max_bytes``. One upsert an author, the
        budget's conditional (``... DO UPDATE ... WHERE kept_bytes + cost <= max``: two
        appends racing cannot both pass); the statements are built once (building them
        per append cost more than running them: 0.5 ms of an append's 1.5)."""
        costs: dict[str, int] = {}
        for signed in new:
            author = signed.event.author_id
            costs[author] = costs.get(author, 0) + event_cost(signed)
        for author, cost in costs.items():
            if budget is None or author != budget.member_id:
                connection.execute(_ADD_USAGE, {"member": author, "cost": cost})
                continue
            room = {"member": author, "cost": cost, "max": budget.max_bytes}
            if cost > budget.max_bytes or connection.execute(_ADD_WITHIN, room).rowcount != 1:
                t = case_usage_table
                held = connection.execute(
                    select(t.c.kept_bytes).where(t.c.member_id == author)
                ).scalar_one_or_none()
                raise NotificationQuotaError(
                    f"member {author} has {held or 0} bytes of quality cases kept here; this "
                    f"takes {cost} more, past what this node keeps from one member "
                    f"(case_bytes_per_member {budget.max_bytes})"
                )

    def kept_bytes_of(self, member_id: str) -> int:
        """The bytes of case data kept here from `member_id` (`kept_bytes` of its events)."""
        t = case_usage_table
        with self.engine.connect() as connection:
            held = connection.execute(
                select(t.c.kept_bytes).where(t.c.member_id == member_id)
            ).scalar_one_or_none()
        return int(held or 0)

    def _insert_events(
        self, connection: Connection, new: list[SignedEvent], count: int, at: datetime
    ) -> None:
        rows = [
            {
                "opener_id": s.event.opener_id,
                "case_id": s.event.case_id,
                "author_id": s.event.author_id,
                "seq": s.event.seq,
                "position": count + i,
                "step": s.event.step.value,
                "data": s.event.canonical_bytes(),
                "signature": s.signature,
                "kept_at": at,
            }
            for i, s in enumerate(new)
        ]
        connection.execute(case_event_table.insert(), rows)

    def _save_case(self, connection: Connection, case: QualityCase, old: int, count: int) -> None:
        values = {
            "state": case.state.value,
            "event_count": count,
            "updated_at": case.updated_at,
            "open_actions": len(case.open_actions()),
            "overdue_from": overdue_from(case),
        }
        if old == 0:
            terms = case.terms
            connection.execute(
                case_table.insert().values(
                    opener_id=case.opener_id,
                    case_id=case.case_id,
                    receiver_id=case.receiver_id,
                    kind=terms.kind.value,
                    severity=terms.severity.value,
                    subject=terms.subject,
                    opened_at=case.opened_at,
                    **values,
                )
            )
            return
        t = case_table
        done = connection.execute(
            update(t)
            .where(
                t.c.opener_id == case.opener_id,
                t.c.case_id == case.case_id,
                t.c.event_count == old,
            )
            .values(**values)
        )
        if done.rowcount != 1:
            raise ConcurrentUpdateError(f"case {case.case_id} was changed concurrently")

    def held_event(self, opener_id: str, case_id: str, author_id: str, seq: int) -> bytes | None:
        """The canonical bytes of the event `author_id` numbered `seq` in this case, or None
        (one row by its key: a retry is recognised without reading the case's log)."""
        t = case_event_table
        statement = select(t.c.data).where(
            t.c.opener_id == opener_id,
            t.c.case_id == case_id,
            t.c.author_id == author_id,
            t.c.seq == seq,
        )
        with self.engine.connect() as connection:
            found = connection.execute(statement).scalar_one_or_none()
        return None if found is None else bytes(found)

    def case_log(self, opener_id: str, case_id: str) -> CaseLog:
        """A case and its signed log; `UnknownCaseError` when none is held here."""
        with self.engine.connect() as connection:
            log = self._log_in(connection, opener_id, case_id)
        if not log:
            raise UnknownCaseError(f"no quality case {case_id} opened by {opener_id} here")
        return CaseLog(fold(s.event for s in log), tuple(log))

    def find_case(self, case_id: str) -> CaseLog:
        """The case with this id, whoever opened it (ids are uuids; refuses an ambiguous id)."""
        with self.engine.connect() as connection:
            openers = connection.execute(
                select(case_table.c.opener_id).where(case_table.c.case_id == case_id)
            ).all()
        if len(openers) != 1:
            raise UnknownCaseError(f"no quality case {case_id} here")
        return self.case_log(openers[0].opener_id, case_id)

    def case_rows(self, today: date, *, limit: int | None = None, offset: int = 0) -> list[CaseRow]:
        """The cases held here as their rows list them, most recently updated first,
        ``limit`` from ``offset`` (None: all). Only a case with an action overdue at
        ``today`` has its log folded (to count them); the others are their rows."""
        t = case_table
        order = (t.c.updated_at.desc(), t.c.case_id)
        statement = listing(select(t), order, limit=limit, offset=offset)
        with self.engine.connect() as connection:
            rows = plain_rows(connection.execute(statement))
            late = {
                (r.opener_id, r.case_id): len(overdue(self._fold_in(connection, r), today))
                for r in rows
                if r.overdue_from is not None and r.overdue_from < today
            }
        return [
            CaseRow(
                case_id=r.case_id,
                opener_id=r.opener_id,
                receiver_id=r.receiver_id,
                kind=CaseKind(r.kind),
                severity=Severity(r.severity),
                subject=r.subject,
                state=CaseState(r.state),
                opened_at=r.opened_at,
                updated_at=r.updated_at,
                open_actions=int(r.open_actions),
                overdue_actions=late.get((r.opener_id, r.case_id), 0),
            )
            for r in rows
        ]

    def count_cases(self) -> int:
        """How many cases are held here."""
        return count_rows(self.engine, case_table)

    def overdue_cases(self, today: date) -> list[QualityCase]:
        """The cases with an action overdue at ``today``, folded, the earliest due first:
        found by their rows (`overdue_from`), so a listing of what is late reads only
        those logs."""
        t = case_table
        statement = (
            select(t.c.opener_id, t.c.case_id)
            .where(t.c.overdue_from.is_not(None), t.c.overdue_from < today)
            .order_by(t.c.overdue_from, t.c.case_id)
        )
        with self.engine.connect() as connection:
            return [self._fold_in(connection, k) for k in connection.execute(statement)]

    def _fold_in(self, connection: Connection, key: Any) -> QualityCase:
        return fold(s.event for s in self._log_in(connection, key.opener_id, key.case_id))

    def cases(self) -> list[QualityCase]:
        """Every case held here, most recently updated first."""
        t = case_table
        with self.engine.connect() as connection:
            keys = connection.execute(
                select(t.c.opener_id, t.c.case_id).order_by(t.c.updated_at.desc(), t.c.case_id)
            ).all()
            return [
                fold(s.event for s in self._log_in(connection, k.opener_id, k.case_id))
                for k in keys
            ]
