"""Two real nodes trading over the DSP 2025-1 binding alone: catalog, negotiation,
transfer over the HTTP data plane (rows equal to what the release gate lets out),
completion, a live stream with suspension, resume and termination."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from qdspace.connector import dsp_transfer as wire
from qdspace.connector.dsp_data import DataReader, LiveRows
from qdspace.node.cli import app
from qdspace.node.localnet.network import LocalNetwork

from .conftest import ingest_sample, ok, runtime_of, wait_for
from .peer import peer_with_callbacks

pytestmark = pytest.mark.integration

GRANTED = {
    "inspection_id", "station", "inspected_at", "verdict", "defect_class", "score",
    "model_version", "order_id", "serial", "batch_id",
}  # fmt: skip


def negotiation(oem: httpx.Client, provider: str, dataset: str, **narrowed: Any) -> Any:
    """A DSP negotiation (on the published offer, or ``narrowed``) once it ended."""
    body = {"provider_url": provider, "dataset_id": dataset, **narrowed}
    nid = ok(oem.post("/v1/dsp/negotiations", json=body))["negotiation_id"]

    def done() -> Any:
        items = ok(oem.get("/v1/contracts/negotiations"))
        mine = [n for n in items if n["negotiation_id"] == nid]
        return mine and mine[0]["state"] in ("FINALIZED", "TERMINATED") and mine[0]

    return wait_for("the DSP negotiation", done)


def negotiate(oem: httpx.Client, provider: str, dataset: str, **narrowed: Any) -> str:
    """A DSP negotiation to FINALIZED; returns the agreement id."""
    finished = negotiation(oem, provider, dataset, **narrowed)
    assert finished["state"] == "FINALIZED", finished
    return str(finished["agreement_id"])


def transfer_state(oem: httpx.Client, tid: str) -> dict[str, Any]:
    return ok(oem.get(f"/v1/dsp/transfers/{tid}"))  # type: ignore[no-any-return]


def completed(oem: httpx.Client, tid: str) -> dict[str, Any]:
    """The transfer's state once it ended, asserted COMPLETED."""
    done: dict[str, Any] = wait_for(
        "the DSP transfer to complete",
        lambda: (s := transfer_state(oem, tid))["state"] in ("COMPLETED", "TERMINATED") and s,
        timeout=60,
    )
    assert done["state"] == "COMPLETED", done
    return done


def start_live_transfer(oem: httpx.Client, provider: str) -> tuple[str, str]:
    """A live-inspections agreement over DSP and the consumer's transfer under it, started
    with its data address; returns (agreement id, transfer id)."""
    agreement = negotiate(oem, provider, "live-inspections")
    tid = ok(oem.post("/v1/dsp/transfers", json={"agreement_id": agreement}))["transfer_id"]
    wait_for(
        "the live transfer to start",
        lambda: (s := transfer_state(oem, tid))["state"] == "STARTED" and s["delivery"],
    )
    return agreement, tid


def received(oem: httpx.Client, agreement_id: str) -> dict[str, Any]:
    params: dict[str, Any] = {"agreement_id": agreement_id, "limit": 100_000}
    return ok(oem.get("/v1/contracts/received", params=params))  # type: ignore[no-any-return]


def gate_rows(net: LocalNetwork) -> set[str]:
    """The inspections the release gate lets out to SunArc under the catalog offer: those of
    the orders SunArc placed with Cellex (read from Cellex's own database)."""
    engine = create_engine(net["cellex"].db_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT i.inspection_id FROM qdm_inspection i JOIN qdm_order o "
                    "ON o.order_id = i.order_id WHERE o.customer = 'sunarc'"
                )
            ).all()
    finally:
        engine.dispose()
    return {r.inspection_id for r in rows}


