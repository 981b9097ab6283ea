"""A root-cause trace across three tiers of real node processes, under contracts.

SunArc (OEM) builds modules from Cellex's cells, Cellex makes cells from SiWafer's
wafers. A PECVD vacuum excursion is planted in Cellex's readings of the cell batches
that went into SunArc's failed module batches, next to a decoy parameter that is noisy
everywhere; SiWafer's data is clean. Each customer holds a traceability agreement with
its producer (purpose ``root-cause-analysis``). Mallory, an OEM with an agreement of
its own with Cellex, abuses ``Trace/Investigate`` over real mutual TLS. The report is
anchored on the chain and verified through the regulator's proof route; with SiWafer
down, the trace is partial and names the missing tier; a rogue in Cellex's place cannot
invent a tier, stall the OEM or have it read a reply beyond the trace's receive limit.
Tests run in file order.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from concurrent import futures
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.internal.encoder import _VarintBytes

from qdspace.connector.genealogy import BatchInfo
from qdspace.connector.trace import BatchLink, TierAnswer
from qdspace.node.api.regulator_auth import issue_credential
from qdspace.node.identity.member import load_member_keys
from qdspace.node.localnet.network import LocalNetwork, MemberSpec
from qdspace.node.rpc.client import open_channel
from qdspace.node.rpc.server import server_credentials
from qdspace.node.rpc.trace_client import MAX_REPLY_BYTES
from qdspace.node.rpc.trace_serde import answer_to_proto
from qdspace.node.runtime.trace_producer import TRACE_BURST
from qdspace.protocols.v1 import trace_pb2

from .conftest import ok

pytestmark = pytest.mark.integration

RCA = "root-cause-analysis"
T0 = datetime(2026, 11, 2, 6, tzinfo=UTC)
N = 16  # batches per tier
BAD = range(4)  # the implicated batches' numbers
UNITS = {
    "lamination_temperature": "°C",
    "pecvd_chamber_vacuum": "Pa",
    "firing_peak_temperature": "°C",
    "wafer_thickness": "µm",
}


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def wait_for(what: str, probe: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := probe():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _batch(bid: str, kind: str, producer: str, customer: str, order: str, i: int) -> dict[str, Any]:
    return {
        "batch_id": bid,
        "material": kind,
        "kind": kind,
        "producer": producer,
        "quantity": 100,
        "made_at": iso(T0 + timedelta(hours=8 * i)),
        "customer": customer,
        "order_id": order,
    }


def _order(oid: str, customer: str, supplier: str) -> dict[str, Any]:
    return {
        "order_id": oid,
        "customer": customer,
        "supplier": supplier,
        "product": "parts",
        "quantity": 1000,
        "opened_at": iso(T0 - timedelta(days=5)),
    }


def _readings(equipment: str, parameter: str, batch: str, i: int, values: list[float]):
    start = T0 + timedelta(hours=8 * i)
    return [
        {
            "equipment": equipment,
            "parameter": parameter,
            "value": v,
            "unit": UNITS[parameter],
            "measured_at": iso(start + timedelta(minutes=20 * k)),
            "batch_id": batch,
        }
        for k, v in enumerate(values)
    ]


def sunarc_rows() -> dict[str, list[dict[str, Any]]]:
    rng = random.Random(1)
    rows: dict[str, list[dict[str, Any]]] = {"order": [], "batch": [], "genealogy": []}
    rows["order"] = [_order("PO-SC", "sunarc", "cellex")]
    rows["measurement"] = []
    rows["inspection"] = []
    for i in range(N):
        rows["batch"].append(_batch(f"CB-{i:02d}", "cell", "cellex", "sunarc", "PO-SC", i))
        rows["batch"].append(_batch(f"MB-{i:02d}", "module", "sunarc", "", "", i))
        rows["genealogy"].append(
            {"child_batch_id": f"MB-{i:02d}", "parent_batch_id": f"CB-{i:02d}"}
        )
        temps = [rng.gauss(145, 0.5) for _ in range(12)]
        rows["measurement"] += _readings("LAM-1", "lamination_temperature", f"MB-{i:02d}", i, temps)
        for k in range(6):
            verdict = "fail" if i in BAD and k < 4 else "pass"
            rows["inspection"].append(
                {
                    "inspection_id": f"EL-{i:02d}-{k}",
                    "station": "EL-1",
                    "inspected_at": iso(T0 + timedelta(days=10, hours=i, minutes=k)),
                    "verdict": verdict,
                    "defect_class": "microcrack" if verdict == "fail" else "none",
                    "batch_id": f"MB-{i:02d}",
                }
            )
    for row in rows["batch"]:
        if not row["customer"]:
            del row["customer"], row["order_id"]
    return rows


def cellex_rows() -> dict[str, list[dict[str, Any]]]:
    rng = random.Random(2)
    rows: dict[str, list[dict[str, Any]]] = {"measurement": [], "genealogy": []}
    rows["order"] = [_order("PO-SC", "sunarc", "cellex"), _order("PO-CW", "cellex", "siwafer")]
    rows["order"].append(_order("PO-MC", "mallory", "cellex"))
    rows["batch"] = [_batch("CB-M", "cell", "cellex", "mallory", "PO-MC", N)]
    for i in range(N):
        rows["batch"].append(_batch(f"CB-{i:02d}", "cell", "cellex", "sunarc", "PO-SC", i))
        rows["batch"].append(_batch(f"WB-{i:02d}", "wafer", "siwafer", "cellex", "PO-CW", i))
        rows["genealogy"].append(
            {"child_batch_id": f"CB-{i:02d}", "parent_batch_id": f"WB-{i:02d}"}
        )
        vacuum = [rng.gauss(120, 1.0) for _ in range(12)]
        if i in BAD:  # the excursion: a leak for an hour
            vacuum[5:8] = [v + 25 for v in vacuum[5:8]]
        decoy = [rng.gauss(780, 15) for _ in range(12)]  # noisy everywhere
        rows["measurement"] += _readings(
            "PECVD-1", "pecvd_chamber_vacuum", f"CB-{i:02d}", i, vacuum
        )
        rows["measurement"] += _readings(
            "FIRE-1", "firing_peak_temperature", f"CB-{i:02d}", i, decoy
        )
    rows["calibration"] = [
        {
            "certificate_id": "CAL-PECVD-1",
            "equipment": "PECVD-1",
            "valid_from": iso(T0 - timedelta(days=100)),
            "valid_until": iso(T0 + timedelta(days=200)),
            "result": "pass",
        }
    ]
    return rows


def siwafer_rows() -> dict[str, list[dict[str, Any]]]:
    rng = random.Random(3)
    rows: dict[str, list[dict[str, Any]]] = {"batch": [], "measurement": []}
    rows["order"] = [_order("PO-CW", "cellex", "siwafer")]
    for i in range(N):
        rows["batch"].append(_batch(f"WB-{i:02d}", "wafer", "siwafer", "cellex", "PO-CW", i))
        thickness = [rng.gauss(160, 2) for _ in range(12)]
        rows["measurement"] += _readings("SAW-1", "wafer_thickness", f"WB-{i:02d}", i, thickness)
    return rows


def ingest(net: LocalNetwork, name: str, rows: dict[str, list[dict[str, Any]]]) -> None:
    order = ("order", "batch", "genealogy", "measurement", "inspection", "calibration")
    with net[name].client(timeout=60) as client:
        for kind in order:
            if rows.get(kind):
                result = ok(client.post(f"/v1/ingest/{kind}", json={"rows": rows[kind]}))
                assert not result["rejected"], result


def traceability(net: LocalNetwork, customer: str, producer: str, order: str) -> str:
    body = {"peer": producer, "asset_id": "traceability", "purposes": [RCA], "orders": [order]}
    with net[customer].client(timeout=60) as client:
        agreement = ok(client.post("/v1/contracts/negotiations", json=body))
    return str(agreement["agreement_id"])


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    network = LocalNetwork(
        tmp_path_factory.mktemp("trace"),
        [
            MemberSpec("sunarc", "oem"),
            MemberSpec("cellex", "supplier"),
            MemberSpec("siwafer", "supplier"),
            MemberSpec("mallory", "oem"),
            MemberSpec("regulator", "regulator"),
        ],
        env={"QDSPACE_LEDGER_FLUSH_S": "0.5"},
    )
    network.create()
    network.start()
    try:
        ingest(network, "sunarc", sunarc_rows())
        ingest(network, "cellex", cellex_rows())
        ingest(network, "siwafer", siwafer_rows())
        yield network
    finally:
        network.stop()


@pytest.fixture(scope="module")
def agreements(net: LocalNetwork) -> dict[str, str]:
    return {
        "sunarc": traceability(net, "sunarc", "cellex", "PO-SC"),
        "cellex": traceability(net, "cellex", "siwafer", "PO-CW"),
        "mallory": traceability(net, "mallory", "cellex", "PO-MC"),
    }


def regulator_client(net: LocalNetwork, name: str) -> httpx.Client:
    """A client on `name`'s regulator listener with a fresh regulator credential."""
    keys = load_member_keys(net["regulator"].directory)
    with net[name].regulator_client() as anonymous:
        audience = anonymous.get("/healthz").json()["member_id"]
    return net[name].regulator_client(issue_credential(keys, audience), timeout=60)


