"""Operator REST endpoints of quality investigations and alerts (``/v1/investigations``).

Open a case with a peer, list and show the cases held here, list the overdue actions
(in force, past their due date by the contract clock, not done: the same alert on both
sides, as both hold the same log), and make this member's moves:
acknowledge, accept or decline (the receiver), mark an owned action done, close (the
opener). Each move is signed and queued for the other party by the runtime
(`node.runtime.contracts_cases`); the route then flushes the outbox, so the answer comes
after the peer was told where it is reachable (and the outbox keeps retrying where not).
A move the case's state does not allow is a 409 naming the state, a move of the other
party or of an action someone else owns a 403; bad enums, dates or ids are a 422 naming
the field (pydantic), never a 500. Errors map by the node's fault table.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Response
from pydantic import BaseModel, Field, StringConstraints
from starlette.concurrency import run_in_threadpool

from qdspace.connector.contract_store import CaseLog, CaseRow
from qdspace.connector.investigation import (
    MAX_ACTIONS,
    MAX_ID,
    MAX_LINKS,
    MAX_TEXT,
    ActionItem,
    ActionKind,
    ActionState,
    CaseKind,
    CaseState,
    CaseTerms,
    QualityCase,
    Severity,
    Step,
    overdue,
)
from qdspace.node.api.bodies import Body, FromText, IsoDate
from qdspace.node.api.deps import Ctx, Outbox, Paging, Runtime, require_operator
from qdspace.node.api.models import Id, IdPath
from qdspace.node.member_ids import peer_name
from qdspace.policies.canonical import format_datetime

# -- request bodies ----------------------------------------------------------------------

#: the case's own bounds (`connector.investigation`), so a caller gets a 422 naming the field
CaseId = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_ID, pattern=r"^[^\x00-\x1f\x7f]+$")
]
CaseText = Annotated[
    str, StringConstraints(max_length=MAX_TEXT, pattern=r"^[^\x00-\x09\x0b-\x1f\x7f]*$")
]


class ActionBody(Body):
    action_id: CaseId
    kind: FromText[ActionKind]
    #: the member name of the party that does it (ours or the peer's)
    owner: Id
    due: IsoDate
    title: CaseText = ""


class OpenBody(Body):
    peer: Id
    kind: FromText[CaseKind] = CaseKind.INVESTIGATION
    severity: FromText[Severity]
    subject: Annotated[CaseText, Field(min_length=1)]
    description: CaseText = ""
    batch_ids: list[CaseId] = Field(default_factory=list, max_length=MAX_LINKS)
    part_ids: list[CaseId] = Field(default_factory=list, max_length=MAX_LINKS)
    trace_report_id: CaseId | None = None
    actions: list[ActionBody] = Field(default_factory=list, max_length=MAX_ACTIONS)


class StepBody(Body):
    note: CaseText = ""


# -- responses ---------------------------------------------------------------------------


class ActionPublic(BaseModel):
    action_id: str
    kind: ActionKind
    owner_id: str
    due: date
    title: str
    state: ActionState
    overdue: bool


class EventPublic(BaseModel):
    author_id: str
    seq: int
    step: Step
    at: str
    action_id: str
    note: str
    sha256: str


class CaseSummary(BaseModel):
    case_id: str
    kind: CaseKind
    state: CaseState
    severity: Severity
    subject: str
    opener_id: str
    receiver_id: str
    role: str
    opened_at: str
    updated_at: str
    open_actions: int
    overdue_actions: int


class CasePublic(CaseSummary):
    description: str
    batch_ids: list[str]
    part_ids: list[str]
    trace_report_id: str
    actions: list[ActionPublic]
    events: list[EventPublic]


def _time(value: datetime) -> str:
    return format_datetime(value)


class OverduePublic(BaseModel):
    """An action in force past its due date and not done: the alert both sides see."""

    case_id: str
    subject: str
    severity: Severity
    action_id: str
    kind: ActionKind
    owner_id: str
    due: date


def row_summary(row: CaseRow, me: str) -> CaseSummary:
    """A case as listings show it, from its row (`ContractStore.case_rows`)."""
    return CaseSummary(
        case_id=row.case_id,
        kind=row.kind,
        state=row.state,
        severity=row.severity,
        subject=row.subject,
        opener_id=row.opener_id,
        receiver_id=row.receiver_id,
        role="opener" if me == row.opener_id else "receiver",
        opened_at=_time(row.opened_at),
        updated_at=_time(row.updated_at),
        open_actions=row.open_actions,
        overdue_actions=row.overdue_actions,
    )


def summary(case: QualityCase, me: str, today: date) -> CaseSummary:
    return row_summary(CaseRow.of(case, today), me)


def case_public(log: CaseLog, me: str, today: date) -> CasePublic:
    case, t = log.case, log.case.terms
    late = {a.action_id for a in overdue(case, today)}
    return CasePublic(
        **summary(case, me, today).model_dump(),
        description=t.description,
        batch_ids=list(t.batch_ids),
        part_ids=list(t.part_ids),
        trace_report_id=t.trace_report_id,
        actions=[
            ActionPublic(
                action_id=a.action_id,
                kind=a.kind,
                owner_id=a.owner_id,
                due=a.due,
                title=a.title,
                state=case.action_state(a.action_id),
                overdue=a.action_id in late,
            )
            for a in t.actions
        ],
        events=[
            EventPublic(
                author_id=e.author_id,
                seq=e.seq,
                step=e.step,
                at=_time(e.at),
                action_id=e.action_id,
                note=e.note,
                sha256=e.digest(),
            )
            for e in (s.event for s in log.events)
        ],
    )


def _owner(name: str, me: str, peer_id: str, field: str) -> str:
    by_name = {peer_name(me): me, peer_name(peer_id): peer_id, me: me, peer_id: peer_id}
    if name not in by_name:
        raise HTTPException(
            422, f"{field}: owner {name!r} is neither this member nor {peer_name(peer_id)}"
        )
    return by_name[name]


def _today(rt: Runtime) -> date:
    """The date by the contract clock (which tests and demos may move)."""
    return rt.clock.now().date()


#: the moves an operator asks for by name (``POST /v1/investigations/{id}/{move}``)
MOVES = {
    "ack": Step.ACKNOWLEDGE,
    "accept": Step.ACCEPT,
    "decline": Step.DECLINE,
    "close": Step.CLOSE,
}
Move = Literal["ack", "accept", "decline", "close"]


def investigations_router() -> APIRouter:
    """The ``/v1/investigations`` routes of a node (the node comes from ``app.state.node``)."""
    router = APIRouter(
        prefix="/v1/investigations",
        dependencies=[Depends(require_operator)],
        tags=["investigations"],
    )

    @router.post("", response_model=CasePublic)
    async def open_case(ctx: Ctx, rt: Runtime, outbox: Outbox, body: OpenBody) -> CasePublic:
        me = rt.me.member_id
        peer_id = (await ctx.peers.hello(body.peer)).peer_member_id
        actions = tuple(
            ActionItem(
                a.action_id,
                a.kind,
                _owner(a.owner, me, peer_id, f"actions[{i}].owner"),
                a.due,
                a.title,
            )
            for i, a in enumerate(body.actions)
        )
        terms = CaseTerms(
            kind=body.kind,
            opener_id=me,
            receiver_id=peer_id,
            severity=body.severity,
            subject=body.subject,
            description=body.description,
            batch_ids=tuple(body.batch_ids),
            part_ids=tuple(body.part_ids),
            trace_report_id=body.trace_report_id or "",
            actions=actions,
        )
        log = await run_in_threadpool(rt.open_case, terms)
        await outbox.flush()
        return case_public(log, me, _today(rt))

    @router.get("", response_model=list[CaseSummary])
    def cases(rt: Runtime, page: Paging, response: Response) -> list[CaseSummary]:
        """The cases held here, most recently updated first, a page at a time."""
        me, today = rt.me.member_id, _today(rt)

        def read(limit: int | None, offset: int) -> list[CaseSummary]:
            found = rt.store.cases.case_rows(today, limit=limit, offset=offset)
            return [row_summary(r, me) for r in found]

        return page.read(read, response)

    @router.get("/overdue", response_model=list[OverduePublic])
    def overdue_actions(rt: Runtime) -> list[OverduePublic]:
        today = _today(rt)
        return [
            OverduePublic(
                case_id=c.case_id,
                subject=c.terms.subject,
                severity=c.terms.severity,
                action_id=a.action_id,
                kind=a.kind,
                owner_id=a.owner_id,
                due=a.due,
            )
            for c in rt.store.cases.overdue_cases(today)
            for a in overdue(c, today)
        ]

    @router.get("/{case_id}", response_model=CasePublic)
    def show(rt: Runtime, case_id: IdPath) -> CasePublic:
        return case_public(rt.store.cases.find_case(case_id), rt.me.member_id, _today(rt))

    @router.post("/{case_id}/actions/{action_id}/done", response_model=CasePublic)
    async def action_done(
        rt: Runtime, outbox: Outbox, case_id: IdPath, action_id: IdPath, body: StepBody
    ) -> CasePublic:
        log = await run_in_threadpool(rt.case_step, case_id, Step.ACTION_DONE, action_id, body.note)
        await outbox.flush()
        return case_public(log, rt.me.member_id, _today(rt))

    @router.post("/{case_id}/{move}", response_model=CasePublic)
    async def move(
        rt: Runtime, outbox: Outbox, case_id: IdPath, move: Move, body: StepBody
    ) -> CasePublic:
        log = await run_in_threadpool(rt.case_step, case_id, MOVES[move], "", body.note)
        await outbox.flush()
        return case_public(log, rt.me.member_id, _today(rt))

    return router
