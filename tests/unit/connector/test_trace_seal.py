"""Signed trace levels (`connector.trace_seal`): what the OEM counts, and what it drops.

The integration test (`tests/integration/trace/test_trace_signed_levels.py`) runs the
attacks between real nodes; here each way a level fails to verify, and that a sealed
level read back off the wire still verifies.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

from nacl.signing import SigningKey

from qdspace.connector.genealogy import BatchInfo
from qdspace.connector.rootcause import DataConfidence, Finding, Window
from qdspace.connector.trace import BatchLink, MissingTier, TierAnswer
from qdspace.connector.trace_report import build_report, report_to_json
from qdspace.connector.trace_seal import TraceNonce, seal_level, verified
from qdspace.node.rpc.trace_serde import answer_to_proto, reply_from_bytes
from qdspace.protocols.v1 import trace_pb2

T0 = datetime(2026, 11, 1, 6, 30, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
TRACE = TraceNonce("tr-1", "nonce-1")
KEYS = {name: SigningKey.generate() for name in ("sunarc", "cellex", "rival")}
IDS = {name: f"{name}-{k:012x}" for k, name in enumerate(KEYS)}
KNOWN = {name: (IDS[name], bytes(key.verify_key)) for name, key in KEYS.items()}


def finding(key: str, batch: str) -> Finding:
    return Finding(
        key=key,
        kind="numeric",
        implicated_n=30,
        comparable_n=300,
        effect=0.91,
        excess_out_of_control=0.3,
        p_value=1e-9,
        adjusted_p=1.7e-8,
        level_out_of_control=0.25,
        implicated_center=120.123456789,
        windows=(Window(T0, T0 + timedelta(minutes=61), 3, (batch,), 9.5),),
        evidence=("qdm_measurement:1",),
        confidence=DataConfidence(0.9, 1.0, None),
    )


def level(member: str, batch: str, parents: tuple[BatchInfo, ...] = (), upstream=()):
    link = BatchLink(BatchInfo(batch, "cell", "cell", member, 12.5), parents)
    return TierAnswer(member, (batch,), 7, (link,), (finding(f"{member}/x", batch),), upstream)


def sealed(answer: TierAnswer, signer: str, asked_by: str, trace: TraceNonce = TRACE, **kw):
    member_id = kw.get("member_id", IDS[answer.member])
    return seal_level(answer, KEYS[signer], trace, member_id, IDS[asked_by], answer.implicated)


def oem(*answers: TierAnswer) -> TierAnswer:
    parents = tuple(BatchInfo(a.implicated[0], "", "cell", a.member, 1.0) for a in answers)
    link = BatchLink(BatchInfo("MB-1", "", "module", "sunarc", 1.0), parents)
    return TierAnswer("sunarc", ("MB-1",), 1, (link,), (), answers)


def cellex_with(rival: TierAnswer) -> TierAnswer:
    rx = BatchInfo("RX-1", "wafer", "wafer", "rival", 1.0)
    return sealed(level("cellex", "CB-1", (rx,), (rival,)), "cellex", "sunarc")


def over_the_wire(answer: TierAnswer) -> TierAnswer:
    data = trace_pb2.InvestigateReply(answer=answer_to_proto(answer)).SerializeToString()
    return reply_from_bytes(data, answer.member, ("sunarc",), asked=frozenset(answer.implicated))


def test_levels_their_members_signed_for_this_trace_count_after_the_wire() -> None:
    rival = sealed(level("rival", "RX-1"), "rival", "cellex")
    root = oem(over_the_wire(cellex_with(rival)))
    kept = verified(root, IDS["sunarc"], TRACE, KNOWN)
    assert kept == root  # nothing dropped
    doc = report_to_json(build_report("tr-1", {}, kept, T0, T0, {}))
    assert doc["responsibility"]["rival"] > 0 and not doc["missing"]


def _dropped(rival: TierAnswer, keys=KNOWN) -> tuple[dict, str]:
    root = oem(over_the_wire(cellex_with(rival)))
    kept = verified(root, IDS["sunarc"], TRACE, keys)
    doc = report_to_json(build_report("tr-1", {}, kept, T0, T0, {}))
    assert "rival" not in doc["responsibility"] and doc["partial"] is True
    (missing,) = doc["missing"]
    assert missing["member"] == "rival" and missing["reported_by"] == "cellex"
    assert missing["batch_ids"] == ["RX-1"]
    return doc, missing["reason"]


def test_a_level_signed_by_the_relaying_member_is_dropped() -> None:
    _, reason = _dropped(sealed(level("rival", "RX-1"), "cellex", "cellex"))
    assert reason.endswith("its signature does not verify (another trace, question or content)")


def test_a_level_from_another_trace_is_dropped() -> None:
    replayed = sealed(level("rival", "RX-1"), "rival", "cellex", TraceNonce("tr-0", "old"))
    _, reason = _dropped(replayed)
    assert "does not verify" in reason


def test_a_level_changed_after_it_was_signed_is_dropped() -> None:
    real = sealed(level("rival", "RX-1"), "rival", "cellex")
    _, reason = _dropped(replace(real, findings=(replace(real.findings[0], effect=0.99),)))
    assert "does not verify" in reason


def test_a_level_signed_for_another_asker_or_under_another_id_is_dropped() -> None:
    _, reason = _dropped(sealed(level("rival", "RX-1"), "rival", "sunarc"))
    assert "not by 'cellex-" in reason
    _, reason = _dropped(sealed(level("rival", "RX-1"), "rival", "cellex", member_id="rival-x"))
    assert "signed as 'rival-x'" in reason


def test_an_unsigned_level_or_one_of_an_unknown_member_is_dropped_not_a_crash() -> None:
    _, reason = _dropped(level("rival", "RX-1"))
    assert reason.endswith("is not verified: not signed")
    unknown = {k: v for k, v in KNOWN.items() if k != "rival"}
    _, reason = _dropped(sealed(level("rival", "RX-1"), "rival", "cellex"), unknown)
    assert "no verify key known for 'rival'" in reason


def test_an_unsigned_direct_answer_drops_all_it_relays() -> None:
    rival = sealed(level("rival", "RX-1"), "rival", "cellex")
    unsigned = replace(cellex_with(rival), seal=None)
    kept = verified(oem(over_the_wire(unsigned)), IDS["sunarc"], TRACE, KNOWN)
    assert kept.upstream == ()
    assert kept.missing == (
        MissingTier("cellex", ("CB-1",), "the answer of 'cellex' is not verified: not signed"),
    )


def test_the_canonical_time_survives_the_wire_in_utc_too() -> None:
    utc = replace(
        level("rival", "RX-1"),
        findings=(
            replace(finding("k", "RX-1"), windows=(Window(T0.astimezone(UTC), T0, 1, (), 1.0),)),
        ),
    )
    root = oem(over_the_wire(cellex_with(sealed(utc, "rival", "cellex"))))
    assert verified(root, IDS["sunarc"], TRACE, KNOWN) == root
