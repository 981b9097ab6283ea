"""Signed trace levels across real node processes: a producer cannot shift the blame.

SunArc (OEM) builds modules from Cellex's cells and Glassco's glass and asks both over
mutual TLS. Cellex's node stops and a rogue holding Cellex's keys takes its place: it
answers with levels below its own that it says Rival (a member SunArc never asked) and
Glassco (a producer SunArc asked itself, whose real answer has no finding) gave it, each
with a strong finding. On the old code the OEM's report, anchored, gave the invented
level's member a responsibility of 1.0. Now a level counts only when its member signed
it for this trace, this asker and these batches (`connector.trace_seal`): an unsigned
level, one signed with another member's key and a real one replayed from another trace
are missing tiers that say so, and a level Rival really signed for this trace counts,
reported by Cellex. Questions whose path entries are no ids are refused. Tests run in
file order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import httpx
import pytest

from qdspace.connector.genealogy import BatchInfo
from qdspace.connector.rootcause import DataConfidence, Finding, Window
from qdspace.connector.trace import BatchLink, TierAnswer
from qdspace.node.identity.member import load_member_keys
from qdspace.node.localnet.network import LocalNetwork, MemberSpec
from qdspace.node.rpc.client import open_channel
from qdspace.node.rpc.node_service import member_to_proto
from qdspace.node.rpc.server import server_credentials
from qdspace.node.rpc.trace_serde import answer_to_proto
from qdspace.protocols.v1 import node_pb2, trace_pb2

pytestmark = pytest.mark.integration

RCA = "root-cause-analysis"
T0 = datetime(2026, 11, 2, 6, tzinfo=UTC)
N = 4


def ok(response: httpx.Response) -> Any:
    assert response.status_code < 400, f"HTTP {response.status_code}: {response.text}"
    return response.json()


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _order(oid: str, customer: str, supplier: str) -> dict[str, Any]:
    opened = iso(T0 - timedelta(days=5))
    return {
        "order_id": oid,
        "customer": customer,
        "supplier": supplier,
        "product": "parts",
        "quantity": 1000,
        "opened_at": opened,
    }


def _batch(bid: str, kind: str, producer: str, customer: str = "", order: str = "") -> dict:
    row: dict[str, Any] = {
        "batch_id": bid,
        "material": kind,
        "kind": kind,
        "producer": producer,
        "quantity": 100,
        "made_at": iso(T0),
    }
    return row | ({"customer": customer, "order_id": order} if customer else {})


def rows(name: str) -> dict[str, list[dict[str, Any]]]:
    """SunArc's modules of Cellex's cells and Glassco's glass; each producer's batches."""
    sc, sg = _order("PO-SC", "sunarc", "cellex"), _order("PO-SG", "sunarc", "glassco")
    if name == "sunarc":
        out: dict[str, list[dict[str, Any]]] = {"order": [sc, sg], "batch": [], "genealogy": []}
        for i in range(N):
            out["batch"] += [
                _batch(f"MB-{i}", "module", "sunarc"),
                _batch(f"CB-{i}", "cell", "cellex", "sunarc", "PO-SC"),
                _batch(f"GB-{i}", "material", "glassco", "sunarc", "PO-SG"),
            ]
            out["genealogy"] += [
                {"child_batch_id": f"MB-{i}", "parent_batch_id": f"CB-{i}"},
                {"child_batch_id": f"MB-{i}", "parent_batch_id": f"GB-{i}"},
            ]
        return out
    if name == "cellex":
        return {
            "order": [sc],
            "batch": [_batch(f"CB-{i}", "cell", "cellex", "sunarc", "PO-SC") for i in range(N)],
        }
    return {
        "order": [sg],
        "batch": [_batch(f"GB-{i}", "material", "glassco", "sunarc", "PO-SG") for i in range(N)],
    }


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := probe():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    network = LocalNetwork(
        tmp_path_factory.mktemp("signed-trace"),
        [
            MemberSpec("sunarc", "oem"),
            MemberSpec("cellex", "supplier"),
            MemberSpec("glassco", "supplier"),
            MemberSpec("rival", "supplier"),
        ],
    )
    network.create()
    network.start()
    try:
        for name in ("sunarc", "cellex", "glassco"):
            with network[name].client(timeout=60) as client:
                for kind, data in rows(name).items():
                    result = ok(client.post(f"/v1/ingest/{kind}", json={"rows": data}))
                    assert not result["rejected"], result
        for producer, order in (("cellex", "PO-SC"), ("glassco", "PO-SG")):
            body = {"peer": producer, "asset_id": "traceability", "purposes": [RCA]}
            with network["sunarc"].client(timeout=60) as client:
                ok(client.post("/v1/contracts/negotiations", json=body | {"orders": [order]}))
        assert network.stop(["cellex"]) == {"cellex": 0}
        yield network
    finally:
        network.stop()


def run_trace(net: LocalNetwork) -> dict[str, Any]:
    with net["sunarc"].client(timeout=60) as client:
        trace_id = ok(client.post("/v1/traces", json={"batch": "MB-1"}))["trace_id"]
        done = wait_for(
            "the trace to finish",
            lambda: (t := ok(client.get(f"/v1/traces/{trace_id}")))["state"] != "RUNNING" and t,
        )
        assert done["state"] == "DONE", done
        report: dict[str, Any] = ok(client.get(f"/v1/traces/{trace_id}/report"))["report"]
    return report


#: the rogue's reply to a question
Reply = Callable[[trace_pb2.InvestigateRequest], TierAnswer]


class RogueCellex:
    """Cellex's keys on Cellex's address, answering ``Trace/Investigate`` with the answer
    `reply` makes of each question (and ``Node/Hello`` as Cellex: it holds its keys)."""

    def __init__(self, net: LocalNetwork, reply: Reply) -> None:
        self.reply = reply
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        handler = grpc.method_handlers_generic_handler(
            "qdspace.v1.Trace",
            {
                "Investigate": grpc.unary_unary_rpc_method_handler(
                    self._investigate,
                    request_deserializer=trace_pb2.InvestigateRequest.FromString,
                    response_serializer=trace_pb2.InvestigateReply.SerializeToString,
                )
            },
        )
        cellex = net["cellex"]
        self.me = cellex.keys().identity
        hello = grpc.method_handlers_generic_handler(
            "qdspace.v1.Node",
            {
                "Hello": grpc.unary_unary_rpc_method_handler(
                    self._hello,
                    request_deserializer=node_pb2.HelloRequest.FromString,
                    response_serializer=node_pb2.HelloReply.SerializeToString,
                )
            },
        )
        self.server.add_generic_rpc_handlers((handler, hello))
        self.server.add_secure_port(cellex.grpc_address, server_credentials(cellex.keys()))

    def _hello(self, request: node_pb2.HelloRequest, context: Any) -> Any:
        return node_pb2.HelloReply(server=member_to_proto(self.me), nonce=request.nonce)

    def _investigate(self, request: trace_pb2.InvestigateRequest, context: Any) -> Any:
        return trace_pb2.InvestigateReply(answer=answer_to_proto(self.reply(request)))

    def __enter__(self) -> RogueCellex:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(0)


def strong(key: str, batch: str) -> Finding:
    return Finding(
        key=key,
        kind="numeric",
        implicated_n=30,
        comparable_n=300,
        effect=0.9,
        excess_out_of_control=0.9,
        p_value=1e-9,
        adjusted_p=1e-8,
        level_out_of_control=0.9,
        windows=(Window(T0, T0 + timedelta(hours=1), 3, (batch,), 9.0),),
        evidence=("qdm_measurement:1",),
        confidence=DataConfidence(1.0, 1.0, 1.0),
    )


def level(member: str, batch: str, finding: str = "") -> TierAnswer:
    """A level of `member` about `batch`, with a strong finding named `finding`."""
    link = BatchLink(BatchInfo(batch, "x", "x", member, 1.0), ())
    findings = (strong(finding, batch),) if finding else ()
    return TierAnswer(member, (batch,), 10, (link,), findings)


def cellex_level(request: trace_pb2.InvestigateRequest, *upstream: TierAnswer) -> TierAnswer:
    """Cellex's own level: its cell made of Rival's and Glassco's batches, no finding."""
    (cell,) = request.batch_ids
    parents = (
        BatchInfo("RX-1", "x", "x", "rival", 1.0),
        BatchInfo("GB-1", "x", "x", "glassco", 1.0),
    )
    link = BatchLink(BatchInfo(cell, "cell", "cell", "cellex", 1.0), parents)
    return TierAnswer("cellex", (cell,), 10, (link,), (), upstream)


