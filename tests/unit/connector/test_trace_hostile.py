"""Hostile producers' trace replies: decode bombs, oversized answers, invented tiers, raw
operator ids going out and peer text read as markup (the audit of the trace feature)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from nacl.signing import SigningKey

from qdspace.connector.genealogy import BatchInfo
from qdspace.connector.pseudonym import Pseudonymizer
from qdspace.connector.rootcause import DataConfidence, Finding, Window
from qdspace.connector.trace import (
    MAX_LINKS,
    MAX_PARENTS,
    BatchLink,
    MissingTier,
    TierAnswer,
    TraceError,
    check_answer,
)
from qdspace.connector.trace_report import MAX_STEP_IDS, build_report, report_to_json
from qdspace.node.cli import trace as trace_cli
from qdspace.node.rpc import trace_client, trace_serde
from qdspace.node.rpc.trace_serde import answer_from_proto, answer_to_proto
from qdspace.node.runtime.trace_producer import TraceQuestion, TraceRoom
from qdspace.protocols.v1 import trace_pb2

T0 = datetime(2026, 11, 1, tzinfo=UTC)
SECRET = b"s" * 32


def _finding(key: str = "PECVD-1/v", batches: tuple[str, ...] = ("CB-1",)) -> Finding:
    window = Window(T0, T0 + timedelta(hours=1), 3, batches, 7.5)
    return Finding(
        key=key,
        kind="numeric",
        implicated_n=30,
        comparable_n=300,
        effect=0.8,
        excess_out_of_control=0.1,
        p_value=1e-6,
        adjusted_p=1e-5,
        windows=(window,),
        evidence=("qdm_measurement:1",),
        confidence=DataConfidence(0.9, 0.5, None),
    )


def _tier(
    member: str,
    tag: str,
    producers: tuple[str, ...] = ("siwafer",),
    links: int = 1,
    parents: int = 1,
    upstream: tuple[TierAnswer, ...] = (),
    findings: tuple[Finding, ...] = (),
) -> TierAnswer:
    made = tuple(
        BatchLink(
            BatchInfo(f"{tag}{i}", "", "cell", member, 1.0),
            tuple(
                BatchInfo(f"{tag}{i}.{j}", "", "wafer", producers[j % len(producers)], 1.0)
                for j in range(parents)
            ),
        )
        for i in range(links)
    )
    return TierAnswer(
        member, tuple(f"{tag}{i}" for i in range(links)), 10, made, findings, upstream
    )


def _oem(producer: TierAnswer) -> TierAnswer:
    link = BatchLink(
        BatchInfo("MB-1", "", "module", "sunarc", 1.0),
        (BatchInfo(producer.links[0].batch.batch_id, "", "cell", producer.member, 1.0),),
    )
    return TierAnswer("sunarc", ("MB-1",), 5, (link,), (), (producer,))


# ------------------------------------------------------------ 1. decode bombs


def test_a_reply_of_many_empty_links_is_refused_before_any_object_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    head = trace_pb2.TierAnswer(member="cellex").SerializeToString()
    one = trace_pb2.TierAnswer(member="cellex", links=[trace_pb2.BatchLink()])
    wire = head + one.SerializeToString()[len(head) :] * 200_000
    message = trace_pb2.TierAnswer.FromString(wire)
    built: list[object] = []
    monkeypatch.setattr(trace_serde, "BatchLink", lambda *a: built.append(a))
    with pytest.raises(TraceError, match="too many batches"):
        answer_from_proto(message, "cellex")
    assert built == []


def test_a_reply_beyond_the_totals_is_refused_on_the_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two levels, each within every per-level limit, together beyond the parents total."""
    wafer = _tier("siwafer", "W", ("polysil",), MAX_LINKS, MAX_PARENTS)
    cell = _tier("cellex", "C", ("siwafer",), MAX_LINKS, MAX_PARENTS, upstream=(wafer,))
    message = answer_to_proto(cell)
    built: list[object] = []

    def spy(*args: Any) -> BatchLink:
        built.append(args)
        return BatchLink(*args)

    monkeypatch.setattr(trace_serde, "BatchLink", spy)
    with pytest.raises(TraceError, match="parent batches in one answer"):
        answer_from_proto(message, "cellex")
    assert built == []


