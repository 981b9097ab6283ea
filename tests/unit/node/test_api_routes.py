"""Every REST route answers a typed model, and list routes page by cursor."""

from __future__ import annotations

import asyncio
import typing
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.routing import APIRoute

from qdspace.connector.negotiation import Role
from qdspace.connector.transfer import TransferProcess, TransferState
from qdspace.connector.transfer_wire import Checkpoint
from qdspace.node.api.app import create_app
from qdspace.node.api.deps import NEXT_CURSOR_HEADER, decode_cursor, encode_cursor
from qdspace.node.api.ledger import mount_operator_routes
from qdspace.node.api.regulator import regulator_router
from qdspace.node.api.regulator_app import create_regulator_app
from qdspace.node.context import NodeContext


@pytest.fixture(scope="module")
def app(node: NodeContext) -> FastAPI:
    app = create_app(node)
    # the routes a node mounts only when it anchors (not called here: only inspected)
    fake = SimpleNamespace(
        settings=SimpleNamespace(rpc_url="http://127.0.0.1:9"),
        client=SimpleNamespace(address="0x" + "00" * 20),
    )
    mount_operator_routes(app, fake)  # type: ignore[arg-type]
    app.include_router(
        regulator_router(queue=None, client=None, require_regulator=lambda: None)  # type: ignore[arg-type]
    )
    return app


@pytest.fixture(scope="module")
def regulator_app(node: NodeContext) -> FastAPI:
    return create_regulator_app(node)


class Client:
    """A synchronous caller of the app in this process (httpx over ASGI)."""

    def __init__(self, app: FastAPI, token: str) -> None:
        self.app, self.auth = app, {"Authorization": f"Bearer {token}"}

    def get(self, path: str, **params: Any) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://node") as c:
                return await c.get(path, headers=self.auth, params=params)

        return asyncio.run(call())

    def post(self, path: str, body: Any) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://node") as c:
                return await c.post(path, headers=self.auth, json=body)

        return asyncio.run(call())


def api_routes(routes: Any) -> Iterator[APIRoute]:
    """Every APIRoute, also inside included routers (which newer FastAPI keeps whole)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from api_routes(inner.routes)


def _response_class(route: APIRoute) -> Any:
    """The route's response class (a file route answers bytes, not a model)."""
    return getattr(route.response_class, "value", route.response_class)


def _untyped(model: Any) -> bool:
    """A bare ``dict``/``Any`` answer, or one that is a mapping or list of ``Any``."""
    if model is None or model is Any or model is dict or model is list:
        return True
    args = typing.get_args(model)
    return typing.get_origin(model) in (dict, list) and (not args or args[-1] is Any)


def test_every_route_answers_a_typed_model(app: FastAPI) -> None:
    routes = list(api_routes(app.routes))
    assert len(routes) > 40
    untyped = [
        f"{sorted(r.methods)} {r.path}"
        for r in routes
        if _untyped(r.response_model) and _response_class(r) is not FileResponse
    ]
    assert untyped == []


def _calls(dependant: Any) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from _calls(sub)


def test_the_shared_dependencies_run_on_the_event_loop(app: FastAPI) -> None:
    """FastAPI runs a plain ``def`` dependency in its thread pool: a hop to a worker
    thread and back per dependency per request, on every route (a negotiation paid three).
    The shared ones (`node.api.deps`) are coroutine functions, so none of them hops."""
    shared = {
        call
        for route in api_routes(app.routes)
        for call in _calls(route.dependant)
        if getattr(call, "__module__", "") == "qdspace.node.api.deps"
    }
    names = {call.__name__ for call in shared}
    assert {"node_context", "contract_client", "require_operator", "paging"} <= names
    assert sorted(c.__name__ for c in shared if not asyncio.iscoroutinefunction(c)) == []


