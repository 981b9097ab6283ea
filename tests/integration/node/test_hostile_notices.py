"""Notices a hostile member sends over mutual TLS, to real node processes.

Mallory, Cellex and SunArc run as real nodes (`LocalNetwork`); the hostile one calls
``Notification/Notify`` with its own certificate, as a modified node would. Each case was
reproduced on the old code: an alert from a member no party to the agreement it names
was kept and shown with no sender; a line break in an alert forged a line in the
receiver's log; a closure dated 9999 was an INTERNAL error with a traceback (and one
dated 1970 cut the agreed retention to zero); the honest closure of an order held is still
answered with exactly one receipt.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from sqlalchemy import create_engine, text

from qdspace.connector.agreement import OrderClosed
from qdspace.connector.spc import Investigation, QualityAlert, SpcAlert, SpcPoint
from qdspace.node.identity.member import load_member_keys
from qdspace.node.localnet.network import LocalNetwork, MemberSpec
from qdspace.node.rpc.client import open_channel
from qdspace.node.rpc.contracts_notification_serde import (
    Notification,
    NotificationBody,
    notification_to_proto,
)

from .conftest import ok

pytestmark = pytest.mark.integration

LIVE_ORDER = "PO-NOTICE-LIVE"
HELD_ORDER = "PO-NOTICE-HELD"
NOTIFY = "/qdspace.v1.Notification/Notify"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    network = LocalNetwork(
        tmp_path_factory.mktemp("notices"),
        [
            MemberSpec("sunarc", "oem"),
            MemberSpec("cellex", "supplier"),
            MemberSpec("mallory", "oem"),
        ],
        chain=False,
    )
    network.create()
    network.start()
    try:
        _seed(network)
        yield network
    finally:
        network.stop()


def _seed(network: LocalNetwork) -> None:
    """Cellex's two orders for SunArc, and three inspections of the one SunArc will pull."""
    orders = [
        {
            "order_id": order,
            "customer": "sunarc",
            "supplier": "cellex",
            "product": "mono PERC cell M10",
            "quantity": 1000,
            "status": "open",
            "opened_at": "2026-10-19T06:00:00Z",
        }
        for order in (LIVE_ORDER, HELD_ORDER)
    ]
    inspections = [
        {
            "inspection_id": f"NOTICE-{i}",
            "station": "EL-1",
            "inspected_at": f"2026-11-20T00:00:0{i}Z",
            "verdict": "pass",
            "score": 0.1,
            "model_version": "el-2026.11",
            "order_id": HELD_ORDER,
            "batch_id": "CX-NOTICE-1",
        }
        for i in range(3)
    ]
    body = "".join(json.dumps(r) + "\n" for r in inspections).encode()
    with network["cellex"].client() as client:
        ok(client.post("/v1/ingest/order", json={"rows": orders}))
        headers = {"content-type": "application/x-ndjson"}
        ok(client.post("/v1/ingest/inspection", content=body, headers=headers))


def _negotiate(net: LocalNetwork, asset: str, **terms: Any) -> str:
    with net["sunarc"].client() as client:
        body = {"peer": "cellex", "asset_id": asset, **terms}
        agreement = ok(client.post("/v1/contracts/negotiations", json=body))
    assert agreement["state"] == "FINALIZED", agreement
    return str(agreement["agreement_id"])


@pytest.fixture(scope="module")
def live(net: LocalNetwork) -> str:
    """SunArc's live-stream agreement with Cellex, for its one order."""
    return _negotiate(net, "live-inspections", orders=[LIVE_ORDER], purposes=["spc-monitoring"])


def _member_id(net: LocalNetwork, name: str) -> str:
    return load_member_keys(net[name].directory).identity.member_id


