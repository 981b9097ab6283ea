"""A member cannot fill a provider's database with negotiations or transfers: Cellex
takes at most ``negotiations_per_member_hour`` (3 here) new negotiations and
``transfers_per_member_hour`` (2) new transfers from one member in any hour, over DSP
and gRPC together. A member (Polycell for negotiations, SunArc for transfers), by hand
with its own credentials, opens them over DSP until it is refused (429, the cap named,
nothing written), its node's gRPC request is refused for the same count, the other
member's count is its own, and once the hour has gone by (Cellex's contract clock
moved) it may open one again. Over DSP the quota is checked before a request's body is
read (`node.dsp.app`), so a retried request of a process the member holds is refused
too while it is over: the process's state is still a GET away."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from qdspace.connector.dsp_transfer import request_message as transfer_request
from qdspace.node.localnet.network import LocalNetwork, MemberSpec

from .conftest import dsp_network, ingest_sample, ok, rows_of
from .peer import DSP, Callbacks, Peer, peer_with_callbacks, request

pytestmark = pytest.mark.integration
CAP = 3
TRANSFERS = 2
QA = "quality-assurance"
ORDER = "PO-2026-0042"  # Cellex's sample order for SunArc


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    members = [
        MemberSpec("sunarc", "oem"),
        MemberSpec("polycell", "oem"),
        MemberSpec("cellex", "supplier"),
    ]
    yield from dsp_network(
        tmp_path_factory,
        members,
        env={
            "QDSPACE_NEGOTIATIONS_PER_MEMBER_HOUR": str(CAP),
            "QDSPACE_TRANSFERS_PER_MEMBER_HOUR": str(TRANSFERS),
        },
    )


def _opened_at_cellex(
    net: LocalNetwork, consumer: str, kind: str = "negotiation", *, dsp_only: bool = True
) -> int:
    """The negotiations (or transfers) Cellex holds as provider with `consumer`; with
    `dsp_only` (none opened over gRPC), each with its DSP binding: a refused request
    leaves neither."""
    member = net[consumer].keys().identity.member_id
    sql = f"SELECT count(*) FROM contract_{kind} WHERE consumer_id = :m AND role = 'provider'"
    ((rows,),) = rows_of(net, "cellex", sql, m=member)
    bound_sql = "SELECT count(*) FROM dsp_process WHERE peer_id = :m AND kind = :k"
    ((bound,),) = rows_of(net, "cellex", bound_sql, m=member, k=kind)
    assert rows == bound or not dsp_only, (kind, rows, bound)
    return int(rows)


def _ask(peer: Peer, offer: dict[str, Any], callback: str, cpid: str | None = None) -> Any:
    body = request(cpid or f"urn:uuid:{uuid.uuid4()}", offer, callback)
    return peer.post("/negotiations/request", body)


@pytest.fixture(scope="module")
def sampled(trio: LocalNetwork) -> LocalNetwork:
    ingest_sample(trio, "cellex")
    return trio


def test_a_member_opens_at_most_the_cap_of_transfers_within_the_hour(
    sampled: LocalNetwork,
) -> None:
    """SunArc holds a DSP agreement (negotiated by hand) and opens transfers under it by
    hand until it is refused; a retried request of one it opened is refused too (the
    quota comes before the body), its state still read; a gRPC pull by its node is
    refused for the same count; an hour later it may open one again."""
    net = sampled
    with peer_with_callbacks(net, "sunarc", "cellex") as (sunarc, callbacks):
        agreement = _agreed_by_hand(sunarc, callbacks)
        first = f"urn:uuid:{uuid.uuid4()}"
        callback = callbacks.url
        first_ppid = ""
        for n in range(TRANSFERS):
            tid = first if n == 0 else f"urn:uuid:{uuid.uuid4()}"
            asked = sunarc.post("/transfers/request", transfer_request(tid, agreement, callback))
            assert asked.status_code == 201, asked.text
            first_ppid = first_ppid or ok(asked)["providerPid"]
        assert _opened_at_cellex(net, "sunarc", "transfer") == TRANSFERS

        over = transfer_request(f"urn:uuid:{uuid.uuid4()}", agreement, callback)
        refused = sunarc.post("/transfers/request", over)
        assert refused.status_code == 429, refused.text
        assert f"transfers_per_member_hour {TRANSFERS}" in refused.json()["reason"][0]
        assert _opened_at_cellex(net, "sunarc", "transfer") == TRANSFERS

        again = sunarc.post("/transfers/request", transfer_request(first, agreement, callback))
        assert again.status_code == 429, again.text  # a retry: refused before it is read
        assert ok(sunarc.get(f"/transfers/{first_ppid}"))["state"] == "STARTED"

    with net["sunarc"].client() as oem:
        body = {"peer": "cellex", "asset_id": "inspections", "purposes": [QA], "orders": [ORDER]}
        over_grpc = ok(oem.post("/v1/contracts/negotiations", json=body))
        assert over_grpc["state"] == "FINALIZED", over_grpc
        pull = {"agreement_id": over_grpc["agreement_id"], "purpose": QA, "order_id": ORDER}
        refused = oem.post("/v1/contracts/transfers", json=pull)
        assert refused.status_code == 429, refused.text
        assert "transfers_per_member_hour" in refused.text
        with _an_hour_later(net):
            ok(oem.post("/v1/contracts/transfers", json=pull))
    assert _opened_at_cellex(net, "sunarc", "transfer", dsp_only=False) == TRANSFERS + 1


def _agreed_by_hand(peer: Peer, callbacks: Callbacks) -> str:
    """A DSP negotiation for Cellex's inspections, by hand to FINALIZED: the agreement id."""
    cpid = f"urn:uuid:{uuid.uuid4()}"
    asked = _ask(peer, peer.catalog_offer("inspections"), callbacks.url, cpid)
    ppid = ok(asked)["providerPid"]
    callbacks.wait(cpid, "ContractOfferMessage")  # narrowed to its orders: taken
    pids = {"@context": [DSP], "providerPid": ppid, "consumerPid": cpid}
    accepted = {**pids, "@type": "ContractNegotiationEventMessage", "eventType": "ACCEPTED"}
    answer = peer.post(f"/negotiations/{ppid}/events", accepted)
    assert answer.status_code == 200, answer.text
    agreement = callbacks.wait(cpid, "ContractAgreementMessage")["agreement"]["@id"]
    verified = {**pids, "@type": "ContractAgreementVerificationMessage"}
    answer = peer.post(f"/negotiations/{ppid}/agreement/verification", verified)
    assert answer.status_code == 200, answer.text
    event = callbacks.wait(cpid, "ContractNegotiationEventMessage")
    assert event["eventType"] == "FINALIZED", event
    return str(agreement)


