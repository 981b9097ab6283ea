"""A hostile customer bends the provider's offer over the real wire (issue 10, finding 1).

The attacker is SunArc's own identity (a real member certificate and signing key)
talking mutual-TLS gRPC to Cellex directly, as a modified node would: it copies
Cellex's standard offer and rewrites one scope constraint with every operator the
policy language knows (``order isNoneOf [my order]`` was the reproduced bypass),
then drives the negotiation as far as Cellex lets it (accepting any counter-offer,
countersigning any agreement) and pulls every order Cellex holds, including a rival
customer's, and the live stream from the start. Whatever it signed, no row of an
order SunArc did not place may leave Cellex.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from nacl.signing import VerifyKey

from qdspace.connector.agreement import countersign
from qdspace.connector.encoding import StreamRequest
from qdspace.connector.negotiation import Accepted, ContractRequest, Verification
from qdspace.connector.transfer_messages import TransferRequest
from qdspace.connector.transfer_wire import Checkpoint
from qdspace.node.identity.member import load_member_keys
from qdspace.node.rpc.contracts_serde import (
    negotiation_message_from_proto,
    negotiation_message_to_proto,
    policy_from_json,
)
from qdspace.node.rpc.contracts_transfer_serde import (
    PullRequest,
    pull_request_to_proto,
    row_batch_from_proto,
    stream_request_to_proto,
    transfer_message_to_proto,
)
from qdspace.node.rpc.peers import PeerDirectory
from qdspace.policies.errors import PolicySyntaxError
from qdspace.policies.model import ALLOWED_OPERATORS, Constraint, LeftOperand, Operator, Policy
from qdspace.protocols.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    negotiation_pb2_grpc,
    subscription_pb2_grpc,
    transfer_pb2_grpc,
)

from .conftest import CELLEX_ORDER, Space, ok

pytestmark = pytest.mark.integration

RIVAL = "rival-oem"
RIVAL_ORDER = "PO-RIVAL-7001"
QA = "quality-assurance"
SCOPE = (LeftOperand.PURPOSE, LeftOperand.ORDER, LeftOperand.FIELDS, LeftOperand.DATETIME)


def _rival_rows() -> tuple[bytes, bytes]:
    order = {
        "order_id": RIVAL_ORDER,
        "customer": RIVAL,
        "supplier": "cellex",
        "product": "mono PERC cell M10",
        "quantity": 1000,
        "status": "open",
        "opened_at": "2026-10-01T00:00:00Z",
    }
    start = datetime(2026, 11, 20, tzinfo=UTC)
    inspections = [
        {
            "inspection_id": f"RIVAL-EL-{i:04d}",
            "station": "EL-1",
            "inspected_at": (start + timedelta(seconds=i)).isoformat().replace("+00:00", "Z"),
            "verdict": "pass",
            "score": 0.1,
            "model_version": "el-rival",
            "image_hash": "cd" * 32,
            "order_id": RIVAL_ORDER,
            "batch_id": "CX-CB-RIVAL",
        }
        for i in range(40)
    ]
    return (json.dumps(order) + "\n").encode(), "\n".join(map(json.dumps, inspections)).encode()


@pytest.fixture(scope="module")
def rival_data(space: Space) -> None:
    """Cellex also supplies another customer: its order and inspections sit beside ours."""
    orders, inspections = _rival_rows()
    with space.client("cellex") as supplier:
        for kind, body in (("order", orders), ("inspection", inspections)):
            r = supplier.post(
                f"/v1/ingest/{kind}",
                content=body,
                headers={"content-type": "application/x-ndjson"},
                params={"source": f"rival-{kind}.jsonl"},
            )
            assert ok(r)["rejected"] == [], r.text


def _right_for(left: LeftOperand, operator: Operator, fields: frozenset[str]) -> Any:
    if left is LeftOperand.DATETIME:
        return datetime(2020, 1, 1, tzinfo=UTC)
    values = {
        LeftOperand.PURPOSE: frozenset({QA}),
        LeftOperand.ORDER: frozenset({CELLEX_ORDER}),
        LeftOperand.FIELDS: fields,
    }[left]
    return next(iter(sorted(values))) if operator in (Operator.EQ, Operator.NEQ) else values


def _bend(offer: Policy, uid: str, left: LeftOperand, operator: Operator) -> Policy:
    """The provider's offer, narrowed to our order, with `left` rewritten by `operator`."""
    permission = offer.permissions[0]
    fields = next(
        c.right_operand for c in permission.constraints if c.left_operand is LeftOperand.FIELDS
    )
    assert isinstance(fields, frozenset)
    right = _right_for(left, operator, fields)
    kept = [
        c
        for c in permission.constraints
        if c.left_operand not in (left, LeftOperand.ORDER) or c.left_operand is LeftOperand.FIELDS
    ]
    kept = [c for c in kept if c.left_operand is not left]
    if left is not LeftOperand.ORDER:  # the honest part: our own order
        kept.append(Constraint(LeftOperand.ORDER, Operator.IS_ANY_OF, frozenset({CELLEX_ORDER})))
    kept.append(Constraint(left, operator, right))
    return replace(offer, uid=uid, permissions=(replace(permission, constraints=tuple(kept)),))


