"""What an operator's monitoring sees of two real member nodes: metrics, probes, log lines.

SunArc (text logs, the default) and Cellex (``QDSPACE_LOG_FORMAT=json``) agree on Cellex's
inspections and SunArc pulls them. The scrape of each node then shows the HTTP histogram
of the routes called, the gRPC histogram of the pull, and transfer counters equal to the
rows moved; a live subscription is gauged on both sides and its rows counted as they
stream. A request id sent to SunArc travels to Cellex in gRPC metadata and is in
Cellex's JSON log line of that call. Last, the revocation list is let run past its
nextUpdate, and ``/readyz`` answers 503 naming the ``crl`` check (then recovers).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from qdspace.node.identity.authority import Authority
from qdspace.node.localnet.network import LocalNetwork, MemberProcess, MemberSpec

from .conftest import ok

pytestmark = [pytest.mark.integration]

QA = "quality-assurance"
SPC = "spc-monitoring"
STREAMED = 6
ORDER = "PO-OBS-0001"
ROWS = 45
HTTP = "qdspace_http_request_duration_seconds"
GRPC = "qdspace_grpc_server_handling_seconds"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    network = LocalNetwork(
        tmp_path_factory.mktemp("observe"),
        [MemberSpec("sunarc", "oem"), MemberSpec("cellex", "supplier")],
        chain=False,
    )
    network.create()
    try:
        network.start(["sunarc"])
        network.env = {**network.env, "QDSPACE_LOG_FORMAT": "json"}  # Cellex only
        network.start(["cellex"])
        yield network
    finally:
        network.stop()


def public_get(member: MemberProcess, path: str) -> httpx.Response:
    """GET ``path`` on the member's operator API (TLS, verified) without a credential."""
    with member.client(timeout=10, token="") as anonymous:
        return anonymous.get(path)


