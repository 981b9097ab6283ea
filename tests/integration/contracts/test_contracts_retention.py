"""Order closure, a 181-day clock jump, the sweep, and signed deletion receipts on both sides."""

from __future__ import annotations

from datetime import timedelta

import pytest
from nacl.signing import VerifyKey

from qdspace.connector.agreement import deletion_digest, open_signed_receipt, receipt_from_bytes
from qdspace.node.identity.member import load_member_keys
from qdspace.policies.canonical import canonical_json, parse_datetime

from .conftest import POLYCELL_ORDER, QA, Space, negotiate, ok, wait_for

pytestmark = pytest.mark.integration


def _set_clocks(space: Space, days: float) -> None:
    for name in ("sunarc", "polycell"):
        with space.client(name) as client:
            assert ok(client.post("/v1/contracts/clock", json={"offset_days": days}))["control"]


def test_closed_order_expires_is_swept_and_both_sides_hold_the_receipt(space: Space) -> None:
    with space.client("sunarc") as oem:
        agreement = negotiate(oem, "polycell", "inspections", orders=[POLYCELL_ORDER])
        aid = agreement["agreement_id"]
        body = {"agreement_id": aid, "purpose": QA, "order_id": POLYCELL_ORDER}
        done = ok(oem.post("/v1/contracts/transfers", json=body))
        kept = ok(oem.get("/v1/contracts/received", params={"agreement_id": aid, "limit": 100_000}))
    assert done["state"] == "COMPLETED" and kept["total"] == done["offset"] > 0

    with space.client("polycell") as supplier:
        closed = ok(supplier.post(f"/v1/contracts/orders/{POLYCELL_ORDER}/close"))
        assert aid in closed["agreements"]
        duty = next(d for d in ok(supplier.get("/v1/contracts/duties")) if d["agreement_id"] == aid)
    closed_at = parse_datetime(closed["closed_at"])
    assert duty["status"] == "due" and duty["retention_days"] == 180
    assert parse_datetime(duty["deadline"]) == closed_at + timedelta(days=180)

    with space.client("sunarc") as oem:  # the consumer was told, and knows its deadline
        closure = wait_for(
            "the closure to reach the OEM",
            lambda: [c for c in ok(oem.get("/v1/contracts/closures")) if c["agreement_id"] == aid],
        )[0]
        assert parse_datetime(closure["deadline"]) == closed_at + timedelta(days=180)
        assert ok(oem.post("/v1/contracts/retention/sweep"))["rows_deleted"] == 0  # not yet due

    _set_clocks(space, 181)
    try:
        with space.client("polycell") as supplier:
            duty = next(
                d for d in ok(supplier.get("/v1/contracts/duties")) if d["agreement_id"] == aid
            )
            assert duty["status"] == "overdue"
        with space.client("sunarc") as oem:
            r = oem.post("/v1/contracts/transfers", json=body)
            assert r.status_code == 403 and "agreement expired" in r.json()["detail"]
            ok(oem.post("/v1/contracts/retention/sweep"))  # (or the node's own sweeper did)
            mine = next(
                x for x in ok(oem.get("/v1/contracts/receipts")) if x["agreement_id"] == aid
            )
            left = ok(oem.get("/v1/contracts/received", params={"agreement_id": aid}))
        assert mine["row_count"] == kept["total"] and left["total"] == 0
        # the receipt's digest is over exactly the rows that were received
        assert mine["content_sha256"] == deletion_digest(kept["rows"])[1]

        with space.client("polycell") as supplier:
            theirs = wait_for(
                "the receipt at the supplier",
                lambda: [
                    x
                    for x in ok(supplier.get("/v1/contracts/receipts"))
                    if x["agreement_id"] == aid
                ],
            )[0]
            duty = next(
                d for d in ok(supplier.get("/v1/contracts/duties")) if d["agreement_id"] == aid
            )
        assert theirs == mine
        assert duty["receipt_id"] == mine["receipt_id"]
        assert duty["status"] in ("fulfilled", "fulfilled_late")
        # anyone with the OEM's certificate can check the receipt
        consumer_vk = VerifyKey(load_member_keys(space.directory("sunarc")).identity.verify_key)
        receipt = receipt_from_bytes(
            canonical_json(
                {
                    "schema": "qdspace.v1/deletion-receipt",
                    "agreementId": aid,
                    "consumerId": mine["consumer_id"],
                    "rowCount": mine["row_count"],
                    "contentSha256": mine["content_sha256"],
                    "deletedAt": mine["deleted_at"],
                    "orderId": POLYCELL_ORDER,
                }
            )
        )
        signed = open_signed_receipt(
            receipt.canonical_bytes(), bytes.fromhex(mine["signature"]), consumer_vk
        )
        assert signed.receipt.receipt_id == mine["receipt_id"]
    finally:
        _set_clocks(space, 0)