def run_trace(net: LocalNetwork, body: dict[str, Any]) -> dict[str, Any]:
    with net["sunarc"].client(timeout=60) as client:
        trace_id = ok(client.post("/v1/traces", json=body))["trace_id"]
        done = wait_for(
            "the trace to finish",
            lambda: (t := ok(client.get(f"/v1/traces/{trace_id}")))["state"] != "RUNNING" and t,
        )
        assert done["state"] == "DONE", done
        report: dict[str, Any] = ok(client.get(f"/v1/traces/{trace_id}/report"))
    return report


WINDOW = {"since": iso(T0 + timedelta(days=9)), "until": iso(T0 + timedelta(days=12))}


def test_three_tiers_rank_the_planted_cause_first(
    net: LocalNetwork, agreements: dict[str, str]
) -> None:
    found = run_trace(net, {**WINDOW, "defect_class": "microcrack"})
    report = found["report"]
    assert report["implicated"] == [f"MB-{i:02d}" for i in BAD]
    assert not report["partial"], report["missing"]
    top = report["causes"][0]
    assert (top["member"], top["key"], top["significant"]) == (
        "cellex",
        "PECVD-1/pecvd_chamber_vacuum",
        True,
    )
    assert top["confidence"]["calibrated"] == 1.0
    levels = [(s["member"], s["level"]) for s in top["path"]]
    assert levels == [
        ("sunarc", "module"),
        ("cellex", "cell"),
        ("cellex", "window"),
        ("siwafer", "wafer"),
    ]
    assert set(top["path"][1]["ids"]) <= {f"CB-{i:02d}" for i in BAD}
    assert top["evidence"] and all(e.startswith("qdm_measurement:") for e in top["evidence"])
    assert report["responsibility"]["cellex"] == 1.0
    assert {k.split(":")[1] for k in report["timings_ms"] if k.startswith("tier")} == {
        "sunarc",
        "cellex",
        "siwafer",
    }
    assert not any(c["member"] == "siwafer" and c["significant"] for c in report["causes"])