def scrape(member: MemberProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the node's ``/metrics``, read without a credential."""
    response = public_get(member, "/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def inspection(i: int, prefix: str = "OBS") -> dict[str, Any]:
    at = datetime(2026, 11, 20, tzinfo=UTC) + timedelta(seconds=i)
    return {
        "inspection_id": f"{prefix}-{i:04d}",
        "station": "EL-1",
        "inspected_at": at.isoformat().replace("+00:00", "Z"),
        "verdict": "pass" if i % 9 else "fail",
        "score": round((i % 100) / 250, 4),
        "model_version": "el-2026.11",
        "order_id": ORDER,
        "batch_id": "CX-OBS-1",
    }


def test_metrics_count_the_routes_called_and_the_rows_transferred(net: LocalNetwork) -> None:
    sunarc, cellex = net["sunarc"], net["cellex"]
    before = scrape(sunarc)
    with sunarc.client() as client:
        for _ in range(3):
            ok(client.get("/v1/node"))
        assert client.get("/v1/contracts/agreements/agr-secret-1").status_code == 404
    order = {
        "order_id": ORDER,
        "customer": "sunarc",
        "supplier": "cellex",
        "product": "mono PERC cell M10",
        "quantity": 1000,
        "status": "open",
        "opened_at": "2026-10-19T06:00:00Z",
    }
    with cellex.client() as supplier:
        ok(supplier.post("/v1/ingest/order", json={"rows": [order]}))
        body = "".join(json.dumps(inspection(i)) + "\n" for i in range(ROWS)).encode()
        stored = ok(
            supplier.post(
                "/v1/ingest/inspection",
                content=body,
                headers={"content-type": "application/x-ndjson"},
            )
        )
        assert stored["accepted"] == ROWS
    with sunarc.client(timeout=60) as oem:
        agreement = ok(
            oem.post(
                "/v1/contracts/negotiations",
                json={
                    "peer": "cellex",
                    "asset_id": "inspections",
                    "purposes": [QA],
                    "orders": [ORDER],
                },
            )
        )
        assert agreement["state"] == "FINALIZED", agreement
        start = {
            "agreement_id": agreement["agreement_id"],
            "purpose": QA,
            "order_id": ORDER,
            "batch_rows": 10,
        }
        tid = ok(oem.post("/v1/contracts/transfers", json=start))["transfer_id"]
        done = ok(oem.get(f"/v1/contracts/transfers/{tid}", params={"wait_s": 60}))
        assert done["state"] == "COMPLETED", done
    assert done["offset"] == ROWS

    after, provider = scrape(sunarc), scrape(cellex)
    count = HTTP + "_count"
    node = {"route": "/v1/node", "method": "GET", "status": "200"}
    assert value(after, count, **node) - value(before, count, **node) == 3
    assert value(after, HTTP + "_sum", **node) > 0
    missing = {"route": "/v1/contracts/agreements/{agreement_id}", "method": "GET", "status": "404"}
    assert value(after, count, **missing) == 1
    # no label carries an id: the agreement, the transfer and the id asked for are nowhere
    text = public_get(sunarc, "/metrics").text
    for secret in ("agr-secret-1", agreement["agreement_id"], tid):
        assert secret not in text

    rows = "qdspace_transfer_rows_total"
    assert value(provider, rows, direction="sent", mode="pull") == ROWS
    assert value(after, rows, direction="received", mode="pull") == ROWS
    assert (
        value(provider, "qdspace_transfer_bytes_total", direction="sent", mode="pull") > ROWS * 50
    )
    assert (
        value(after, "qdspace_transfer_bytes_total", direction="received", mode="pull") > ROWS * 50
    )
    pulls = value(provider, GRPC + "_count", method="/qdspace.v1.Transfer/Pull", code="OK")
    assert pulls >= 1
    negotiation = [
        k for k in provider if k[0] == GRPC + "_count" and "Negotiation" in dict(k[1])["method"]
    ]
    assert negotiation, "the negotiation's calls are timed at the provider"
    assert value(after, "qdspace_contract_outbox_backlog") >= 0
    # the disk the node keeps free for its own records (min_free_disk_mib, 1024 by default)
    assert value(after, "qdspace_database_disk_kept_free_bytes") == 1024 * 1024 * 1024
    free = shutil.disk_usage(net["sunarc"].directory).free
    assert abs(value(after, "qdspace_database_disk_free_bytes") - free) < 0.05 * free
    assert value(after, "qdspace_live_subscriptions", side="consumer") == 0
    # when the member certificate ends, to alert on before peers refuse it
    ends = net["sunarc"].keys().identity.not_after.timestamp()
    assert value(after, "qdspace_member_certificate_expiry_timestamp_seconds") == ends


def test_live_subscriptions_are_gauged_and_their_rows_counted(net: LocalNetwork) -> None:
    sunarc, cellex = net["sunarc"], net["cellex"]
    live = "qdspace_live_subscriptions"
    with sunarc.client(timeout=60) as oem:
        agreement = ok(
            oem.post(
                "/v1/contracts/negotiations",
                json={
                    "peer": "cellex",
                    "asset_id": "live-inspections",
                    "purposes": [SPC],
                    "orders": [ORDER],
                },
            )
        )
        assert agreement["state"] == "FINALIZED", agreement
        body = {"agreement_id": agreement["agreement_id"], "purpose": SPC}
        sid = ok(oem.post("/v1/contracts/subscriptions", json=body))["subscription_id"]
    assert value(scrape(sunarc), live, side="consumer") == 1
    assert value(scrape(cellex), live, side="provider") == 1
    with cellex.client() as supplier:
        for i in range(STREAMED):
            row = inspection(i, prefix="OBS-LIVE")
            assert ok(supplier.post("/v1/ingest/inspection", json={"rows": [row]}))["accepted"]
    deadline = time.monotonic() + 30
    with sunarc.client() as oem:
        while ok(oem.get(f"/v1/contracts/subscriptions/{sid}"))["received"] < STREAMED:
            assert time.monotonic() < deadline, "the live rows did not arrive"
            time.sleep(0.1)
    rows = "qdspace_transfer_rows_total"
    assert value(scrape(cellex), rows, direction="sent", mode="stream") == STREAMED
    assert value(scrape(sunarc), rows, direction="received", mode="stream") == STREAMED
    # both ends count the events' bytes as they crossed the wire (the provider's serialised
    # events, the consumer's undecoded ones): the same bytes, heartbeats in neither
    sent = value(scrape(cellex), "qdspace_transfer_bytes_total", direction="sent", mode="stream")
    got = value(scrape(sunarc), "qdspace_transfer_bytes_total", direction="received", mode="stream")
    assert sent == got > STREAMED * 50


def test_spc_alerts_raised_on_live_data_are_counted_by_rule(net: LocalNetwork) -> None:
    """A planted excursion after a calm baseline raises alerts; the counter agrees with them."""
    sunarc, cellex = net["sunarc"], net["cellex"]
    rows = []
    for i in range(26):  # 22 calm points (20 make the baseline), then four far above them
        row = inspection(1000 + i, prefix="OBS-SPC")
        row["score"] = 0.45 if i >= 22 else round(0.02 + 0.002 * (i % 5), 4)
        rows.append(row)
    with cellex.client() as supplier:  # the order's first row: the provider knows the order
        assert ok(supplier.post("/v1/ingest/inspection", json={"rows": rows[:1]}))["accepted"]
    with sunarc.client(timeout=60) as oem:
        agreement = ok(
            oem.post(
                "/v1/contracts/negotiations",
                json={"peer": "cellex", "asset_id": "live-inspections", "purposes": [SPC],
                      "orders": [ORDER]},
            )
        )  # fmt: skip
        assert agreement["state"] == "FINALIZED", agreement
        body = {"agreement_id": agreement["agreement_id"], "purpose": SPC}
        sid = ok(oem.post("/v1/contracts/subscriptions", json=body))["subscription_id"]
    with cellex.client() as supplier:
        for row in rows[1:]:
            assert ok(supplier.post("/v1/ingest/inspection", json={"rows": [row]}))["accepted"]
    deadline = time.monotonic() + 30
    with sunarc.client() as oem:
        while not (sub := ok(oem.get(f"/v1/contracts/subscriptions/{sid}")))["alerts"]:
            assert time.monotonic() < deadline, f"no SPC alert on the excursion: {sub}"
            time.sleep(0.1)
        # every subscription of the node sees the rows; wait until the counter and the
        # alerts it raised agree (one more may be on its way between the two reads)
        while True:
            raised = ok(oem.get("/v1/contracts/alerts"))["raised"]
            samples = scrape(sunarc)
            total = "qdspace_spc_alerts_total"
            counted = sum(v for (name, _), v in samples.items() if name == total)
            if counted == len(raised) >= 1:
                break
            assert time.monotonic() < deadline, f"{counted} counted, {len(raised)} raised"
            time.sleep(0.2)
    rules = {
        dict(labels)["rule"] for (name, labels) in samples if name == "qdspace_spc_alerts_total"
    }
    assert {a["rule"] for a in raised} <= rules


def test_a_request_id_is_echoed_and_logged_by_the_peer_it_reaches(net: LocalNetwork) -> None:
    sunarc, cellex = net["sunarc"], net["cellex"]
    request_id = f"obs-{time.time_ns()}"
    with sunarc.client() as client:
        response = client.post("/v1/peers/cellex/hello", headers={"X-Request-Id": request_id})
        ok(response)
        assert response.headers["x-request-id"] == request_id
        made = client.get("/v1/node")
        assert len(made.headers["x-request-id"]) == 32  # one is made when none is sent

    def logged() -> list[dict[str, Any]]:
        lines = cellex.log_path.read_text(errors="replace").splitlines()
        records = [json.loads(line) for line in lines if line.startswith("{")]
        return [r for r in records if r.get("request_id") == request_id]

    deadline = time.monotonic() + 10
    while not logged() and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = logged()
    assert lines, "the request id reached Cellex's JSON log"
    assert any("/qdspace.v1.Node/Hello" in r["message"] for r in lines), lines
    assert all({"time", "level", "logger", "message"} <= set(r) for r in lines)
    # SunArc keeps the text format
    text = sunarc.log_path.read_text(errors="replace").splitlines()
    assert text and not any(line.startswith("{") for line in text)


def test_probes_answer_and_readyz_names_a_stale_revocation_list(net: LocalNetwork) -> None:
    sunarc = net["sunarc"]
    assert public_get(sunarc, "/livez").json()["status"] == "ok"
    started = public_get(sunarc, "/startupz")
    assert started.status_code == 200, started.text
    assert set(started.json()["checks"]) == {"migrations", "listeners"}
    ready = public_get(sunarc, "/readyz")
    assert ready.status_code == 200, ready.text
    assert {k: v["ok"] for k, v in ready.json()["checks"].items()} == {
        "database": True,
        "crl": True,
    }

    authority = Authority.load(net.authority_dir)
    try:
        authority.issue_crl(dt.timedelta(seconds=2))
        time.sleep(3.5)
        stale = public_get(sunarc, "/readyz")
        assert stale.status_code == 503, stale.text
        body = stale.json()
        assert body["status"] == "failing"
        assert body["checks"]["crl"]["ok"] is False
        assert "revocation list" in body["checks"]["crl"]["detail"]
        assert body["checks"]["database"]["ok"] is True
    finally:
        authority.issue_crl()
    assert public_get(sunarc, "/readyz").status_code == 200  # reloaded live
