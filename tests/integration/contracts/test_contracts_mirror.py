"""The OEM's copy mirrors the supplier's records over real nodes (mTLS, SQLite, SIGKILL).

Full pulls repeated store each inspection once; the supplier ingests new rows,
corrects some and withdraws one; an incremental pull (``--since-last``) moves only
those, and the OEM is SIGKILLed in the middle of it: restarted, it resumes without
loss or duplication, the corrected records are replaced, the withdrawn one is gone,
and the audit trail names each change.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from qdspace.node.cli import app
from qdspace.node.localnet.network import LocalNetwork

from .conftest import (
    BIG_ORDER,
    CELLEX_ORDER,
    QA,
    bulk_inspection,
    ingest_inspections,
    negotiate,
    oem_and_supplier,
    ok,
    provider_rows,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FIRST, NEW, CORRECTED = 6_000, 9_000, 60
WITHDRAWN = "MIR-000007"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    """Its own OEM and supplier, so killing the OEM disturbs no other test."""
    yield from oem_and_supplier(tmp_path_factory, "mirror")


def _inspection(i: int, verdict: str | None = None) -> dict[str, Any]:
    return bulk_inspection(i, "MIR", verdict)


_ingest = ingest_inspections


def _received(client: httpx.Client, agreement_id: str) -> dict[str, Any]:
    params: dict[str, Any] = {"agreement_id": agreement_id, "limit": 100_000}
    result: dict[str, Any] = ok(client.get("/v1/contracts/received", params=params))
    return result


def _pull(client: httpx.Client, agreement_id: str, **extra: Any) -> dict[str, Any]:
    body = {"agreement_id": agreement_id, "purpose": QA, "order_id": CELLEX_ORDER, **extra}
    result: dict[str, Any] = ok(client.post("/v1/contracts/transfers", json=body))
    return result


def test_repeated_incremental_and_interrupted_pulls_keep_a_faithful_copy(
    pair: LocalNetwork, tmp_path: Path
) -> None:
    with pair["cellex"].client(timeout=120) as supplier:
        ok(supplier.post("/v1/ingest/order", json={"rows": [BIG_ORDER]}))
        assert _ingest(supplier, [_inspection(i) for i in range(FIRST)])["accepted"] == FIRST
    with pair["sunarc"].client(timeout=120) as oem:
        agreement = negotiate(oem, "cellex", "inspections", orders=[CELLEX_ORDER])["agreement_id"]
        for _ in range(3):  # pulled again and again: held once
            assert _pull(oem, agreement)["offset"] == FIRST
        assert _received(oem, agreement)["total"] == FIRST

    with pair["cellex"].client(timeout=120) as supplier:
        fresh = [_inspection(i) for i in range(FIRST, FIRST + NEW)]
        assert _ingest(supplier, fresh)["accepted"] == NEW
        fixed = [_inspection(i, "fail" if i % 17 else "pass") for i in range(100, 100 + CORRECTED)]
        assert _ingest(supplier, fixed)["corrected"] == CORRECTED
        gone = {"kind": "inspection", "key": {"inspection_id": WITHDRAWN}}
        assert ok(supplier.post("/v1/contracts/withdrawals", json=gone))["version"] == 2

    with pair["sunarc"].client() as oem:
        started = _pull(oem, agreement, since_last=True, wait=False, batch_rows=50)
        tid = started["transfer_id"]
        assert started["since"], "an incremental pull starts at the last pull's watermark"
        midway = wait_for(
            "the incremental pull to be underway",
            lambda: (t := ok(oem.get(f"/v1/contracts/transfers/{tid}")))["offset"] >= 1500 and t,
        )
    assert midway["state"] == "STARTED", "the pull finished before it could be interrupted"
    pair.kill("sunarc")  # SIGKILL in the middle of the incremental pull
    pair.start(["sunarc"])

    with pair["sunarc"].client(timeout=120) as oem:
        done = ok(oem.get(f"/v1/contracts/transfers/{tid}", params={"wait_s": 90}))
        if done["state"] != "COMPLETED":  # the resume task may not have been registered yet
            done = ok(oem.post(f"/v1/contracts/transfers/{tid}/resume"))
        received = _received(oem, agreement)
        changes = ok(oem.get("/v1/contracts/received/changes", params={"agreement_id": agreement}))
    assert done["state"] == "COMPLETED", done
    assert done["offset"] == NEW + CORRECTED + 1  # only what changed moved
    held = provider_rows(
        pair,
        "cellex",
        "SELECT inspection_id, verdict, version FROM qdm_inspection "
        "WHERE order_id = :o AND withdrawn_at IS NULL",
        o=CELLEX_ORDER,
    )
    rows = received["rows"]
    ids = [r["inspection_id"] for r in rows]
    assert len(ids) == len(set(ids)) == received["total"] == FIRST + NEW - 1
    assert {(r["inspection_id"], r["verdict"], r["@v"]) for r in rows} == {
        (h["inspection_id"], h["verdict"], h["version"]) for h in held
    }
    assert WITHDRAWN not in set(ids)
    assert sorted((c["version"], c["withdrawn"]) for c in changes) == [(2, False)] * CORRECTED + [
        (2, True)
    ]
    with pair["cellex"].client() as supplier:
        theirs = ok(supplier.get("/v1/contracts/transfers"))
    provider_side = next(t for t in theirs if t["transfer_id"] == tid)
    assert provider_side["digest"] == done["digest"]  # the same rows, in the same order

    # The CLI: another incremental pull moves nothing; the audit trail is listed.
    runner = CliRunner()
    oem_dir = str(pair["sunarc"].directory)
    again = runner.invoke(
        app,
        [
            "transfer",
            "--dir",
            oem_dir,
            agreement,
            "--purpose",
            QA,
            "--order",
            CELLEX_ORDER,
            "--since-last",
        ],
    )
    assert again.exit_code == 0, again.output
    assert re.search(r"COMPLETED: 0 rows since position\s+\d+", again.output), again.output
    listed = runner.invoke(app, ["contracts", "--dir", oem_dir, "changes", agreement])
    assert listed.exit_code == 0, listed.output
    assert listed.output.count(" corrected ") == CORRECTED and " v2 withdrawn " in listed.output
