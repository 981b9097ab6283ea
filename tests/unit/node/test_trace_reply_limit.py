"""The receive limit of trace replies: an honest answer at every bound fits it with its
margin, and the limit is no larger than that answer needs; only ``Trace/Investigate``
replies get it, and a reply refused for its size is a clear reason, not a traceback.

`maximal_answer` is the largest answer `connector.trace.check_answer` accepts with texts
in ASCII: every total reached, every text at its character limit, every number at its
widest encoding (proto3 leaves zeros out, so none is zero). The integration test
(`tests/integration/contracts/test_trace.py`) sends a reply just over the limit through
real mutual TLS.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from qdspace.connector import trace
from qdspace.connector.genealogy import BatchInfo
from qdspace.connector.rootcause import DataConfidence, Finding, Window
from qdspace.connector.trace import BatchLink, MissingTier, TierAnswer, TraceError
from qdspace.node.errors import PeerError
from qdspace.node.rpc import client, trace_client
from qdspace.node.rpc.trace_client import MAX_REPLY_BYTES
from qdspace.node.rpc.trace_serde import answer_to_proto, reply_from_bytes
from qdspace.node.runtime.trace_producer import TraceQuestion
from qdspace.protocols.v1 import trace_pb2

U32 = 2**32 - 1  # the widest uint32 varint
WIDE = 1.2345678901e300  # a double is 8 bytes whatever it is, once not zero
#: the longest time text a window's time is read from (`trace_serde._time` reads 40
#: characters; an offset with seconds is the longest that reads back whole)
AT = datetime(2026, 11, 1, 0, 0, 0, 1, tzinfo=timezone(timedelta(hours=23, minutes=59, seconds=59)))
#: the honest maximum, as measured when the limit was chosen (see `trace_client`)
MEASURED = 20_831_026
MARGIN = 0.10  # at least this much room above the honest maximum
SLACK = 0.15  # and at most this much: a limit larger than an honest answer needs is not one


def text(n: int, tag: str = "") -> str:
    """`n` printable ASCII characters, distinct by `tag`."""
    return (tag + "x" * n)[:n]


def name(tag: str) -> str:
    return text(trace.MAX_ID, f"{tag}-")


def ref(batch_id: str, producer: str) -> BatchInfo:
    """A batch whose material, kind and producer fill the 300 characters they may."""
    return BatchInfo(batch_id, text(trace.MAX_TEXT - 1 - len(producer)), "k", producer, WIDE)


def finding(tag: str, evidence: int) -> Finding:
    window = Window(AT, AT + timedelta(days=3650), U32, (), WIDE)
    return Finding(
        key=text(trace.MAX_TEXT, tag),
        kind="categorical",
        implicated_n=U32,
        comparable_n=U32,
        effect=-0.123456789,
        excess_out_of_control=0.987654321,
        level_out_of_control=0.555555555,
        p_value=1.234e-300,
        adjusted_p=2.345e-300,
        implicated_center=WIDE,
        comparable_center=-WIDE,
        windows=(window,) * trace.MAX_WINDOWS,
        evidence=tuple(text(trace.MAX_TEXT, f"{tag}e{k}:") for k in range(evidence)),
        confidence=DataConfidence(0.999999, 0.888888, 0.777777),
        note=text(trace.MAX_TEXT, "note"),
    )


def named(tag: str, k: int) -> str:
    """The batch a level `tag` names as bought from its `k`-th producer (first link)."""
    return text(trace.MAX_ID, f"{tag}P0.{k}-")


def level(tag: str, upstream: tuple[TierAnswer, ...] = (), first: str = "") -> TierAnswer:
    """One of `MAX_LEVELS` equal levels: its share of the totals' links, parents and ids
    (one implicated batch, `first`: the one the level above names as ours, the rest
    300-character evidence ids), `MAX_FINDINGS` findings and `MAX_UPSTREAM` missing
    tiers; its parents name the producers of `upstream` and of the missing tiers, and
    each link after the first is made of a batch the one before it names, as
    `check_answer` wants."""
    member = name(tag)
    links = trace.MAX_TOTAL_LINKS // trace.MAX_LEVELS
    parents = trace.MAX_TOTAL_PARENTS // trace.MAX_TOTAL_LINKS
    evidence = trace.MAX_TOTAL_IDS // trace.MAX_LEVELS - 1
    absent = tuple(name(f"{tag}m{k}") for k in range(trace.MAX_UPSTREAM))
    producers = [u.member for u in upstream] + list(absent)
    made = tuple(
        BatchLink(
            ref(first or text(trace.MAX_ID, f"{tag}L0-"), member)
            if i == 0
            else ref(text(trace.MAX_ID, f"{tag}P{i - 1}.0-"), member),
            tuple(
                ref(text(trace.MAX_ID, f"{tag}P{i}.{j}-"), producers[j % len(producers)])
                for j in range(parents)
            ),
        )
        for i in range(links)
    )
    findings = []
    for k in range(trace.MAX_FINDINGS):
        share = min(trace.MAX_EVIDENCE, evidence - sum(len(f.evidence) for f in findings))
        findings.append(finding(f"{tag}F{k}", share))
    missing = tuple(MissingTier(m, (), text(trace.MAX_TEXT, "reason")) for m in absent)
    return TierAnswer(
        member, (made[0].batch.batch_id,), U32, made, tuple(findings), upstream, missing, 1e9
    )


def maximal_answer() -> TierAnswer:
    """`MAX_LEVELS` levels: the top, `MAX_UPSTREAM` below it, the rest below the first."""
    rest = trace.MAX_LEVELS - 1 - trace.MAX_UPSTREAM
    below = tuple(level(f"g{k}", first=named("c0", k)) for k in range(rest))
    producers = (
        level("c0", below, named("top", 0)),
        *(level(f"c{k}", first=named("top", k)) for k in range(1, trace.MAX_UPSTREAM)),
    )
    return level("top", producers)


def test_an_honest_answer_at_every_bound_fits_the_limit_with_its_margin() -> None:
    answer = maximal_answer()
    tiers = [tier for _, tier in answer.walk()]
    assert len(tiers) == trace.MAX_LEVELS
    assert sum(len(t.links) for t in tiers) == trace.MAX_TOTAL_LINKS
    assert sum(len(link.parents) for t in tiers for link in t.links) == trace.MAX_TOTAL_PARENTS
    ids = sum(len(t.implicated) + sum(len(f.evidence) for f in t.findings) for t in tiers)
    assert ids == trace.MAX_TOTAL_IDS
    wire = trace_pb2.InvestigateReply(answer=answer_to_proto(answer)).SerializeToString()
    assert reply_from_bytes(wire, answer.member) == answer  # accepted, and reads back whole
    assert len(wire) == MEASURED, "the bounds or the messages changed: measure the limit again"
    assert len(wire) * (1 + MARGIN) <= MAX_REPLY_BYTES <= len(wire) * (1 + SLACK)


def test_only_trace_and_catalog_replies_get_a_limit_and_no_resolver_lifts_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened: list[list[tuple[str, Any]]] = []
    monkeypatch.setattr(
        client.grpc.aio, "secure_channel", lambda *a, options, **k: opened.append(options)
    )
    keys: Any = SimpleNamespace(ca_pem=None, tls_key_pem=None, cert_pem=None)
    client.open_channel(keys, "127.0.0.1:1", "cellex")
    options = dict(opened[0])
    assert options["grpc.max_receive_message_length"] == 64 * 1024 * 1024
    assert options["grpc.service_config_disable_resolution"] == 1
    config = json.loads(options["grpc.service_config"])
    limits = {
        (m["name"][0]["service"], m["name"][0]["method"]): m["maxResponseMessageBytes"]
        for m in config["methodConfig"]
    }
    assert limits == {
        ("qdspace.v1.Trace", "Investigate"): MAX_REPLY_BYTES,
        ("qdspace.v1.Catalog", "ListAssets"): client.CATALOG_REPLY_BYTES,
        ("qdspace.v1.Catalog", "GetAsset"): client.ASSET_REPLY_BYTES,
    }
    assert all(len(m["name"]) == 1 for m in config["methodConfig"])
    assert trace_client.INVESTIGATE == "/qdspace.v1.Trace/Investigate"


def _ask(reply: bytes | None = None, error: grpc.aio.AioRpcError | None = None) -> TierAnswer:
    """`grpc_ask` over a channel whose call returns `reply` or raises `error`."""

    async def call(request: Any, timeout: float) -> bytes:
        if error is not None:
            raise error
        assert reply is not None
        return reply

    async def confirm_member(member_id: str) -> None:
        return None

    channel = SimpleNamespace(unary_unary=lambda *a, **k: call)
    peers: Any = SimpleNamespace(confirm_member=confirm_member, channel=lambda name: channel)
    ask = trace_client.grpc_ask(peers)
    return asyncio.run(ask("cellex", "m-1", TraceQuestion("a-1", ["C0"], ("sunarc",)), 5.0))


def _status(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def test_a_reply_grpc_refused_for_its_size_names_its_size_and_the_limit() -> None:
    over = MAX_REPLY_BYTES + 1
    # grpc 1.85's words (the status a client's gRPC gives a reply over its limit)
    sizes = f"({over} vs. {MAX_REPLY_BYTES})"
    details = f"Stream removed (CLIENT: Received message larger than max {sizes})"
    with pytest.raises(PeerError) as refused:
        _ask(error=_status(grpc.StatusCode.RESOURCE_EXHAUSTED, details))
    assert str(refused.value) == (
        f"cellex: a reply of {over} bytes exceeds the limit of {MAX_REPLY_BYTES} bytes "
        "(RESOURCE_EXHAUSTED, not read)"
    )
    # the producer's own RESOURCE_EXHAUSTED (it is asked too often) keeps its words
    with pytest.raises(PeerError, match="cellex: RESOURCE_EXHAUSTED: ask again in 30 s"):
        _ask(error=_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "ask again in 30 s"))


def test_a_reply_over_the_limit_on_a_channel_without_it_is_not_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parsed: list[bytes] = []
    monkeypatch.setattr(trace_client, "reply_from_bytes", lambda data, *a: parsed.append(data))
    with pytest.raises(TraceError, match=f"exceeds the limit of {MAX_REPLY_BYTES} bytes"):
        _ask(reply=b"\0" * (MAX_REPLY_BYTES + 1))
    assert parsed == []
