"""The metrics' label rule: bounded label sets only, whatever paths and ids callers send.

A scrape needs no credential, so a label must never carry a peer's name or an agreement
id: the HTTP histogram is labelled by route *template*, a path no route knows is one
series, an unusual method is ``OTHER``. Request ids are echoed, and a caller's id that
is not a short token is replaced rather than logged.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from qdspace.node.api.observe import ObserveRequests
from qdspace.node.metrics import UNMATCHED_ROUTE, NodeMetrics


class RefuseSecret:
    """Stands in for the bearer gate: answers before routing, so no route is in the scope."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/secret/"):
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)


def make_app(metrics: NodeMetrics) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/peers/{name}/hello")
    def hello(name: str) -> dict[str, str]:
        return {"name": name}

    @app.get("/v1/secret/{agreement_id}")
    def secret(agreement_id: str) -> dict[str, str]:
        return {"id": agreement_id}

    router = APIRouter(prefix="/v1/contracts")

    @router.get("/agreements/{agreement_id}")
    def agreement(agreement_id: str) -> dict[str, str]:
        return {"id": agreement_id}

    app.include_router(router)
    app.add_middleware(RefuseSecret)
    app.add_middleware(ObserveRequests, metrics=metrics, routes=lambda: app.router.routes)
    return app


def call(app: FastAPI, method: str, path: str, headers: dict[str, str] | None = None) -> Any:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            return await client.request(method, path, headers=headers)

    return asyncio.run(go())


def route_counts(metrics: NodeMetrics) -> dict[tuple[str, str, str], float]:
    counts = {}
    for family in metrics.registry.collect():
        if family.name != "qdspace_http_request_duration_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_count"):
                labels = sample.labels
                counts[(labels["route"], labels["method"], labels["status"])] = sample.value
    return counts


def test_labels_are_route_templates_never_the_ids_in_the_path() -> None:
    metrics = NodeMetrics()
    app = make_app(metrics)
    for name in ("cellex", "sunarc", "mallory"):
        assert call(app, "POST", f"/v1/peers/{name}/hello").status_code == 200
    for agreement_id in ("agr-1", "agr-2"):
        assert call(app, "GET", f"/v1/contracts/agreements/{agreement_id}").status_code == 200
        assert call(app, "GET", f"/v1/secret/{agreement_id}").status_code == 401
    for n in range(5):
        assert call(app, "GET", f"/scan/{n}/wp-admin.php").status_code == 404
    assert call(app, "BREW", "/v1/peers/x/hello").status_code == 405

    assert route_counts(metrics) == {
        ("/v1/peers/{name}/hello", "POST", "200"): 3,
        ("/v1/contracts/agreements/{agreement_id}", "GET", "200"): 2,
        ("/v1/secret/{agreement_id}", "GET", "401"): 2,  # refused before routing
        (UNMATCHED_ROUTE, "GET", "404"): 5,
        ("/v1/peers/{name}/hello", "OTHER", "405"): 1,
    }
    exposed = " ".join(str(k) for k in route_counts(metrics))
    for secret in ("cellex", "sunarc", "mallory", "agr-1", "agr-2", "wp-admin", "BREW"):
        assert secret not in exposed


def test_request_id_is_echoed_or_made_and_a_strange_one_is_replaced() -> None:
    app = make_app(NodeMetrics())
    sent = call(app, "POST", "/v1/peers/a/hello", {"X-Request-Id": "req-42.abc"})
    assert sent.headers["x-request-id"] == "req-42.abc"
    made = call(app, "POST", "/v1/peers/a/hello")
    assert len(made.headers["x-request-id"]) == 32
    odd = call(app, "POST", "/v1/peers/a/hello", {"X-Request-Id": "a b" + "x" * 200})
    assert odd.headers["x-request-id"] != "a b" + "x" * 200
    refused = call(app, "GET", "/v1/secret/s", {"X-Request-Id": "r-1"})
    assert refused.status_code == 401 and refused.headers["x-request-id"] == "r-1"


def test_two_nodes_in_one_process_keep_their_own_counts() -> None:
    first, second = NodeMetrics(), NodeMetrics()
    first.rows("sent", "pull", 7, 700)
    labels = {"direction": "sent", "mode": "pull"}
    assert first.registry.get_sample_value("qdspace_transfer_rows_total", labels) == 7
    assert second.registry.get_sample_value("qdspace_transfer_rows_total", labels) == 0


def test_grpc_calls_are_timed_by_method_and_status_and_carry_the_request_id() -> None:
    import grpc

    from qdspace.node.logs import REQUEST_ID
    from qdspace.node.rpc.observe import ObserveCalls, request_id_interceptors

    metrics = NodeMetrics()
    seen: list[str | None] = []

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen.append(REQUEST_ID.get())
        if request == b"missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        return request

    async def scenario() -> None:
        handler = grpc.method_handlers_generic_handler(
            "test.Echo", {"Say": grpc.unary_unary_rpc_method_handler(echo)}
        )
        server = grpc.aio.server(interceptors=[ObserveCalls(metrics)])
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", interceptors=request_id_interceptors()
            ) as channel:
                say = channel.unary_unary("/test.Echo/Say")
                token = REQUEST_ID.set("req-from-api")
                try:
                    assert await say(b"hi") == b"hi"
                    try:
                        await say(b"missing")
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() is grpc.StatusCode.NOT_FOUND
                finally:
                    REQUEST_ID.reset(token)
                assert await say(b"again") == b"again"  # no id in context: the server makes one
        finally:
            await server.stop(0)

    asyncio.run(scenario())
    count = "qdspace_grpc_server_handling_seconds_count"
    get = metrics.registry.get_sample_value
    assert get(count, {"method": "/test.Echo/Say", "code": "OK"}) == 2
    assert get(count, {"method": "/test.Echo/Say", "code": "NOT_FOUND"}) == 1
    assert seen[:2] == ["req-from-api", "req-from-api"]
    assert seen[2] is not None and seen[2] != "req-from-api"
