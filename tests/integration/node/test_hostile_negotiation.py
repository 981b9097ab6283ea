"""A real member turned hostile against other members' negotiations, over real mutual TLS.

``mallory`` is a certified OEM with its own node process; ``sunarc`` trades with
``cellex``. Mallory learned one of their negotiation ids (a log, a screenshot, a guess)
and calls cellex's and sunarc's Negotiation services with its own certificate, the way
a modified node would. It must learn nothing from the answers: not whether the id is
in use (Get answers another member's negotiation as one that is not there), not who
trades (no refusal names a party), not which message ids they used (a used id and a
fresh one are refused alike); and it must move nothing, nor write a line of its own
into a node's log.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime

import grpc
import pytest
from sqlalchemy import create_engine, text

from qdspace.connector.negotiation import ContractRequest, Termination
from qdspace.node.identity.member import MemberKeys, load_member_keys
from qdspace.node.localnet.network import LocalNetwork, MemberSpec
from qdspace.node.rpc.client import open_channel
from qdspace.node.rpc.contracts_serde import negotiation_message_to_proto, policy_from_json
from qdspace.protocols.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    negotiation_pb2,
    negotiation_pb2_grpc,
)

from .conftest import ok, wait_for

pytestmark = pytest.mark.integration

QA = "quality-assurance"
SUNARC_ORDER = "PO-NEG-SUNARC"
#: what mallory would like a node's log to show, on a line of its own
FORGED = "CRITICAL node.rpc FORGED-BY-MALLORY all agreements revoked"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    network = LocalNetwork(
        tmp_path_factory.mktemp("hostile-negotiation"),
        [
            MemberSpec("sunarc", "oem"),
            MemberSpec("cellex", "supplier"),
            MemberSpec("mallory", "oem"),
        ],
        chain=False,
    )
    network.create()
    network.start()
    try:
        order = {
            "order_id": SUNARC_ORDER,
            "customer": "sunarc",
            "supplier": "cellex",
            "product": "mono PERC cell M10",
            "quantity": 1000,
            "status": "open",
            "opened_at": "2026-10-19T06:00:00Z",
        }
        with network["cellex"].client() as client:
            ok(client.post("/v1/ingest/order", json={"rows": [order]}))
        yield network
    finally:
        network.stop()


@pytest.fixture(scope="module")
def finalized(net: LocalNetwork) -> str:
    """A negotiation sunarc's node ran with cellex to the end (both nodes hold it)."""
    with net["sunarc"].client() as client:
        body = {"peer": "cellex", "asset_id": "inspections", "purposes": [QA]}
        done = ok(
            client.post("/v1/contracts/negotiations", json={**body, "orders": [SUNARC_ORDER]})
        )
    assert done["state"] == "FINALIZED", done
    nid: str = done["negotiation_id"]
    return nid


@pytest.fixture(scope="module")
def open_one(net: LocalNetwork) -> str:
    """A negotiation sunarc opened with cellex by hand and left open (cellex's move done,
    sunarc's to come)."""

    async def run() -> str:
        keys = _keys(net, "sunarc")
        async with _channel(net, "sunarc", "cellex") as channel:
            asset = await catalog_pb2_grpc.CatalogStub(channel).GetAsset(
                catalog_pb2.AssetRequest(asset_id="inspections")
            )
            nid = f"neg-open-{uuid.uuid4().hex}"
            asked = replace(policy_from_json(asset.offer_json), uid=f"{nid}:req")
            request = ContractRequest(
                f"{nid}:c0", nid, keys.identity.member_id, asked, datetime.now(UTC)
            )
            stub = negotiation_pb2_grpc.NegotiationStub(channel)
            ack = await stub.Send(negotiation_message_to_proto(request))
        assert ack.state in ("OFFERED", "AGREED"), ack.state
        return nid

    return asyncio.run(run())


def _keys(net: LocalNetwork, name: str) -> MemberKeys:
    return load_member_keys(net[name].directory)


def _channel(net: LocalNetwork, caller: str, target: str) -> grpc.aio.Channel:
    return open_channel(_keys(net, caller), net[target].grpc_address, target)


def _member_ids(net: LocalNetwork, *names: str) -> list[str]:
    return [_keys(net, name).identity.member_id for name in names]


def _log(net: LocalNetwork, name: str) -> str:
    return net[name].log_path.read_text(errors="replace")


def _held(net: LocalNetwork, name: str, nid: str) -> tuple[str, int]:
    """(state, messages applied) of negotiation `nid` as node `name` holds it."""
    with net[name].client() as client:
        found = ok(client.get(f"/v1/contracts/negotiations/{nid}"))
    return found["state"], found["messages"]


def _message_ids(net: LocalNetwork, name: str, nid: str) -> list[str]:
    """The ids of the messages node `name` applied to `nid`, read from its own database."""
    engine = create_engine(f"sqlite:///{net[name].directory / 'node.db'}")
    sql = (
        "SELECT message_id FROM contract_message"
        " WHERE process_kind = 'negotiation' AND process_id = :nid"
    )
    try:
        with engine.connect() as connection:
            return [r[0] for r in connection.execute(text(sql), {"nid": nid})]
    finally:
        engine.dispose()


async def _get(net: LocalNetwork, target: str, nid: str) -> tuple[grpc.StatusCode, str]:
    async with _channel(net, "mallory", target) as channel:
        stub = negotiation_pb2_grpc.NegotiationStub(channel)
        try:
            await stub.Get(negotiation_pb2.NegotiationQuery(negotiation_id=nid), timeout=10)
        except grpc.aio.AioRpcError as err:
            return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


