"""The provider is SIGKILLed in the middle of a large transfer and restarted; the consumer
resumes from the checkpoint it committed: no row lost, none duplicated, both chained
digests equal (the provider's saved cursor may be ahead of what the consumer stored)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from node.launcher import LocalNetwork

from .conftest import (
    BIG_ORDER,
    CELLEX_ORDER,
    QA,
    negotiate,
    oem_and_supplier,
    ok,
    provider_rows,
    wait_for,
)
from .test_contracts_resume import ROWS, _big_inspection_file

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    """Its own OEM and supplier, so killing the supplier disturbs no other test."""
    yield from oem_and_supplier(tmp_path_factory, "provider-crash")


def test_provider_sigkilled_mid_transfer_then_restarted_loses_and_duplicates_nothing(
    pair: LocalNetwork, tmp_path: Path
) -> None:
    with pair["cellex"].client(timeout=120) as supplier:
        ok(supplier.post("/v1/ingest/order", json={"rows": [BIG_ORDER]}))
        data = _big_inspection_file(tmp_path / "bulk.jsonl").read_bytes()
        stored = ok(
            supplier.post(
                "/v1/ingest/inspection",
                content=data,
                headers={"content-type": "application/x-ndjson"},
            )
        )
        assert stored["accepted"] == ROWS
    with pair["sunarc"].client() as oem:
        agreement = negotiate(oem, "cellex", "inspections", orders=[CELLEX_ORDER])
        started = ok(
            oem.post(
                "/v1/contracts/transfers",
                json={
                    "agreement_id": agreement["agreement_id"],
                    "purpose": QA,
                    "order_id": CELLEX_ORDER,
                    "wait": False,
                    "batch_rows": 50,
                },
            )
        )
        tid = started["transfer_id"]
        midway = wait_for(
            "the transfer to be underway",
            lambda: (t := ok(oem.get(f"/v1/contracts/transfers/{tid}")))["offset"] >= 2000 and t,
        )
    assert midway["state"] == "STARTED", "the transfer finished before it could be interrupted"

    pair.kill("cellex")  # SIGKILL the provider: no shutdown, no goodbye
    with pair["sunarc"].client() as oem:
        broken = wait_for(
            "the consumer to notice the provider is gone",
            lambda: (t := ok(oem.get(f"/v1/contracts/transfers/{tid}")))["error"] and t,
        )
    assert broken["state"] == "STARTED" and broken["offset"] < ROWS
    pair.start(["cellex"])

    with pair["sunarc"].client(timeout=120) as oem:
        done = ok(oem.post(f"/v1/contracts/transfers/{tid}/resume"))  # `qdspace transfer --resume`
        if done["state"] != "COMPLETED":
            done = ok(oem.get(f"/v1/contracts/transfers/{tid}", params={"wait_s": 90}))
        received = ok(
            oem.get(
                "/v1/contracts/received",
                params={"agreement_id": agreement["agreement_id"], "limit": 100_000},
            )
        )
    held = provider_rows(
        pair,
        "cellex",
        "SELECT inspection_id FROM qdm_inspection WHERE order_id = :o",
        o=CELLEX_ORDER,
    )
    assert done["state"] == "COMPLETED", done
    ids = [r["inspection_id"] for r in received["rows"]]
    assert len(ids) == len(set(ids)) == received["total"]  # nothing duplicated
    assert set(ids) == {r["inspection_id"] for r in held}  # nothing lost
    assert done["offset"] == len(held) == ROWS
    with pair["cellex"].client() as supplier:
        theirs = ok(supplier.get("/v1/contracts/transfers"))
    provider_side = next(t for t in theirs if t["transfer_id"] == tid)
    assert provider_side["state"] == "COMPLETED"
    assert provider_side["digest"] == done["digest"]  # the same rows, in the same order
