"""Quality investigations and alerts between two members: a signed, pure state machine.

When the OEM finds a defect traced to a supplier's batch it opens an *investigation*
("check these parts"); a supplier that finds a problem in what it shipped sends an
*alert* to a customer ("these parts are suspect"). The life cycle follows the Catena-X
quality notifications, so that both companies' quality departments read the same states:

    CREATED -> SENT -> RECEIVED -> ACKNOWLEDGED -> ACCEPTED | DECLINED -> CLOSED

Every move is a `CaseEvent` signed with its author's Ed25519 key over canonical JSON
(domain-separated like agreements and receipts; `connector.investigation_wire` signs,
verifies and parses), and both
parties keep the same log of signed events: the state is the fold of that log
(`fold`), never a field someone may set. Who may make which move (`STEPS`):

=============  ==============================  ==========================
step           from                            by
=============  ==============================  ==========================
OPEN           (nothing)                       the opener
SEND           CREATED                         the opener
RECEIVE        SENT                            the receiver (its node, on arrival)
ACKNOWLEDGE    RECEIVED                        the receiver
ACCEPT         ACKNOWLEDGED                    the receiver
DECLINE        ACKNOWLEDGED                    the receiver
ACTION-DONE    ACCEPTED                        the owner of the action
CLOSE          ACCEPTED (every action done)    the opener
               or DECLINED
=============  ==============================  ==========================

Action items (containment, root cause, corrective action, verification) are part of
the opening terms, each with an owner (one of the two parties), a due date and a state.
The choice made here: the actions are agreed as a whole with the case, so the
receiver's ACCEPT puts them in force (a DECLINE refuses them with the case); after that
each party marks done only the actions it owns. This keeps one signature per move and no
negotiation of single actions; an action the receiver disagrees with is a reason to
decline and be sent a new case. An action past its due date and not done is overdue
(`overdue`): both parties see the same alert, computed from the same log.

Each author numbers its events 1, 2, 3... per case (`seq`). An event applies only
as the next one of its author: a lower number is a replay (the store compares the bytes:
the same event is acknowledged and changes nothing, different content under a used
number is refused), a higher one arrives before its predecessor (`CaseOrderError`; the
outbox retries it). Per-author numbering lets both parties mark their own actions done
at the same time without a conflict; every other move belongs to one party in one state.

Each event is dated by its author (`at`); which dates a receiver takes is
`connector.investigation_time`'s.

The `kind` says which direction the case goes (investigation: OEM -> supplier, alert:
supplier -> customer); the state machine treats both alike and does not check the
members' company roles.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from qdspace.connector.contract_errors import (
    CaseDenied,
    CaseFormatError,
    CaseOrderError,
    CaseTransitionError,
)
from qdspace.policies.canonical import canonical_json, format_datetime
from qdspace.util.text import printable_lines

EVENT_SCHEMA = "qdspace.v1/quality-case-event"
CLOSURE_SCHEMA = "qdspace.v1/quality-case-closure"
#: bounds of one case's terms (a case is a notice, not a document store)
MAX_TEXT = 4000
MAX_LINKS = 200
MAX_ACTIONS = 50
MAX_ID = 128


class CaseKind(StrEnum):
    INVESTIGATION = "INVESTIGATION"  # OEM -> supplier: check these parts
    ALERT = "ALERT"  # supplier -> customer: these parts are suspect


class CaseState(StrEnum):
    CREATED = "CREATED"
    SENT = "SENT"
    RECEIVED = "RECEIVED"
    ACKNOWLEDGED = "ACKNOWLEDGED"
    ACCEPTED = "ACCEPTED"
    DECLINED = "DECLINED"
    CLOSED = "CLOSED"


class Severity(StrEnum):
    MINOR = "MINOR"
    MAJOR = "MAJOR"
    CRITICAL = "CRITICAL"
    LIFE_THREATENING = "LIFE-THREATENING"


class ActionKind(StrEnum):
    CONTAINMENT = "CONTAINMENT"
    ROOT_CAUSE = "ROOT-CAUSE"
    CORRECTIVE_ACTION = "CORRECTIVE-ACTION"
    VERIFICATION = "VERIFICATION"


class ActionState(StrEnum):
    OPEN = "OPEN"
    DONE = "DONE"


class Step(StrEnum):
    OPEN = "OPEN"
    SEND = "SEND"
    RECEIVE = "RECEIVE"
    ACKNOWLEDGE = "ACKNOWLEDGE"
    ACCEPT = "ACCEPT"
    DECLINE = "DECLINE"
    ACTION_DONE = "ACTION-DONE"
    CLOSE = "CLOSE"


class Party(StrEnum):
    OPENER = "opener"
    RECEIVER = "receiver"
    OWNER = "owner"  # the owner of the action the event names


@dataclass(frozen=True)
class StepRule:
    sources: frozenset[CaseState | None]
    by: Party
    target: CaseState | None  # None: the state stays (an action marked done)


_ACK = frozenset({CaseState.ACKNOWLEDGED})
#: which step is allowed from which state, by whom, to which state
STEPS: dict[Step, StepRule] = {
    Step.OPEN: StepRule(frozenset({None}), Party.OPENER, CaseState.CREATED),
    Step.SEND: StepRule(frozenset({CaseState.CREATED}), Party.OPENER, CaseState.SENT),
    Step.RECEIVE: StepRule(frozenset({CaseState.SENT}), Party.RECEIVER, CaseState.RECEIVED),
    Step.ACKNOWLEDGE: StepRule(
        frozenset({CaseState.RECEIVED}), Party.RECEIVER, CaseState.ACKNOWLEDGED
    ),
    Step.ACCEPT: StepRule(_ACK, Party.RECEIVER, CaseState.ACCEPTED),
    Step.DECLINE: StepRule(_ACK, Party.RECEIVER, CaseState.DECLINED),
    Step.ACTION_DONE: StepRule(frozenset({CaseState.ACCEPTED}), Party.OWNER, None),
    Step.CLOSE: StepRule(
        frozenset({CaseState.ACCEPTED, CaseState.DECLINED}), Party.OPENER, CaseState.CLOSED
    ),
}


def _text(value: str, what: str, limit: int = MAX_ID, empty: bool = False) -> None:
    if not isinstance(value, str) or len(value) > limit or (not value and not empty):
        raise CaseFormatError(
            f"{what} must be a {'' if empty else 'non-empty '}string of at most {limit} characters"
        )
    if not printable_lines(value):
        raise CaseFormatError(f"{what} has control characters")


@dataclass(frozen=True)
class ActionItem:
    """One agreed action: what, who does it, by when. Its state lives in the case."""

    action_id: str
    kind: ActionKind
    owner_id: str
    due: date
    title: str = ""

    def __post_init__(self) -> None:
        _text(self.action_id, "action id")
        _text(self.owner_id, f"action {self.action_id}: owner")
        _text(self.title, f"action {self.action_id}: title", MAX_TEXT, empty=True)
        if not isinstance(self.kind, ActionKind) or type(self.due) is not date:
            raise CaseFormatError(f"action {self.action_id}: kind or due date of the wrong type")

    def to_dict(self) -> dict[str, Any]:
        return {
            "actionId": self.action_id,
            "kind": self.kind.value,
            "ownerId": self.owner_id,
            "due": self.due.isoformat(),
            "title": self.title,
        }


@dataclass(frozen=True)
class CaseTerms:
    """What the opener sends: the parties, severity, links and proposed actions."""

    kind: CaseKind
    opener_id: str
    receiver_id: str
    severity: Severity
    subject: str
    description: str = ""
    batch_ids: tuple[str, ...] = ()
    part_ids: tuple[str, ...] = ()
    trace_report_id: str = ""
    actions: tuple[ActionItem, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.kind, CaseKind) or not isinstance(self.severity, Severity):
            raise CaseFormatError("case: kind or severity of the wrong type")
        _text(self.opener_id, "opener")
        _text(self.receiver_id, "receiver")
        if self.opener_id == self.receiver_id:
            raise CaseFormatError("case: opener and receiver are the same member")
        _text(self.subject, "subject", MAX_TEXT)
        _text(self.description, "description", MAX_TEXT, empty=True)
        _text(self.trace_report_id, "trace report id", empty=True)
        for name, links in (("batch_ids", self.batch_ids), ("part_ids", self.part_ids)):
            if len(links) > MAX_LINKS:
                raise CaseFormatError(f"case: more than {MAX_LINKS} {name}")
            for link in links:
                _text(link, name)
        if len(self.actions) > MAX_ACTIONS:
            raise CaseFormatError(f"case: more than {MAX_ACTIONS} actions")
        ids = [a.action_id for a in self.actions]
        if len(set(ids)) != len(ids):
            raise CaseFormatError("case: two actions share an id")
        for action in self.actions:
            if action.owner_id not in (self.opener_id, self.receiver_id):
                raise CaseFormatError(
                    f"action {action.action_id}: owner {action.owner_id} is not a party"
                )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "openerId": self.opener_id,
            "receiverId": self.receiver_id,
            "severity": self.severity.value,
            "subject": self.subject,
            "description": self.description,
            "batchIds": list(self.batch_ids),
            "partIds": list(self.part_ids),
            "traceReportId": self.trace_report_id,
            "actions": [a.to_dict() for a in self.actions],
        }

    def action(self, action_id: str) -> ActionItem:
        for item in self.actions:
            if item.action_id == action_id:
                return item
        raise CaseTransitionError(f"the case has no action {action_id!r}")


@dataclass(frozen=True)
class CaseEvent:
    """One signed move: OPEN carries the terms, ACTION-DONE names its action."""

    opener_id: str
    case_id: str
    author_id: str
    seq: int
    step: Step
    at: datetime
    terms: CaseTerms | None = None
    action_id: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        _text(self.case_id, "case id")
        _text(self.author_id, "author")
        _text(self.note, "note", MAX_TEXT, empty=True)
        if type(self.seq) is not int or not 1 <= self.seq <= 10_000:
            raise CaseFormatError("event: seq must be an integer from 1 to 10000")
        if (self.step is Step.OPEN) != (self.terms is not None):
            raise CaseFormatError("event: terms go with OPEN and only with OPEN")
        if (self.step is Step.ACTION_DONE) != bool(self.action_id):
            raise CaseFormatError("event: an action id goes with ACTION-DONE and only with it")
        if self.terms is not None and self.terms.opener_id != self.opener_id:
            raise CaseFormatError("event: the terms name another opener")
        format_datetime(self.at)  # refuses a naive time

    @property
    def event_id(self) -> str:
        return f"{self.opener_id}/{self.case_id}/{self.author_id}/{self.seq}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": EVENT_SCHEMA,
            "openerId": self.opener_id,
            "caseId": self.case_id,
            "authorId": self.author_id,
            "seq": self.seq,
            "step": self.step.value,
            "at": format_datetime(self.at),
            "terms": None if self.terms is None else self.terms.to_dict(),
            "actionId": self.action_id,
            "note": self.note,
        }

    def canonical_bytes(self) -> bytes:
        cached = self.__dict__.get("_canonical")
        if cached is None:
            cached = canonical_json(self.to_dict())
            object.__setattr__(self, "_canonical", cached)
        assert isinstance(cached, bytes)
        return cached

    def digest(self) -> str:
        return hashlib.sha256(self.canonical_bytes()).hexdigest()


# ------------------------------------------------------------- the state machine


@dataclass(frozen=True)
class QualityCase:
    """A case as the fold of its events: terms, state, actions done, each side's count."""

    case_id: str
    terms: CaseTerms
    state: CaseState
    done: frozenset[str]
    opener_seq: int
    receiver_seq: int
    opened_at: datetime
    updated_at: datetime

    @property
    def opener_id(self) -> str:
        return self.terms.opener_id

    @property
    def receiver_id(self) -> str:
        return self.terms.receiver_id

    def parties(self) -> tuple[str, str]:
        return self.terms.opener_id, self.terms.receiver_id

    def seq_of(self, member_id: str) -> int:
        """How many events `member_id` wrote in this case (0 for a non-party)."""
        if member_id == self.opener_id:
            return self.opener_seq
        return self.receiver_seq if member_id == self.receiver_id else 0

    def action_state(self, action_id: str) -> ActionState:
        return ActionState.DONE if action_id in self.done else ActionState.OPEN

    def open_actions(self) -> list[str]:
        return [a.action_id for a in self.terms.actions if a.action_id not in self.done]


