"""Catalog, negotiation and policy-enforced transfer between real nodes over mutual TLS."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from nacl.signing import VerifyKey

from qdspace.connector.agreement import (
    SignedAgreement,
    agreement_from_bytes,
    countersign,
    open_signed_agreement,
    verify_agreement,
)
from qdspace.connector.contract_errors import AgreementSignatureError
from qdspace.connector.negotiation import ContractRequest, Verification
from qdspace.connector.transfer_wire import Checkpoint
from qdspace.node.identity.member import load_member_keys
from qdspace.node.rpc.contracts_serde import (
    negotiation_message_from_proto,
    negotiation_message_to_proto,
)
from qdspace.node.rpc.contracts_transfer_serde import (
    PullRequest,
    pull_request_to_proto,
    row_batch_from_proto,
)
from qdspace.node.rpc.peers import PeerDirectory
from qdspace.policies.model import OfferTerms, make_offer
from qdspace.protocols.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    negotiation_pb2,
    negotiation_pb2_grpc,
    transfer_pb2_grpc,
)

from .conftest import CELLEX_ORDER, POLYCELL_ORDER, QA, Space, negotiate, ok, provider_rows

pytestmark = pytest.mark.integration

GRANTED_INSPECTION_FIELDS = {
    "inspection_id",
    "station",
    "inspected_at",
    "verdict",
    "defect_class",
    "score",
    "model_version",
    "order_id",
    "serial",
    "batch_id",
}


def test_catalog_shows_what_the_role_may_see(space: Space) -> None:
    with space.client("sunarc") as oem:
        assets = ok(oem.get("/v1/contracts/catalog/cellex"))
    by_id = {a["asset_id"]: a for a in assets}
    assert set(by_id) == {
        "inspections",
        "process-genealogy",
        "operator-log",
        "live-inspections",
        "traceability",
    }
    assert set(by_id["inspections"]["offer"]["permission"][0]["constraint"][1]["rightOperand"]) == (
        GRANTED_INSPECTION_FIELDS
    )
    assert by_id["operator-log"]["pseudonymized"] == ["operator_id"]
    with space.client("polycell") as supplier:  # a supplier may buy only traceability
        seen = ok(supplier.get("/v1/contracts/catalog/cellex"))
        assert [a["asset_id"] for a in seen] == ["traceability"]
    with space.client("regulator") as regulator:  # the ACL refuses before any servicer runs
        r = regulator.get("/v1/contracts/catalog/cellex")
    assert r.status_code == 403 and "may not call /qdspace.v1.Catalog/ListAssets" in r.text


def test_negotiation_ends_agreed_with_both_signatures_on_both_sides(space: Space) -> None:
    with space.client("sunarc") as oem:
        result = negotiate(oem, "cellex", "inspections", orders=[CELLEX_ORDER])
        assert result["state"] == "FINALIZED", result
        assert result["provider_signed"] and result["consumer_signed"]
        mine = ok(oem.get(f"/v1/contracts/agreements/{result['agreement_id']}"))
    with space.client("cellex") as supplier:
        theirs = ok(supplier.get(f"/v1/contracts/agreements/{result['agreement_id']}"))
        states = {
            n["negotiation_id"]: n["state"] for n in ok(supplier.get("/v1/contracts/negotiations"))
        }
    assert states[result["negotiation_id"]] == "FINALIZED"
    assert (mine["role"], theirs["role"]) == ("consumer", "provider")
    assert mine["canonical"] == theirs["canonical"]
    for key in ("provider_signature", "consumer_signature", "digest"):
        assert mine[key] == theirs[key]
    # Verify independently, with the keys in the members' certificates.
    provider_vk = VerifyKey(load_member_keys(space.directory("cellex")).identity.verify_key)
    consumer_vk = VerifyKey(load_member_keys(space.directory("sunarc")).identity.verify_key)
    data = mine["canonical"].encode()
    signed = SignedAgreement(
        agreement_from_bytes(data),
        bytes.fromhex(mine["provider_signature"]),
        bytes.fromhex(mine["consumer_signature"]),
    )
    verify_agreement(signed, provider_vk, consumer_vk)
    scope = signed.agreement.policy.permissions[0].constraints[1]
    assert scope.right_operand == frozenset({CELLEX_ORDER})
    altered = data.replace(CELLEX_ORDER.encode(), b"PO-2026-0044")
    with pytest.raises(AgreementSignatureError):
        open_signed_agreement(
            altered, signed.provider_signature, signed.consumer_signature, provider_vk, consumer_vk
        )


def test_negotiation_for_somebody_elses_order_is_terminated(space: Space) -> None:
    with space.client("sunarc") as oem:
        result = negotiate(oem, "cellex", "inspections", orders=[POLYCELL_ORDER])
    assert result["state"] == "TERMINATED"
    assert result["agreement_id"] is None
    assert "PO-2026-0043 is not an order you placed" in result["reason"]


@pytest.fixture(scope="module")
def inspections_agreement(space: Space) -> str:
    with space.client("sunarc") as oem:
        result = negotiate(oem, "cellex", "inspections", orders=[CELLEX_ORDER])
    assert result["state"] == "FINALIZED"
    return str(result["agreement_id"])


def _received(space: Space, agreement_id: str) -> dict[str, Any]:
    with space.client("sunarc") as oem:
        return ok(
            oem.get(
                "/v1/contracts/received", params={"agreement_id": agreement_id, "limit": 100_000}
            )
        )  # type: ignore[no-any-return]


def test_transfer_delivers_exactly_the_allowed_rows_and_fields(
    space: Space, inspections_agreement: str
) -> None:
    with space.client("sunarc") as oem:
        done = ok(
            oem.post(
                "/v1/contracts/transfers",
                json={
                    "agreement_id": inspections_agreement,
                    "purpose": QA,
                    "order_id": CELLEX_ORDER,
                },
            )
        )
    assert done["state"] == "COMPLETED"
    held = provider_rows(
        space.network,
        "cellex",
        "SELECT * FROM qdm_inspection WHERE order_id = :o ORDER BY id",
        o=CELLEX_ORDER,
    )
    assert held and done["offset"] == len(held)
    received = _received(space, inspections_agreement)
    assert received["total"] == len(held)
    got = {r["inspection_id"]: r for r in received["rows"]}
    assert len(got) == len(held)  # none duplicated
    for row in held:
        out = got[row["inspection_id"]]
        envelope = {"@key", "@v"}  # the record's key under the agreement and its version
        assert set(out) - envelope == GRANTED_INSPECTION_FIELDS  # image_hash etc. stay home
        assert out["@key"].startswith("rec_") and out["@v"] == row["version"]
        assert out["order_id"] == CELLEX_ORDER
        assert out["score"] == row["score"] and out["verdict"] == row["verdict"]
    with space.client("cellex") as supplier:
        provider_side = {t["transfer_id"]: t for t in ok(supplier.get("/v1/contracts/transfers"))}
    theirs = provider_side[done["transfer_id"]]
    assert (theirs["state"], theirs["offset"], theirs["digest"]) == (
        "COMPLETED",
        done["offset"],
        done["digest"],
    )


@pytest.mark.parametrize(
    ("request_body", "reason"),
    [
        ({"order_id": POLYCELL_ORDER}, "order PO-2026-0043 is outside the agreement's scope"),
        ({"fields": ["score", "image_hash"]}, "field image_hash is not granted"),
        ({"purpose": "marketing"}, "purpose marketing is not granted"),
    ],
    ids=["other-order", "field-not-granted", "purpose-not-granted"],
)
def test_requests_outside_the_agreement_are_denied_with_zero_rows(
    space: Space, inspections_agreement: str, request_body: dict[str, Any], reason: str
) -> None:
    before = _received(space, inspections_agreement)["total"]
    body = {
        "agreement_id": inspections_agreement,
        "purpose": QA,
        "order_id": CELLEX_ORDER,
        **request_body,
    }
    with space.client("sunarc") as oem:
        r = oem.post("/v1/contracts/transfers", json=body)
    assert r.status_code == 403, r.text
    assert "PERMISSION_DENIED" in r.json()["detail"] and reason in r.json()["detail"]
    assert _received(space, inspections_agreement)["total"] == before


def test_operator_ids_leave_only_as_pseudonyms_unlinkable_across_agreements(space: Space) -> None:
    raw = {
        r["operator_id"]
        for r in provider_rows(
            space.network,
            "cellex",
            "SELECT operator_id FROM qdm_operator_log WHERE order_id = :o",
            o=CELLEX_ORDER,
        )
    }
    seen: list[set[str]] = []
    for _ in range(2):
        with space.client("sunarc") as oem:
            agreement = negotiate(oem, "cellex", "operator-log", orders=[CELLEX_ORDER])
            ok(
                oem.post(
                    "/v1/contracts/transfers",
                    json={
                        "agreement_id": agreement["agreement_id"],
                        "purpose": QA,
                        "order_id": CELLEX_ORDER,
                    },
                )
            )
        rows = _received(space, agreement["agreement_id"])["rows"]
        assert rows and all("note" not in r for r in rows)
        ids = {r["operator_id"] for r in rows}
        assert all(i.startswith("psn_") for i in ids) and not ids & raw
        assert len(ids) == len(raw)  # stable within the agreement: one pseudonym per operator
        seen.append(ids)
    assert not seen[0] & seen[1]  # two agreements cannot join on operator


def test_termination_ends_every_transfer(space: Space) -> None:
    with space.client("sunarc") as oem:
        agreement = negotiate(oem, "cellex", "process-genealogy", orders=[CELLEX_ORDER])
        aid = agreement["agreement_id"]
        body = {"agreement_id": aid, "purpose": QA, "order_id": CELLEX_ORDER}
        first = ok(oem.post("/v1/contracts/transfers", json=body))
        assert first["state"] == "COMPLETED" and first["offset"] > 0
    with space.client("cellex") as supplier:
        ok(supplier.post(f"/v1/contracts/agreements/{aid}/terminate", json={"reason": "audit"}))
    with space.client("sunarc") as oem:
        r = oem.post("/v1/contracts/transfers", json=body)
        assert r.status_code == 403 and "agreement terminated" in r.json()["detail"]
        mine = ok(oem.get(f"/v1/contracts/agreements/{aid}"))
    assert mine["active"] is False and mine["termination_reason"] == "audit"  # we were told


# --------------------------------------------------- forged and replayed signatures


def _sunarc_stub(space: Space) -> tuple[PeerDirectory, Any]:
    keys = load_member_keys(space.directory("sunarc"))
    peers = PeerDirectory(keys, {"cellex": space.network["cellex"].grpc_address})
    return peers, negotiation_pb2_grpc.NegotiationStub(peers.channel("cellex"))


def test_forged_replayed_or_altered_countersignatures_are_refused(
    space: Space, inspections_agreement: str
) -> None:
    keys = load_member_keys(space.directory("sunarc"))
    me = keys.identity.member_id
    provider_vk = VerifyKey(load_member_keys(space.directory("cellex")).identity.verify_key)
    with space.client("sunarc") as oem:
        other = ok(oem.get(f"/v1/contracts/agreements/{inspections_agreement}"))

    async def run() -> None:
        peers, stub = _sunarc_stub(space)
        try:
            catalog = catalog_pb2_grpc.CatalogStub(peers.channel("cellex"))
            asset = await catalog.GetAsset(catalog_pb2.AssetRequest(asset_id="inspections"))
            offer = json.loads(asset.offer_json)
            nid = f"neg-forge-{uuid.uuid4().hex}"
            terms = OfferTerms(
                purposes=frozenset({QA}),
                orders=frozenset({CELLEX_ORDER}),
                fields=frozenset(offer["permission"][0]["constraint"][1]["rightOperand"]),
            )
            asked = make_offer(f"{nid}:req", offer["assigner"], "inspections", terms)
            now = datetime.now(UTC)
            ack = await stub.Send(
                negotiation_message_to_proto(ContractRequest(f"{nid}:c0", nid, me, asked, now))
            )
            assert ack.state == "AGREED"  # exactly the offer: agreed at once
            reply = negotiation_message_from_proto(ack.replies[0])
            signed = reply.signed  # type: ignore[union-attr]
            good = countersign(signed, keys.signing_key, provider_vk).consumer_signature
            assert good is not None
            altered = bytearray(signed.canonical_bytes)
            altered[len(altered) // 2] ^= 0x01
            over_altered = keys.signing_key.sign(
                b"qdspace.v1/agreement/consumer\x00" + bytes(altered)
            ).signature
            forged = {
                "random": bytes(64),
                "replayed from another agreement": bytes.fromhex(other["consumer_signature"]),
                "over an agreement altered by one byte": over_altered,
            }
            for index, (what, signature) in enumerate(forged.items(), start=1):
                message = Verification(f"{nid}:forged{index}", nid, me, signature, now)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.Send(negotiation_message_to_proto(message))
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, what
                assert "signature does not verify" in (refused.value.details() or ""), what
            status = await stub.Get(negotiation_pb2.NegotiationQuery(negotiation_id=nid))
            assert status.state == "AGREED"  # nothing moved
            # a message id used again with other content is a replay, not a retry
            with pytest.raises(grpc.aio.AioRpcError) as replayed:
                await stub.Send(
                    negotiation_message_to_proto(
                        ContractRequest(f"{nid}:c0", nid, me, offer_with(asked, nid), now)
                    )
                )
            assert replayed.value.code() == grpc.StatusCode.ALREADY_EXISTS
            final = await stub.Send(
                negotiation_message_to_proto(Verification(f"{nid}:c-ok", nid, me, good, now))
            )
            assert final.state == "FINALIZED"
        finally:
            await peers.close()

    asyncio.run(run())


def offer_with(policy: Any, nid: str) -> Any:
    terms = OfferTerms(purposes=frozenset({"failure-analysis"}), orders=frozenset({CELLEX_ORDER}))
    return make_offer(f"{nid}:other", policy.assigner, policy.target, terms)


def test_a_finished_transfer_reads_again_identically_and_only_for_its_consumer(
    space: Space, inspections_agreement: str
) -> None:
    with space.client("sunarc") as oem:
        done = ok(
            oem.post(
                "/v1/contracts/transfers",
                json={
                    "agreement_id": inspections_agreement,
                    "purpose": QA,
                    "order_id": CELLEX_ORDER,
                    "batch_rows": 400,  # the chain covers batches: re-read with the same size
                },
            )
        )
    tid = done["transfer_id"]

    async def pull(member: str) -> tuple[int, str]:
        keys = load_member_keys(space.directory(member))
        peers = PeerDirectory(keys, {"cellex": space.network["cellex"].grpc_address})
        stub = transfer_pb2_grpc.TransferStub(peers.channel("cellex"))
        genesis = Checkpoint.genesis(tid)
        request = pull_request_to_proto(PullRequest(tid, genesis, 400))
        checkpoint, rows = genesis, 0
        try:
            async for message in stub.Pull(request):
                batch = row_batch_from_proto(message)
                checkpoint = checkpoint.extend_payload(
                    batch.payload, batch.count, batch.checkpoint.position
                )
                assert checkpoint == batch.checkpoint
                rows += batch.count
        finally:
            await peers.close()
        return rows, checkpoint.digest.hex()

    assert asyncio.run(pull("sunarc")) == (done["offset"], done["digest"])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        asyncio.run(pull("polycell"))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"transfer {tid} is not yours" in (refused.value.details() or "")


def test_after_its_end_date_an_agreement_allows_nothing(space: Space) -> None:
    until = datetime.now(UTC) + timedelta(days=1)
    with space.client("sunarc") as oem:
        agreement = negotiate(
            oem, "cellex", "inspections", orders=[CELLEX_ORDER], valid_until=until.isoformat()
        )
        assert agreement["state"] == "FINALIZED"
    body = {"agreement_id": agreement["agreement_id"], "purpose": QA, "order_id": CELLEX_ORDER}
    with space.client("cellex") as supplier:
        ok(supplier.post("/v1/contracts/clock", json={"offset_days": 2}))
    try:
        with space.client("sunarc") as oem:
            r = oem.post("/v1/contracts/transfers", json=body)
        assert r.status_code == 403, r.text
        assert "PERMISSION_DENIED: agreement expired at" in r.json()["detail"]
    finally:
        with space.client("cellex") as supplier:
            ok(supplier.post("/v1/contracts/clock", json={"offset_days": 0}))
    with space.client("sunarc") as oem:  # before the end date it is in force
        assert ok(oem.post("/v1/contracts/transfers", json=body))["state"] == "COMPLETED"
