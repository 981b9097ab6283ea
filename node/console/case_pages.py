"""Investigation pages: cases and alerts with their life cycle, joint action items, moves.

The list, a case and the overdue actions are what ``/v1/investigations`` answers, made by
the same converters (`node.api.investigations.summary`, `case_public`) on the same
contract clock; the SPC alerts are the overview's (`console.overview`). A move (ack,
accept, decline, close, an action done) is `ContractRuntime.case_step`, the call behind
``POST /v1/investigations/{id}/{move}``, followed by an outbox flush so the peer hears of
it; a move the case's state does not allow is refused by the runtime (409), one of the
other party's (or of an action someone else owns) too (403). The page offers only the
moves the case's rule table (`connector.investigation.STEPS`) allows this member now.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from qdspace.connector.investigation import MAX_ID, STEPS, Party, QualityCase, Step, overdue
from qdspace.node.api.investigations import MOVES, case_public, row_summary
from qdspace.node.console.auth import form_of
from qdspace.node.console.render import Console, Endpoint, segment
from qdspace.node.console.trace_pages import checked_text
from qdspace.node.member_ids import peer_name
from qdspace.node.runtime.contracts import ContractRuntime

#: the longest note a move carries from the console (the case's own bound is larger)
MAX_NOTE = 1000
#: the cases the investigations page lists, the most recently updated (a node keeps
#: thousands; `GET /v1/investigations` pages through all of them)
SHOWN_CASES = 50


def allowed_moves(case: QualityCase, me: str) -> list[str]:
    """The moves (``MOVES`` keys) the case's rule table lets ``me`` make now."""
    party = Party.OPENER if me == case.opener_id else Party.RECEIVER
    return [
        name
        for name, step in MOVES.items()
        if case.state in STEPS[step].sources and STEPS[step].by is party
    ]


def routes(console: Console) -> list[tuple[str, Endpoint, str]]:
    ctx = console.ctx
    root = console.root

    def runtime() -> ContractRuntime:
        if ctx.contracts is None:
            raise HTTPException(503, "this node runs no contract machinery")
        return ctx.contracts

    def listing() -> dict[str, Any]:
        from qdspace.node.console.overview import newest_alerts

        rt = runtime()
        me, today = rt.me.member_id, rt.clock.now().date()
        late = [(c, a) for c in rt.store.cases.overdue_cases(today) for a in overdue(c, today)]
        shown = rt.store.cases.case_rows(today, limit=SHOWN_CASES)
        alerts, alert_count = newest_alerts(ctx)
        return {
            "cases": [row_summary(r, me) for r in shown],
            "case_count": rt.store.cases.count_cases(),
            "overdue": [
                {"case_id": c.case_id, "subject": c.terms.subject, "action": a, "owner": a.owner_id}
                for c, a in late
            ],
            "alerts": alerts,
            "alert_count": alert_count,
            "today": today.isoformat(),
        }

    async def cases_page(request: Request) -> Response:
        found = await run_in_threadpool(listing)
        return console.page(request, "investigations.html", "investigations", **found)

    def case_view(case_id: str) -> dict[str, Any]:
        rt = runtime()
        me = rt.me.member_id
        log = rt.store.cases.find_case(case_id)
        public = case_public(log, me, rt.clock.now().date())
        return {
            "c": public,
            "moves": allowed_moves(log.case, me),
            "me": me,
            "names": {m: peer_name(m) for m in (log.case.opener_id, log.case.receiver_id)},
        }

    def case_id_of(request: Request) -> str:
        return checked_text(str(request.path_params["case_id"]), "case id", MAX_ID)

    async def case_page(request: Request) -> Response:
        found = await run_in_threadpool(case_view, case_id_of(request))
        return console.page(request, "case.html", "investigations", **found)

    async def step(request: Request, case_id: str, move: Step, action_id: str) -> Response:
        form = await form_of(request)
        note = form.get("note", "")
        if len(note) > MAX_NOTE or not all(ch.isprintable() or ch == "\n" for ch in note):
            raise HTTPException(400, f"note: at most {MAX_NOTE} printable characters")
        rt = runtime()
        await run_in_threadpool(rt.case_step, case_id, move, action_id, note)
        if ctx.outbox is not None:
            await ctx.outbox.flush()
        return RedirectResponse(f"{root}/investigations/{segment(case_id)}", status_code=303)

    async def move(request: Request) -> Response:
        name = str(request.path_params["move"])
        if name not in MOVES:
            raise HTTPException(404, f"move: {name[:40]!r} is none of {', '.join(MOVES)}")
        return await step(request, case_id_of(request), MOVES[name], "")

    async def action_done(request: Request) -> Response:
        action_id = checked_text(str(request.path_params["action_id"]), "action id", MAX_ID)
        return await step(request, case_id_of(request), Step.ACTION_DONE, action_id)

    return [
        ("/investigations", cases_page, "GET"),
        ("/investigations/{case_id}", case_page, "GET"),
        ("/investigations/{case_id}/actions/{action_id}/done", action_done, "POST"),
        ("/investigations/{case_id}/{move}", move, "POST"),
    ]