def test_the_client_decodes_the_reply_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    reply = trace_pb2.InvestigateReply(answer=answer_to_proto(_tier("cellex", "C")))
    threads: list[threading.Thread] = []
    decode = trace_serde.reply_from_bytes

    def spy(data: bytes, member: str, path: tuple[str, ...] = (), **checks: Any) -> TierAnswer:
        threads.append(threading.current_thread())
        return decode(data, member, path, **checks)

    monkeypatch.setattr(trace_client, "reply_from_bytes", spy)

    async def call(request: Any, timeout: float) -> bytes:
        data: bytes = reply.SerializeToString()
        return data

    async def confirm_member(member_id: str) -> None:
        return None

    channel = SimpleNamespace(unary_unary=lambda *a, **k: call)
    peers: Any = SimpleNamespace(confirm_member=confirm_member, channel=lambda name: channel)
    ask = trace_client.grpc_ask(peers)

    async def main() -> TierAnswer:
        return await ask("cellex", "m-1", TraceQuestion("a-1", ["C0"], ("sunarc",)), 5.0)

    answer = asyncio.run(main())
    assert answer.member == "cellex"
    assert threads and threads[0] is not threading.main_thread()


def test_bytes_that_are_no_reply_are_a_trace_error() -> None:
    with pytest.raises(TraceError):
        trace_serde.reply_from_bytes(b"\xff\xff\xff", "cellex")


# ------------------------------------------------------------ 2. the answer as a whole


def test_check_answer_bounds_the_answer_as_a_whole() -> None:
    wafer = _tier("siwafer", "C0.", ("polysil",), MAX_LINKS, MAX_PARENTS)
    check_answer(wafer)  # one level at its limits is fine
    wafer = replace(wafer, implicated=("C0.0",))  # about a batch cellex names as siwafer's
    with pytest.raises(TraceError, match="in one answer"):
        check_answer(_tier("cellex", "C", ("siwafer",), MAX_LINKS, MAX_PARENTS, upstream=(wafer,)))


def test_a_path_step_names_a_bounded_number_of_batches() -> None:
    many = tuple(f"C{i}" for i in range(200))
    cell = _tier("cellex", "C", links=200, parents=3, findings=(_finding(batches=many),))
    report = build_report("tr-1", {}, _oem(cell), T0, T0, {})
    (cause,) = report.causes
    assert all(len(step.ids) <= MAX_STEP_IDS for step in cause.path)
    assert cause.path[1].more == 200 - MAX_STEP_IDS  # the cell batches, counted
    assert cause.path[-1].member == "siwafer" and cause.path[-1].more == 600 - MAX_STEP_IDS


# ------------------------------------------------------------ 3. invented tiers


def _spoofed(upstream: TierAnswer, missing: tuple[MissingTier, ...] = ()) -> TierAnswer:
    return replace(_tier("cellex", "C"), upstream=(upstream,), missing=missing)


def test_a_producer_cannot_relay_a_tier_it_does_not_buy_from() -> None:
    rival = _tier("rival-cells", "R", findings=(_finding(batches=("R0",)),))
    with pytest.raises(TraceError, match="no producer of its batches"):
        check_answer(_spoofed(rival), member="cellex")
    invented = (MissingTier("honest-wafer", ("W1",), "refused: no agreement"),)
    with pytest.raises(TraceError, match="missing, no producer"):
        check_answer(replace(_tier("cellex", "C"), missing=invented))


def test_a_relayed_tier_cannot_close_a_cycle_or_appear_twice() -> None:
    again = _tier("cellex", "C0.0.", producers=("siwafer",))
    wafer = _tier("siwafer", "C0.", producers=("cellex",), upstream=(again,))
    with pytest.raises(TraceError, match="cycle"):
        check_answer(_tier("cellex", "C", upstream=(wafer,)), member="cellex")
    wafer = _tier("siwafer", "C0.", ("polysil",))
    with pytest.raises(TraceError, match="twice"):
        check_answer(_tier("cellex", "C", upstream=(wafer, wafer)), member="cellex")
    asker = _tier("sunarc", "C0.", producers=("cellex",))
    cell = _tier("cellex", "C", producers=("sunarc",), upstream=(asker,))
    check_answer(cell, member="cellex")  # sunarc could be a producer of cellex ...
    with pytest.raises(TraceError, match="cycle"):  # ... but not when it is the asker
        check_answer(cell, member="cellex", path=("sunarc",))


