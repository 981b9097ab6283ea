"""A quality investigation between real nodes: opened, received, acknowledged, accepted,
each side's actions done, closed; both logs agree. A third member forging moves, a
replayed and a changed event, a state jump and bad REST input are refused.

``sunarc`` (OEM) opens an investigation with ``cellex`` (supplier); ``mallory`` is a
certified member that is no party to it and calls the others' gRPC services directly
with its own certificate, the way a modified node would. The tests run in file order.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import grpc
import httpx
import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from qdspace.connector.investigation import CaseEvent, Step
from qdspace.connector.investigation_wire import SealedEvent, event_from_bytes, sign_event
from qdspace.node.cli import app
from qdspace.node.identity.member import MemberKeys, load_member_keys
from qdspace.node.localnet.network import LocalNetwork, MemberSpec
from qdspace.node.rpc.client import open_channel
from qdspace.node.rpc.contracts_notification_serde import Notification, notification_to_proto
from qdspace.protocols.v1 import notification_pb2

from .conftest import ok, wait_for

pytestmark = pytest.mark.integration

NOTIFY = "/qdspace.v1.Notification/Notify"
CASE: dict[str, str] = {}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    network = LocalNetwork(
        tmp_path_factory.mktemp("investigations"),
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
        yield network
    finally:
        network.stop()


def keys(net: LocalNetwork, name: str) -> MemberKeys:
    return load_member_keys(net[name].directory)


def show(net: LocalNetwork, name: str, case_id: str) -> dict[str, Any]:
    with net[name].client() as client:
        result: dict[str, Any] = ok(client.get(f"/v1/investigations/{case_id}"))
    return result


def post(net: LocalNetwork, name: str, path: str, body: Any = None) -> httpx.Response:
    with net[name].client() as client:
        return client.post(f"/v1/investigations{path}", json=body if body is not None else {})


def state_is(net: LocalNetwork, name: str, state: str) -> Any:
    case = show(net, name, CASE["id"])
    return case if case["state"] == state else None


def notify(
    net: LocalNetwork, caller: str, target: str, body: SealedEvent
) -> tuple[grpc.StatusCode, str, bool]:
    """Send a case event as `caller` (its own certificate) straight to `target`'s node."""
    sender = keys(net, caller).identity.member_id
    note = Notification(f"n-{uuid.uuid4().hex}", sender, datetime.now(UTC), body)
    raw = notification_to_proto(note).SerializeToString()

    async def call() -> tuple[grpc.StatusCode, str, bool]:
        async with open_channel(keys(net, caller), net[target].grpc_address, target) as channel:
            method = channel.unary_unary(
                NOTIFY, request_serializer=None, response_deserializer=None
            )
            try:
                reply = await method(raw, timeout=10)
            except grpc.aio.AioRpcError as err:
                return err.code(), err.details() or "", False
        ack = notification_pb2.NotificationAck.FromString(reply)
        return grpc.StatusCode.OK, "", ack.first_delivery

    return asyncio.run(call())


def held_events(net: LocalNetwork, name: str) -> list[dict[str, Any]]:
    engine = create_engine(f"sqlite:///{net[name].directory / 'node.db'}")
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT author_id, seq, data, signature FROM contract_quality_case_event "
                    "WHERE case_id = :c ORDER BY position"
                ),
                {"c": CASE["id"]},
            )
            return [dict(r._mapping) for r in rows]
    finally:
        engine.dispose()