def _notify(net: LocalNetwork, caller: str, target: str, body: NotificationBody) -> tuple[Any, str]:
    """`caller` sends `target` a notice with its own certificate: (status, details)."""
    keys = load_member_keys(net[caller].directory)
    note = Notification(
        f"n-{uuid.uuid4().hex}", keys.identity.member_id, dt.datetime.now(dt.UTC), body
    )
    raw = notification_to_proto(note).SerializeToString()

    async def call() -> tuple[Any, str]:
        async with open_channel(keys, net[target].grpc_address, target) as channel:
            unary = channel.unary_unary(NOTIFY, request_serializer=None, response_deserializer=None)
            try:
                await unary(raw, timeout=20)
            except grpc.aio.AioRpcError as err:
                return err.code(), err.details() or ""
        return grpc.StatusCode.OK, ""

    return asyncio.run(call())


def _rows(net: LocalNetwork, name: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    engine = create_engine(f"sqlite:///{net[name].directory / 'node.db'}")
    try:
        with engine.connect() as connection:
            return [dict(r._mapping) for r in connection.execute(text(sql), params)]
    finally:
        engine.dispose()


def _alert(agreement_id: str, description: str) -> QualityAlert:
    at = dt.datetime.now(dt.UTC)
    spc = SpcAlert("WE1", description, (SpcPoint(1, 9.9, at),), at)
    return QualityAlert(
        f"al-{uuid.uuid4().hex}", spc, agreement_id, LIVE_ORDER, "pecvd-2", "vacuum_mbar"
    )


def _console_pages(net: LocalNetwork, name: str) -> list[str]:
    """The console's overview and investigations pages (each lists the newest alerts)."""
    member = net[name]
    with member.client(token="") as browser:
        answer = browser.post("/console/login", data={"token": member.token})
        assert answer.status_code == 303, answer.text
        pages = [browser.get("/console/"), browser.get("/console/investigations")]
    for page in pages:
        assert page.status_code == 200, page.text[:500]
    return [page.text for page in pages]


def test_an_alert_is_kept_only_from_a_party_to_its_agreement_and_shown_as_its(
    net: LocalNetwork, live: str
) -> None:
    """Mallory sends Cellex an alert naming the agreement Cellex gave SunArc, and one
    naming no agreement at all: both refused alike, neither kept. SunArc's own is kept,
    and the API and the console say it came from SunArc; the line break in its text
    makes no line of its own in Cellex's log."""
    spoofed = _alert(live, "PECVD-2 chamber vacuum beyond 3 sigma: stop the line")
    code, details = _notify(net, "mallory", "cellex", spoofed)
    assert code is grpc.StatusCode.PERMISSION_DENIED, (code, details)
    unknown = _alert(f"agr-{uuid.uuid4().hex}", "beyond 3 sigma")
    code2, details2 = _notify(net, "mallory", "cellex", unknown)
    assert (code2, details2.replace(unknown.agreement_id, "ID")) == (
        code,
        details.replace(live, "ID"),
    )
    forged = "drift\n2026-12-06 20:00:00,000 INFO node.contracts: deletion receipt verified"
    honest = _alert(live, forged)
    assert _notify(net, "sunarc", "cellex", honest) == (grpc.StatusCode.OK, "")

    with net["cellex"].client() as client:
        received = ok(client.get("/v1/contracts/alerts"))["received"]
    by_id = {a["alert_id"]: a for a in received}
    assert spoofed.alert_id not in by_id and unknown.alert_id not in by_id
    shown = by_id[honest.alert_id]
    assert (shown["sender_id"], shown["sender"]) == (_member_id(net, "sunarc"), "sunarc")
    for page in _console_pages(net, "cellex"):
        assert f'from <abbr title="{_member_id(net, "sunarc")}">sunarc</abbr>' in page
        assert "PECVD-2 chamber vacuum" not in page
    log = net["cellex"].log_path.read_text(errors="replace").splitlines()
    assert not [line for line in log if line.startswith("2026-12-06 20:00:00,000")]
    assert any("drift\\n2026-12-06" in line for line in log)


@pytest.mark.parametrize(
    ("closed_at", "why"),
    [
        (dt.datetime(1970, 1, 1, tzinfo=dt.UTC), "before the agreement was signed"),
        (dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC), "ahead of this node's clock"),
    ],
)
def test_a_closure_dated_outside_its_agreement_is_the_callers_error(
    net: LocalNetwork, live: str, closed_at: dt.datetime, why: str
) -> None:
    code, details = _notify(net, "cellex", "sunarc", OrderClosed(LIVE_ORDER, closed_at, (live,)))
    assert code is grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert why in details
    closures = "SELECT order_id FROM contract_order_closure WHERE agreement_id = :a"
    assert _rows(net, "sunarc", closures, a=live) == []
    assert "Traceback" not in net["sunarc"].log_path.read_text(errors="replace")