def test_the_report_says_who_relayed_a_level() -> None:
    wafer = _tier("siwafer", "C0.", ("polysil",), findings=(_finding(batches=("C0.0",)),))
    wafer = replace(wafer, missing=(MissingTier("polysil", ("C0.0.0",), "offline"),))
    cell = _tier("cellex", "C", upstream=(wafer,), findings=(_finding(),))
    check_answer(cell, member="cellex")
    doc = report_to_json(build_report("tr-1", {}, _oem(cell), T0, T0, {}))
    by_member = {c["member"]: c for c in doc["causes"]}
    assert by_member["siwafer"]["reported_by"] == "cellex"
    assert "reported_by" not in by_member["cellex"]  # its own word
    assert doc["missing"] == [
        {"member": "polysil", "batch_ids": ["C0.0.0"], "reason": "offline", "reported_by": "cellex"}
    ]


# ------------------------------------------------------------ 4. operator ids


def test_a_tier_answers_its_customer_with_operator_pseudonyms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = replace(
        _finding("operator=op-4711"),
        kind="categorical",
        windows=(),
        evidence=("qdm_operator_log:17", "qdm_measurement:3"),
    )
    wafer = _tier("siwafer", "W", ("polysil",), findings=(replace(raw, key="operator=psn_x"),))
    ours = _tier("cellex", "C", findings=(raw,), upstream=(wafer,))
    pseudonyms = Pseudonymizer(SECRET, "agr-1")
    me = SimpleNamespace(name="cellex", member_id="cellex-000000000000")
    contracts: Any = SimpleNamespace(qdm=None, me=me, signing_key=SigningKey.generate())
    room = TraceRoom(contracts, None)

    def authorize(peer: object, question: TraceQuestion) -> tuple[frozenset[str], Pseudonymizer]:
        return frozenset(question.batch_ids), pseudonyms

    async def tier(
        ids: frozenset[str], path: tuple[str, ...], depth: int, deadline_s: float | None, *_: Any
    ) -> TierAnswer:
        return ours

    monkeypatch.setattr(room, "authorize", authorize)
    monkeypatch.setattr(room, "tier", tier)
    peer: Any = SimpleNamespace(member_id="m-sunarc", name="sunarc")
    sent = asyncio.run(room.answer(peer, TraceQuestion("agr-1", ["C0"], ("sunarc",)), 5.0))
    assert b"op-4711" not in answer_to_proto(sent).SerializeToString()
    (finding,) = sent.findings
    assert finding.key == f"operator={pseudonyms.pseudonym('op-4711')}"
    assert finding.evidence == (
        f"qdm_operator_log:{pseudonyms.pseudonym('17')}",
        "qdm_measurement:3",
    )
    assert sent.upstream == (wafer,)  # the producers' own, pseudonymized by them


# ------------------------------------------------------------ 5. ids and markup


def test_window_batch_ids_are_checked() -> None:
    bad = _finding(batches=("\x1b]0;owned\x07" + "x" * 5000,))
    with pytest.raises(TraceError, match="window batch id"):
        check_answer(_tier("cellex", "C", findings=(bad,)))


class _Node:
    def __init__(self, found: dict[str, Any]) -> None:
        self.found = found

    def trace_report(self, trace_id: str) -> dict[str, Any]:
        return self.found

    def trace(self, trace_id: str) -> dict[str, Any]:
        return self.found


class _Target:
    def __init__(self, found: dict[str, Any]) -> None:
        self.found = found

    @contextlib.contextmanager
    def client(self) -> Iterator[_Node]:
        yield _Node(self.found)


def test_the_cli_prints_peer_text_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    hostile = "x [/bold] [red]"
    cause = {
        "rank": 1,
        "member": hostile,
        "key": hostile,
        "score": 1.0,
        "adjusted_p": 0.0,
        "significant": True,
        "confidence": {"score": 1.0},
        "reported_by": "cellex",
        "path": [{"member": hostile, "level": "cell", "ids": [hostile]}],
    }
    doc = {
        "trace_id": "tr-1",
        "partial": True,
        "missing": [{"member": hostile, "reason": hostile}],
        "causes": [cause],
        "responsibility": {hostile: 1.0},
        "timings_ms": {},
    }
    found = {"report": doc, "report_sha256": "ab"}
    inspect.unwrap(trace_cli.report)(target=_Target(found), trace_id="tr-1", as_json=False)
    trace_cli._print_trace(
        {"trace_id": "tr-1", "state": "FAILED", "started_at": "t", "error": hostile}
    )
    out = capsys.readouterr().out
    assert out.count(hostile) >= 6 and "(reported by cellex)" in out


