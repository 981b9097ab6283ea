"""A real member turned hostile: every RPC family attacked over real mutual TLS.

``mallory`` is a certified OEM with its own node process and a genuine agreement of its
own with cellex; it calls the other nodes' gRPC services directly with its own
certificate, the way a modified node would: garbage bytes to every method, forged,
replayed and third-party notifications, somebody else's agreement, transfer and batch
ids, oversized requests, too many streams; and it keeps a stream open while the
authority revokes it. The tests run in file order: the last one revokes mallory.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2
from sqlalchemy import create_engine, text

from qdspace.connector.agreement import AgreementTermination, OrderClosed
from qdspace.connector.contract_store import OutboxMessage
from qdspace.connector.contract_store.outbox import OutboxStore
from qdspace.connector.spc import Investigation, QualityAlert, SpcAlert, SpcPoint
from qdspace.connector.transfer_wire import Checkpoint
from qdspace.node.identity.authority import Authority
from qdspace.node.identity.member import MemberKeys, load_member_keys
from qdspace.node.localnet.network import LocalNetwork, MemberSpec
from qdspace.node.rpc.client import open_channel
from qdspace.node.rpc.contracts_notification_serde import Notification, notification_to_proto
from qdspace.node.rpc.contracts_transfer_serde import checkpoint_to_proto
from qdspace.protocols.v1 import (
    catalog_pb2,
    federation_pb2,
    negotiation_pb2,
    node_pb2,
    notification_pb2,
    subscription_pb2,
    trace_pb2,
    transfer_pb2,
)

from .conftest import ok, wait_for

pytestmark = pytest.mark.integration

SPC = "spc-monitoring"
QA = "quality-assurance"
SUNARC_ORDER = "PO-HOSTILE-SUNARC"
MALLORY_ORDER = "PO-HOSTILE-MALLORY"
STREAM_CAP = 3

#: statuses a hostile caller may cause; UNKNOWN and INTERNAL mean the node failed
CALLER_CAUSED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,  # a stream that waits for data the fuzzer never sends
}


def negotiate(client: httpx.Client, peer: str, asset: str, **terms: Any) -> dict[str, Any]:
    body = {"peer": peer, "asset_id": asset, "purposes": [QA], **terms}
    result: dict[str, Any] = ok(client.post("/v1/contracts/negotiations", json=body))
    return result


def db_rows(net: LocalNetwork, name: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    """Read a node's own SQLite file: what it holds, independently of its services."""
    engine = create_engine(f"sqlite:///{net[name].directory / 'node.db'}")
    try:
        with engine.connect() as connection:
            return [dict(r._mapping) for r in connection.execute(text(sql), params)]
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    network = LocalNetwork(
        tmp_path_factory.mktemp("hostile"),
        [
            MemberSpec("sunarc", "oem"),
            MemberSpec("cellex", "supplier"),
            MemberSpec("mallory", "oem"),
        ],
        chain=False,
        env={"QDSPACE_RPC_MAX_STREAMS_PER_PEER": str(STREAM_CAP)},
    )
    network.create()
    network.start()
    try:
        _orders(network)
        yield network
    finally:
        network.stop()


def _orders(network: LocalNetwork) -> None:
    rows = [
        {
            "order_id": order,
            "customer": customer,
            "supplier": "cellex",
            "product": "mono PERC cell M10",
            "quantity": 1000,
            "status": "open",
            "opened_at": "2026-10-19T06:00:00Z",
        }
        for order, customer in ((SUNARC_ORDER, "sunarc"), (MALLORY_ORDER, "mallory"))
    ]
    with network["cellex"].client() as client:
        ok(client.post("/v1/ingest/order", json={"rows": rows}))


@pytest.fixture(scope="module")
def agreements(net: LocalNetwork) -> dict[str, str]:
    """A live-stream agreement of sunarc and one of mallory, both with cellex."""
    found = {}
    for name, order in (("sunarc", SUNARC_ORDER), ("mallory", MALLORY_ORDER)):
        with net[name].client() as client:
            agreement = negotiate(
                client, "cellex", "live-inspections", orders=[order], purposes=[SPC]
            )
            assert agreement["state"] == "FINALIZED", agreement
            found[name] = agreement["agreement_id"]
    return found


