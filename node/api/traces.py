"""Operator REST endpoints of root-cause traces (``/v1/traces``).

Start a trace from a module batch, serials or a time window of failed inspections (the
answer comes at once with the trace id; the tiers are asked in the background), read a
trace's state, and its report: the ranked causes with their path, evidence, confidence,
each member's share of responsibility, the timings, the tiers that did not answer, and
the report's SHA-256, which the node anchored as ledger kind ``trace_report``. Bad ids
and windows are a 422 naming the field; a trace that matches nothing here a 400; an
unknown trace a 404; a report asked for before it is finished a 409.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field, JsonValue, StringConstraints
from starlette.concurrency import run_in_threadpool

from qdspace.connector.trace_store import StoredTrace, TraceSummary
from qdspace.node.api.bodies import Body
from qdspace.node.api.deps import Ctx, Paging, require_operator
from qdspace.node.api.models import BodyDatetime
from qdspace.node.api.problems import ApiProblem
from qdspace.node.runtime.trace_runs import MAX_SERIALS, Selection, TraceRuns

TraceText = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")
]


class NoTraces(ApiProblem):
    status = 503


class StartBody(Body):
    batch: TraceText | None = None
    serials: list[TraceText] = Field(default_factory=list, max_length=MAX_SERIALS)
    since: BodyDatetime | None = None
    until: BodyDatetime | None = None
    defect_class: TraceText | None = None


class TracePublic(BaseModel):
    trace_id: str
    state: str
    started_at: datetime
    finished_at: datetime | None
    selection: dict[str, Any]
    report_sha256: str | None
    error: str | None


class TraceReportPublic(BaseModel):
    """A finished trace's report (`connector.trace_report`: ranked causes, paths, evidence,
    confidence, responsibility, timings) and the SHA-256 of its bytes as anchored."""

    report_sha256: str | None
    report: dict[str, JsonValue]


def _public(stored: StoredTrace | TraceSummary) -> TracePublic:
    return TracePublic(
        trace_id=stored.trace_id,
        state=stored.state,
        started_at=stored.started_at,
        finished_at=stored.finished_at,
        selection=stored.selection,
        report_sha256=stored.report_sha256,
        error=stored.error,
    )


def _runs(ctx: Ctx) -> TraceRuns:
    if ctx.traces is None:
        raise NoTraces("this node runs no traces (no contract machinery)")
    return ctx.traces


Runs = Annotated[TraceRuns, Depends(_runs)]


def traces_router() -> APIRouter:
    router = APIRouter(
        prefix="/v1/traces", dependencies=[Depends(require_operator)], tags=["traces"]
    )

    @router.post("", response_model=TracePublic)
    async def start(runs: Runs, body: StartBody) -> TracePublic:
        selection = Selection(
            batch=body.batch,
            serials=tuple(body.serials),
            since=body.since,
            until=body.until,
            defect_class=body.defect_class,
        )
        trace_id = await runs.start(selection)
        return _public(await run_in_threadpool(runs.get, trace_id))

    @router.get("", response_model=list[TracePublic])
    async def list_traces(runs: Runs, page: Paging, response: Response) -> list[TracePublic]:
        """The traces started here, in the order they were started, a page at a time
        (``limit``, ``cursor``), without their reports (``/{trace_id}/report``)."""

        def read(limit: int | None, offset: int) -> list[TracePublic]:
            return [_public(t) for t in runs.store.summaries(limit=limit, offset=offset)]

        return await run_in_threadpool(page.read, read, response)

    @router.get("/{trace_id}", response_model=TracePublic)
    async def status(runs: Runs, trace_id: TraceText) -> TracePublic:
        return _public(await run_in_threadpool(runs.get, trace_id))

    @router.get("/{trace_id}/report", response_model=TraceReportPublic)
    async def report(runs: Runs, trace_id: TraceText) -> TraceReportPublic:
        stored = await run_in_threadpool(runs.get, trace_id)
        return TraceReportPublic(report_sha256=stored.report_sha256, report=stored.report_json())

    return router
