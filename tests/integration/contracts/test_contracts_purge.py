"""A consumer leaves the data space: it purges what it received, and the provider holds
the proof.

Two real node processes and a chain: SunArc pulls Cellex's inspections under an
agreement, then purges long before the retention deadline. The rows and their data key
are gone from SunArc's database (read raw, not through the API), Cellex receives the
signed receipt, checks it and shows the duty fulfilled, the agreement is over on both
sides, both nodes anchor the receipt, a second purge (from the CLI) changes nothing,
and requests that do not confirm the purge are refused without deleting anything.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from nacl.signing import VerifyKey
from typer.testing import CliRunner

from qdspace.connector.agreement import REASON_LEAVING, deletion_digest, open_signed_receipt
from qdspace.node.cli import app
from qdspace.node.identity.member import load_member_keys
from qdspace.node.localnet.network import LocalNetwork, MemberSpec
from qdspace.policies.canonical import canonical_json

from .conftest import CELLEX_ORDER, QA, ingest_sample, negotiate, ok, provider_rows, wait_for
from .test_contracts_on_postgresql import PG_ENV, PG_HOWTO

pytestmark = pytest.mark.integration


@pytest.fixture(
    scope="module",
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
    ],
)
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalNetwork]:
    """Its own OEM, supplier and chain (a purge ends every agreement of the OEM), on
    SQLite files, and once more on PostgreSQL schemas when a server is configured."""
    pg_url = os.environ.get(PG_ENV) if request.param == "postgres" else None
    if request.param == "postgres" and not pg_url:
        pytest.skip(PG_HOWTO)
    net = LocalNetwork(
        tmp_path_factory.mktemp(f"purge-{request.param}"),
        [MemberSpec("sunarc", "oem"), MemberSpec("cellex", "supplier")],
        env={"QDSPACE_LEDGER_FLUSH_S": "0.5"},
        pg_url=pg_url,
    )
    try:
        net.create()
        net.start()
        ingest_sample(net, "cellex")
        yield net
    finally:
        net.stop()


def _raw(pair: LocalNetwork, sql: str, **params: Any) -> list[dict[str, Any]]:
    return provider_rows(pair, "sunarc", sql, **params)


def _leaves(pair: LocalNetwork, name: str) -> dict[str, bool]:
    with pair[name].client(timeout=120) as client:
        ok(client.post("/v1/ledger/flush", params={"timeout_s": 60}))
        leaves = ok(client.get("/v1/ledger/leaves/deletion_receipt", params={"limit": 1000}))
    return {leaf["ref_id"]: leaf["anchored"] for leaf in leaves}


def test_purge_deletes_receipts_terminates_and_anchors(pair: LocalNetwork) -> None:
    with pair["sunarc"].client() as oem:
        me = ok(oem.get("/healthz"))["member_id"]
        agreement = negotiate(oem, "cellex", "inspections", orders=[CELLEX_ORDER])
        aid = agreement["agreement_id"]
        body = {"agreement_id": aid, "purpose": QA, "order_id": CELLEX_ORDER}
        done = ok(oem.post("/v1/contracts/transfers", json=body))
        params = {"agreement_id": aid, "limit": 100_000}
        kept = ok(oem.get("/v1/contracts/received", params=params))
    assert done["state"] == "COMPLETED" and kept["total"] == done["offset"] > 0
    held = "SELECT ciphertext FROM contract_received_row WHERE agreement_id = :a"
    stored = _raw(pair, held, a=aid)
    assert len(stored) == kept["total"]
    sealed = "SELECT ciphertext FROM contract_received_page WHERE agreement_id = :a"
    pages = _raw(pair, sealed, a=aid)
    some_id = kept["rows"][0]["inspection_id"].encode()
    assert pages and all(some_id not in bytes(r["ciphertext"]) for r in stored + pages)

    # --- hostile or careless requests delete nothing
    with pair["sunarc"].client() as oem:
        missing = oem.post("/v1/contracts/purge", json={})
        assert missing.status_code == 422 and "confirm" in missing.json()["detail"]
        other = ok(oem.get("/v1/contracts/agreements"))[0]["provider_id"]
        wrong = oem.post("/v1/contracts/purge", json={"confirm": other})
        assert wrong.status_code == 400, wrong.text
        refusal = wrong.json()["detail"]
        assert "confirm" in refusal and "nothing was deleted" in refusal
    with pair["sunarc"].client(token="not-the-token") as stranger:
        assert stranger.post("/v1/contracts/purge", json={"confirm": me}).status_code == 401
    runner = CliRunner()
    unconfirmed = runner.invoke(app, ["contracts", "purge", "--dir", str(pair["sunarc"].directory)])
    assert unconfirmed.exit_code == 2 and "--yes" in unconfirmed.output
    with pair["sunarc"].client() as oem:
        assert ok(oem.get("/v1/contracts/received", params=params))["total"] == kept["total"]

    # --- the purge
    with pair["sunarc"].client(timeout=120) as oem:
        purged = ok(oem.post("/v1/contracts/purge", json={"confirm": me}))
        left = ok(oem.get("/v1/contracts/received", params=params))
        mine = ok(oem.get(f"/v1/contracts/agreements/{aid}"))
        again = oem.post("/v1/contracts/transfers", json=body)
    assert purged["terminated"] == [aid] and aid in purged["agreements"]
    assert purged["failures"] == [] and purged["undelivered"] == 0
    (receipt,) = [r for r in purged["receipts"] if r["agreement_id"] == aid]
    assert receipt["order_id"] == CELLEX_ORDER and receipt["reason"] == REASON_LEAVING
    assert receipt["row_count"] == kept["total"] == purged["rows_deleted"]
    assert receipt["content_sha256"] == deletion_digest(kept["rows"])[1]
    assert left["total"] == 0 and mine["active"] is False
    assert again.status_code == 403  # nothing flows under the agreement any more
    # read raw: no row, not even as ciphertext, and no key to open a backup's copy
    assert _raw(pair, held, a=aid) == [] and _raw(pair, sealed, a=aid) == []
    keys = _raw(pair, "SELECT * FROM contract_data_key WHERE agreement_id = :a", a=aid)
    assert keys and all(k["wrapped_key"] is None and k["destroyed_at"] for k in keys)

    # --- the provider holds the receipt, checks it, and its duty view shows it
    with pair["cellex"].client() as supplier:
        theirs = wait_for(
            "the receipt at the supplier",
            lambda: [
                x
                for x in ok(supplier.get("/v1/contracts/receipts"))
                if x["receipt_id"] == receipt["receipt_id"]
            ],
        )[0]
        duties = ok(supplier.get("/v1/contracts/duties"))
        given = wait_for(
            "the termination at the supplier",
            lambda: (
                (a := ok(supplier.get(f"/v1/contracts/agreements/{aid}")))["active"] is False and a
            ),
        )
    assert theirs == receipt
    (duty,) = [d for d in duties if d["agreement_id"] == aid]
    assert duty["order_id"] == CELLEX_ORDER and duty["receipt_id"] == receipt["receipt_id"]
    assert duty["status"] == "fulfilled"
    assert "leaves the data space" in given["termination_reason"]
    document = {
        "schema": "qdspace.v1/deletion-receipt",
        "agreementId": aid,
        "consumerId": me,
        "rowCount": receipt["row_count"],
        "contentSha256": receipt["content_sha256"],
        "deletedAt": receipt["deleted_at"],
        "orderId": CELLEX_ORDER,
        "reason": REASON_LEAVING,
    }
    consumer_vk = VerifyKey(load_member_keys(pair["sunarc"].directory).identity.verify_key)
    opened = open_signed_receipt(
        canonical_json(document), bytes.fromhex(receipt["signature"]), consumer_vk
    )
    assert opened.receipt.receipt_id == receipt["receipt_id"]

    # --- a second purge, from the command line, issues nothing and deletes nothing
    second = runner.invoke(
        app, ["contracts", "purge", "--dir", str(pair["sunarc"].directory), "--yes", "--json"]
    )
    assert second.exit_code == 0, second.output
    repeat = json.loads(second.output)
    assert repeat["receipts"] == [] and repeat["terminated"] == []
    assert repeat["already_answered"] >= 1 and repeat["rows_deleted"] == 0
    with pair["sunarc"].client() as oem:
        receipts = [r for r in ok(oem.get("/v1/contracts/receipts")) if r["agreement_id"] == aid]
    assert [r["receipt_id"] for r in receipts] == [receipt["receipt_id"]]

    # --- both nodes anchor the receipt on the chain
    assert _leaves(pair, "sunarc").get(receipt["receipt_id"]) is True
    assert _leaves(pair, "cellex").get(receipt["receipt_id"]) is True