def _variants() -> list[tuple[LeftOperand, Operator]]:
    return [(left, op) for left in SCOPE for op in sorted(ALLOWED_OPERATORS[left])]


class Attacker:
    """SunArc's keys, driving Cellex's services by hand over mutual TLS."""

    def __init__(self, space: Space) -> None:
        self.keys = load_member_keys(space.directory("sunarc"))
        self.me = self.keys.identity.member_id
        self.provider_vk = VerifyKey(
            load_member_keys(space.directory("cellex")).identity.verify_key
        )
        self.peers = PeerDirectory(self.keys, {"cellex": space.network["cellex"].grpc_address})
        channel = self.peers.channel("cellex")
        self.catalog = catalog_pb2_grpc.CatalogStub(channel)
        self.negotiation = negotiation_pb2_grpc.NegotiationStub(channel)
        self.transfer = transfer_pb2_grpc.TransferStub(channel)
        self.subscription = subscription_pb2_grpc.SubscriptionStub(channel)
        self.provider_id = ""

    async def offer(self, asset: str) -> Policy:
        reply = await self.catalog.GetAsset(catalog_pb2.AssetRequest(asset_id=asset))
        offer = policy_from_json(reply.offer_json)
        self.provider_id = offer.assigner
        return offer

    async def negotiate(self, asked: Policy, nid: str) -> tuple[str, str | None]:
        """(final state, agreement id): accept every counter, countersign every agreement."""
        now = datetime.now(UTC)
        send = self.negotiation.Send
        ack = await send(
            negotiation_message_to_proto(ContractRequest(f"{nid}:c0", nid, self.me, asked, now))
        )
        if ack.state == "OFFERED":
            ack = await send(negotiation_message_to_proto(Accepted(f"{nid}:c1", nid, self.me, now)))
        if ack.state != "AGREED":
            return ack.state, None
        signed = negotiation_message_from_proto(ack.replies[0]).signed  # type: ignore[union-attr]
        signature = countersign(signed, self.keys.signing_key, self.provider_vk).consumer_signature
        assert signature is not None
        final = await send(
            negotiation_message_to_proto(Verification(f"{nid}:c2", nid, self.me, signature, now))
        )
        return final.state, signed.agreement.agreement_id

    async def pull_orders(self, agreement_id: str, order: str | None) -> set[str]:
        """The orders of every row Cellex releases to a transfer for `order` (None: all)."""
        tid = f"tr-bent-{uuid.uuid4().hex}"
        request = TransferRequest(
            f"{tid}:c0", tid, self.me, agreement_id, self.provider_id, datetime.now(UTC), QA, order
        )
        try:
            await self.transfer.Send(transfer_message_to_proto(request))
        except grpc.aio.AioRpcError as refused:
            assert refused.code() == grpc.StatusCode.PERMISSION_DENIED, refused.details()
            return set()
        seen: set[str] = set()
        pull = pull_request_to_proto(PullRequest(tid, Checkpoint.genesis(tid), 500))
        async for message in self.transfer.Pull(pull):
            batch = row_batch_from_proto(message)
            for line in batch.payload.splitlines():
                seen.add(json.loads(line).get("order_id", "<no order field>"))
            seen.update(batch.order_ids)
        return seen

    async def stream_orders(self, agreement_id: str) -> set[str]:
        """The orders of the rows the live stream releases from the start (a few seconds)."""
        sid = f"sub-bent-{uuid.uuid4().hex}"
        request = stream_request_to_proto(StreamRequest(sid, agreement_id, QA, from_start=True))
        seen: set[str] = set()
        call = self.subscription.Subscribe(request)
        try:
            async with asyncio.timeout(4):
                async for event in call:
                    for row in event.rows:
                        seen.add(json.loads(row.json).get("order_id", "<no order field>"))
                        seen.add(row.order_id)
        except TimeoutError:
            pass
        except grpc.aio.AioRpcError as refused:
            assert refused.code() == grpc.StatusCode.PERMISSION_DENIED, refused.details()
        finally:
            call.cancel()
        return seen