def _check_author(case: QualityCase | None, event: CaseEvent, rule: StepRule) -> None:
    if case is not None:
        parties = case.parties()
    elif event.terms is not None:
        parties = (event.terms.opener_id, event.terms.receiver_id)
    else:
        raise CaseTransitionError(f"case {event.case_id} is not opened: {event.step.value}")
    if event.author_id not in parties:
        raise CaseDenied(f"{event.author_id} is not a party to case {event.case_id}")
    if rule.by is Party.OWNER:
        assert case is not None
        owner = case.terms.action(event.action_id).owner_id
        if owner != event.author_id:
            raise CaseDenied(
                f"action {event.action_id} of case {event.case_id} is owned by {owner}, "
                f"not {event.author_id}"
            )
        return
    allowed = parties[0] if rule.by is Party.OPENER else parties[1]
    if event.author_id != allowed:
        raise CaseDenied(f"only the {rule.by.value} of case {event.case_id} may {event.step.value}")


def apply(case: QualityCase | None, event: CaseEvent) -> QualityCase:
    """The case after `event`; raises when the event is not the author's next legal move."""
    rule = STEPS[event.step]
    if case is not None and (case.case_id, case.opener_id) != (event.case_id, event.opener_id):
        raise CaseDenied(f"event {event.event_id} is for another case")
    _check_author(case, event, rule)
    expected = 1 if case is None else case.seq_of(event.author_id) + 1
    if event.seq != expected:
        raise CaseOrderError(
            f"event {event.event_id}: expected number {expected} of {event.author_id}"
        )
    state = None if case is None else case.state
    if state not in rule.sources:
        raise CaseTransitionError(
            f"case {event.case_id} is {state.value if state else 'not opened'}: "
            f"{event.step.value} is not allowed in that state"
        )
    if case is None:
        assert event.terms is not None and rule.target is not None
        return QualityCase(
            event.case_id, event.terms, rule.target, frozenset(), 1, 0, event.at, event.at
        )
    done = case.done
    if event.step is Step.ACTION_DONE:
        if event.action_id in done:
            raise CaseTransitionError(f"action {event.action_id} is already done")
        done = done | {event.action_id}
    if event.step is Step.CLOSE and case.state is CaseState.ACCEPTED and case.open_actions():
        raise CaseTransitionError(
            f"case {event.case_id} cannot close: actions {', '.join(case.open_actions())} "
            "are not done"
        )
    by_opener = event.author_id == case.opener_id
    return replace(
        case,
        state=rule.target or case.state,
        done=done,
        opener_seq=case.opener_seq + by_opener,
        receiver_seq=case.receiver_seq + (not by_opener),
        updated_at=max(case.updated_at, event.at),
    )


