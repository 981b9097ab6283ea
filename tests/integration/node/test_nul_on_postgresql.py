"""A NUL character in every id a member or an operator can send, against real nodes whose
databases are on PostgreSQL.

SQLite stores a NUL in a string like any other character, so the SQLite suites never saw
this: PostgreSQL refuses one in any string it is given, and an id with a NUL that reached
a lookup turned the caller's mistake into a server error. Found by sending one in every
place: the gRPC peer listener's ``Negotiation.Get``, ``Subscription.Subscribe`` and
``Trace.Upstream`` answered INTERNAL, the DSP listener answered 500 (and dropped the
connection) for a NUL in any process id of its paths, the operator API 500 for one in a
DSP transfer id. Now the peer listener refuses a NUL in any string field of any message
before a servicer sees it (`node.rpc.limits.check_values`), the DSP listener any path
parameter that is not printable (`node.dsp.app.printable_path`), and the operator API's
ids carry `ID_PATTERN`. On a node that anchors (its leaf index on PostgreSQL too), a
regulator's proof lookup of a reference id with a NUL was a 500: an id no leaf can have
is now unknown without a look-up (`LeafQueue.leaf`). Each is asserted here as SunArc, a
real member (or the space's regulator), sends them.

The same class: an id longer than the columns that keep ids (128 characters). SQLite
stores it; PostgreSQL refused a 200-character negotiation, message, transfer or
subscription id in a well-formed message with an INTERNAL error. The peer listener's
decoders now bound every id they read (`node.rpc.contracts_serde.required`).
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from collections.abc import Callable
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from qdspace.node.api.regulator_auth import issue_credential
from qdspace.node.dsp.auth import issue_token
from qdspace.node.identity.member import load_member_keys
from qdspace.node.localnet.network import LocalNetwork, MemberSpec
from qdspace.node.rpc.client import open_channel
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

pytestmark = pytest.mark.integration

MODULES = [
    catalog_pb2,
    federation_pb2,
    negotiation_pb2,
    node_pb2,
    notification_pb2,
    subscription_pb2,
    trace_pb2,
    transfer_pb2,
]
POISONS = ("\x00", "a\x00b")
#: the DSP listener's routes with a process (or dataset) id in their path
DSP_GETS = ["/catalog/datasets/{}", "/negotiations/{}", "/transfers/{}", "/data/{}"]
DSP_POSTS = [
    *(f"/negotiations/{{}}/{k}" for k in ("events", "termination", "request", "offers")),
    "/negotiations/{}/agreement",
    "/negotiations/{}/agreement/verification",
    *(f"/transfers/{{}}/{k}" for k in ("start", "suspension", "termination", "completion")),
    *(f"/callback/transfers/{{}}/{k}" for k in ("start", "suspension", "termination")),
    "/callback/transfers/{}/completion",
]


@pytest.fixture(scope="module")
def net(pg_networks: Callable[..., LocalNetwork]) -> LocalNetwork:
    members = [MemberSpec("sunarc", "oem"), MemberSpec("cellex", "supplier")]
    return pg_networks(members, {"QDSPACE_DSP_PORT": "0"})


def poisoned(cls: type[Message], value: str) -> bytes:
    """A request of `cls` with every string field (top level) set to `value`."""
    message = cls()
    for field in message.DESCRIPTOR.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            if field.is_repeated:
                getattr(message, field.name).append(value)
            else:
                setattr(message, field.name, value)
    return message.SerializeToString()


def request_class(name: str) -> type[Message]:
    for module in MODULES:
        found = getattr(module, name, None)
        if found is not None:
            return found  # type: ignore[no-any-return]
    raise AssertionError(f"no message {name}")


async def call_every_method(net: LocalNetwork) -> dict[str, set[str]]:
    """Each gRPC method of the peer listener, called by SunArc with NULs in every string:
    the status codes each answered."""
    channel = open_channel(net["sunarc"].keys(), net["cellex"].grpc_address, "cellex")
    answered: dict[str, set[str]] = {}
    try:
        for module in MODULES:
            for service in module.DESCRIPTOR.services_by_name.values():
                for method in service.methods:
                    path = f"/{service.full_name}/{method.name}"
                    cls = request_class(method.input_type.name)
                    for value in POISONS:
                        raw = poisoned(cls, value)
                        try:
                            if method.client_streaming:
                                await channel.stream_unary(path)(iter([raw]), timeout=10)
                            elif method.server_streaming:
                                async for _ in channel.unary_stream(path)(raw, timeout=10):
                                    pass
                            else:
                                await channel.unary_unary(path)(raw, timeout=10)
                            code = "OK"
                        except grpc.aio.AioRpcError as exc:
                            code = exc.code().name
                            if method.name in ("Get", "Subscribe", "Upstream"):
                                assert "NUL" in (exc.details() or ""), (path, exc.details())
                        answered.setdefault(path, set()).add(code)
    finally:
        await channel.close()
    return answered


def test_no_grpc_method_fails_on_a_nul(net: LocalNetwork) -> None:
    answered = asyncio.run(call_every_method(net))
    assert len(answered) >= 25, sorted(answered)  # every service's methods were called
    failed = {p: c for p, c in answered.items() if c & {"INTERNAL", "UNKNOWN"}}
    assert not failed, failed
    for path in (
        "/qdspace.v1.Negotiation/Get",
        "/qdspace.v1.Subscription/Subscribe",
        "/qdspace.v1.Trace/Upstream",
    ):
        assert answered[path] == {"INVALID_ARGUMENT"}, (path, answered[path])


def member_dsp_client(net: LocalNetwork) -> tuple[httpx.Client, dict[str, str]]:
    """SunArc's certificate calling Cellex's DSP listener, and its ID token's header."""
    layout = net["sunarc"].layout
    context = ssl.create_default_context(cafile=str(layout.ca_cert))
    context.check_hostname = False
    context.load_cert_chain(layout.tls_cert, layout.tls_key)
    keys = net["sunarc"].keys()
    audience = net["cellex"].keys().identity.member_id
    base = json.loads(net["cellex"].layout.runtime.read_text())["dsp"]
    token = issue_token(keys.signing_key, keys.identity.member_id, audience)
    client = httpx.Client(verify=context, base_url=base, timeout=20)
    return client, {"authorization": f"Bearer {token}"}


