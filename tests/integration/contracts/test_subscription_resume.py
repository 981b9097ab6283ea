"""A live subscription outlives its stream: two real nodes, each restarted under it.

SunArc subscribes to Cellex's live inspections (gRPC, mutual TLS). Cellex restarts: the
stream breaks, SunArc's subscription says it is reconnecting and opens the stream again
by itself, and a row Cellex stores afterwards arrives. SunArc restarts while Cellex
stores two more rows: the restarted node resumes the subscription (its id kept) after the
last row it holds, so the rows stored while it was down arrive, in order, none twice.
Ended by the operator, a subscription stops and no restart brings it back; a provider's
final refusal (its agreement terminated) ends one without a retry. Before, a provider's
restart ended a subscription for good and a consumer's restart forgot it.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from qdspace.node.cli import app
from qdspace.node.localnet.network import LocalNetwork

from .conftest import oem_and_supplier, ok, wait_for

pytestmark = pytest.mark.integration

SPC = "spc-monitoring"
ORDER = "PO-RESUME-0001"
#: the first row after SunArc's restart, far beyond the limits rows 1 and 2 set: an SPC
#: alert only if the resumed monitor judges with the baseline kept from before (else it
#: would be the first value of a new baseline)
OUTLIER = 3


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    for network in oem_and_supplier(tmp_path_factory, "subscription-resume"):
        order = {"order_id": ORDER, "customer": "sunarc", "supplier": "cellex",
                 "product": "mono PERC cell M10", "quantity": 1000, "status": "open",
                 "opened_at": "2026-10-19T06:00:00Z"}  # fmt: skip
        with network["cellex"].client() as supplier:
            ok(supplier.post("/v1/ingest/order", json={"rows": [order]}))
        yield network


def inspection(tag: str, i: int) -> dict[str, Any]:
    at = datetime(2026, 11, 20, tzinfo=UTC) + timedelta(seconds=i)
    return {
        "inspection_id": f"RES-{tag}-{i:03d}",
        "station": "EL-1",
        "inspected_at": at.isoformat(),
        "verdict": "pass",
        "score": 0.9 if i == OUTLIER else round(0.1 + 0.01 * (i % 3), 4),
        "model_version": "el-2026.11",
        "order_id": ORDER,
        "batch_id": "CX-RES-1",
    }


def store_rows(net: LocalNetwork, tag: str, *numbers: int) -> None:
    rows = [inspection(tag, i) for i in numbers]
    with net["cellex"].client() as supplier:
        assert ok(supplier.post("/v1/ingest/inspection", json={"rows": rows}))["accepted"] == len(
            rows
        )


def held(net: LocalNetwork, agreement_id: str, tag: str) -> list[str]:
    """The tagged inspections SunArc holds under the agreement, in the order they came."""
    with net["sunarc"].client() as oem:
        rows = ok(oem.get("/v1/contracts/received", params={"agreement_id": agreement_id}))
    ids = [r["inspection_id"] for r in rows["rows"]]
    return [i for i in ids if i.startswith(f"RES-{tag}-")]


def expected(tag: str, *numbers: int) -> list[str]:
    return [f"RES-{tag}-{i:03d}" for i in numbers]


def alerts_of(net: LocalNetwork, name: str, which: str) -> list[dict[str, Any]]:
    with net[name].client() as client:
        return ok(client.get("/v1/contracts/alerts", params={"limit": 50}))[which]  # type: ignore[no-any-return]


def live_agreement(net: LocalNetwork) -> str:
    with net["sunarc"].client(timeout=60) as oem:
        body = {"peer": "cellex", "asset_id": "live-inspections", "purposes": [SPC],
                "orders": [ORDER]}  # fmt: skip
        agreement = ok(oem.post("/v1/contracts/negotiations", json=body))
    assert agreement["state"] == "FINALIZED", agreement
    return str(agreement["agreement_id"])


def subscribe(net: LocalNetwork, agreement_id: str) -> str:
    with net["sunarc"].client(timeout=60) as oem:
        # a baseline of two values: the monitor's limits are set by the first two rows
        body = {"agreement_id": agreement_id, "purpose": SPC, "baseline_size": 2}
        sub = ok(oem.post("/v1/contracts/subscriptions", json=body))
    assert sub["state"] == "streaming" and sub["error"] == "", sub
    return str(sub["subscription_id"])


def subscription(net: LocalNetwork, sid: str) -> dict[str, Any]:
    with net["sunarc"].client() as oem:
        return ok(oem.get(f"/v1/contracts/subscriptions/{sid}"))  # type: ignore[no-any-return]


def test_a_subscription_reconnects_after_the_providers_restart_and_resumes_after_its_own(
    net: LocalNetwork,
) -> None:
    tag = uuid.uuid4().hex[:6]
    agreement = live_agreement(net)
    sid = subscribe(net, agreement)
    store_rows(net, tag, 1)
    wait_for("the first live row", lambda: held(net, agreement, tag) == expected(tag, 1))

    # the provider restarts: the stream breaks, the consumer says so and opens it again
    assert net.stop(["cellex"]) == {"cellex": 0}
    broken = wait_for(
        "the consumer to see the stream break",
        lambda: (s := subscription(net, sid))["state"] == "reconnecting" and s,
    )
    assert broken["running"] and broken["error"], broken
    # a line leader looking at the chart sees it is not live now, and why
    console = net["sunarc"].client(token="")
    try:
        assert (
            console.post("/console/login", data={"token": net["sunarc"].token}).status_code == 303
        )
        page = console.get("/console/spc").text
    finally:
        console.close()
    assert '<span class="stream-status" role="status">reconnecting: ' in page, page[:3000]
    net.start(["cellex"])
    wait_for(
        "the stream opened again, by itself",
        lambda: subscription(net, sid)["state"] == "streaming",
        timeout=90,  # the pause doubles while cellex is down: up to 60 s
    )
    store_rows(net, tag, 2)
    wait_for("the row stored after the restart", lambda: len(held(net, agreement, tag)) >= 2)
    again = subscription(net, sid)
    assert again["reconnects"] >= 1 and again["error"] == "", again
    assert held(net, agreement, tag) == expected(tag, 1, 2)
    # the baseline its monitor took from rows 1 and 2 is kept for a resumed monitor
    engine = create_engine(net["sunarc"].db_url)
    try:
        with engine.connect() as connection:
            centre, sigma = connection.execute(
                text("SELECT centre, sigma FROM contract_subscription WHERE subscription_id = :s"),
                {"s": sid},
            ).one()
    finally:
        engine.dispose()
    assert math.isclose(centre, 0.115) and math.isclose(sigma, 0.01 / 1.128, rel_tol=1e-3)

    # the consumer restarts: rows stored meanwhile arrive after it, in order, none twice
    assert net.stop(["sunarc"]) == {"sunarc": 0}
    store_rows(net, tag, 3, 4)
    net.start(["sunarc"])
    resumed = wait_for(
        "the subscription resumed by the restarted node",
        lambda: (s := subscription(net, sid))["received"] >= 4 and s,
    )
    assert resumed["resumed"] and resumed["state"] == "streaming", resumed
    store_rows(net, tag, 5)
    wait_for("the row after the resume", lambda: len(held(net, agreement, tag)) >= 5)
    time.sleep(1.0)  # a stream that started over would have re-sent rows 1-4 by now
    assert held(net, agreement, tag) == expected(tag, 1, 2, 3, 4, 5)
    now = subscription(net, sid)
    assert now["received"] == 5  # 1 and 2 before the restart (kept), 3, 4 and 5 since
    # row 3 is judged with the baseline kept from before the restart: an alert, kept
    rules = [a["rule"] for a in now["alerts"]]  # beyond 3 sigma, and above the USL (Cpk)
    assert sorted(rules) == ["CPK", "WE1"] and now["alerts_total"] == 2, now
    alert = now["alerts"][rules.index("WE1")]
    wait_for(
        "the alert at the provider",
        lambda: alert["alert_id"] in {a["alert_id"] for a in alerts_of(net, "cellex", "received")},
    )

    # no one but SunArc's operator ends it: no token, Cellex's operator token
    for token in ("", net["cellex"].token):
        with net["sunarc"].client(token=token) as other:
            refused = other.delete(f"/v1/contracts/subscriptions/{sid}")
        assert refused.status_code in (401, 403), refused.text
    assert subscription(net, sid)["state"] == "streaming"
    # ended by the operator: it stops, and a restart does not bring it back
    with net["sunarc"].client() as oem:
        ended = ok(oem.delete(f"/v1/contracts/subscriptions/{sid}"))
        assert ended == {"subscription_id": sid, "reason": "ended by the operator"}
        again_ended = oem.delete(f"/v1/contracts/subscriptions/{sid}")
        assert again_ended.status_code == 404, again_ended.text
        by_cli = CliRunner().invoke(
            app, ["unsubscribe", "--dir", str(net["sunarc"].directory), sid]
        )
        assert by_cli.exit_code == 1 and f"no running subscription {sid}" in by_cli.output
        unknown = oem.delete("/v1/contracts/subscriptions/sub-not-here")
        assert unknown.status_code == 404 and "sub-not-here" in unknown.text
        bad = oem.delete("/v1/contracts/subscriptions/" + "x" * 300)
        assert bad.status_code in (400, 404, 422), bad.text
    stopped = subscription(net, sid)
    assert stopped["state"] == "ended" and not stopped["running"], stopped
    assert net.stop(["sunarc"]) == {"sunarc": 0}
    net.start(["sunarc"])
    with net["sunarc"].client() as oem:
        listed = [s["subscription_id"] for s in ok(oem.get("/v1/contracts/subscriptions"))]
    assert sid not in listed
    # what it raised outlives it and the restart: the consumer's own record of its alerts
    assert alert in alerts_of(net, "sunarc", "raised")
    store_rows(net, tag, 6)
    time.sleep(1.5)
    assert held(net, agreement, tag) == expected(tag, 1, 2, 3, 4, 5)


def test_a_terminated_agreement_ends_its_subscription_without_retrying(
    net: LocalNetwork,
) -> None:
    agreement = live_agreement(net)
    sid = subscribe(net, agreement)
    with net["sunarc"].client() as oem:
        body = {"reason": "supplier changed"}
        ok(oem.post(f"/v1/contracts/agreements/{agreement}/terminate", json=body))
    ended = wait_for(
        "the provider's refusal to end the subscription",
        lambda: (s := subscription(net, sid))["state"] == "ended" and s,
    )
    assert ended["reconnects"] == 0 and "PERMISSION_DENIED" in ended["error"], ended
    assert net.stop(["sunarc"]) == {"sunarc": 0}
    net.start(["sunarc"])
    with net["sunarc"].client() as oem:
        listed = [s["subscription_id"] for s in ok(oem.get("/v1/contracts/subscriptions"))]
    assert sid not in listed  # ended for good: not resumed


def test_rows_stored_before_any_arrived_reach_a_resumed_subscription(net: LocalNetwork) -> None:
    """No row had come when SunArc stopped: the subscription resumes after the position
    Cellex's first heartbeat named (kept as ``since``), not from "now" at the restart."""
    tag = uuid.uuid4().hex[:6]
    agreement = live_agreement(net)
    sid = subscribe(net, agreement)
    assert net.stop(["sunarc"]) == {"sunarc": 0}
    store_rows(net, tag, 1, 2)
    net.start(["sunarc"])
    wait_for("the rows stored while SunArc was down", lambda: len(held(net, agreement, tag)) >= 2)
    assert held(net, agreement, tag) == expected(tag, 1, 2)
    assert subscription(net, sid)["resumed"]