def test_unsigned_levels_count_for_nothing(net: LocalNetwork) -> None:
    """The rogue signs nothing: on the old code Rival's invented level was Rival's share
    of 1.0 and Glassco's invented one replaced Glassco's finding-less answer; now Cellex's
    unsigned answer is a missing tier that says so, with nothing under it counted, and
    Glassco's own (signed) answer stands."""

    def reply(request: trace_pb2.InvestigateRequest) -> TierAnswer:
        rival = level("rival", "RX-1", "RIVAL/oven")
        glass = level("glassco", "GB-1", "GLASS/temper")
        return cellex_level(request, rival, glass)

    with RogueCellex(net, reply):
        report = run_trace(net)
    assert shares(report) == {} and "rival" not in report["responsibility"], report
    assert not any(c["member"] in ("rival", "glassco") for c in report["causes"])
    missing = {m["member"]: m for m in report["missing"]}
    assert set(missing) == {"cellex"}, report["missing"]
    assert "not verified: not signed" in missing["cellex"]["reason"]
    assert report["partial"] is True


def shares(report: dict[str, Any]) -> dict[str, float]:
    """The members with a share of responsibility (the others are listed at 0)."""
    return {m: s for m, s in report["responsibility"].items() if s}


def _seal(
    net: LocalNetwork, signer: str, answer: TierAnswer, request: Any, **kw: Any
) -> TierAnswer:
    """`answer` sealed with `signer`'s key, for `request`'s trace unless `kw` says else."""
    from qdspace.connector.trace_seal import TraceNonce, seal_level

    keys = net[signer].keys()
    trace = TraceNonce(kw.get("trace_id", request.trace_id), kw.get("nonce", request.nonce))
    member_id = kw.get("member_id", keys.identity.member_id)
    asked_by = kw.get("asked_by", net["sunarc"].keys().identity.member_id)
    asked = kw.get("asked", answer.implicated)
    return seal_level(answer, keys.signing_key, trace, member_id, asked_by, asked)