def test_the_dsp_listener_refuses_a_process_id_with_a_nul(net: LocalNetwork) -> None:
    client, headers = member_dsp_client(net)
    body: dict[str, Any] = {
        "@context": "https://w3id.org/dspace/2025/1/context.jsonld",
        "@type": "TransferStartMessage",
        "providerPid": "\x00",
        "consumerPid": "\x00",
    }
    try:
        for value in ("%00", "a%00b", "%01", "%7f"):
            for route in DSP_GETS:
                answer = client.get(route.format(value), headers=headers)
                assert answer.status_code == 400, (route, value, answer.text)
                assert "printable" in answer.text and "\\u0000" not in answer.text
            for route in DSP_POSTS:
                answer = client.post(route.format(value), headers=headers, json=body)
                assert answer.status_code == 400, (route, value, answer.text)
        # the connection was kept all along: a server error would have closed it
        assert client.get("/.well-known/dspace-version").status_code == 200
    finally:
        client.close()


def test_no_operator_route_fails_on_a_nul_in_its_path(net: LocalNetwork) -> None:
    with net["cellex"].client() as operator:
        spec = operator.get("/openapi.json").json()
        tried = 0
        for path, operations in spec["paths"].items():
            names = re.findall(r"{(\w+)(?::path)?}", path)
            if not names:
                continue
            for method in operations:
                for value in ("%00", "a%00b", "%01"):
                    url = re.sub(r"{\w+(?::path)?}", value, path)
                    body = {} if method in ("post", "put", "patch") else None
                    answer = operator.request(method.upper(), url, json=body)
                    assert answer.status_code < 500, (method, url, answer.text[:300])
                    tried += 1
        assert tried >= 30, tried
        for route in ("/v1/dsp/transfers/%00", "/v1/outbox/%00/retry"):
            method = "POST" if route.endswith("retry") else "GET"
            answer = operator.request(method, route)
            assert 400 <= answer.status_code < 500, (route, answer.text)


