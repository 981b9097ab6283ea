"""The console's routes: login, overview, SPC (with its event stream); the other pages
come from `contract_pages`, `ledger_pages`, `inspection_pages`, `federation_pages`,
`trace_pages` and `case_pages`.

Routes are thin: they read through the modules that say what a page shows
(`overview`, `spc`, ...) and render a template. Blocking reads run in a worker thread.
An error a route does not handle is answered by the node's fault table
(`qdspace.node.faults`) as a page that says what went wrong, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from qdspace.node.console import (
    case_pages,
    contract_pages,
    federation_pages,
    inspection_pages,
    ledger_pages,
    overview,
    spc,
    trace_pages,
)
from qdspace.node.console.auth import (
    COOKIE,
    SessionGate,
    form_of,
    same_origin,
    session_of,
    set_session_cookie,
    token_matches,
)
from qdspace.node.console.render import SECURITY_HEADERS, Console, Endpoint
from qdspace.node.context import NodeContext

log = logging.getLogger("node.console")
#: the stream sends a comment this often when nothing changed (proxies close idle streams)
KEEPALIVE_S = 15.0


def create_console(ctx: NodeContext, root: str = "/console") -> Starlette:
    """The console app, to be mounted at ``root`` of the operator listener's app."""
    console = Console.build(ctx, root)
    charts = spc.KeptCharts()  # every SPC stream's charts, kept between them

    async def login_form(request: Request) -> Response:
        return console.page(request, "login.html")

    async def login(request: Request) -> Response:
        form = await form_of(request)
        if not same_origin(request):
            return console.page(request, "login.html", status=403, error="cross-origin login")
        if not token_matches(form.get("token", ""), ctx.operator_token):
            return console.page(
                request, "login.html", status=401, error="That is not this node's operator token."
            )
        session = console.sessions.open()
        response = RedirectResponse(f"{root}/", status_code=303)
        set_session_cookie(response, session, root)
        return response

    async def logout(request: Request) -> Response:
        console.sessions.close(session_of(request).session_id)
        response = RedirectResponse(f"{root}/login", status_code=303)
        response.delete_cookie(COOKIE, path=root, secure=True, httponly=True, samesite="strict")
        return response

    async def health_state() -> overview.Overview:
        state = await run_in_threadpool(overview.local_state, ctx)
        state.checks.append(await overview.peer_check(ctx))
        return state

    async def overview_page(request: Request) -> Response:
        state = await health_state()
        svg = overview.network_svg(state.name, state.links)
        return console.page(request, "overview.html", "overview", o=state, network_svg=svg)

    async def health_fragment(request: Request) -> Response:
        return console.page(request, "_health.html", o=await health_state())

    async def spc_page(request: Request) -> Response:
        series = await run_in_threadpool(spc.list_series, ctx)
        return console.page(request, "spc.html", "spc", series=series)

    async def spc_stream(request: Request) -> Response:
        keys = request.query_params.getlist("series")
        await run_in_threadpool(spc.check_keys, ctx, keys)
        views = spc.check_views(keys, request.query_params.getlist("xbar"))

        async def events() -> object:
            seen: dict[str, object] = {}
            quiet = 0.0
            yield b"retry: 1000\n\n"
            while not await request.is_disconnected():
                sent = await run_in_threadpool(
                    lambda: list(spc.changed(ctx, keys, seen, views, charts=charts))
                )
                for event in sent:
                    yield event
                quiet = 0.0 if sent else quiet + spc.TICK_S
                if quiet >= KEEPALIVE_S:
                    quiet = 0.0
                    yield b": keep-alive\n\n"
                await asyncio.sleep(spc.TICK_S)

        headers = {**SECURITY_HEADERS, "x-accel-buffering": "no"}
        return StreamingResponse(
            events(),  # type: ignore[arg-type]
            media_type="text/event-stream",
            headers=headers,
        )

    pages: list[tuple[str, Endpoint, str]] = [
        ("/login", login_form, "GET"),
        ("/login", login, "POST"),
        ("/logout", logout, "POST"),
        ("/", overview_page, "GET"),
        ("/overview/health", health_fragment, "GET"),
        ("/spc", spc_page, "GET"),
        ("/spc/stream", spc_stream, "GET"),
        *contract_pages.routes(console),
        *ledger_pages.routes(console),
        *inspection_pages.routes(console),
        *federation_pages.routes(console),
        *trace_pages.routes(console),
        *case_pages.routes(console),
    ]
    return Starlette(
        routes=console.routes(pages),
        middleware=[Middleware(SessionGate, sessions=console.sessions)],
        exception_handlers={HTTPException: console.not_found},
    )
