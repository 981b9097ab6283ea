"""A node keeps free disk for its own records (real SunArc and Cellex processes, real
mutual-TLS gRPC, a real SQLite file, the real filesystem's free space): while
``min_free_disk_mib`` asks for more than its disk has free, SunArc refuses the rows
Cellex sends (the pull stops, 507 naming the setting, nothing stored) and its own
ingests, yet still negotiates; with the setting lowered and the node restarted, the pull
resumes by itself and brings every row once."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import pytest

from qdspace.node.localnet.network import LocalNetwork

from .conftest import (
    BIG_ORDER,
    CELLEX_ORDER,
    QA,
    assert_faithful_copy,
    bulk_inspection,
    ingest_inspections,
    negotiate,
    oem_and_supplier,
    ok,
)

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    yield from oem_and_supplier(tmp_path_factory, "disk-room")


def _keep_free(net: LocalNetwork, mib: int) -> None:
    """SunArc's ``min_free_disk_mib``, for its next start."""
    path = net["sunarc"].directory / "node.json"
    settings = json.loads(path.read_text())
    settings["min_free_disk_mib"] = mib
    path.write_text(json.dumps(settings, indent=2))


def test_rows_a_provider_sends_stop_short_of_the_free_disk_the_node_keeps(
    pair: LocalNetwork,
) -> None:
    free = shutil.disk_usage(pair["sunarc"].directory).free // MIB
    pair.stop(["sunarc"])
    _keep_free(pair, free + 100_000)  # more than this disk has free
    pair.start(["sunarc"])
    rows = [bulk_inspection(i) for i in range(3000)]
    with pair["cellex"].client(timeout=120) as supplier:
        ok(supplier.post("/v1/ingest/order", json={"rows": [BIG_ORDER]}))
        assert ingest_inspections(supplier, rows)["accepted"] == len(rows)
    with pair["sunarc"].client(timeout=60) as oem:
        agreement = negotiate(oem, "cellex", "inspections", orders=[CELLEX_ORDER])
        assert agreement["state"] == "FINALIZED", agreement  # a small write still passes
        body = {"agreement_id": agreement["agreement_id"], "purpose": QA, "order_id": CELLEX_ORDER}
        refused = oem.post("/v1/contracts/transfers", json=body)
        assert refused.status_code == 507, refused.text
        detail = refused.json()["detail"]
        assert "rows received from a provider" in detail and "min_free_disk_mib" in detail
        assert "nothing of it was stored" in detail and "Traceback" not in refused.text
        (cut,) = ok(oem.get("/v1/contracts/transfers"))
        assert (cut["state"], cut["offset"]) == ("STARTED", 0), cut
        held = ok(oem.get("/v1/contracts/received", params={"agreement_id": cut["agreement_id"]}))
        assert held["total"] == 0
        own = oem.post(
            "/v1/ingest/inspection",
            content=json.dumps(bulk_inspection(9, "OWN")).encode() + b"\n",
            headers={"content-type": "application/x-ndjson"},
        )
        assert own.status_code == 507 and "this ingest brings" in own.json()["detail"], own.text
    log = pair["sunarc"].log_path.read_text(errors="replace")
    assert "min_free_disk_mib" in log and "Traceback" not in log

    pair.stop(["sunarc"])
    _keep_free(pair, 1)
    pair.start(["sunarc"])  # it resumes the unfinished pull when it starts
    with pair["sunarc"].client(timeout=120) as oem:
        done = ok(oem.get(f"/v1/contracts/transfers/{cut['transfer_id']}", params={"wait_s": 90}))
        assert done["state"] == "COMPLETED" and not done["error"], done
    assert done["offset"] == len(rows)
    assert_faithful_copy(pair, agreement["agreement_id"], done)
