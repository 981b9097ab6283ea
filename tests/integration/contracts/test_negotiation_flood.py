"""A member opening negotiations to fill the provider's database (a real member's keys
over mutual TLS, as a modified node would send them).

The provider keeps what a member requests, refused or not: the request's policy with the
negotiation, and the reason of a refusal. A request naming 1,900 orders it never placed
was 234 KB, its refusal repeated every one of them, and 468 KB stayed per call, at the
600 calls an hour a member may open (281 MB an hour). Now a request's policy is held to
what a negotiation takes (64 KiB of JSON) and refused before anything is stored, and a
refusal names five orders and counts the rest.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import grpc
import pytest

from qdspace.connector.negotiation import MAX_POLICY_BYTES, ContractRequest, offer_json
from qdspace.node.identity.member import load_member_keys
from qdspace.node.rpc.contracts_serde import negotiation_message_to_proto, policy_from_json
from qdspace.node.rpc.peers import PeerDirectory
from qdspace.policies.model import OfferTerms, make_offer
from qdspace.protocols.v1 import catalog_pb2, catalog_pb2_grpc, negotiation_pb2_grpc

from .conftest import Space, ok

pytestmark = pytest.mark.integration

QA = frozenset({"quality-assurance"})


def test_a_member_cannot_fill_the_provider_with_requests(space: Space) -> None:
    keys = load_member_keys(space.directory("sunarc"))
    peers = PeerDirectory(keys, {"cellex": space.network["cellex"].grpc_address})

    def request(orders: int) -> ContractRequest:
        nid = f"flood-{uuid.uuid4().hex}"
        named = frozenset(f"PO-NEVER-PLACED-{i:06d}" for i in range(orders))
        offer = make_offer(f"{nid}:req", provider, "inspections", OfferTerms(QA, orders=named))
        return ContractRequest(f"{nid}:c0", nid, keys.identity.member_id, offer, datetime.now(UTC))

    async def run() -> tuple[grpc.aio.AioRpcError, str, str]:
        nonlocal provider
        channel = peers.channel("cellex")
        asset = await catalog_pb2_grpc.CatalogStub(channel).GetAsset(
            catalog_pb2.AssetRequest(asset_id="inspections")
        )
        provider = policy_from_json(asset.offer_json).assigner
        send = negotiation_pb2_grpc.NegotiationStub(channel).Send
        big = request(3000)
        assert len(offer_json(big.offer)) > MAX_POLICY_BYTES
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await send(negotiation_message_to_proto(big))
        small = request(300)
        answer = await send(negotiation_message_to_proto(small))
        await peers.close()
        return refused.value, answer.state, small.negotiation_id

    provider = ""
    with space.client("cellex") as supplier:
        before = len(ok(supplier.get("/v1/contracts/negotiations", params={"limit": 1000})))
        refused, state, nid = asyncio.run(run())
        assert refused.code() is grpc.StatusCode.INVALID_ARGUMENT, refused.details()
        assert f"more than the {MAX_POLICY_BYTES} a negotiation takes" in (refused.details() or "")
        kept = ok(supplier.get("/v1/contracts/negotiations", params={"limit": 1000}))
        assert len(kept) == before + 1  # the small request only
        stored = ok(supplier.get(f"/v1/contracts/negotiations/{nid}"))
    assert state == "TERMINATED"
    reason = stored["reason"]
    assert "PO-NEVER-PLACED-000000, PO-NEVER-PLACED-000001" in reason
    assert "and 295 more is not an order you placed" in reason and len(reason) < 300