def test_the_oem_ranks_off_the_event_loop_and_stands_first_on_the_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from qdspace.node.runtime import trace_runs

    asked: list[tuple[str, ...]] = []
    threads: list[threading.Thread] = []
    build = build_report

    async def tier(ids: frozenset[str], path: tuple[str, ...], *rest: object) -> TierAnswer:
        asked.append(path)
        return _oem(_tier("cellex", "C"))

    def spy(*args: Any) -> Any:
        threads.append(threading.current_thread())
        return build(*args)

    stored: dict[str, bytes] = {}
    store: Any = SimpleNamespace(
        start=lambda *a: None,
        finish=lambda trace_id, data, at: stored.setdefault(trace_id, data),
        fail=lambda trace_id, error, at: pytest.fail(error),
        get=lambda trace_id: stored[trace_id],
    )
    room: Any = SimpleNamespace(me="sunarc", tier=tier)
    monkeypatch.setattr(trace_runs, "build_report", spy)
    runs = trace_runs.TraceRuns(room, store, lambda: T0, lambda *a: None)
    monkeypatch.setattr(runs, "_resolve", lambda selection: frozenset({"MB-1"}))
    asyncio.run(runs.run(trace_runs.Selection(batch="MB-1")))
    (data,) = stored.values()
    assert b'"tier1:cellex"' in data
    assert asked == [("sunarc",)]
    assert threads and threads[0] is not threading.main_thread()


def test_an_honest_tier_with_a_large_genealogy_answers_within_its_customers_bounds(
    tmp_path: Path,
) -> None:
    """A supplier's walk could reach 2,000 batches and a batch may be made of a hundred
    parents, but its customer refuses a level of more than 500 links or a link of more
    than 64 parents: the whole answer was refused and an honest supplier showed as a
    missing tier. The walk now stops at the customer's bounds, nearest batches first,
    bought parents first (they name whom the trace asks next)."""
    from qdspace.connector.storage import open_store
    from qdspace.connector.trace import MAX_LINKS, MAX_PARENTS, TierAnswer, check_answer
    from qdspace.connector.trace_data import walk_genealogy

    store = open_store(f"sqlite:///{tmp_path}/q.db")
    made = "2026-06-01T06:00:00Z"

    def batch(bid: str, producer: str) -> dict[str, object]:
        return {"batch_id": bid, "material": "cell", "kind": "cell", "producer": producer,
                "quantity": 1, "made_at": made}  # fmt: skip

    rows = [batch("ROOT", "cellex")]
    rows += [batch(f"C-{i:04d}", "cellex") for i in range(700)]
    rows += [batch(f"W-{i:03d}", "siwafer") for i in range(100)]
    edges = [{"child_batch_id": "ROOT", "parent_batch_id": f"C-{i:04d}"} for i in range(700)]
    # one cell made of 100 parents: 90 of its own line's and the 10 wafers bought
    edges += [{"child_batch_id": "C-0000", "parent_batch_id": f"C-{i:04d}"} for i in range(1, 91)]
    edges += [{"child_batch_id": "C-0000", "parent_batch_id": f"W-{i:03d}"} for i in range(10)]
    assert not store.ingest_rows("batch", enumerate(rows, 1)).rejected
    assert not store.ingest_rows("genealogy", enumerate(edges, 1)).rejected
    links, bought = walk_genealogy(store.engine, ["ROOT"], "cellex")
    assert len(links) <= MAX_LINKS and all(len(link.parents) <= MAX_PARENTS for link in links)
    first_cell = next(link for link in links if link.batch.batch_id == "C-0000")
    assert sum(p.producer == "siwafer" for p in first_cell.parents) == 10  # kept first
    assert bought == {"siwafer": {f"W-{i:03d}" for i in range(10)}}
    answer = TierAnswer("cellex", ("ROOT",), 1, tuple(links), ())
    check_answer(answer, member="cellex")  # its customer takes it
    assert links[0].batch.batch_id == "ROOT"
    store.engine.dispose()
