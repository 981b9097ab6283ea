"""What an operator's monitoring reads from the API listener: metrics, probes, request ids.

`ObserveRequests` is the outermost ASGI layer (outside the bearer gate, so a refused
request is timed and carries an id too): it takes the caller's ``X-Request-Id`` or makes
one, returns it in the response, keeps it in the request's context variable for every
log line (`node.logs`), and times the request into the HTTP latency histogram by *route
template*, method and status. Labels are bounded: a path no route matches is one series
(`UNMATCHED_ROUTE`), an unusual method is ``OTHER``.

The probes answer without a credential, like ``/healthz``, and reveal nothing but the
names of their checks:

- ``/livez``: the process answers and its event loop turns;
- ``/readyz``: the database answers ``SELECT 1``, the revocation list is present and
  not past its nextUpdate, the chain answers when the node anchors to one, and a node that
  finds its peers through the authority's member directory holds a verified one (a node
  that never got one cannot reach any peer); 503 with every check's result when one
  fails. The authority service being down later does not fail readiness: the directory
  held stays in force, and the CRL check says when revocations can no longer be known;
- ``/startupz``: the schema is migrated to the code's head and every listener is up.

``/metrics`` is the Prometheus text format of the node's own registry. Gauges of state
kept in the database (outbox backlog, anchoring queue and lag) are read at scrape time,
so the scrape runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qdspace.node.api.models import Liveness, ProbeCheck, ProbeResult
from qdspace.node.context import NodeContext
from qdspace.node.logs import REQUEST_ID, accepted_request_id
from qdspace.node.metrics import UNMATCHED_ROUTE, NodeMetrics

REQUEST_ID_HEADER = "x-request-id"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
PROBE_PATHS = ("/livez", "/readyz", "/startupz", "/metrics")


def route_template(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The template of the route that served (or would serve) the request, never its path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    for candidate in routes:  # a request refused before routing (the gate, a body limit)
        match, _ = candidate.matches(scope)
        if match is not Match.NONE:
            found = getattr(candidate, "path", None)
            if isinstance(found, str):
                return found
    return UNMATCHED_ROUTE


class ObserveRequests:
    """Request id in and out, and the request's latency by route template (module doc)."""

    def __init__(
        self, app: ASGIApp, metrics: NodeMetrics, routes: Callable[[], Sequence[BaseRoute]]
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        asked = None
        for key, value in scope["headers"]:
            if key.lower() == REQUEST_ID_HEADER.encode():
                asked = value.decode("latin-1")
                break
        request_id = accepted_request_id(asked)
        token = REQUEST_ID.set(request_id)
        status = 500  # what the caller gets when the app raises past this layer

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            REQUEST_ID.reset(token)
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            route = route_template(scope, self.routes())
            self.metrics.http_latency.labels(
                route=route, method=method, status=str(status)
            ).observe(elapsed)


def _check(probe: Callable[[], str]) -> ProbeCheck:
    try:
        return ProbeCheck(ok=True, detail=probe())
    except Exception as exc:  # a probe's failure is its result, named in the answer
        return ProbeCheck(ok=False, detail=f"{type(exc).__name__}: {exc}")


def readiness(ctx: NodeContext) -> dict[str, ProbeCheck]:
    """Each readiness check by name and its result (blocking: run in a worker thread)."""

    def database() -> str:
        with ctx.store.engine.connect() as connection:
            connection.execute(text("SELECT 1")).scalar_one()
        return "SELECT 1 answered"

    def crl() -> str:
        path = ctx.revocations.path
        if path is None or not path.exists():
            raise FileNotFoundError(f"revocation list {path} is missing")
        ctx.revocations.check_fresh()
        return f"fresh until {ctx.revocations.next_update.isoformat()}"

    checks = {"database": _check(database), "crl": _check(crl)}
    ledger = ctx.ledger
    if ledger is not None:

        def chain() -> str:
            from qdspace.node.runtime.ledger import probe_chain

            client = ledger.client
            probe = probe_chain(client, client.expected_chain_id, client.held)
            if not probe.reachable:
                raise ConnectionError(probe.error or "chain did not answer")
            return f"block {probe.latest_block} in {probe.ms:.0f} ms"

        checks["chain"] = _check(chain)
    if ctx.settings.authority_url:

        def directory() -> str:
            held = ctx.follower.held if ctx.follower is not None else None
            if held is None:
                raise LookupError(
                    f"no verified member directory from {ctx.settings.authority_url} yet"
                )
            return f"directory serial {held.serial}, {len(held.entries)} members"

        checks["directory"] = _check(directory)
    return checks


def startup(ctx: NodeContext) -> dict[str, ProbeCheck]:
    from qdspace.connector.storage import head_revision

    def migrations() -> str:
        current, head = ctx.store.schema_version(), head_revision()
        if current != head:
            raise RuntimeError(f"schema at {current}, code expects {head}")
        return f"schema at {head}"

    def listeners() -> str:
        if not ctx.serving:
            raise RuntimeError("the gRPC and API listeners are not both up yet")
        return "gRPC and API listeners up"

    return {"migrations": _check(migrations), "listeners": _check(listeners)}


def _answer(checks: dict[str, ProbeCheck]) -> JSONResponse:
    healthy = all(check.ok for check in checks.values())
    body = ProbeResult(status="ok" if healthy else "failing", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)


def sample_node_state(ctx: NodeContext) -> None:
    """Read the database disk's free space, the outbox backlog and the anchoring queue at
    scrape time, when the node has them."""
    metrics = ctx.metrics
    disk = ctx.disk
    if disk is not None:
        metrics.sample_disk(lambda: float(disk.free()), float(disk.min_free))
    contracts = ctx.contracts
    if contracts is not None:
        store = contracts.store
        metrics.sample_outbox(lambda: float(store.outbox_backlog()))
    ledger = ctx.ledger
    if ledger is not None:
        from qdspace.ledger.leaves import KIND_CODES

        queue = ledger.queue
        for kind in KIND_CODES:

            def depth(kind: str = kind) -> float:
                return float(queue.pending(kind).count)

            def lag(kind: str = kind) -> float:
                oldest = queue.pending(kind).oldest_at
                return 0.0 if oldest is None else max(0.0, time.time() - oldest)

            metrics.sample_anchoring(kind, depth, lag)


def mount_observability(app: FastAPI, ctx: NodeContext) -> None:
    """The probes and ``/metrics`` on ``app``, and the request layer around it (outermost)."""
    sample_node_state(ctx)

    @app.get("/livez", response_model=Liveness, tags=["health"])
    async def livez() -> Liveness:
        started = time.perf_counter()
        await asyncio.sleep(0)  # one turn of the event loop
        turn = round((time.perf_counter() - started) * 1000, 3)
        return Liveness(status="ok", loop_turn_ms=turn)

    failing: dict[int | str, dict[str, Any]] = {503: {"model": ProbeResult}}

    @app.get("/readyz", response_model=ProbeResult, responses=failing, tags=["health"])
    async def readyz() -> JSONResponse:
        return _answer(await run_in_threadpool(readiness, ctx))

    @app.get("/startupz", response_model=ProbeResult, responses=failing, tags=["health"])
    async def startupz() -> JSONResponse:
        return _answer(await run_in_threadpool(startup, ctx))

    async def metrics(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        body = await run_in_threadpool(generate_latest, ctx.metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    # a plain route: the Prometheus text format is no JSON model, and no API document
    app.add_route("/metrics", metrics, methods=["GET"], include_in_schema=False)

    app.add_middleware(ObserveRequests, metrics=ctx.metrics, routes=lambda: app.router.routes)