def test_an_investigation_runs_its_whole_life_on_both_sides(net: LocalNetwork) -> None:
    body = {
        "peer": "cellex",
        "kind": "INVESTIGATION",
        "severity": "CRITICAL",
        "subject": "EL microcracks in module batch MB-2611",
        "batch_ids": ["CX-CB-260003"],
        "part_ids": ["M-0001", "M-0002"],
        "trace_report_id": "tr-demo-1",
        "actions": [
            {"action_id": "A1", "kind": "CONTAINMENT", "owner": "cellex", "due": "2020-01-06"},
            {"action_id": "A2", "kind": "VERIFICATION", "owner": "sunarc", "due": "2026-12-20"},
        ],
    }
    opened = ok(post(net, "sunarc", "", body))
    CASE["id"] = case_id = opened["case_id"]
    assert opened["role"] == "opener" and opened["state"] in {"SENT", "RECEIVED"}
    received = wait_for("cellex to receive", lambda: state_is(net, "sunarc", "RECEIVED"))
    theirs = show(net, "cellex", case_id)
    assert theirs["state"] == "RECEIVED" and theirs["role"] == "receiver"
    assert theirs["batch_ids"] == ["CX-CB-260003"] and theirs["trace_report_id"] == "tr-demo-1"
    assert [a["state"] for a in received["actions"]] == ["OPEN", "OPEN"]

    ok(post(net, "cellex", f"/{case_id}/ack"))
    ok(post(net, "cellex", f"/{case_id}/accept", {"note": "we check chamber 3"}))
    wait_for("sunarc to see the acceptance", lambda: state_is(net, "sunarc", "ACCEPTED"))
    for name in ("sunarc", "cellex"):  # A1 is past due: the same alert on both sides
        with net[name].client() as client:
            late = ok(client.get("/v1/investigations/overdue"))
            (row,) = ok(client.get("/v1/investigations?limit=1"))  # read from its row
        assert [(a["case_id"], a["action_id"]) for a in late] == [(case_id, "A1")], name
        assert (row["case_id"], row["open_actions"], row["overdue_actions"]) == (case_id, 2, 1)
        assert [a["overdue"] for a in show(net, name, case_id)["actions"]] == [True, False]

    refused = post(net, "sunarc", f"/{case_id}/actions/A1/done")
    assert refused.status_code == 403 and "owned by cellex" in refused.json()["detail"]
    early = post(net, "sunarc", f"/{case_id}/close")
    assert early.status_code == 409 and "not done" in early.json()["detail"]
    ok(post(net, "cellex", f"/{case_id}/actions/A1/done", {"note": "lot quarantined"}))
    ok(post(net, "sunarc", f"/{case_id}/actions/A2/done"))
    wait_for(
        "both to see every action done",
        lambda: all(show(net, n, case_id)["open_actions"] == 0 for n in ("sunarc", "cellex")),
    )
    with net["sunarc"].client() as client:
        assert ok(client.get("/v1/investigations/overdue")) == []
    closed = ok(post(net, "sunarc", f"/{case_id}/close"))
    assert closed["state"] == "CLOSED"
    wait_for("cellex to see the closure", lambda: state_is(net, "cellex", "CLOSED"))

    mine, yours = show(net, "sunarc", case_id), show(net, "cellex", case_id)
    for side in (mine, yours):
        del side["role"]
    key = lambda e: (e["author_id"], e["seq"])  # noqa: E731
    assert sorted(mine.pop("events"), key=key) == sorted(yours.pop("events"), key=key)
    assert mine == yours  # the same state, actions, links on both sides
    with net["cellex"].client() as client:
        listed = ok(client.get("/v1/investigations"))
    assert [(c["case_id"], c["state"]) for c in listed] == [(case_id, "CLOSED")]


def test_a_state_jump_is_a_409_naming_the_state(net: LocalNetwork) -> None:
    response = post(net, "cellex", f"/{CASE['id']}/ack")
    assert response.status_code == 409
    assert "is CLOSED: ACKNOWLEDGE is not allowed" in response.json()["detail"]
    # and from a peer over gRPC: cellex's own key, the next number, an illegal step
    cellex = keys(net, "cellex")
    last = max(
        r["seq"] for r in held_events(net, "sunarc") if r["author_id"] == cellex.identity.member_id
    )
    event = event_from_bytes(held_events(net, "sunarc")[0]["data"])
    jump = CaseEvent(
        event.opener_id,
        CASE["id"],
        cellex.identity.member_id,
        last + 1,
        Step.ACKNOWLEDGE,
        datetime.now(UTC),
    )
    signed = sign_event(jump, cellex.signing_key)
    code, details, _ = notify(
        net, "cellex", "sunarc", SealedEvent(jump.canonical_bytes(), signed.signature)
    )
    assert code is grpc.StatusCode.FAILED_PRECONDITION and "is CLOSED" in details


def test_a_replay_is_acknowledged_and_changes_nothing(net: LocalNetwork) -> None:
    cellex_id = keys(net, "cellex").identity.member_id
    before = held_events(net, "sunarc")
    theirs = [r for r in before if r["author_id"] == cellex_id]
    for row in theirs:
        code, details, first = notify(
            net, "cellex", "sunarc", SealedEvent(row["data"], row["signature"])
        )
        assert code is grpc.StatusCode.OK and not first, details
    assert held_events(net, "sunarc") == before
    # the same number with other content, properly signed: refused
    original = event_from_bytes(theirs[-1]["data"])
    changed = CaseEvent(
        original.opener_id,
        original.case_id,
        original.author_id,
        original.seq,
        original.step,
        original.at,
        original.terms,
        original.action_id,
        "changed later",
    )
    signed = sign_event(changed, keys(net, "cellex").signing_key)
    code, details, _ = notify(
        net, "cellex", "sunarc", SealedEvent(changed.canonical_bytes(), signed.signature)
    )
    assert code is grpc.StatusCode.ALREADY_EXISTS and "other content" in details
    assert held_events(net, "sunarc") == before