def test_pull_transfer_over_dsp_alone(dsp_net: LocalNetwork) -> None:
    ingest_sample(dsp_net, "cellex")
    cellex = runtime_of(dsp_net, "cellex")["dsp"]
    with dsp_net["sunarc"].client() as oem:
        agreement = negotiate(oem, cellex, "inspections")
        started = ok(oem.post("/v1/dsp/transfers", json={"agreement_id": agreement}))
        tid = started["transfer_id"]
        assert started["role"] == "consumer" and started["provider_pid"].startswith("urn:uuid:")
        done = completed(oem, tid)
        got = received(oem, agreement)
    with dsp_net["cellex"].client() as supplier:
        theirs = {t["transfer_id"]: t for t in ok(supplier.get("/v1/contracts/transfers"))}
    with dsp_net["sunarc"].client() as oem:
        mine = {t["transfer_id"]: t for t in ok(oem.get("/v1/contracts/transfers"))}
    provider_side = theirs[tid]  # one local id on both sides: the consumer's pid
    assert provider_side["state"] == mine[tid]["state"] == "COMPLETED"
    assert provider_side["offset"] == mine[tid]["offset"] == done["offset"]
    assert provider_side["digest"] == mine[tid]["digest"]  # the same chain, checked per batch
    rows = got["rows"]
    assert got["total"] == len(rows) == done["offset"] > 0
    assert {r["inspection_id"] for r in rows} == gate_rows(dsp_net)
    for row in rows:
        assert set(row) - {"@key", "@v"} <= GRANTED  # image hashes etc. stay home
        assert "image_hash" not in row


def inspection_row(tag: str, i: int, order: str) -> dict[str, Any]:
    return {
        "inspection_id": f"DSP-{tag}-{i:03d}",
        "station": "EL-1",
        "inspected_at": datetime(2026, 12, 2, 6, 0, i, tzinfo=UTC).isoformat(),
        "verdict": "pass",
        "score": 0.1,
        "model_version": "el-live-1",
        "image_hash": "ab" * 32,
        "order_id": order,
        "batch_id": "CX-CB-260012",
    }


def test_live_stream_suspend_resume_terminate_over_dsp(dsp_net: LocalNetwork) -> None:
    ingest_sample(dsp_net, "cellex")
    cellex = runtime_of(dsp_net, "cellex")["dsp"]
    tag = uuid.uuid4().hex[:8]
    with dsp_net["sunarc"].client() as oem, dsp_net["cellex"].client() as supplier:
        agreement, tid = start_live_transfer(oem, cellex)
        order = _sunarc_order(supplier)

        def post(i: int) -> None:
            rows = {"rows": [inspection_row(tag, i, order)]}
            assert ok(supplier.post("/v1/ingest/inspection", json=rows))["accepted"] == 1

        def have(n: int) -> Any:
            ids = [r["inspection_id"] for r in received(oem, agreement)["rows"]]
            return len([i for i in ids if i.startswith(f"DSP-{tag}")]) >= n and ids

        post(1)
        wait_for("the first live row", lambda: have(1), timeout=30)

        suspended = ok(oem.post(f"/v1/dsp/transfers/{tid}/suspend", json={"reason": "pause"}))
        assert suspended["state"] == "SUSPENDED"
        wait_for(
            "the provider to see the suspension",
            lambda: _provider_state(supplier, tid) == "SUSPENDED",
        )
        post(2)  # while suspended: held back, delivered after the resume (nothing lost)
        resumed = ok(oem.post(f"/v1/dsp/transfers/{tid}/resume"))
        assert resumed["transfer_id"] == tid
        wait_for("STARTED again", lambda: transfer_state(oem, tid)["state"] == "STARTED")
        post(3)
        ids = wait_for("the live rows after the resume", lambda: have(3), timeout=30)
        mine = [i for i in ids if i.startswith(f"DSP-{tag}")]
        assert mine == [f"DSP-{tag}-{i:03d}" for i in (1, 2, 3)]  # in order, none twice

        # the provider suspends and resumes too (its resume hands out a new data address)
        paused = ok(supplier.post(f"/v1/dsp/transfers/{tid}/suspend", json={"reason": "audit"}))
        assert paused["state"] == "SUSPENDED" and paused["role"] == "provider"
        wait_for(
            "the consumer to be told", lambda: transfer_state(oem, tid)["state"] == "SUSPENDED"
        )
        post(4)
        assert ok(supplier.post(f"/v1/dsp/transfers/{tid}/resume"))["state"] == "STARTED"
        wait_for("STARTED at the consumer", lambda: transfer_state(oem, tid)["state"] == "STARTED")
        post(5)
        ids = wait_for("the rows after the provider's resume", lambda: have(5), timeout=30)
        mine = [i for i in ids if i.startswith(f"DSP-{tag}")]
        assert mine == [f"DSP-{tag}-{i:03d}" for i in (1, 2, 3, 4, 5)]

        ended = ok(oem.post(f"/v1/dsp/transfers/{tid}/terminate", json={"reason": "done"}))
        assert ended["state"] == "TERMINATED"
        wait_for(
            "the provider to see the termination",
            lambda: _provider_state(supplier, tid) == "TERMINATED",
        )
        r = oem.post(f"/v1/dsp/transfers/{tid}/resume")
        assert r.status_code == 409, r.text