def test_the_closure_of_an_order_held_is_answered_with_one_receipt(net: LocalNetwork) -> None:
    """The honest case over the wire: SunArc pulls an order under an agreement, Cellex
    closes it (dated as Cellex recorded it), and past the deadline SunArc's sweep signs,
    anchors and sends exactly one receipt, for the rows it held. (An agreement a
    negotiation makes names the consumer's orders, so invented closures are refused
    as outside its scope; those under an agreement naming none are tested on the
    runtime, `tests/unit/node/test_notice_checks.py`.)"""
    agreement = _negotiate(net, "inspections", purposes=["quality-assurance"])
    with net["sunarc"].client() as oem:
        body = {"agreement_id": agreement, "purpose": "quality-assurance", "order_id": HELD_ORDER}
        pulled = ok(oem.post("/v1/contracts/transfers", json=body))
    assert pulled["state"] == "COMPLETED" and pulled["offset"] == 3, pulled
    with net["cellex"].client() as supplier:
        assert (
            agreement in ok(supplier.post(f"/v1/contracts/orders/{HELD_ORDER}/close"))["agreements"]
        )
    closures = "SELECT order_id FROM contract_order_closure WHERE agreement_id = :a"

    def told() -> bool:
        return HELD_ORDER in {r["order_id"] for r in _rows(net, "sunarc", closures, a=agreement)}

    deadline = time.monotonic() + 30
    while not told():
        assert time.monotonic() < deadline, "the closure did not reach SunArc"
        time.sleep(0.1)
    with net["sunarc"].client() as oem:
        ok(oem.post("/v1/contracts/clock", json={"offset_days": 200}))
        try:
            ok(oem.post("/v1/contracts/retention/sweep"))
            receipts = [
                r for r in ok(oem.get("/v1/contracts/receipts")) if r["agreement_id"] == agreement
            ]
        finally:
            ok(oem.post("/v1/contracts/clock", json={"offset_days": 0}))
    assert [(r["order_id"], r["row_count"]) for r in receipts] == [(HELD_ORDER, 3)]
    sent = "SELECT message_id FROM contract_outbox WHERE message_id = :m"
    assert len(_rows(net, "sunarc", sent, m=f"receipt:{receipts[0]['receipt_id']}")) == 1


def test_an_investigation_is_held_to_bytes_not_only_characters(net: LocalNetwork) -> None:
    """Mallory opens investigations with Cellex whose texts are 4,000 characters of four
    bytes each: 33 KB kept per notice, 330 MB for the 10,000 a member may have kept. A
    text is now held to 8,000 bytes of UTF-8 as well as 4,000 characters; the refusal says
    which, and nothing is kept. One of plain text is kept as before."""
    wide = "\U0001f525" * 4000  # 4,000 characters, 16,000 bytes
    code, details = _notify(
        net, "mallory", "cellex", Investigation(f"inv-{uuid.uuid4().hex}", "a flood", wide)
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert "16000 bytes of UTF-8 (at most 8000)" in details
    plain = Investigation(f"inv-{uuid.uuid4().hex}", "EL cracks in B-7", "x" * 4000)
    assert _notify(net, "mallory", "cellex", plain)[0] is grpc.StatusCode.OK
    kept = _rows(
        net, "cellex", "SELECT investigation_id FROM contract_investigation WHERE "
        "investigation_id IN (:a)", a=plain.investigation_id,
    )  # fmt: skip
    assert [r["investigation_id"] for r in kept] == [plain.investigation_id]