def test_a_non_party_cannot_move_a_case_nor_learn_it_exists(net: LocalNetwork) -> None:
    mallory = keys(net, "mallory")
    opener = event_from_bytes(held_events(net, "sunarc")[0]["data"]).opener_id

    def forged(case_id: str, author: str, seq: int = 1) -> SealedEvent:
        event = CaseEvent(opener, case_id, author, seq, Step.ACKNOWLEDGE, datetime.now(UTC))
        return SealedEvent(
            event.canonical_bytes(), sign_event(event, mallory.signing_key).signature
        )

    for target in ("sunarc", "cellex"):
        code, details, _ = notify(
            net, "mallory", target, forged(CASE["id"], mallory.identity.member_id)
        )
        assert code is grpc.StatusCode.PERMISSION_DENIED
        unknown = f"qc-{uuid.uuid4().hex}"
        code2, details2, _ = notify(
            net, "mallory", target, forged(unknown, mallory.identity.member_id)
        )
        assert (code2, details2.replace(unknown, "ID")) == (code, details.replace(CASE["id"], "ID"))
    # an event in cellex's name, signed by mallory: the author is not the caller
    cellex_id = keys(net, "cellex").identity.member_id
    code, details, _ = notify(net, "mallory", "sunarc", forged(CASE["id"], cellex_id, 9))
    assert code is grpc.StatusCode.PERMISSION_DENIED and "not mallory's own" in details
    # cellex's name and signature bytes, sent by mallory: the signature is not mallory's
    row = next(r for r in held_events(net, "sunarc") if r["author_id"] == cellex_id)
    code, _, _ = notify(net, "mallory", "sunarc", SealedEvent(row["data"], row["signature"]))
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert show(net, "sunarc", CASE["id"])["state"] == "CLOSED"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"severity": "SEVERE"}, "severity"),
        ({"kind": "RECALL"}, "kind"),
        ({"actions": [{"action_id": "A1", "kind": "CONTAINMENT", "owner": "cellex", "due": "NaN"}]},
         "actions.0.due"),
        ({"actions": [{"action_id": "A1", "kind": "PRAY", "owner": "cellex", "due": "2026-12-01"}]},
         "actions.0.kind"),
        ({"subject": ""}, "subject"),
        ({"subject": "x" * 4001}, "subject"),
        ({"batch_ids": ["CX\tCB"]}, "batch_ids.0"),
        ({"trace_report_id": "t" * 129}, "trace_report_id"),
        ({"peer": ""}, "peer"),
    ],
)  # fmt: skip
def test_bad_rest_input_is_422_naming_the_field(
    net: LocalNetwork, change: dict[str, Any], field: str
) -> None:
    body = {"peer": "cellex", "severity": "MINOR", "subject": "x", **change}
    response = post(net, "sunarc", "", body)
    assert response.status_code == 422, response.text
    assert f"body.{field}" in [e["field"] for e in response.json()["errors"]]


def test_an_action_owner_who_is_no_party_is_422(net: LocalNetwork) -> None:
    body = {
        "peer": "cellex",
        "severity": "MINOR",
        "subject": "x",
        "actions": [
            {"action_id": "A1", "kind": "CONTAINMENT", "owner": "mallory", "due": "2026-12-01"}
        ],
    }
    response = post(net, "sunarc", "", body)
    assert response.status_code == 422 and "actions[0].owner" in response.json()["detail"]
    assert post(net, "sunarc", "/qc-nope/ack").status_code == 404
    assert post(net, "sunarc", f"/{CASE['id']}/reopen").status_code == 422


def test_the_command_line_opens_moves_and_refuses(net: LocalNetwork) -> None:
    runner = CliRunner()
    oem, sup = str(net["sunarc"].directory), str(net["cellex"].directory)
    opened = runner.invoke(
        app,
        [
            "investigation", "open", "cellex", "--dir", oem, "--subject", "cracked cells",
            "--severity", "major", "--batch", "CX-CB-1", "--json",
            "--action", "root-cause:cellex:2030-01-31:find the chamber",
        ],
    )  # fmt: skip
    assert opened.exit_code == 0, opened.output
    case_id = json.loads(opened.output)["case_id"]
    wait_for("cellex to receive", lambda: show(net, "cellex", case_id)["state"] == "RECEIVED")
    acked = runner.invoke(app, ["investigation", "ack", case_id, "--dir", sup])
    assert acked.exit_code == 0 and "ACKNOWLEDGED" in acked.output, acked.output
    jump = runner.invoke(app, ["investigation", "close", case_id, "--dir", oem])
    assert jump.exit_code == 1 and "409" in jump.output, jump.output
    assert "CLOSE is not allowed in that state" in jump.output  # RECEIVED or ACKNOWLEDGED
    listed = runner.invoke(app, ["investigation", "list", "--dir", sup])
    assert listed.exit_code == 0 and case_id in listed.output
    bad = runner.invoke(
        app, ["investigation", "open", "cellex", "--dir", oem, "--subject", "x",
              "--severity", "major", "--action", "containment-only"],
    )  # fmt: skip
    assert bad.exit_code == 2 and "KIND:OWNER:DUE" in bad.output
