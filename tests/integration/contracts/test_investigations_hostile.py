"""A member abuses quality cases against a real node: what it makes the node keep is
bounded, and its dates are held to the node's clock and the case's own order.

``mallory`` (a certified member) calls ``cellex``'s gRPC Notification service with its
own certificate, the way a modified node would; ``cellex`` takes at most
``cases_per_member_hour`` (4 here) new cases from one member in any hour and keeps at
most ``case_bytes_per_member`` (320,000 here) bytes of case data from it, moves
included. The tests run in file order.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any

import grpc
import pytest
from sqlalchemy import create_engine, text

from qdspace.connector.contract_store.cases import event_cost
from qdspace.connector.investigation import (
    MAX_TEXT,
    ActionItem,
    ActionKind,
    CaseEvent,
    CaseKind,
    CaseTerms,
    Severity,
    Step,
    opening,
)
from qdspace.connector.investigation_wire import SealedEvent, sign_event
from qdspace.node.identity.member import MemberKeys, load_member_keys
from qdspace.node.localnet.network import LocalNetwork, MemberSpec
from qdspace.node.rpc.client import open_channel
from qdspace.node.rpc.contracts_notification_serde import Notification, notification_to_proto
from qdspace.policies.canonical import parse_datetime

from .conftest import ok, wait_for

pytestmark = pytest.mark.integration

NOTIFY = "/qdspace.v1.Notification/Notify"
PER_HOUR = 4
BUDGET = 320_000
G = "\U0001d11e"  # one printable character, four bytes in UTF-8
CASE: dict[str, str] = {}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    network = LocalNetwork(
        tmp_path_factory.mktemp("hostile-cases"),
        [MemberSpec("cellex", "supplier"), MemberSpec("mallory", "oem")],
        chain=False,
        env={
            "QDSPACE_CASES_PER_MEMBER_HOUR": str(PER_HOUR),
            "QDSPACE_CASE_BYTES_PER_MEMBER": str(BUDGET),
        },
    )
    network.create()
    network.start()
    try:
        yield network
    finally:
        network.stop()


def keys(net: LocalNetwork, name: str) -> MemberKeys:
    return load_member_keys(net[name].directory)


def ids(net: LocalNetwork) -> tuple[str, str]:
    """mallory's and cellex's member ids."""
    return keys(net, "mallory").identity.member_id, keys(net, "cellex").identity.member_id


def send(net: LocalNetwork, event: CaseEvent) -> tuple[grpc.StatusCode, str]:
    """mallory's `event`, signed with its key, sent straight to cellex's node."""
    mallory = keys(net, "mallory")
    signed = sign_event(event, mallory.signing_key)
    body = SealedEvent(event.canonical_bytes(), signed.signature)
    note = Notification(
        f"n-{uuid.uuid4().hex}", mallory.identity.member_id, datetime.now(UTC), body
    )
    raw = notification_to_proto(note).SerializeToString()

    async def call() -> tuple[grpc.StatusCode, str]:
        async with open_channel(mallory, net["cellex"].grpc_address, "cellex") as channel:
            method = channel.unary_unary(
                NOTIFY, request_serializer=None, response_deserializer=None
            )
            try:
                await method(raw, timeout=20)
            except grpc.aio.AioRpcError as err:
                return err.code(), err.details() or ""
        return grpc.StatusCode.OK, ""

    return asyncio.run(call())


def cellex_holds(net: LocalNetwork, sql: str, **params: str) -> Any:
    engine = create_engine(f"sqlite:///{net['cellex'].directory / 'node.db'}")
    try:
        with engine.connect() as connection:
            return connection.execute(text(sql), params).scalar()
    finally:
        engine.dispose()


def held(net: LocalNetwork) -> tuple[int, int, int]:
    """mallory's cases at cellex, the events it authored there, and its bytes counted."""
    mallory, _ = ids(net)
    cases = "SELECT count(*) FROM contract_quality_case WHERE opener_id = :m"
    events = "SELECT count(*) FROM contract_quality_case_event WHERE author_id = :m"
    used = "SELECT kept_bytes FROM contract_quality_case_usage WHERE member_id = :m"
    return (
        cellex_holds(net, cases, m=mallory),
        cellex_holds(net, events, m=mallory),
        cellex_holds(net, used, m=mallory) or 0,
    )


def show(net: LocalNetwork, case_id: str) -> dict[str, Any]:
    with net["cellex"].client() as client:
        result: dict[str, Any] = ok(client.get(f"/v1/investigations/{case_id}"))
    return result


def test_a_case_dated_9999_is_refused_and_cannot_head_the_listing(net: LocalNetwork) -> None:
    with net["cellex"].client() as client:
        body = {"peer": "mallory", "severity": "CRITICAL", "subject": "cellex's own case"}
        CASE["own"] = own = ok(client.post("/v1/investigations", json=body))["case_id"]
    mallory, cellex = ids(net)
    far = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
    terms = CaseTerms(CaseKind.ALERT, mallory, cellex, Severity.MINOR, "noise")
    code, details = send(net, opening(f"qc-{uuid.uuid4().hex}", terms, far)[0])
    assert code is grpc.StatusCode.INVALID_ARGUMENT, details
    assert "ahead of this node's clock" in details, details
    assert held(net)[0] == 0  # (mallory's node may have sent its RECEIVE of cellex's case)
    with net["cellex"].client() as client:
        (first,) = ok(client.get("/v1/investigations", params={"limit": 1}))
    assert first["case_id"] == own