@contextmanager
def _an_hour_later(net: LocalNetwork) -> Iterator[None]:
    """Cellex's contract clock an hour and a minute on, and back after."""
    with net["cellex"].client() as supplier:
        ok(supplier.post("/v1/contracts/clock", json={"offset_days": 61 / 1440}))
    try:
        yield
    finally:
        with net["cellex"].client() as supplier:
            ok(supplier.post("/v1/contracts/clock", json={"offset_days": 0}))


def test_a_member_opens_at_most_the_cap_within_the_hour(sampled: LocalNetwork) -> None:
    trio = sampled
    with peer_with_callbacks(trio, "polycell", "cellex") as (polycell, callbacks):
        offer = polycell.catalog_offer("inspections")
        first = f"urn:uuid:{uuid.uuid4()}"
        first_ppid = ""
        for n in range(CAP):
            asked = _ask(polycell, offer, callbacks.url, first if n == 0 else None)
            assert asked.status_code == 201, asked.text
            first_ppid = first_ppid or ok(asked)["providerPid"]
        assert _opened_at_cellex(trio, "polycell") == CAP

        over = _ask(polycell, offer, callbacks.url)
        assert over.status_code == 429, over.text
        reason = over.json()["reason"][0]
        assert f"negotiations_per_member_hour {CAP}" in reason, reason
        assert _opened_at_cellex(trio, "polycell") == CAP  # nothing written for it

        again = _ask(polycell, offer, callbacks.url, first)  # a retry of one it holds:
        assert again.status_code == 429, again.text  # refused before its body is read
        assert polycell.state(first_ppid) == "TERMINATED"  # (no orders): its state, a GET

        # Polycell's node, over gRPC: the same count
        with trio["polycell"].client() as oem:
            body = {"peer": "cellex", "asset_id": "inspections", "purposes": [QA]}
            refused = oem.post("/v1/contracts/negotiations", json=body)
        assert refused.status_code == 429, refused.text
        assert "negotiations_per_member_hour" in refused.text
        assert _opened_at_cellex(trio, "polycell") == CAP

    before = _opened_at_cellex(trio, "sunarc", dsp_only=False)
    with peer_with_callbacks(trio, "sunarc", "cellex") as (sunarc, its_callbacks):
        asked = _ask(sunarc, sunarc.catalog_offer("inspections"), its_callbacks.url)
        assert asked.status_code == 201, asked.text  # another member's count
    assert _opened_at_cellex(trio, "sunarc", dsp_only=False) == before + 1

    with _an_hour_later(trio):
        with peer_with_callbacks(trio, "polycell", "cellex") as (polycell, callbacks):
            asked = _ask(polycell, polycell.catalog_offer("inspections"), callbacks.url)
            assert asked.status_code == 201, asked.text
        assert _opened_at_cellex(trio, "polycell") == CAP + 1