def test_ledger_routes_are_mounted_by_the_api(app: FastAPI) -> None:
    paths = {r.path for r in api_routes(app.routes)}
    assert "/v1/ledger/leaves/{kind}" in paths  # moved out of runtime/, still mounted


def test_each_listener_mounts_only_its_own_routes(
    node: NodeContext, regulator_app: FastAPI
) -> None:
    operator = {r.path for r in api_routes(create_app(node).routes)}
    assert "/v1/node" in operator and "/metrics" in {
        getattr(r, "path", "") for r in create_app(node).routes
    }
    assert not [p for p in operator if p.startswith("/v1/regulator")]
    regulator = {r.path for r in api_routes(regulator_app.routes)}
    assert regulator == {"/healthz", "/v1/regulator/{rest:path}"}  # this node has no chain


def test_the_regulator_listener_refuses_the_operator_token(
    node: NodeContext, regulator_app: FastAPI
) -> None:
    for path in ("/v1/regulator/passport", "/v1/node"):
        answer = Client(regulator_app, node.operator_token).get(path)
        assert answer.status_code == 403, (path, answer.text)  # not a regulator credential
    assert Client(regulator_app, "").get("/healthz").status_code == 200
    assert Client(regulator_app, "").get("/metrics").status_code == 404  # operator listener


def _every_page(client: Client, path: str, limit: int) -> list[Any]:
    """Every item of a list read ``limit`` at a time, following the cursors; each page
    but the last is full."""
    pages: list[Any] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit} | ({"cursor": cursor} if cursor else {})
        page = client.get(path, **params)
        assert page.status_code == 200, page.text
        pages += page.json()
        cursor = page.headers.get(NEXT_CURSOR_HEADER)
        if cursor is None:
            return pages
        assert len(page.json()) == limit


def test_cursors_page_through_a_list(node: NodeContext, app: FastAPI) -> None:
    client = Client(app, node.operator_token)
    everything = client.get("/v1/contracts/assets")
    assert everything.status_code == 200, everything.text
    assert NEXT_CURSOR_HEADER not in everything.headers
    whole = everything.json()
    assert len(whole) >= 2
    assert _every_page(client, "/v1/contracts/assets", 1) == whole


def test_transfers_page_in_order_made_and_newest_first(node: NodeContext, app: FastAPI) -> None:
    """``GET /v1/contracts/transfers`` reads a page at a time from the store (a consumer
    keeps a transfer per pull): the pages make up the whole list, and ``newest_first``
    gives it the other way round (what ``qdspace contracts`` lists)."""
    assert node.contracts is not None
    store = node.contracts.store
    at = datetime(2026, 6, 1, tzinfo=UTC)
    for i in range(5):
        when = at + timedelta(minutes=i)
        done = Checkpoint(i, b"d" * 32, str(i))
        store.save_transfer(
            None,
            TransferProcess(
                f"trf-page-{i}", "agr-page", Role.CONSUMER, "cellex", "sunarc",
                TransferState.COMPLETED, done, when, when, final=done, purpose="qa",
            ),
        )  # fmt: skip
    client = Client(app, node.operator_token)
    whole = client.get("/v1/contracts/transfers").json()
    assert [t["transfer_id"] for t in whole][-5:] == [f"trf-page-{i}" for i in range(5)]
    assert _every_page(client, "/v1/contracts/transfers", 2) == whole
    newest = client.get("/v1/contracts/transfers", limit=3, newest_first="true")
    assert newest.json() == whole[::-1][:3]