def test_a_receiver_cannot_date_its_moves_before_the_case(net: LocalNetwork) -> None:
    """mallory's node received cellex's case (its RECEIVE is dated by its clock); by hand,
    mallory acknowledges it dated 2020: refused. Dated at its RECEIVE, delivered later
    (late, in order): taken."""
    own = CASE["own"]
    case = wait_for("mallory's RECEIVE", lambda: (c := show(net, own))["state"] == "RECEIVED" and c)
    mallory, cellex = ids(net)
    (receive,) = [e for e in case["events"] if e["author_id"] == mallory]
    assert parse_datetime(receive["at"]) >= parse_datetime(case["opened_at"])
    past = datetime(2020, 1, 1, tzinfo=UTC)
    ack = CaseEvent(cellex, own, mallory, receive["seq"] + 1, Step.ACKNOWLEDGE, past)
    code, details = send(net, ack)
    assert code is grpc.StatusCode.INVALID_ARGUMENT, details
    assert "before the event it follows" in details, details
    assert show(net, own)["state"] == "RECEIVED"
    time.sleep(1.1)  # delivered later than it was dated
    code, details = send(net, replace(ack, at=parse_datetime(receive["at"])))
    assert code is grpc.StatusCode.OK, details
    assert show(net, own)["state"] == "ACKNOWLEDGED"


def big_terms(mallory: str, cellex: str) -> CaseTerms:
    """A case at every bound of its terms in four-byte characters (~240 KB signed), its
    actions mallory's own."""
    return CaseTerms(
        CaseKind.INVESTIGATION,
        mallory,
        cellex,
        Severity.LIFE_THREATENING,
        subject=G * MAX_TEXT,
        description=G * MAX_TEXT,
        batch_ids=tuple(f"{i:04d}" + G * 124 for i in range(200)),
        part_ids=tuple(f"{i:04d}" + G * 124 for i in range(200)),
        actions=tuple(
            ActionItem(f"A{i}", ActionKind.CONTAINMENT, mallory, date(2030, 1, 1), G * 40)
            for i in range(50)
        ),
    )


def open_case(net: LocalNetwork, terms: CaseTerms) -> tuple[str, list[tuple[str, str]]]:
    """mallory opens a case at cellex by hand (OPEN, SEND): its id and each answer."""
    case_id = f"qc-{uuid.uuid4().hex}"
    answers = [send(net, e) for e in opening(case_id, terms, datetime.now(UTC))]
    return case_id, [(code.name, details) for code, details in answers]


def test_a_member_opens_at_most_its_bytes_and_its_cases_an_hour(net: LocalNetwork) -> None:
    """One large case fits the byte budget, a second does not (nothing kept, nor counted
    against the hour); small ones go on up to the hourly cap, then are refused."""
    mallory, cellex = ids(net)
    CASE["big"], answers = open_case(net, big_terms(mallory, cellex))
    assert [a[0] for a in answers] == ["OK", "OK"], answers
    for _ in range(2):
        _, answers = open_case(net, CaseTerms(CaseKind.ALERT, mallory, cellex, Severity.MINOR, "s"))
        assert [a[0] for a in answers] == ["OK", "OK"], answers
    before = held(net)
    assert before[0] == 3  # and 8 events: 6 here, its RECEIVE and ACK of cellex's case
    _, answers = open_case(net, big_terms(mallory, cellex))
    assert answers[0][0] == "RESOURCE_EXHAUSTED", answers
    assert f"case_bytes_per_member {BUDGET}" in answers[0][1], answers
    assert held(net) == before  # nothing kept, nothing counted
    small = CaseTerms(CaseKind.ALERT, mallory, cellex, Severity.MINOR, "fourth this hour")
    _, answers = open_case(net, small)
    assert [a[0] for a in answers] == ["OK", "OK"], answers
    before = held(net)
    _, answers = open_case(net, small)
    assert answers[0][0] == "RESOURCE_EXHAUSTED", answers
    assert f"cases_per_member_hour {PER_HOUR}" in answers[0][1], answers
    assert held(net) == before


def test_moves_on_a_case_count_against_the_byte_budget(net: LocalNetwork) -> None:
    """cellex accepts mallory's large case; mallory marks its actions done, each with a
    16 KB note: taken while they fit the budget, the first that does not is refused and
    nothing of it is kept."""
    big = CASE["big"]
    with net["cellex"].client() as client:
        ok(client.post(f"/v1/investigations/{big}/ack", json={}))
        ok(client.post(f"/v1/investigations/{big}/accept", json={}))
    mallory, _ = ids(net)
    refused = None
    for seq, action in enumerate(range(50), start=3):  # mallory's OPEN, SEND were 1, 2
        event = CaseEvent(
            mallory, big, mallory, seq, Step.ACTION_DONE, datetime.now(UTC),
            action_id=f"A{action}", note=G * MAX_TEXT,
        )  # fmt: skip
        before = held(net)
        cost = event_cost(sign_event(event, keys(net, "mallory").signing_key))
        code, details = send(net, event)
        if before[2] + cost <= BUDGET:
            assert code is grpc.StatusCode.OK, details
            assert held(net)[2] == before[2] + cost
            continue
        refused = (code, details)
        assert held(net) == before
        break
    assert refused is not None, "the budget never bound"
    assert refused[0] is grpc.StatusCode.RESOURCE_EXHAUSTED, refused
    assert f"case_bytes_per_member {BUDGET}" in refused[1], refused
    done = [a["state"] for a in show(net, big)["actions"]]
    assert 0 < done.count("DONE") < 50