def test_the_report_is_anchored_and_verified_by_the_regulator(net: LocalNetwork) -> None:
    found = run_trace(net, {"batch": "MB-01"})
    trace_id = found["report"]["trace_id"]
    with net["sunarc"].client(timeout=120) as client:
        ok(client.post("/v1/ledger/flush", params={"timeout_s": 60}))
    with regulator_client(net, "sunarc") as reg:
        proof = ok(reg.get(f"/v1/regulator/proofs/trace_report/{trace_id}"))
    assert proof["verdict"]["valid"] is True, proof["verdict"]
    assert proof["kind"] == "trace_report"


def _call(net: LocalNetwork, caller: str, request: bytes, timeout: float = 20) -> tuple[Any, str]:
    keys = load_member_keys(net[caller].directory)

    async def go() -> tuple[Any, str]:
        channel = open_channel(keys, f"127.0.0.1:{net['cellex'].grpc_port}", "cellex")
        try:
            call = channel.unary_unary(
                "/qdspace.v1.Trace/Investigate",
                request_serializer=None,
                response_deserializer=None,
            )
            await call(request, timeout=timeout)
            return grpc.StatusCode.OK, ""
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
        finally:
            await channel.close()

    return asyncio.run(go())


def _ask(agreement: str, batches: list[str], **extra: Any) -> bytes:
    message = trace_pb2.InvestigateRequest(agreement_id=agreement, batch_ids=batches, **extra)
    return message.SerializeToString()