def _keys(net: LocalNetwork, name: str) -> MemberKeys:
    return load_member_keys(net[name].directory)


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _unary(
    keys: MemberKeys, net: LocalNetwork, target: str, method: str, raw: bytes, timeout: float = 10
) -> tuple[grpc.StatusCode, str, bytes]:
    """One call with raw request bytes; (status, details, raw reply)."""
    async with open_channel(keys, net[target].grpc_address, target) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            reply = await call(raw, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            return err.code(), err.details() or "", b""
        return grpc.StatusCode.OK, "", reply


def _log(net: LocalNetwork, name: str) -> str:
    return net[name].log_path.read_text(errors="replace")


def _alive(net: LocalNetwork, name: str) -> None:
    hello = node_pb2.HelloRequest(nonce=b"still-there").SerializeToString()
    code, details, _ = _run(
        _unary(_keys(net, "sunarc"), net, name, "/qdspace.v1.Node/Hello", hello)
    )
    assert code is grpc.StatusCode.OK, details
    assert net[name].running


# ---------------------------------------------------------------------------- fuzzing


def _methods() -> list[tuple[str, bool, bool]]:
    """(path, client streams, server streams) of every method every node serves."""
    modules = (
        catalog_pb2,
        federation_pb2,
        negotiation_pb2,
        node_pb2,
        notification_pb2,
        subscription_pb2,
        trace_pb2,
        transfer_pb2,
        health_pb2,
    )
    found = []
    for module in modules:
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                path = f"/{service.full_name}/{m.name}"
                found.append((path, m.client_streaming, m.server_streaming))
    return found


async def _raw_call(
    channel: grpc.aio.Channel, method: str, client_stream: bool, server_stream: bool, raw: bytes
) -> grpc.StatusCode:
    kw: dict[str, Any] = {"request_serializer": None, "response_deserializer": None}
    try:
        if client_stream and server_stream:
            call: Any = channel.stream_stream(method, **kw)(iter([raw]), timeout=3)
            async for _ in call:
                pass
        elif client_stream:
            await channel.stream_unary(method, **kw)(iter([raw]), timeout=3)
        elif server_stream:
            async for _ in channel.unary_stream(method, **kw)(raw, timeout=3):
                pass
        else:
            await channel.unary_unary(method, **kw)(raw, timeout=3)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_random_bytes_to_every_method_get_caller_statuses_and_no_traceback(
    net: LocalNetwork,
) -> None:
    rng = random.Random(20261202)
    payloads = [b"", b"\xff" * 7, b"\x0a\xff\xff\xff\xff\x0f", b"\x08" * 3]
    payloads += [rng.randbytes(rng.randint(1, 400)) for _ in range(6)]
    methods = _methods()
    assert len(methods) >= 25

    async def fuzz(target: str) -> list[tuple[str, bytes, grpc.StatusCode]]:
        bad = []
        async with open_channel(_keys(net, "mallory"), net[target].grpc_address, target) as ch:
            for method, cs, ss in methods:
                for raw in payloads:
                    code = await _raw_call(ch, method, cs, ss, raw)
                    if code not in CALLER_CAUSED:
                        bad.append((method, raw, code))
        return bad

    for target in ("cellex", "sunarc"):
        before = len(_log(net, target))
        bad = _run(fuzz(target))
        assert sorted({(m, c.name) for m, _, c in bad}) == [], bad[:3]
        _alive(net, target)
        log = _log(net, target)[before:]
        assert "Traceback" not in log
        assert "Unexpected" not in log  # grpc's own "Unexpected [X] raised by servicer"


def test_garbage_is_invalid_argument_with_exactly_one_log_line(net: LocalNetwork) -> None:
    keys = _keys(net, "mallory")
    before = len(_log(net, "cellex"))
    garbage = b"\x0a\xff\xff\xff\xff\x0f\x00garbage"
    code, details, _ = _run(_unary(keys, net, "cellex", "/qdspace.v1.Notification/Notify", garbage))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid message" in details
    time.sleep(0.5)
    new = _log(net, "cellex")[before:].splitlines()
    mentions = [line for line in new if "Notification/Notify" in line or "Traceback" in line]
    assert len(mentions) == 1 and "refused" in mentions[0], new


# ---------------------------------------------------------------------------- limits


def test_oversized_unary_request_is_refused_before_it_is_decoded(net: LocalNetwork) -> None:
    big = node_pb2.HelloRequest(nonce=b"x" * (300 * 1024)).SerializeToString()
    code, details, _ = _run(
        _unary(_keys(net, "mallory"), net, "cellex", "/qdspace.v1.Node/Hello", big)
    )
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "accepts at most" in details


def test_streams_per_member_are_capped_and_freed(net: LocalNetwork) -> None:
    async def scenario() -> None:
        mallory, sunarc = _keys(net, "mallory"), _keys(net, "sunarc")
        address = net["cellex"].grpc_address
        async with (
            open_channel(mallory, address, "cellex") as evil,
            open_channel(sunarc, address, "cellex") as good,
        ):
            watch = "/grpc.health.v1.Health/Watch"
            request = health_pb2.HealthCheckRequest().SerializeToString()

            def open_watch(channel: grpc.aio.Channel) -> Any:
                return channel.unary_stream(
                    watch, request_serializer=None, response_deserializer=None
                )(request, timeout=30)

            held = [open_watch(evil) for _ in range(STREAM_CAP)]
            for call in held:
                await call.read()  # each stream is open and served
            extra = open_watch(evil)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await extra.read()
            assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"member mallory has {STREAM_CAP} streams open" in (
                refused.value.details() or ""
            )
            other = open_watch(good)  # another member is not starved
            await other.read()
            held[0].cancel()
            await asyncio.sleep(0.5)
            again = open_watch(evil)  # the slot came back when the stream closed
            await again.read()
            for call in (*held, other, again):
                call.cancel()

    _run(scenario())


def test_stalled_uploads_run_into_the_members_stream_cap(net: LocalNetwork) -> None:
    """Uploads that never send their first chunk hold their streams open (a slowloris):
    the member runs into its own cap; its unary calls and other members are served."""

    async def scenario() -> None:
        never = asyncio.Event()

        async def silence() -> AsyncIterator[bytes]:
            await never.wait()
            yield b""

        address = net["cellex"].grpc_address
        hello = node_pb2.HelloRequest(nonce=b"n").SerializeToString()
        kw: dict[str, Any] = {"request_serializer": None, "response_deserializer": None}
        method = "/qdspace.v1.Federation/UploadUpdate"
        async with (
            open_channel(_keys(net, "mallory"), address, "cellex") as evil,
            open_channel(_keys(net, "sunarc"), address, "cellex") as good,
        ):
            stalled = [
                evil.stream_unary(method, **kw)(silence(), timeout=60) for _ in range(STREAM_CAP)
            ]
            await asyncio.sleep(1.0)  # all admitted, each waiting for its first chunk
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await evil.stream_unary(method, **kw)(silence(), timeout=10)
            assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"member mallory has {STREAM_CAP} streams open" in (
                refused.value.details() or ""
            )
            await evil.unary_unary("/qdspace.v1.Node/Hello", **kw)(hello, timeout=10)
            theirs = good.stream_unary(method, **kw)(silence(), timeout=60)
            done, _ = await asyncio.wait({asyncio.ensure_future(theirs)}, timeout=1.0)
            assert not done  # admitted: waiting for its chunk, not refused
            for call in (*stalled, theirs):
                call.cancel()

    _run(scenario())


# ------------------------------------------------------------------------- oracles


def test_upstream_answers_alike_for_no_such_batch_and_not_your_batch(net: LocalNetwork) -> None:
    with net["cellex"].client() as client:
        batch = {
            "batch_id": "CX-HOSTILE-1",
            "material": "mono cell",
            "kind": "cell",
            "producer": "cellex",
            "customer": "sunarc",
            "order_id": SUNARC_ORDER,
            "quantity": 100,
            "made_at": "2026-11-01T06:00:00Z",
        }
        ok(client.post("/v1/ingest/batch", json={"rows": [batch]}))
    keys = _keys(net, "mallory")
    answers = []
    for batch_id in ("CX-HOSTILE-1", "CX-HOSTILE-0"):  # sunarc's, and none at all
        raw = trace_pb2.UpstreamRequest(batch_id=batch_id).SerializeToString()
        code, details, _ = _run(_unary(keys, net, "cellex", "/qdspace.v1.Trace/Upstream", raw))
        answers.append((code, details.replace(batch_id, "ID")))
    assert answers[0] == answers[1]
    assert answers[0][0] is grpc.StatusCode.PERMISSION_DENIED


def _transfer_request(net: LocalNetwork, transfer_id: str, agreement_id: str, **more: Any) -> bytes:
    """Mallory's request to cellex for a transfer under ``agreement_id`` (raw bytes)."""
    return transfer_pb2.TransferMessage(
        message_id=f"{transfer_id}:c-request",
        transfer_id=transfer_id,
        sender_id=_keys(net, "mallory").identity.member_id,
        at_unix_us=int(time.time() * 1e6),
        request=transfer_pb2.TransferRequest(
            agreement_id=agreement_id,
            provider_id=_keys(net, "cellex").identity.member_id,
            purpose=QA,
            all_fields=True,
            **more,
        ),
    ).SerializeToString()


def test_a_transfer_id_of_another_consumer_reveals_nothing(
    net: LocalNetwork, agreements: dict[str, str]
) -> None:
    with net["cellex"].client() as client:  # one finished transfer of sunarc's
        rows = [
            {
                "inspection_id": f"HOSTILE-T-{i}",
                "station": "EL-1",
                "inspected_at": f"2026-11-20T06:00:0{i}Z",
                "verdict": "pass",
                "score": 0.1,
                "model_version": "el-1",
                "order_id": SUNARC_ORDER,
                "batch_id": "CX-HOSTILE-1",
            }
            for i in range(3)
        ]
        ok(client.post("/v1/ingest/inspection", json={"rows": rows}))
    with net["sunarc"].client() as client:
        bulk = negotiate(client, "cellex", "inspections", orders=[SUNARC_ORDER])
        done = ok(
            client.post(
                "/v1/contracts/transfers",
                json={"agreement_id": bulk["agreement_id"], "purpose": QA, "wait": True},
            )
        )
    tid = done["transfer_id"]
    with net["mallory"].client() as client:
        own = negotiate(client, "cellex", "inspections", orders=[MALLORY_ORDER])
    mallory = _keys(net, "mallory")

    def request(transfer_id: str) -> bytes:
        return _transfer_request(net, transfer_id, own["agreement_id"])

    code, details, reply = _run(
        _unary(mallory, net, "cellex", "/qdspace.v1.Transfer/Send", request(tid))
    )
    assert code is grpc.StatusCode.PERMISSION_DENIED, (code, details, reply)
    assert reply == b""
    pulls = []
    for transfer_id in (tid, f"tr-{uuid.uuid4().hex}"):  # sunarc's, and none at all
        raw = transfer_pb2.PullRequest(
            transfer_id=transfer_id,
            resume_from=checkpoint_to_proto(Checkpoint.genesis(transfer_id)),
        ).SerializeToString()

        async def pull(raw: bytes = raw) -> tuple[grpc.StatusCode, str]:
            async with open_channel(mallory, net["cellex"].grpc_address, "cellex") as ch:
                call = ch.unary_stream(
                    "/qdspace.v1.Transfer/Pull",
                    request_serializer=None,
                    response_deserializer=None,
                )(raw, timeout=10)
                try:
                    async for _ in call:
                        return grpc.StatusCode.OK, "got rows"
                except grpc.aio.AioRpcError as err:
                    return err.code(), err.details() or ""
                return grpc.StatusCode.OK, ""

        code, details = _run(pull())
        pulls.append((code, details.replace(transfer_id, "ID")))
    assert pulls[0] == pulls[1] and pulls[0][0] is grpc.StatusCode.PERMISSION_DENIED


def _mallory_subscribes(net: LocalNetwork, request: Any) -> grpc.aio.AioRpcError:
    """Mallory's subscription to cellex with ``request``, which must be refused: the error."""

    async def subscribe() -> grpc.aio.AioRpcError:
        async with open_channel(_keys(net, "mallory"), net["cellex"].grpc_address, "cellex") as ch:
            call = ch.unary_stream(
                "/qdspace.v1.Subscription/Subscribe",
                request_serializer=subscription_pb2.SubscribeRequest.SerializeToString,
                response_deserializer=subscription_pb2.SubscriptionEvent.FromString,
            )(request, timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in call:
                    pass
            return refused.value

    return _run(subscribe())


def test_subscribing_to_someone_elses_agreement_is_denied(
    net: LocalNetwork, agreements: dict[str, str]
) -> None:
    err = _mallory_subscribes(
        net,
        subscription_pb2.SubscribeRequest(
            subscription_id="sub-evil",
            agreement_id=agreements["sunarc"],
            purpose=SPC,
            all_fields=True,
            from_start=True,
        ),
    )
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert f"no agreement {agreements['sunarc']} between mallory and us" in (err.details() or "")


NOT_A_POSITION = ("\u00b2", "\u0661\u0662", "9" * 25, "-1")  # superscript 2, Arabic-Indic 12


def test_positions_that_name_no_row_are_refused_where_they_arrive(
    net: LocalNetwork, agreements: dict[str, str]
) -> None:
    """A watermark or a stream position from a member is ASCII digits naming a row id
    (at most 2^63-1): a superscript two (``str.isdigit`` takes it, ``int`` raised), other
    scripts' digits, 25 digits (beyond what a database binds), a sign. Each is refused
    with the caller's status and what is wrong, where it arrives (a transfer request is
    not accepted to fail later in the pull), and the provider logs no traceback."""
    with net["mallory"].client() as client:
        own = negotiate(client, "cellex", "inspections", orders=[MALLORY_ORDER])
    mallory = _keys(net, "mallory")
    log_before = len(_log(net, "cellex"))

    def request(since: str) -> bytes:
        tid = f"tr-{uuid.uuid4().hex}"
        return _transfer_request(net, tid, own["agreement_id"], order_id=MALLORY_ORDER, since=since)

    def subscribe(after: str) -> grpc.aio.AioRpcError:
        return _mallory_subscribes(
            net,
            subscription_pb2.SubscribeRequest(
                subscription_id=f"sub-{uuid.uuid4().hex[:8]}",
                agreement_id=agreements["mallory"],
                purpose=SPC,
                all_fields=True,
                after_position=after,
            ),
        )

    for bad in NOT_A_POSITION:
        code, details, _ = _run(
            _unary(mallory, net, "cellex", "/qdspace.v1.Transfer/Send", request(bad))
        )
        assert code is grpc.StatusCode.OUT_OF_RANGE, (bad, code, details)
        assert "is not a view position" in details, details
        err = subscribe(bad)
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, (bad, err.code(), err.details())
        assert "is not a view cursor" in (err.details() or ""), err.details()
    code, details, _ = _run(
        _unary(mallory, net, "cellex", "/qdspace.v1.Transfer/Send", request("12"))
    )
    assert code is grpc.StatusCode.OK, details  # a row id is a watermark
    _alive(net, "cellex")
    assert "Traceback" not in _log(net, "cellex")[log_before:]


# --------------------------------------------------------------------- notifications


def _notify(
    net: LocalNetwork, caller: str, target: str, note: Notification
) -> tuple[grpc.StatusCode, str, notification_pb2.NotificationAck]:
    raw = notification_to_proto(note).SerializeToString()
    code, details, reply = _run(
        _unary(_keys(net, caller), net, target, "/qdspace.v1.Notification/Notify", raw)
    )
    return code, details, notification_pb2.NotificationAck.FromString(reply)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def test_forged_and_third_party_notifications_are_refused(
    net: LocalNetwork, agreements: dict[str, str]
) -> None:
    sunarc_id = _keys(net, "sunarc").identity.member_id
    mallory_id = _keys(net, "mallory").identity.member_id
    victim = agreements["sunarc"]
    end = AgreementTermination(victim, "forged", _now())
    forged = Notification(f"n-{uuid.uuid4().hex}", sunarc_id, _now(), end)
    code, details, _ = _notify(net, "mallory", "cellex", forged)
    assert code is grpc.StatusCode.PERMISSION_DENIED and "wrong sender" in details
    third = Notification(f"n-{uuid.uuid4().hex}", mallory_id, _now(), end)
    code, details, _ = _notify(net, "mallory", "cellex", third)
    assert code is grpc.StatusCode.PERMISSION_DENIED
    unknown = AgreementTermination(f"agr-{uuid.uuid4().hex}", "probe", _now())
    probe = Notification(f"n-{uuid.uuid4().hex}", mallory_id, _now(), unknown)
    code2, details2, _ = _notify(net, "mallory", "cellex", probe)
    assert (code2, details2.replace(unknown.agreement_id, "ID")) == (
        code,
        details.replace(victim, "ID"),
    )  # an unknown agreement id and somebody else's get the same answer
    for name in ("cellex", "sunarc"):
        with net[name].client() as client:
            assert ok(client.get(f"/v1/contracts/agreements/{victim}"))["terminated_at"] is None


def test_a_closure_of_an_order_outside_the_agreement_is_refused(
    net: LocalNetwork, agreements: dict[str, str]
) -> None:
    """Cellex, by hand, tells SunArc it closed an order SunArc's agreement does not cover
    (Mallory's, one that does not exist): refused, and SunArc records no closure, so no
    deletion duty and no receipt it would sign for an order it never held (on the old
    code: recorded, a row for every order id Cellex cared to name)."""
    cellex_id = _keys(net, "cellex").identity.member_id
    agreement = agreements["sunarc"]
    for order in (MALLORY_ORDER, f"PO-{uuid.uuid4().hex[:12]}"):
        closed = OrderClosed(order, _now(), (agreement,))
        note = Notification(f"n-{uuid.uuid4().hex}", cellex_id, _now(), closed)
        code, details, _ = _notify(net, "cellex", "sunarc", note)
        assert code is grpc.StatusCode.PERMISSION_DENIED, (code, details)
        assert f"order {order} is not in the scope of agreement {agreement}" in details
    held = db_rows(
        net,
        "sunarc",
        "SELECT order_id FROM contract_order_closure WHERE agreement_id = :a",
        a=agreement,
    )
    assert held == []


def test_replayed_notifications_are_done_once_and_bounded(net: LocalNetwork) -> None:
    mallory_id = _keys(net, "mallory").identity.member_id
    case = Investigation(f"inv-{uuid.uuid4().hex}", "EL cracks", "cracked cells", "CX-HOSTILE-1")
    note = Notification(f"n-{uuid.uuid4().hex}", mallory_id, _now(), case)
    first = _notify(net, "mallory", "cellex", note)
    again = _notify(net, "mallory", "cellex", note)
    assert first[0] is grpc.StatusCode.OK and first[2].first_delivery
    assert again[0] is grpc.StatusCode.OK and not again[2].first_delivery
    held = db_rows(
        net,
        "cellex",
        "SELECT sender_id FROM contract_investigation WHERE investigation_id = :i",
        i=case.investigation_id,
    )
    assert held == [{"sender_id": mallory_id}]  # persisted, once


def test_a_notification_for_another_member_is_refused(net: LocalNetwork) -> None:
    """Mallory delivers an investigation addressed to SunArc's member id to Cellex (what
    a node that kept a notification for a name's former holder would do): refused, and
    Cellex records nothing. A recipient id that is no id is a wire error."""
    mallory_id = _keys(net, "mallory").identity.member_id
    sunarc_id = _keys(net, "sunarc").identity.member_id
    case = Investigation(f"inv-{uuid.uuid4().hex}", "EL cracks", "not yours", "CX-HOSTILE-2")
    note = Notification(f"n-{uuid.uuid4().hex}", mallory_id, _now(), case, sunarc_id)
    code, details, _ = _notify(net, "mallory", "cellex", note)
    assert code is grpc.StatusCode.PERMISSION_DENIED, (code, details)
    assert f"is for member {sunarc_id}" in details
    sql = "SELECT sender_id FROM contract_investigation WHERE investigation_id = :i"
    assert db_rows(net, "cellex", sql, i=case.investigation_id) == []
    for bad in ("x" * 500, "cellex\x00"):
        code, details, _ = _notify(net, "mallory", "cellex", replace(note, recipient_id=bad))
        assert code is grpc.StatusCode.INVALID_ARGUMENT and "recipient_id" in details, details


def _queue(net: LocalNetwork, name: str, peer: str, note: Notification) -> None:
    """Put ``note`` for ``peer`` into member ``name``'s outbox, as its runtime would."""
    payload = notification_to_proto(note).SerializeToString()
    nid = note.notification_id
    engine = create_engine(f"sqlite:///{net[name].directory / 'node.db'}")
    try:
        OutboxStore(engine).enqueue(
            [OutboxMessage(peer, "notification", nid, nid, payload)], _now()
        )
    finally:
        engine.dispose()


def test_a_notification_for_a_name_s_former_holder_does_not_reach_its_new_one(
    net: LocalNetwork,
) -> None:
    """Cellex holds a notification for the member that was called mallory before (the
    name passes on once its holder leaves: the authority frees it): it is not sent to the
    Mallory that answers to the name now. Cellex's outbox keeps it, saying why, and
    Mallory records nothing (on the old code it was delivered to whoever held the name,
    an investigation's subject and all)."""
    cellex_id = _keys(net, "cellex").identity.member_id
    mallory_id = _keys(net, "mallory").identity.member_id
    former = "mallory-" + ("0" * 12 if not mallory_id.endswith("0" * 12) else "1" * 12)
    case = Investigation(f"inv-{uuid.uuid4().hex}", "EL cracks", "for the old holder", "CX-OLD")
    note = Notification(f"n-{uuid.uuid4().hex}", cellex_id, _now(), case, former)
    _queue(net, "cellex", "mallory", note)
    sql = "SELECT last_error, sent_at FROM contract_outbox WHERE message_id = :m"

    def held() -> Any:
        rows = db_rows(net, "cellex", sql, m=note.notification_id)
        return rows and rows[0]["last_error"] and rows[0]

    row = wait_for("cellex's outbox to try it", held)
    assert row["sent_at"] is None
    assert f"is member {mallory_id}, not {former}" in row["last_error"], row
    assert "not sent" in row["last_error"]
    found = "SELECT sender_id FROM contract_investigation WHERE investigation_id = :i"
    assert db_rows(net, "mallory", found, i=case.investigation_id) == []
    # what Cellex owes the Mallory of today still reaches it
    today = Investigation(f"inv-{uuid.uuid4().hex}", "EL cracks", "for mallory", "CX-NEW")
    _queue(
        net,
        "cellex",
        "mallory",
        Notification(f"n-{uuid.uuid4().hex}", cellex_id, _now(), today, mallory_id),
    )
    wait_for(
        "the notification for today's mallory",
        lambda: db_rows(net, "mallory", found, i=today.investigation_id),
    )


def test_non_finite_numbers_from_a_peer_are_invalid(net: LocalNetwork) -> None:
    mallory_id = _keys(net, "mallory").identity.member_id
    spc = SpcAlert("WE1", "beyond 3 sigma", (SpcPoint(1, float("nan"), _now()),), _now())
    alert = QualityAlert(f"al-{uuid.uuid4().hex}", spc, order_id=MALLORY_ORDER)
    note = Notification(f"n-{uuid.uuid4().hex}", mallory_id, _now(), alert)
    code, details, _ = _notify(net, "mallory", "cellex", note)
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "must be finite" in details
    far = notification_to_proto(Notification(f"n-{uuid.uuid4().hex}", mallory_id, _now(), alert))
    far.quality_alert.points[0].value = 0.2
    far.sent_at_unix_us = 2**62  # the year 146 million: overflows whoever reads it
    code, details, _ = _run(
        _unary(
            _keys(net, "mallory"),
            net,
            "cellex",
            "/qdspace.v1.Notification/Notify",
            far.SerializeToString(),
        )
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "sent_at_unix_us" in details


# ----------------------------------------------------------------------- revocation


def test_a_stale_revocation_list_denies_every_call_until_refreshed(net: LocalNetwork) -> None:
    authority = Authority.load(net.authority_dir)
    try:
        authority.issue_crl(dt.timedelta(seconds=2))
        time.sleep(3.5)
        hello = node_pb2.HelloRequest(nonce=b"n").SerializeToString()
        code, details, _ = _run(
            _unary(_keys(net, "sunarc"), net, "cellex", "/qdspace.v1.Node/Hello", hello)
        )
        assert code is grpc.StatusCode.UNAVAILABLE
        assert "revocation list expired" in details and "qdspace authority crl" in details
    finally:
        authority.issue_crl()
    _alive(net, "cellex")  # reloaded without a restart


async def _subscribe_until_ended(
    net: LocalNetwork, agreement_id: str, revoke: Any
) -> tuple[float, grpc.aio.AioRpcError]:
    async with open_channel(_keys(net, "mallory"), net["cellex"].grpc_address, "cellex") as ch:
        call = ch.unary_stream(
            "/qdspace.v1.Subscription/Subscribe",
            request_serializer=subscription_pb2.SubscribeRequest.SerializeToString,
            response_deserializer=subscription_pb2.SubscriptionEvent.FromString,
        )(
            subscription_pb2.SubscribeRequest(
                subscription_id="sub-mallory",
                agreement_id=agreement_id,
                purpose=SPC,
                all_fields=True,
            ),
            timeout=60,
        )
        events: AsyncIterator[Any] = aiter(call)
        first = await anext(events)
        assert first.heartbeat  # subscribed and served
        revoke()
        revoked_at = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            async for _ in events:
                pass
        return time.monotonic() - revoked_at, ended.value


def test_revocation_ends_the_revoked_members_open_stream(
    net: LocalNetwork, agreements: dict[str, str]
) -> None:
    authority = Authority.load(net.authority_dir)
    took, err = _run(
        _subscribe_until_ended(
            net, agreements["mallory"], lambda: authority.revoke("mallory", "went rogue")
        )
    )
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "revoked" in (err.details() or "")
    assert took < 5.0
    wait_for("the refusal in cellex's log", lambda: "is revoked" in _log(net, "cellex"))


def test_a_node_without_a_revocation_list_refuses_to_start(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from qdspace.node.init import init_node
    from qdspace.util.ports import free_port

    Authority.init(tmp_path / "authority")
    directory = tmp_path / "node"
    init_node(
        directory, tmp_path / "authority", name="nocrl", role="supplier",
        grpc_port=free_port(), api_port=free_port(),
    )  # fmt: skip
    config = json.loads((directory / "node.json").read_text())
    config["crl_path"] = None
    (directory / "node.json").write_text(json.dumps(config))
    result = subprocess.run(
        [sys.executable, "-m", "qdspace", "node", "start", "--dir", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "revocation list required" in result.stderr + result.stdout
    assert "qdspace authority crl" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