def test_no_bent_offer_ever_releases_another_customers_order(
    space: Space, rival_data: None
) -> None:
    signed_as_asked: list[str] = []

    async def run() -> dict[str, tuple[str, set[str]]]:
        attacker = Attacker(space)
        outcomes: dict[str, tuple[str, set[str]]] = {}
        try:
            offer = await attacker.offer("inspections")
            for left, operator in _variants():
                label = f"{left} {operator}"
                nid = f"neg-bent-{uuid.uuid4().hex}"
                try:
                    asked = _bend(offer, f"{nid}:req", left, operator)
                except PolicySyntaxError:
                    continue  # the policy language itself refuses the combination
                state, agreement_id = await attacker.negotiate(asked, nid)
                orders: set[str] = set()
                if agreement_id is not None:
                    assert state == "FINALIZED", label
                    for order in (RIVAL_ORDER, CELLEX_ORDER, None):
                        orders |= await attacker.pull_orders(agreement_id, order)
                outcomes[label] = (state, orders)
        finally:
            await attacker.peers.close()
        return outcomes

    outcomes = asyncio.run(run())
    assert len(outcomes) >= 15  # every operator on every scope constraint was tried
    for label, (state, orders) in outcomes.items():
        assert orders <= {CELLEX_ORDER}, f"{label}: {state}, released orders {orders}"
        if state == "FINALIZED":
            signed_as_asked.append(label)
    # the honest variants still work: bending is refused, not the trade
    assert "order isAnyOf" in signed_as_asked and "purpose isAnyOf" in signed_as_asked
    with space.client("cellex") as supplier:
        agreements = ok(supplier.get("/v1/contracts/agreements"))
    for agreement in agreements:
        policy = agreement.get("policy") or {}
        for permission in policy.get("permission", []):
            for constraint in permission.get("constraint", []):
                if constraint.get("leftOperand") in ("order", "purpose"):
                    assert constraint["operator"] == "isAnyOf", agreement["agreement_id"]


def test_the_isnoneof_bypass_on_the_live_stream_releases_nothing_foreign(
    space: Space, rival_data: None
) -> None:
    async def run() -> tuple[str, set[str]]:
        attacker = Attacker(space)
        try:
            offer = await attacker.offer("live-inspections")
            nid = f"neg-bent-live-{uuid.uuid4().hex}"
            asked = _bend(offer, f"{nid}:req", LeftOperand.ORDER, Operator.IS_NONE_OF)
            state, agreement_id = await attacker.negotiate(asked, nid)
            assert agreement_id is not None, state  # countered with our own order, accepted
            return state, await attacker.stream_orders(agreement_id)
        finally:
            await attacker.peers.close()

    state, orders = asyncio.run(run())
    assert state == "FINALIZED"
    assert orders == {CELLEX_ORDER}  # the stream works, and carries only our order


def test_message_ids_of_the_providers_form_are_refused(space: Space) -> None:
    """``<negotiation>:p<k>`` names the provider's own messages (its answers are rebuilt
    from them on a retry); a consumer sending such an id, first or later, and retrying
    it, is refused as a wrong sender every time, never an internal error."""

    async def run() -> list[tuple[str, grpc.StatusCode | None]]:
        attacker = Attacker(space)
        send = attacker.negotiation.Send
        got: list[tuple[str, grpc.StatusCode | None]] = []

        async def call(label: str, message: Any) -> None:
            try:
                await send(negotiation_message_to_proto(message))
                got.append((label, None))
            except grpc.aio.AioRpcError as refused:
                got.append((label, refused.code()))

        try:
            offer = await attacker.offer("inspections")
            now = datetime.now(UTC)
            nid = f"neg-pid-{uuid.uuid4().hex}"
            first = ContractRequest(f"{nid}:p0", nid, attacker.me, offer, now)
            for label in ("opening as p0", "opening as p0 again"):
                await call(label, first)
            nid = f"neg-pid-{uuid.uuid4().hex}"
            await call("honest opening", ContractRequest(f"{nid}:c0", nid, attacker.me, offer, now))
            for k in (1, 2, 2):
                await call(f"accept as p{k}", Accepted(f"{nid}:p{k}", nid, attacker.me, now))
        finally:
            await attacker.peers.close()
        return got

    got = dict(asyncio.run(run()))
    denied = grpc.StatusCode.PERMISSION_DENIED
    assert got.pop("honest opening") is None
    assert got == {
        "opening as p0": denied,
        "opening as p0 again": denied,
        "accept as p1": denied,
        "accept as p2": denied,
    }, got
