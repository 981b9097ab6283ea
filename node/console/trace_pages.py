"""Trace pages: the traces this node ran, starting one from a batch, a report as a graph.

The list and a trace's state are what ``/v1/traces`` answers (`node.api.traces`, the same
public model); starting one is `TraceRuns.start` with a `Selection` of one batch, as
``POST /v1/traces`` does, and the answer comes at once: the page then polls a small
panel (htmx) until the report is in. The report is drawn by `trace_graph` and listed:
ranked causes with their path, evidence and confidence, each member's share of
responsibility, the tiers that did not answer, the report's SHA-256 (anchored as ledger
kind ``trace_report``).
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from qdspace.connector.trace_store import DONE
from qdspace.node.api.traces import _public as trace_public
from qdspace.node.console.auth import form_of
from qdspace.node.console.render import Console, Endpoint, segment
from qdspace.node.console.trace_graph import trace_svg
from qdspace.node.runtime.trace_runs import Selection, TraceRuns

#: the newest traces the list shows
TRACES_SHOWN = 100
MAX_TRACE_ID = 64


def checked_text(value: str, what: str, limit: int = MAX_TRACE_ID) -> str:
    """A form field or path part: 1 to ``limit`` printable characters, or a 400."""
    value = value.strip()
    if not value or len(value) > limit or not value.isprintable():
        raise HTTPException(400, f"{what}: 1 to {limit} printable characters")
    return value


def routes(console: Console) -> list[tuple[str, Endpoint, str]]:
    ctx = console.ctx
    root = console.root

    def runs() -> TraceRuns:
        if ctx.traces is None:
            raise HTTPException(503, "this node runs no traces (no contract machinery)")
        return ctx.traces

    def listing() -> list[Any]:
        store = runs().store
        return [trace_public(t) for t in store.summaries(limit=TRACES_SHOWN, newest_first=True)]

    async def traces_page(request: Request) -> Response:
        traces = await run_in_threadpool(listing)
        return console.page(request, "traces.html", "traces", traces=traces)

    async def start(request: Request) -> Response:
        form = await form_of(request)
        batch = checked_text(form.get("batch", ""), "batch")
        defect = form.get("defect_class", "").strip()
        selection = Selection(
            batch=batch, defect_class=checked_text(defect, "defect class") if defect else None
        )
        trace_id = await runs().start(selection)
        return RedirectResponse(f"{root}/traces/{segment(trace_id)}", status_code=303)

    def view(trace_id: str) -> dict[str, Any]:
        stored = runs().get(trace_id)
        report = stored.report_json() if stored.state == DONE else None
        causes = [] if report is None else report.get("causes", [])
        shares = {} if report is None else report.get("responsibility", {})
        return {
            "t": trace_public(stored),
            "report": report,
            "causes": causes,
            "shares": sorted(shares.items(), key=lambda kv: -kv[1]),
            "graph": "" if report is None else trace_svg(report),
        }

    async def trace_page(request: Request) -> Response:
        trace_id = checked_text(str(request.path_params["trace_id"]), "trace id")
        found = await run_in_threadpool(view, trace_id)
        return console.page(request, "trace.html", "traces", **found)

    async def trace_panel(request: Request) -> Response:
        trace_id = checked_text(str(request.path_params["trace_id"]), "trace id")
        found = await run_in_threadpool(view, trace_id)
        return console.page(request, "_trace_panel.html", **found)

    return [
        ("/traces", traces_page, "GET"),
        ("/traces/start", start, "POST"),
        ("/traces/{trace_id}", trace_page, "GET"),
        ("/traces/{trace_id}/panel", trace_panel, "GET"),
    ]