def test_levels_signed_with_another_key_or_for_another_trace_count_for_nothing(
    net: LocalNetwork,
) -> None:
    """Cellex's own level is signed properly; below it, a Rival level signed with Cellex's
    key under Rival's member id, and a Glassco level likewise: both refused, Cellex's own
    level counted. Then a level Rival really signed, but for another trace (a replay):
    refused as well."""
    cellex_id = net["cellex"].keys().identity.member_id
    rival_id = net["rival"].keys().identity.member_id
    glassco_id = net["glassco"].keys().identity.member_id

    def forged(request: trace_pb2.InvestigateRequest) -> TierAnswer:
        rival = level("rival", "RX-1", "RIVAL/oven")
        glass = level("glassco", "GB-1", "GLASS/temper")
        rival = _seal(net, "cellex", rival, request, member_id=rival_id, asked_by=cellex_id)
        glass = _seal(net, "cellex", glass, request, member_id=glassco_id, asked_by=cellex_id)
        own = cellex_level(request, rival, glass)
        own = replace(own, findings=(strong("CELLEX/pecvd", own.implicated[0]),))
        return _seal(net, "cellex", own, request)

    with RogueCellex(net, forged):
        report = run_trace(net)
    assert shares(report) == {"cellex": 1.0} and "rival" not in report["responsibility"], report
    missing = {m["member"]: m for m in report["missing"]}
    assert set(missing) == {"rival", "glassco"}, report["missing"]
    for name in ("rival", "glassco"):
        assert missing[name]["reported_by"] == "cellex"
        assert "is not verified: its signature does not verify" in missing[name]["reason"]

    def replayed(request: trace_pb2.InvestigateRequest) -> TierAnswer:
        rival = level("rival", "RX-1", "RIVAL/oven")
        old = {"trace_id": "an-old-trace", "nonce": "its-nonce", "asked_by": cellex_id}
        rival = _seal(net, "rival", rival, request, **old)
        return _seal(net, "cellex", cellex_level(request, rival), request)

    with RogueCellex(net, replayed):
        report = run_trace(net)
    assert "rival" not in report["responsibility"], report["responsibility"]
    missing = {m["member"]: m for m in report["missing"]}
    assert "signature does not verify" in missing["rival"]["reason"], report["missing"]


def test_a_level_its_member_signed_for_this_trace_counts(net: LocalNetwork) -> None:
    """Rival really answered Cellex in this trace (its key, this nonce, Cellex asking):
    its finding counts, reported by Cellex; nothing is missing."""
    cellex_id = net["cellex"].keys().identity.member_id

    def relayed(request: trace_pb2.InvestigateRequest) -> TierAnswer:
        rival = level("rival", "RX-1", "RIVAL/oven")
        rival = _seal(net, "rival", rival, request, asked_by=cellex_id)
        return _seal(net, "cellex", cellex_level(request, rival), request)

    with RogueCellex(net, relayed):
        report = run_trace(net)
    assert shares(report) == {"rival": 1.0}, report
    assert not report["missing"] and report["partial"] is False
    (cause,) = [c for c in report["causes"] if c["member"] == "rival"]
    assert cause["reported_by"] == "cellex"


def test_question_path_entries_are_checked(net: LocalNetwork) -> None:
    """A question whose path names 200 KB of control characters is refused as malformed,
    not passed on down (on the old code only the entries were counted)."""
    keys = load_member_keys(net["sunarc"].directory)
    request = trace_pb2.InvestigateRequest(
        agreement_id="agr-any", batch_ids=["GB-1"], path=["\x1b[2J" + "A" * 200_000]
    )

    async def call() -> grpc.StatusCode:
        channel = open_channel(keys, f"127.0.0.1:{net['glassco'].grpc_port}", "glassco")
        try:
            stub = channel.unary_unary(
                "/qdspace.v1.Trace/Investigate",
                request_serializer=trace_pb2.InvestigateRequest.SerializeToString,
                response_deserializer=None,
            )
            await stub(request, timeout=20)
            return grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            assert "path entry 0" in (exc.details() or ""), exc.details()
            return exc.code()
        finally:
            await channel.close()

    assert asyncio.run(call()) is grpc.StatusCode.INVALID_ARGUMENT