def test_refusals_reveal_nothing(net: LocalNetwork, agreements: dict[str, str]) -> None:
    mine = agreements["mallory"]
    answers = [
        _call(net, "mallory", _ask(mine, ["CB-00"])),  # sunarc's batch
        _call(net, "mallory", _ask(mine, ["CB-NONE"])),  # no such batch
        _call(net, "mallory", _ask("agr-none", ["CB-M"])),  # its own batch, no agreement
        _call(net, "mallory", _ask(agreements["sunarc"], ["CB-00"])),  # another's agreement
        _call(net, "siwafer", _ask("agr-none", ["CB-00"])),  # a member with no agreement
    ]
    codes = {code for code, _ in answers}
    assert codes == {grpc.StatusCode.PERMISSION_DENIED}
    assert {details.replace("siwafer", "mallory") for _, details in answers} == {
        "no traceability answer for these batches to mallory"
    }
    # its own batch under its own agreement is answered
    assert _call(net, "mallory", _ask(mine, ["CB-M"]))[0] is grpc.StatusCode.OK


def test_hostile_questions_are_bounded(net: LocalNetwork, agreements: dict[str, str]) -> None:
    mine = agreements["mallory"]
    hostile = [
        _ask(mine, [f"CB-{i}" for i in range(5000)]),  # a huge list
        _ask(mine, ["CB\x00M"]),  # a bad id
        _ask(mine, ["x" * 500]),
        _ask(mine, []),
        _ask(mine, ["CB-M"], depth=99),  # a depth bomb
        _ask(mine, ["CB-M"], path=[f"m{i}" for i in range(100)]),
        b"\xff" * 64,  # garbage
    ]
    for request in hostile:
        code, details = _call(net, "mallory", request)
        assert code is grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    # a claimed path through cellex itself (a cycle) ends there: no asking further down
    code, _ = _call(net, "mallory", _ask(mine, ["CB-M"], path=["cellex"], depth=1))
    assert code is grpc.StatusCode.OK