def fold(events: Iterable[CaseEvent]) -> QualityCase:
    """The case a log of events makes (in the order they were applied)."""
    case: QualityCase | None = None
    for event in events:
        case = apply(case, event)
    if case is None:
        raise CaseTransitionError("a case needs at least its OPEN event")
    return case


def next_event(
    case: QualityCase, author_id: str, step: Step, at: datetime, action_id: str = "", note: str = ""
) -> CaseEvent:
    """`author_id`'s next event in `case`, checked against the state machine."""
    event = CaseEvent(
        case.opener_id,
        case.case_id,
        author_id,
        case.seq_of(author_id) + 1,
        step,
        at,
        action_id=action_id,
        note=note,
    )
    apply(case, event)
    return event


def opening(case_id: str, terms: CaseTerms, at: datetime) -> tuple[CaseEvent, CaseEvent]:
    """The opener's OPEN and SEND events of a new case."""
    opened = CaseEvent(terms.opener_id, case_id, terms.opener_id, 1, Step.OPEN, at, terms)
    return opened, next_event(apply(None, opened), terms.opener_id, Step.SEND, at)


def overdue(case: QualityCase, today: date) -> list[ActionItem]:
    """The actions in force (the case is ACCEPTED), not done, whose due date has passed.
    Both parties hold the same log, so both compute the same alert from it, with no
    message between them."""
    if case.state is not CaseState.ACCEPTED:
        return []
    return [a for a in case.terms.actions if a.action_id not in case.done and a.due < today]


def overdue_from(case: QualityCase) -> date | None:
    """The earliest due date among the actions `overdue` could name (the case ACCEPTED,
    the action not done), None when none could: ``overdue(case, today)`` is empty exactly
    when this is None or not before ``today``. The store keeps it per case, so that a
    listing finds the cases with overdue actions without folding every log."""
    if case.state is not CaseState.ACCEPTED:
        return None
    return min((a.due for a in case.terms.actions if a.action_id not in case.done), default=None)


def closure_record(case: QualityCase, events: Iterable[CaseEvent]) -> bytes:
    """The canonical bytes a closed case is anchored by: the case and the sorted sha256 of
    every event of its log. Sorted, so both parties (whose logs may hold the two sides'
    concurrent events in different orders) anchor the same bytes."""
    if case.state is not CaseState.CLOSED:
        raise CaseTransitionError(f"case {case.case_id} is {case.state.value}, not CLOSED")
    return canonical_json(
        {
            "schema": CLOSURE_SCHEMA,
            "openerId": case.opener_id,
            "caseId": case.case_id,
            "receiverId": case.receiver_id,
            "events": sorted(e.digest() for e in events),
        }
    )
