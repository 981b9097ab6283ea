"""A DSP consumer asks for less than the provider publishes (real SunArc and Cellex
processes with their DSP listeners): one order, some fields, a shorter retention. Cellex
agrees to the narrowed terms as they stand (no counter-offer round), the agreement names
only that order and those fields, and a DSP transfer under it brings only that order's
rows with only those fields; an order that is not SunArc's ends the negotiation with
Cellex's reason; terms without purposes are refused by SunArc's own API (400)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from qdspace.node.localnet.network import LocalNetwork, MemberSpec

from .conftest import dsp_network, ingest_sample, ok, runtime_of
from .test_dsp_transfer import (
    SUNARC_ORDER,
    completed,
    inspection_row,
    negotiation,
    received,
)

pytestmark = pytest.mark.integration

QA = "quality-assurance"
OTHER_ORDER = "PO-2026-0099"  # a second order SunArc placed with Cellex, made here
FIELDS = ["inspection_id", "order_id", "verdict"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    yield from dsp_network(
        tmp_path_factory, [MemberSpec("sunarc", "oem"), MemberSpec("cellex", "supplier")]
    )


def _constraint(policy: dict[str, Any], name: str) -> Any:
    (permission,) = policy["permission"]
    found = [c["rightOperand"] for c in permission["constraint"] if c["leftOperand"] == name]
    return sorted(found[0]) if found else None


def test_a_narrowed_dsp_request_is_agreed_as_asked_and_bounds_the_transfer(
    pair: LocalNetwork,
) -> None:
    ingest_sample(pair, "cellex")
    order = {
        "order_id": OTHER_ORDER, "customer": "sunarc", "supplier": "cellex",
        "product": "mono PERC cell M10", "quantity": 1000, "status": "open",
        "opened_at": "2026-11-01T06:00:00Z",
    }  # fmt: skip
    with pair["cellex"].client() as supplier:
        ok(supplier.post("/v1/ingest/order", json={"rows": [order]}))
        rows = [inspection_row("OTHER", i, OTHER_ORDER) for i in range(5)]
        assert ok(supplier.post("/v1/ingest/inspection", json={"rows": rows}))["accepted"] == 5
    cellex = runtime_of(pair, "cellex")["dsp"]
    with pair["sunarc"].client() as oem:
        done = negotiation(
            oem, cellex, "inspections",
            purposes=[QA], orders=[SUNARC_ORDER], fields=FIELDS, retention_days=30,
        )  # fmt: skip
        assert done["state"] == "FINALIZED", done
        assert done["messages"] == 4, done  # request, agreement, verification, finalized
        agreement = ok(oem.get(f"/v1/contracts/agreements/{done['agreement_id']}"))
        policy = agreement["policy"]
        assert _constraint(policy, "order") == [SUNARC_ORDER]
        assert _constraint(policy, "fields") == sorted(FIELDS)
        assert _constraint(policy, "purpose") == [QA]
        (duty,) = policy["permission"][0]["duty"]
        assert duty["constraint"][0]["rightOperand"] == 30  # retention, days

        body = {"agreement_id": done["agreement_id"]}
        tid = ok(oem.post("/v1/dsp/transfers", json=body))["transfer_id"]
        completed(oem, tid)
        got = received(oem, done["agreement_id"])
    assert got["total"] > 0
    assert {r["order_id"] for r in got["rows"]} == {SUNARC_ORDER}  # not OTHER_ORDER's rows
    for row in got["rows"]:
        assert set(row) - {"@key", "@v"} <= set(FIELDS), row


def test_a_narrowed_request_for_another_s_order_ends_with_the_provider_s_reason(
    pair: LocalNetwork,
) -> None:
    cellex = runtime_of(pair, "cellex")["dsp"]
    with pair["sunarc"].client() as oem:
        ended = negotiation(oem, cellex, "inspections", purposes=[QA], orders=["PO-2026-0043"])
        assert ended["state"] == "TERMINATED", ended
        assert "not an order you placed" in ended["reason"], ended
        assert ended["agreement_id"] is None


def test_narrowing_terms_without_purposes_are_refused_before_anything_is_sent(
    pair: LocalNetwork,
) -> None:
    cellex = runtime_of(pair, "cellex")["dsp"]
    with pair["sunarc"].client() as oem:
        before = len(ok(oem.get("/v1/contracts/negotiations")))
        refused = oem.post(
            "/v1/dsp/negotiations",
            json={"provider_url": cellex, "dataset_id": "inspections", "orders": [SUNARC_ORDER]},
        )
        assert refused.status_code in (400, 422), refused.text
        assert "purposes" in refused.text and "Traceback" not in refused.text
        for bad in ({"purposes": []}, {"purposes": [QA], "retention_days": -1}):
            body = {"provider_url": cellex, "dataset_id": "inspections", **bad}
            assert oem.post("/v1/dsp/negotiations", json=body).status_code in (400, 422)
        assert len(ok(oem.get("/v1/contracts/negotiations"))) == before