def test_a_customer_asking_too_often_is_refused(
    net: LocalNetwork, agreements: dict[str, str]
) -> None:
    """Mallory asks Cellex about its own batch as fast as it can: each answer costs
    Cellex's analysis and asks SiWafer in turn, so after `TRACE_BURST` answered questions
    (some of them asked by the tests above, refused ones too: each costs Cellex its
    look-ups) Cellex refuses with RESOURCE_EXHAUSTED saying when to ask again, before it
    looks anything up: a question about SunArc's batch gets the same RESOURCE_EXHAUSTED,
    not a refusal. SunArc, another customer, is still answered (on the old code: every
    one answered)."""
    mine = agreements["mallory"]
    answers = [_call(net, "mallory", _ask(mine, ["CB-M"])) for _ in range(TRACE_BURST + 1)]
    codes = [code for code, _ in answers]
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes
    first = codes.index(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert set(codes[:first]) == {grpc.StatusCode.OK}, codes
    assert "traces_per_member_hour 120, 10 at once" in answers[first][1], answers[first]
    assert "ask again in" in answers[first][1]
    refused = _call(net, "mallory", _ask(mine, ["CB-00"]))  # sunarc's batch: not looked up
    assert refused[0] is grpc.StatusCode.RESOURCE_EXHAUSTED, refused
    assert _call(net, "sunarc", _ask(agreements["sunarc"], ["CB-00"]))[0] is grpc.StatusCode.OK


def test_a_producer_down_makes_the_trace_partial(net: LocalNetwork) -> None:
    net.stop(["siwafer"])
    found = run_trace(net, {**WINDOW, "defect_class": "microcrack"})
    report = found["report"]
    assert report["partial"] is True
    assert [m["member"] for m in report["missing"]] == ["siwafer"]
    assert report["causes"][0]["key"] == "PECVD-1/pecvd_chamber_vacuum"


class RogueProducer:
    """Cellex's certificate on Cellex's address (a member gone rogue, or its host taken
    over), answering ``Trace/Investigate`` with the bytes it is given."""

    def __init__(self, net: LocalNetwork) -> None:
        self.reply = b""
        self.asked = 0
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        handler = grpc.method_handlers_generic_handler(
            "qdspace.v1.Trace",
            {
                "Investigate": grpc.unary_unary_rpc_method_handler(
                    self._investigate,
                    request_deserializer=trace_pb2.InvestigateRequest.FromString,
                    response_serializer=None,
                )
            },
        )
        self.server.add_generic_rpc_handlers((handler,))
        cellex = net["cellex"]
        self.server.add_secure_port(cellex.grpc_address, server_credentials(cellex.keys()))

    def _investigate(self, request: trace_pb2.InvestigateRequest, context: Any) -> bytes:
        self.asked += 1
        return self.reply

    def __enter__(self) -> RogueProducer:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(0)


def _reply(answer: TierAnswer) -> bytes:
    return trace_pb2.InvestigateReply(answer=answer_to_proto(answer)).SerializeToString()


def _empty_links(count: int) -> bytes:
    """A reply of `count` empty batch links (two bytes each on the wire)."""
    top = trace_pb2.TierAnswer(member="cellex").SerializeToString()
    one = trace_pb2.TierAnswer(member="cellex")
    one.links.add()
    link = one.SerializeToString()[len(top) :]
    answer = top + link * count
    return b"\x0a" + _VarintBytes(len(answer)) + answer


def test_a_rogue_producer_can_neither_invent_a_tier_nor_stall_the_oem(
    net: LocalNetwork, agreements: dict[str, str]
) -> None:
    """Cellex's node stops and a rogue takes its place. It answers SunArc's trace with
    its own level and, below it, a level it says Mallory answered (Mallory sells it
    nothing): on the old code the OEM's anchored report carried Mallory's tier as
    Mallory's word. The answer is refused whole, and Cellex is a missing tier saying
    why. Then it answers with three million empty links (6 MB): refused on the message's
    counts, before one object is built (on the old code, seconds of the OEM's event loop
    and a gigabyte), and the OEM logs no traceback."""
    mallory = TierAnswer("mallory", ("MX-01",), 1, (), ())
    wafer = BatchInfo("WF-01", "wafer", "wafer", "siwafer", 100)
    spoof = TierAnswer(
        "cellex",
        ("CB-01",),
        1,
        (BatchLink(BatchInfo("CB-01", "cell", "cell", "cellex", 100), (wafer,)),),
        (),
        upstream=(mallory,),
    )
    assert net.stop(["cellex"]) == {"cellex": 0}
    with RogueProducer(net) as rogue:
        rogue.reply = _reply(spoof)
        report = run_trace(net, {"batch": "MB-01"})["report"]
        missing = {m["member"]: m["reason"] for m in report["missing"]}
        assert "relays a level of 'mallory'" in missing.get("cellex", ""), report["missing"]
        assert "mallory" not in report["responsibility"], report["responsibility"]
        assert not any(c["member"] == "mallory" for c in report["causes"])

        rogue.reply = _empty_links(3_000_000)
        report = run_trace(net, {"batch": "MB-01"})["report"]
        missing = {m["member"]: m["reason"] for m in report["missing"]}
        assert "cellex" in missing and "batch" in missing["cellex"], report["missing"]
        assert rogue.asked == 2
    assert "Traceback" not in net["sunarc"].log_path.read_text(errors="replace")


def _sized(size: int) -> bytes:
    """A reply of exactly `size` bytes: an answer whose member name is the rest."""
    for pad in range(16):
        answer = trace_pb2.TierAnswer(member="x" * (size - pad))
        wire = trace_pb2.InvestigateReply(answer=answer).SerializeToString()
        if len(wire) == size:
            return wire
    raise AssertionError(size)


def test_a_reply_over_the_receive_limit_is_refused_unread(net: LocalNetwork) -> None:
    """The rogue in Cellex's place (its node stopped above) answers with a reply of
    exactly the trace's receive limit: the OEM reads it and refuses its words. Then with
    one byte more: the OEM's gRPC refuses it on its length prefix, before it is buffered
    or parsed (on the old code, any reply up to 64 MiB was read and one up to 24 MiB
    parsed), and Cellex is a missing tier that says how large the reply was and what the
    limit is; the trace itself is done, with the OEM's own tier, and nothing raised."""
    with RogueProducer(net) as rogue:
        rogue.reply = _sized(MAX_REPLY_BYTES)
        report = run_trace(net, {"batch": "MB-01"})["report"]
        missing = {m["member"]: m["reason"] for m in report["missing"]}
        assert "answered by 'xxx" in missing.get("cellex", ""), report["missing"]

        rogue.reply = _sized(MAX_REPLY_BYTES + 1)
        report = run_trace(net, {"batch": "MB-01"})["report"]
        missing = {m["member"]: m["reason"] for m in report["missing"]}
        assert missing == {
            "cellex": f"cellex: a reply of {MAX_REPLY_BYTES + 1} bytes exceeds the limit of "
            f"{MAX_REPLY_BYTES} bytes (RESOURCE_EXHAUSTED, not read)"
        }, report["missing"]
        assert report["partial"] is True and report["implicated"] == ["MB-01"]
        assert rogue.asked == 2
    assert "Traceback" not in net["sunarc"].log_path.read_text(errors="replace")