async def _own_state(net: LocalNetwork, nid: str) -> str:
    """Negotiation `nid`'s state as sunarc, its consumer, asks cellex for it."""
    async with _channel(net, "sunarc", "cellex") as channel:
        stub = negotiation_pb2_grpc.NegotiationStub(channel)
        status = await stub.Get(negotiation_pb2.NegotiationQuery(negotiation_id=nid), timeout=10)
    return str(status.state)


async def _terminate(
    net: LocalNetwork, target: str, nid: str, message_id: str
) -> tuple[grpc.StatusCode, str]:
    message = Termination(
        message_id,
        nid,
        _keys(net, "mallory").identity.member_id,
        "mallory says so",
        datetime.now(UTC),
    )
    async with _channel(net, "mallory", target) as channel:
        stub = negotiation_pb2_grpc.NegotiationStub(channel)
        try:
            await stub.Send(negotiation_message_to_proto(message), timeout=10)
        except grpc.aio.AioRpcError as err:
            return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


def _fresh_like(nid: str, message_id: str) -> str:
    """A message id never used in `nid`, of the same form as `message_id` (the provider's
    ``<negotiation>:p<number>``, which a consumer may never send, or any other)."""
    if message_id.startswith(f"{nid}:p") and message_id[len(nid) + 2 :].isdigit():
        return f"{nid}:p{900_000 + uuid.uuid4().int % 1000}"
    return f"{nid}:m-{uuid.uuid4().hex[:8]}"


def test_get_answers_another_members_negotiation_as_one_that_is_not_there(
    net: LocalNetwork, finalized: str, open_one: str
) -> None:
    unknown = f"neg-{uuid.uuid4().hex}"
    answers = {}
    for nid in (finalized, open_one, unknown):
        code, details = asyncio.run(_get(net, "cellex", nid))
        answers[nid] = (code, details.replace(nid, "ID"))
    assert answers[finalized] == answers[open_one] == answers[unknown], answers
    assert answers[unknown][0] is grpc.StatusCode.NOT_FOUND
    said = " ".join(d for _, d in answers.values())
    for member_id in _member_ids(net, "sunarc", "cellex"):
        assert member_id not in said
    assert asyncio.run(_own_state(net, open_one)) in ("OFFERED", "AGREED")  # its party reads it


def test_get_refuses_ids_no_id_can_be_and_writes_nothing_of_them_to_the_log(
    net: LocalNetwork,
) -> None:
    forged_line = f"neg-x\n2026-12-02 06:00:00,000 {FORGED}\n"
    huge = "n" * 200_000
    before = len(_log(net, "cellex"))
    for nid in (forged_line, huge, "neg-\u0000-nul", ""):
        code, details = asyncio.run(_get(net, "cellex", nid))
        assert code is grpc.StatusCode.INVALID_ARGUMENT, (code, details[:200])
        assert "negotiation_id" in details and len(details) < 200, details[:200]
        assert "FORGED" not in details
    # a refusal that is logged, after them: once its line is there, so is any before it
    sentinel = f"neg-sentinel-{uuid.uuid4().hex}"
    assert asyncio.run(_get(net, "cellex", sentinel))[0] is grpc.StatusCode.NOT_FOUND
    log = wait_for(
        "the sentinel's refusal in cellex's log",
        lambda: sentinel in _log(net, "cellex") and _log(net, "cellex"),
    )
    new = log[before:]
    assert "FORGED" not in new
    assert huge[:1000] not in new
    assert all(len(line) < 2000 for line in new.splitlines())


def test_an_outsiders_termination_moves_nothing_and_names_no_party(
    net: LocalNetwork, finalized: str, open_one: str
) -> None:
    """Answered as a Termination for a negotiation no one holds: the outsider learns
    neither that the id is in use, nor which message ids the parties used, nor who they
    are (before: PERMISSION_DENIED naming both parties, ALREADY_EXISTS for a used id)."""
    parties = _member_ids(net, "sunarc", "cellex")
    before = {
        ("cellex", finalized): _held(net, "cellex", finalized),
        ("sunarc", finalized): _held(net, "sunarc", finalized),
        ("cellex", open_one): _held(net, "cellex", open_one),
    }
    assert before[("cellex", open_one)][0] in ("OFFERED", "AGREED")
    said = []
    for target, nid in before:
        used = _message_ids(net, target, nid)
        assert used, (target, nid)
        for message_id in used:  # each id the parties used, and a fresh one of its form
            fresh = _fresh_like(nid, message_id)
            nobody = f"neg-{uuid.uuid4().hex}"  # a negotiation no one holds
            unheld = _fresh_like(nobody, message_id.replace(nid, nobody))
            code, details = asyncio.run(_terminate(net, target, nid, message_id))
            fresh_code, fresh_details = asyncio.run(_terminate(net, target, nid, fresh))
            none_code, none_details = asyncio.run(_terminate(net, target, nobody, unheld))
            shown = (code, details.replace(message_id, "MID").replace(nid, "NID"))
            assert shown == (
                fresh_code,
                fresh_details.replace(fresh, "MID").replace(nid, "NID"),
            ), (target, message_id)  # a used id is refused as a fresh one: no replay confirmed
            assert shown == (
                none_code,
                none_details.replace(unheld, "MID").replace(nobody, "NID"),
            ), (target, message_id)  # and as one for a negotiation no one holds
            assert code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED)
            said.append(details + fresh_details)
    for details in said:
        for member_id in parties:
            assert member_id not in details, details
    after = {key: _held(net, *key) for key in before}
    assert after == before