async def send_long_ids(net: LocalNetwork) -> list[tuple[str, str]]:
    """SunArc's well-formed messages with over-long ids: a contract request on Cellex's
    own offer, a transfer request, a subscription; (status, details) of each."""
    channel = open_channel(net["sunarc"].keys(), net["cellex"].grpc_address, "cellex")
    me = net["sunarc"].keys().identity.member_id
    now_us = 1_796_000_000_000_000
    answers: list[tuple[str, str]] = []
    try:
        listed = await channel.unary_unary(
            "/qdspace.v1.Catalog/ListAssets",
            request_serializer=catalog_pb2.CatalogRequest.SerializeToString,
            response_deserializer=catalog_pb2.CatalogReply.FromString,
        )(catalog_pb2.CatalogRequest(), timeout=10)
        offer = listed.assets[0].offer_json
        sends = [
            negotiation_pb2.NegotiationMessage(
                message_id=mid,
                negotiation_id=nid,
                sender_id=me,
                at_unix_us=now_us,
                request=negotiation_pb2.ContractRequest(offer_json=offer),
            )
            for mid, nid in (("m" * 200, "n-1"), ("m-2", "n" * 200), ("é" * 129, "n-3"))
        ]
        for message in sends:
            answers.append(await unary(channel, "/qdspace.v1.Negotiation/Send", message))
        transfer = transfer_pb2.TransferMessage(
            message_id="t-1", transfer_id="t" * 200, sender_id=me, at_unix_us=now_us
        )
        transfer.request.agreement_id, transfer.request.provider_id = "agr-1", me
        answers.append(await unary(channel, "/qdspace.v1.Transfer/Send", transfer))
        ask = subscription_pb2.SubscribeRequest(
            subscription_id="s" * 200, agreement_id="agr-1", purpose="qa"
        )
        try:
            stream = channel.unary_stream("/qdspace.v1.Subscription/Subscribe")
            async for _ in stream(ask.SerializeToString(), timeout=10):
                pass
            answers.append(("OK", ""))
        except grpc.aio.AioRpcError as exc:
            answers.append((exc.code().name, exc.details() or ""))
    finally:
        await channel.close()
    return answers


async def unary(channel: grpc.aio.Channel, path: str, message: Message) -> tuple[str, str]:
    try:
        await channel.unary_unary(path)(message.SerializeToString(), timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, exc.details() or ""
    return "OK", ""


def test_an_id_longer_than_its_column_is_refused_by_the_peer_listener(
    net: LocalNetwork,
) -> None:
    answers = asyncio.run(send_long_ids(net))
    assert len(answers) == 5
    for code, details in answers:
        assert code == "INVALID_ARGUMENT", (code, details)
        assert "must be 1 to 128 printable characters" in details, details


def test_a_process_id_is_refused_where_the_ids_made_from_it_would_not_fit(
    net: LocalNetwork,
) -> None:
    """A negotiation or transfer id of 101 to 128 characters fits its column, but the
    message ids the node makes of it (``<id>:p-complete``, ``<id>:c-resume-`` and 12 hex
    digits, ``<id>:p1:counter``) do not: the provider's own answer then ended in
    PostgreSQL's "value too long". Refused before anything is stored now."""

    async def send() -> list[tuple[str, str]]:
        channel = open_channel(net["sunarc"].keys(), net["cellex"].grpc_address, "cellex")
        me = net["sunarc"].keys().identity.member_id
        now_us = 1_796_000_000_000_000
        try:
            request = negotiation_pb2.NegotiationMessage(
                message_id="m-101",
                negotiation_id="n" * 101,
                sender_id=me,
                at_unix_us=now_us,
                request=negotiation_pb2.ContractRequest(offer_json=b"{}"),
            )
            transfer = transfer_pb2.TransferMessage(
                message_id="t-101", transfer_id="t" * 125, sender_id=me, at_unix_us=now_us
            )
            transfer.request.agreement_id, transfer.request.provider_id = "agr-1", me
            return [
                await unary(channel, "/qdspace.v1.Negotiation/Send", request),
                await unary(channel, "/qdspace.v1.Transfer/Send", transfer),
            ]
        finally:
            await channel.close()

    (negotiation, transfer) = asyncio.run(send())
    assert negotiation == (
        "INVALID_ARGUMENT",
        "negotiation_id must be at most 100 characters (the node makes message ids of up "
        "to 128 from it), got 101",
    )
    assert transfer[0] == "INVALID_ARGUMENT" and "transfer_id must be at most 100" in transfer[1]


def test_a_regulators_proof_lookup_with_a_nul_is_unknown_not_a_server_error(
    pg_networks: Callable[..., LocalNetwork],
) -> None:
    anchored = pg_networks(
        [MemberSpec("cellex", "supplier"), MemberSpec("regulator", "regulator")], chain=True
    )
    member = anchored["cellex"]
    keys = load_member_keys(anchored["regulator"].directory)
    credential = issue_credential(keys, load_member_keys(member.directory).identity.member_id)
    with member.regulator_client(credential) as regulator:
        for route in ("inspections", "agreements", "deletion-receipts", "model-versions"):
            for value in ("%00", "a%00b"):
                answer = regulator.get(f"/v1/regulator/{route}/{value}/proof")
                assert answer.status_code == 404, (route, value, answer.text)
        answer = regulator.get("/v1/regulator/proofs/inspection/a%00b")
        assert answer.status_code == 404, answer.text
        assert regulator.get("/healthz").status_code == 200  # the connection was kept