def _hold_agreements(node: NodeContext) -> None:
    """Six agreements with sunarc (two provided by this node, four by cellex; two assets,
    both roles), saved again as a no-op when a test before saved them."""
    from nacl.signing import SigningKey

    from qdspace.connector.agreement import ContractAgreement, countersign, sign_agreement
    from qdspace.node.member_ids import member_id_for
    from qdspace.policies.model import OfferTerms, make_offer, to_agreement

    assert node.contracts is not None
    store = node.contracts.store
    provider, consumer = SigningKey(b"p" * 32), SigningKey(b"c" * 32)
    cellex = member_id_for("cellex", provider.verify_key.encode())
    sunarc = member_id_for("sunarc", consumer.verify_key.encode())
    me = node.keys.identity.member_id
    at = datetime(2026, 6, 1, tzinfo=UTC)
    for i in range(6):
        asset = ("inspections", "traceability")[i % 2]
        giver = me if i < 2 else cellex  # this node provides two of them
        offer = make_offer(f"offer-page-{i}", giver, asset, OfferTerms(frozenset({"qa"})))
        when = at + timedelta(minutes=i)
        terms = ContractAgreement(
            f"agr-page-{i}", f"neg-page-{i}", giver, sunarc, asset,
            to_agreement(offer, f"agr-page-{i}", sunarc), when, when,
        )  # fmt: skip
        signed = countersign(sign_agreement(terms, provider), consumer, provider.verify_key)
        store.save_agreement(signed, (Role.PROVIDER, Role.CONSUMER)[i // 3])


def test_agreements_page_filter_and_refuse_what_names_no_role(
    node: NodeContext, app: FastAPI
) -> None:
    """``GET /v1/contracts/agreements`` reads a page at a time, of one role or asset if
    asked; a role that is none or an asset id that is no id is a 422 problem."""
    _hold_agreements(node)
    client = Client(app, node.operator_token)
    whole = client.get("/v1/contracts/agreements").json()
    ours = [a["agreement_id"] for a in whole if a["agreement_id"].startswith("agr-page-")]
    assert ours == [f"agr-page-{i}" for i in range(6)]
    assert _every_page(client, "/v1/contracts/agreements", 4) == whole
    newest = client.get("/v1/contracts/agreements", limit=2, newest_first="true").json()
    assert newest == whole[::-1][:2]
    found = client.get("/v1/contracts/agreements", role="consumer", asset_id="traceability")
    assert [a["agreement_id"] for a in found.json()] == ["agr-page-3", "agr-page-5"]
    for bad in ({"role": "owner"}, {"asset_id": "x" * 300}, {"asset_id": "a\x01b"}):
        answer = client.get("/v1/contracts/agreements", **bad)
        assert answer.status_code == 422, (bad, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")


def test_duties_page_attention_first_filter_count_and_refuse_what_names_no_status(
    node: NodeContext, app: FastAPI
) -> None:
    """``GET /v1/contracts/duties`` reads a page at a time in SQL, those needing someone
    first if asked, of one status if asked; ``/duties/counts`` counts them per status; a
    status that is none is a 422 problem."""
    _hold_agreements(node)
    assert node.contracts is not None
    store, now = node.contracts.store, node.contracts.clock.now()
    store.record_order_closed("agr-page-0", "PO-7", now - timedelta(days=400))  # overdue
    store.record_order_closed("agr-page-1", "PO-8", now - timedelta(days=1))  # due
    client = Client(app, node.operator_token)
    whole = client.get("/v1/contracts/duties").json()
    assert {"overdue", "due", "pending"} <= {d["status"] for d in whole}
    assert _every_page(client, "/v1/contracts/duties", 2) == whole
    first = _every_page(client, "/v1/contracts/duties?attention_first=true", 2)
    order = ["overdue", "due", "pending", "fulfilled_late", "fulfilled"]
    assert [d["status"] for d in first] == sorted((d["status"] for d in whole), key=order.index)
    assert sorted(first, key=lambda d: (d["agreement_id"], d["order_id"])) == sorted(
        whole, key=lambda d: (d["agreement_id"], d["order_id"])
    )
    pending = client.get("/v1/contracts/duties", status="pending").json()
    assert pending == [d for d in whole if d["status"] == "pending"]
    counts = client.get("/v1/contracts/duties/counts").json()
    assert counts == {s: sum(d["status"] == s for d in whole) for s in order} | {
        "total": len(whole)
    }
    answer = client.get("/v1/contracts/duties", status="late")
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")


def test_received_rows_page_by_cursor_in_the_order_they_came(
    node: NodeContext, app: FastAPI
) -> None:
    """``GET /v1/contracts/received`` reads the rows held under an agreement a page at a
    time: following ``next_cursor`` (and ``X-Next-Cursor``) gives every row once, in the
    order they came, of one order if asked, and rows that come between two pages on a
    later page; the last page names no cursor; ``total`` counts every row held."""
    from qdspace.connector.contract_store import IncomingRow
    from qdspace.policies.canonical import canonical_json

    _hold_agreements(node)
    assert node.contracts is not None
    store, at = node.contracts.store, datetime(2026, 6, 2, tzinfo=UTC)

    def deliver(first: int, count: int) -> None:
        rows = [
            IncomingRow(n, f"PO-{n % 3}", canonical_json({"@key": f"k{n}", "@v": 1, "n": n}))
            for n in range(first, first + count)
        ]
        store.store_received_rows("agr-page-3", "tx-page-rows", rows, at)

    deliver(0, 11)
    client = Client(app, node.operator_token)
    path, mine = "/v1/contracts/received", {"agreement_id": "agr-page-3"}

    def every_page(limit: int, order: str | None = None, between: int = 0) -> list[int]:
        seen: list[int] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = mine | {"limit": limit}
            params |= ({"cursor": cursor} if cursor else {}) | (
                {"order_id": order} if order else {}
            )
            page = client.get(path, **params)
            assert page.status_code == 200, page.text
            body = page.json()
            seen += [row["n"] for row in body["rows"]]
            cursor = body["next_cursor"]
            assert page.headers.get(NEXT_CURSOR_HEADER) == cursor
            if cursor is None:
                return seen
            assert len(body["rows"]) == limit
            if len(seen) <= between:  # rows come in after this page
                deliver(100 + len(seen), 2)

    def whole() -> list[int]:
        body = client.get(path, **mine, limit=1000).json()
        assert body["next_cursor"] is None and body["total"] == len(body["rows"])
        return [row["n"] for row in body["rows"]]

    came = whole()  # a delivery's rows are stored an order at a time
    assert sorted(came) == list(range(11))
    assert every_page(4) == came
    assert every_page(11) == came  # a full last page: one more row read says so
    assert every_page(1, order="PO-1") == [n for n in came if n % 3 == 1]
    seen = every_page(5, between=10)  # two rows come after each of the first two pages
    assert seen == whole() and sorted(seen) == sorted([*range(11), 105, 106, 110, 111])


def test_a_cursor_beyond_any_position_is_a_400_problem(node: NodeContext, app: FastAPI) -> None:
    """A forged cursor for a position past 64 bits (or not a whole number) is refused
    where it is read, on routes that page in SQL too, instead of reaching the driver as
    an overflow (a 500)."""
    import base64
    import json as jsonlib

    from qdspace.node.api.deps import MAX_POSITION

    def forged(position: object) -> str:
        raw = jsonlib.dumps({"o": position}).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    client = Client(app, node.operator_token)
    lists = {
        "/v1/contracts/received": {"agreement_id": "agr-page-3", "limit": 2},
        "/v1/contracts/duties": {"limit": 2},
    }
    for path, params in lists.items():
        for position in (MAX_POSITION + 1, 2**63, 10**30, 1.5, "7", None, True):
            answer = client.get(path, cursor=forged(position), **params)
            assert answer.status_code == 400, (path, position, answer.text)
            assert answer.headers["content-type"].startswith("application/problem+json")
        assert client.get(path, cursor=forged(MAX_POSITION), **params).status_code == 200


def test_closures_page_by_agreement_and_order(node: NodeContext, app: FastAPI) -> None:
    """``GET /v1/contracts/closures`` reads a page at a time from the store, by agreement
    and order; the store reads one agreement's by its key."""
    _hold_agreements(node)
    assert node.contracts is not None
    store, now = node.contracts.store, node.contracts.clock.now()
    for agreement, order in (
        ("agr-page-1", "PO-c2"),
        ("agr-page-0", "PO-c9"),
        ("agr-page-1", "PO-c1"),
    ):
        store.record_order_closed(agreement, order, now)
    client = Client(app, node.operator_token)
    whole = client.get("/v1/contracts/closures").json()
    keys = [(c["agreement_id"], c["order_id"]) for c in whole]
    assert keys == sorted(keys) and ("agr-page-1", "PO-c1") in keys
    assert _every_page(client, "/v1/contracts/closures", 2) == whole
    mine = [c.order_id for c in store.closures("agr-page-1")]
    assert mine == sorted(o for a, o in keys if a == "agr-page-1")
    assert [c.order_id for c in store.closures("agr-page-1", limit=1, offset=1)] == mine[1:2]


def test_the_overviews_links_count_every_agreement_held(node: NodeContext) -> None:
    """The overview's network picture counts agreements in SQL: by peer, what this member
    provides and consumes and how many are active, as reading each one would count."""
    from qdspace.node.console.overview import local_state
    from qdspace.node.member_ids import peer_name

    _hold_agreements(node)
    assert node.contracts is not None
    me = node.keys.identity.member_id
    want: dict[str, list[int]] = {}
    for held in node.contracts.store.agreements():
        terms = held.signed.agreement
        mine = terms.provider_id == me
        counts = want.setdefault(
            peer_name(terms.consumer_id if mine else terms.provider_id), [0, 0, 0]
        )
        counts[0 if mine else 1] += 1
        counts[2] += int(held.active)
    links = {k.peer: [k.provides, k.consumes, k.active] for k in local_state(node).links}
    assert {peer: counts for peer, counts in links.items() if any(counts)} == want


def test_the_overview_lists_the_newest_alerts_and_counts_them_all(node: NodeContext) -> None:
    """The overview (and the investigations page) shows the newest `SHOWN_ALERTS` alerts
    received, oldest first, and the count of all, reading no more than those."""
    from qdspace.connector.spc import QualityAlert, SpcAlert, SpcPoint
    from qdspace.node.console.overview import SHOWN_ALERTS, local_state

    assert node.contracts is not None
    store, at = node.contracts.store, datetime(2026, 6, 3, tzinfo=UTC)
    before = store.notices.count_received_alerts()
    point = (SpcPoint(0, 0.9, at),)
    for i in range(SHOWN_ALERTS + 7):
        alert = QualityAlert(f"ov-{i}", SpcAlert("RULE_1", "beyond 3 sigma", point, at))
        store.notices.record_alert("sunarc", alert, at + timedelta(seconds=i))
    state = local_state(node)
    assert state.alert_count == before + SHOWN_ALERTS + 7
    assert [a.alert_id for a in state.alerts] == [f"ov-{i}" for i in range(7, SHOWN_ALERTS + 7)]


def test_traces_page_in_the_order_they_were_started(
    node: NodeContext, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``GET /v1/traces`` reads a page at a time (without the reports): the pages make up
    the whole list, in the order the traces were started. (This supplier node runs no
    traces; the route reads the store of the runs it is given.)"""
    from qdspace.connector.trace_store import TraceStore

    store = TraceStore(node.store.engine)
    monkeypatch.setattr(node, "traces", SimpleNamespace(store=store))
    at = datetime(2026, 6, 4, tzinfo=UTC)
    for i in range(5):
        store.start(f"trc-page-{4 - i}", {"batch": f"B-{i}"}, at + timedelta(seconds=i))
    client = Client(app, node.operator_token)
    whole = client.get("/v1/traces").json()
    ours = [t["trace_id"] for t in whole if t["trace_id"].startswith("trc-page-")]
    assert ours == [f"trc-page-{4 - i}" for i in range(5)]
    assert _every_page(client, "/v1/traces", 2) == whole


def test_a_forged_cursor_is_a_400_problem(node: NodeContext, app: FastAPI) -> None:
    client = Client(app, node.operator_token)
    for forged in ("not-base64!", encode_cursor(1)[:-2], "eyJvIjotMX0"):
        answer = client.get("/v1/contracts/assets", cursor=forged)
        assert answer.status_code == 400, (forged, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
    assert decode_cursor(encode_cursor(7)) == 7


def test_a_domain_error_maps_through_the_table(node: NodeContext, app: FastAPI) -> None:
    """An unknown agreement: `UnknownContractError` -> NOT_FOUND -> 404 problem."""
    client = Client(app, node.operator_token)
    answer = client.get("/v1/contracts/agreements/agr-none")
    assert answer.status_code == 404, answer.text
    assert answer.json()["type"].endswith("/not-found")
    unknown = client.get("/v1/contracts/negotiations/neg-none")
    assert unknown.status_code == 404 and "neg-none" in unknown.text, unknown.text
    bent = client.get("/v1/contracts/negotiations/" + "n" * 300)  # past an id's length
    assert 400 <= bent.status_code < 500 and "Traceback" not in bent.text, bent.text


def test_a_no_ledger_node_answers_regulators_503(regulator_app: FastAPI) -> None:
    routes = api_routes(regulator_app.routes)
    route = next(r for r in routes if r.path == "/v1/regulator/{rest:path}")
    assert route.status_code == 503


def test_the_defects_p_chart_route(node: NodeContext, app: FastAPI) -> None:
    """Verdicts with a batch (or a serial whose product has one) become the p-chart; a
    bad window or standard is a 422 naming the field, no verdicts a 404."""
    client = Client(app, node.operator_token)
    empty = client.get("/v1/inspection/defects")
    assert empty.status_code == 404, empty.text
    assert "no inspection verdicts" in empty.json()["detail"]
    rows = [
        {
            "inspection_id": f"api-{b}-{k}",
            "station": "el-1",
            "inspected_at": f"2026-06-01T{6 + b:02d}:00:{k:02d}+00:00",
            "verdict": "fail" if k < (12 if b == 5 else 1) else "pass",
            "defect_class": "microcrack" if k < (12 if b == 5 else 1) else "none",
            "batch_id": f"B-{b}",
        }
        for b in range(1, 10)
        for k in range(30)
    ]
    report = node.store.ingest_rows("inspection", enumerate(rows, 1))
    assert not report.rejected
    answer = client.get("/v1/inspection/defects")
    assert answer.status_code == 200, answer.text
    chart = answer.json()
    assert [p["batch_id"] for p in chart["points"]] == [f"B-{b}" for b in range(1, 10)]
    assert chart["centre"] == pytest.approx(20 / 270)
    assert [a["batches"][-1] for a in chart["alerts"] if a["rule"] == "WE1"] == ["B-5"]
    assert chart["points"][4]["by_class"] == {"microcrack": 12}
    window = client.get("/v1/inspection/defects", since="2026-06-01T08:00:00+00:00", standard=0.05)
    assert window.status_code == 200, window.text
    assert window.json()["standard"] and window.json()["points"][0]["batch_id"] == "B-2"
    newest = client.get("/v1/inspection/defects", batches=2)
    assert [p["batch_id"] for p in newest.json()["points"]] == ["B-8", "B-9"], newest.text
    for params, field in (
        ({"since": "2026-06-01T08:00:00"}, "since"),  # no zone
        ({"batches": 0}, "batches"),
        ({"batches": 2001}, "batches"),
        ({"batches": "all"}, "batches"),
        ({"standard": 1.5}, "standard"),
        ({"standard": "nan"}, "standard"),
        ({"station": "x" * 65}, "station"),
    ):
        bad = client.get("/v1/inspection/defects", **params)
        assert bad.status_code == 422, (params, bad.text)
        assert field in bad.text
    backwards = client.get(
        "/v1/inspection/defects", since="2026-06-02T00:00:00Z", until="2026-06-01T00:00:00Z"
    )
    assert backwards.status_code == 422 and "since" in backwards.json()["detail"]


def test_every_integer_query_past_64_bits_is_a_4xx_problem(node: NodeContext, app: FastAPI) -> None:
    """Every whole-number query parameter of every GET route, given a number past 64 bits
    (or hugely negative), is answered with a 4xx problem: none reaches a database driver
    or a range as an overflow (a 500). Path parameters are ids (strings) and bounded."""
    _hold_agreements(node)
    client = Client(app, node.operator_token)
    schema = app.openapi()
    tried = 0
    for path, methods in schema["paths"].items():
        operation = methods.get("get")
        if operation is None or "{" in path:
            continue
        params = operation.get("parameters", [])
        required = {
            p["name"]: ("agr-page-3" if p["schema"].get("type") == "string" else "1")
            for p in params
            if p.get("required") and p["in"] == "query"
        }
        for p in params:
            kinds = [p["schema"].get("type")] + [
                s.get("type") for s in p["schema"].get("anyOf", [])
            ]
            if p["in"] != "query" or "integer" not in kinds:
                continue
            for value in (str(2**63), str(-(2**63) - 1), "9" * 30):
                answer = client.get(path, **(required | {p["name"]: value}))
                if answer.status_code == 503 and "this node runs no" in answer.text:
                    continue  # a part this node runs without (its contract client, FL)
                tried += 1
                assert 400 <= answer.status_code < 500, (path, p["name"], value, answer.text)
    assert tried >= 10, tried


#: instants with a zone whose UTC value leaves years 1-9999
OUT_OF_RANGE = ("9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+14:00")


def test_times_outside_the_years_1_to_9999_in_utc_are_4xx_naming_the_field(
    node: NodeContext, app: FastAPI
) -> None:
    """Valid ISO 8601 with a zone, but a year 10000 or 0 in UTC: the defects chart, a
    trace and a withdrawal's key answered 500 (an OverflowError where the database was
    asked, or where the key was read); now 4xx saying which field and why."""
    client = Client(app, node.operator_token)
    for when in OUT_OF_RANGE:
        answer = client.get("/v1/inspection/defects", since=when)
        assert answer.status_code == 422, answer.text
        assert "since" in answer.text and "years 1 to 9999" in answer.text
        body = {"since": when, "until": "2020-01-01T00:00:00Z"}
        answer = client.post("/v1/traces", body)
        assert answer.status_code in (422, 503), answer.text  # 503: no trace service here
        if answer.status_code == 422:
            assert "years 1 to 9999" in answer.text
        key = {"location": "x", "measured_at": when}
        answer = client.post("/v1/contracts/withdrawals", {"kind": "environment", "key": key})
        assert 400 <= answer.status_code < 500, answer.text
        assert "measured_at" in answer.text


def test_a_cursor_at_the_top_of_the_range_is_refused_where_it_is_read() -> None:
    """Every route adds a page and one more row to a cursor's offset: a forged cursor at
    2**63 - 1 overflowed the ledger leaves' LIMIT (a 500). A cursor stands for at most
    2**62 now, so offset + page + 1 fits a 64-bit integer."""
    from qdspace.node.api.deps import (
        MAX_PAGE,
        MAX_POSITION,
        BadCursor,
        decode_cursor,
        encode_cursor,
    )

    assert decode_cursor(encode_cursor(MAX_POSITION)) == MAX_POSITION
    assert MAX_POSITION + MAX_PAGE + 1 < 2**63
    with pytest.raises(BadCursor):
        decode_cursor(encode_cursor(MAX_POSITION + 1))
