"""The consumer is SIGKILLed in the middle of a large transfer; restarted, it resumes it:
no row lost, none duplicated, both chained digests equal."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.launcher import LocalNetwork

from .conftest import (
    BIG_ORDER,
    CELLEX_ORDER,
    QA,
    bulk_inspection,
    negotiate,
    oem_and_supplier,
    ok,
    provider_rows,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROWS = 25_000


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    """Its own OEM and supplier, so killing the OEM disturbs no other test."""
    yield from oem_and_supplier(tmp_path_factory, "resume")


def _big_inspection_file(path: Path) -> Path:
    with path.open("w") as handle:
        for i in range(ROWS):
            handle.write(json.dumps(bulk_inspection(i)) + "\n")
    return path


def test_sigkill_mid_transfer_then_resume_loses_and_duplicates_nothing(
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
                    "batch_rows": 100,
                },
            )
        )
        tid = started["transfer_id"]
        midway = wait_for(
            "the transfer to be underway",
            lambda: (t := ok(oem.get(f"/v1/contracts/transfers/{tid}")))["offset"] >= 2000 and t,
        )
    assert midway["state"] == "STARTED", "the transfer finished before it could be interrupted"

    pair.kill("sunarc")  # SIGKILL: no shutdown, no goodbye
    pair.start(["sunarc"])  # the node resumes unfinished transfers when it starts

    with pair["sunarc"].client(timeout=120) as oem:
        # the node resumes on its own: no manual resume may rescue this test
        done = ok(oem.get(f"/v1/contracts/transfers/{tid}", params={"wait_s": 90}))
        assert done["state"] == "COMPLETED" and not done["error"], done
        received = ok(
            oem.get(
                "/v1/contracts/received",
                params={
                    "agreement_id": agreement["agreement_id"],
                    "limit": 100_000,
                },
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
    assert done["offset"] == len(held)
    with pair["cellex"].client() as supplier:
        theirs = ok(supplier.get("/v1/contracts/transfers"))
    provider_side = next(t for t in theirs if t["transfer_id"] == tid)
    assert provider_side["state"] == "COMPLETED"
    assert provider_side["digest"] == done["digest"]  # the same rows, in the same order
    log = pair["sunarc"].log_path.read_text(errors="replace")
    assert f"resuming transfer {tid}" in log