def test_a_live_stream_carries_rows_stored_before_the_first_connection(
    dsp_net: LocalNetwork,
) -> None:
    """A live transfer starts when the provider starts it, not when the consumer's first
    GET of the data address reaches it: a row stored in between is delivered."""
    ingest_sample(dsp_net, "cellex")
    cellex = runtime_of(dsp_net, "cellex")["dsp"]
    tag = uuid.uuid4().hex[:8]
    with (
        dsp_net["sunarc"].client() as oem,
        dsp_net["cellex"].client() as supplier,
        peer_with_callbacks(dsp_net, "sunarc", "cellex") as (peer, callbacks),
    ):
        agreement = negotiate(oem, cellex, "live-inspections")
        cpid = f"urn:uuid:{uuid.uuid4()}"
        ok(peer.post("/transfers/request", wire.request_message(cpid, agreement, callbacks.url)))

        def start() -> Any:
            with callbacks.lock:
                return next(
                    (b for p, b in callbacks.received if p == f"/transfers/{cpid}/start"), None
                )

        address = wire.read_data_address(wait_for("the TransferStartMessage", start))
        assert address is not None and address.delivery == wire.STREAM
        rows = {"rows": [inspection_row(tag, 1, _sunarc_order(supplier))]}
        assert ok(supplier.post("/v1/ingest/inspection", json=rows))["accepted"] == 1

        reader, seen = DataReader(cpid), []
        auth = {"authorization": f"Bearer {address.token}"}
        deadline = time.monotonic() + 20  # four heartbeats
        with peer.http.stream("GET", address.endpoint, headers=auth) as body:
            assert body.status_code == 200
            for chunk in body.iter_bytes():
                for group in reader.feed(chunk):
                    assert isinstance(group, LiveRows)
                    seen += [json.loads(r.payload)["inspection_id"] for r in group.rows]
                if f"DSP-{tag}-001" in seen or time.monotonic() > deadline:
                    break
        assert f"DSP-{tag}-001" in seen, seen


def _provider_state(supplier: httpx.Client, tid: str) -> str:
    theirs = {t["transfer_id"]: t for t in ok(supplier.get("/v1/contracts/transfers"))}
    return str(theirs[tid]["state"])


SUNARC_ORDER = "PO-2026-0042"  # the order SunArc placed with Cellex in the sample data


def _sunarc_order(supplier: httpx.Client) -> str:
    return SUNARC_ORDER


def test_the_cli_drives_a_dsp_transfer(dsp_net: LocalNetwork) -> None:
    ingest_sample(dsp_net, "cellex")
    runner = CliRunner()
    oem = str(dsp_net["sunarc"].directory)
    cellex = runtime_of(dsp_net, "cellex")["dsp"]
    asked = runner.invoke(
        app, ["dsp", "negotiate", "--dir", oem, cellex, "inspections", "--wait", "--json"]
    )
    assert asked.exit_code == 0, asked.output
    agreed = json.loads(asked.output)
    assert agreed["state"] == "FINALIZED" and agreed["provider_pid"], agreed
    agreement = agreed["agreement_id"]
    # narrowed, to an order that is not SunArc's: the provider's reason, exit 1
    refused = runner.invoke(
        app,
        ["dsp", "negotiate", "--dir", oem, cellex, "inspections", "--wait",
         "--purpose", "quality-assurance", "--order", "PO-2026-0043"],
    )  # fmt: skip
    assert refused.exit_code == 1 and "TERMINATED" in refused.output, refused.output
    assert "not an order you placed" in refused.output, refused.output
    pulled = runner.invoke(app, ["dsp", "transfer", "--dir", oem, agreement, "--wait", "--json"])
    assert pulled.exit_code == 0, pulled.output
    done = json.loads(pulled.output)
    assert done["state"] == "COMPLETED" and done["offset"] == len(gate_rows(dsp_net))
    shown = runner.invoke(app, ["dsp", "status", "--dir", oem, done["transfer_id"]])
    assert shown.exit_code == 0 and "COMPLETED" in shown.output, shown.output
    late = runner.invoke(app, ["dsp", "suspend", "--dir", oem, done["transfer_id"]])
    assert late.exit_code == 1 and "409" in late.output, late.output
