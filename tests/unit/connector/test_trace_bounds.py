"""What a tier relays fits what its customer accepts; answers are tied to their question.

A tier's answer is checked by its customer as a whole, with the same totals (16 levels,
2,000 links...) the OEM applies. On the old code every tier checked its producer's reply
as if it were the top, so a producer nesting invented levels, or an honest but wide
supply chain (3 x 3 x 2 = 31 levels), passed the honest tier and made the OEM refuse
that tier's whole answer. Now a reply is checked at its depth with room for the asker,
and a tier leaves its largest producer's answer out (a missing tier) until its own fits.
Answers must speak of what was asked; question paths are ids; a customer's deadline is
capped; producers beyond the eighth are named missing. A real `TraceRoom` over a real
SQLite QDM answers; its producers' answers come from `ask`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from qdspace.connector.genealogy import BatchInfo
from qdspace.connector.storage import open_store
from qdspace.connector.trace import BatchLink, TierAnswer, TraceError, check_answer
from qdspace.connector.trace_report import build_report, report_to_json
from qdspace.node.rpc.trace_serde import answer_to_proto, question_from_proto, reply_from_bytes
from qdspace.node.runtime.trace_producer import TraceQuestion, TraceRoom
from qdspace.protocols.v1 import trace_pb2

NOW = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
Ask = Callable[[str, str, TraceQuestion, float], Awaitable[TierAnswer]]


def wire(answer: TierAnswer) -> bytes:
    return trace_pb2.InvestigateReply(answer=answer_to_proto(answer)).SerializeToString()


def tier(member: str, ids: tuple[str, ...], producers: tuple[str, ...] = (), upstream=()):
    """`member`'s level about `ids`, each made of one batch of each of `producers` (named
    ``<id>/<producer>``)."""
    links = tuple(
        BatchLink(
            BatchInfo(b, "", "part", member, 1.0),
            tuple(BatchInfo(f"{b}/{p}", "", "part", p, 1.0) for p in producers),
        )
        for b in ids
    )
    return TierAnswer(member, ids, 1, links, (), tuple(upstream))


def chain(member: str, ids: tuple[str, ...], widths: tuple[int, ...]) -> TierAnswer:
    """An honest supply chain below `member`: `widths[0]` producers, each with
    `widths[1]` of its own, and so on."""
    if not widths:
        return tier(member, ids)
    producers = tuple(f"{member}.{k}" for k in range(widths[0]))
    below = [chain(p, tuple(f"{b}/{p}" for b in ids), widths[1:]) for p in producers]
    return tier(member, ids, producers, below)


class Cellex:
    """Cellex's room on a real SQLite QDM: cell ``CB-0`` (sold to sunarc) made of one
    batch of each of `producers`, each of them asked through `ask`."""

    def __init__(self, root: Path, producers: list[str], ask: Ask) -> None:
        store = open_store(f"sqlite:///{root / 'cellex.db'}")
        made = (NOW - dt.timedelta(days=3)).isoformat()

        def batch(bid: str, producer: str, customer: str) -> dict[str, Any]:
            kind = "cell" if producer == "cellex" else "wafer"
            return {
                "batch_id": bid,
                "material": kind,
                "kind": kind,
                "producer": producer,
                "quantity": 1.0,
                "made_at": made,
                "customer": customer,
                "order_id": "PO-1",
            }

        rows = [batch("CB-0", "cellex", "sunarc")]
        rows += [batch(f"CB-0/{p}", p, "cellex") for p in producers]
        assert not store.ingest_rows("batch", enumerate(rows, 1)).rejected
        edges = [{"child_batch_id": "CB-0", "parent_batch_id": f"CB-0/{p}"} for p in producers]
        assert not store.ingest_rows("genealogy", enumerate(edges, 1)).rejected
        me = SimpleNamespace(name="cellex", member_id="cellex-000000000000")
        contracts: Any = SimpleNamespace(qdm=store.engine, me=me)
        self.room = TraceRoom(contracts, ask)
        self.room.own_agreement = lambda p: ("agr", f"{p}-000000000000")  # type: ignore[method-assign]

    def answer(self, deadline_s: float = 10.0) -> TierAnswer:
        """Cellex's tier for sunarc's question about CB-0 (depth 1 below the OEM)."""
        return asyncio.run(self.room.tier(frozenset({"CB-0"}), ("sunarc", "cellex"), 1, deadline_s))


def answering(make: Callable[[str, TraceQuestion], TierAnswer]) -> tuple[Ask, list[Any]]:
    calls: list[Any] = []

    async def ask(producer: str, member_id: str, question: TraceQuestion, t: float) -> TierAnswer:
        calls.append((producer, question, t))
        return make(producer, question)

    return ask, calls


# ------------------------------------------------------------------ P2: room for levels above


def test_an_honest_wide_supply_chain_is_relayed_within_what_the_oem_accepts(
    tmp_path: Path,
) -> None:
    """Three producers, each with three of their own, each with two: 31 levels with
    Cellex's. Cellex leaves out the largest answers until its own fits the OEM's 16 levels;
    the OEM accepts it (on the old code: refused whole, Cellex a missing tier)."""
    producers = ["p0", "p1", "p2"]

    def make(producer: str, q: TraceQuestion) -> TierAnswer:
        return chain(producer, tuple(q.batch_ids), (3, 2))

    ask, _ = answering(make)
    answer = Cellex(tmp_path, producers, ask).answer()
    got = reply_from_bytes(wire(answer), "cellex", ("sunarc",))  # as the OEM checks it
    assert got.member == "cellex" and got.upstream, got
    relayed = {up.member for up in got.upstream}
    left_out = {m.member: m.reason for m in got.missing}
    assert relayed | set(left_out) == set(producers) and relayed.isdisjoint(left_out)
    assert all(r.startswith("answer too large to relay") for r in left_out.values()), left_out
    assert len([t for _, t in got.walk()]) <= 16


def test_a_producer_nesting_invented_levels_costs_its_own_part_not_cellexs(
    tmp_path: Path,
) -> None:
    """SiWafer nests four levels below its own: fine for a reply to the OEM, too deep once
    Cellex relays it. Its reply is refused at Cellex's depth, and were it relayed anyway,
    Cellex leaves it out; either way the OEM accepts Cellex's answer."""
    bomb = chain("siwafer", ("CB-0/siwafer",), (1, 1, 1, 1))
    reply_from_bytes(wire(bomb), "siwafer", ("sunarc",))  # to the OEM: within its depth
    with pytest.raises(TraceError, match="nested deeper"):
        question = TraceQuestion("agr", ["CB-0/siwafer"], ("sunarc", "cellex"), 1)
        reply_from_bytes(wire(bomb), "siwafer", question.path, depth=question.depth)
    ask, _ = answering(lambda producer, q: chain(producer, tuple(q.batch_ids), (1, 1, 1, 1)))
    answer = Cellex(tmp_path, ["siwafer"], ask).answer()
    got = reply_from_bytes(wire(answer), "cellex", ("sunarc",))
    assert [m.member for m in got.missing] == ["siwafer"]
    assert got.missing[0].reason.startswith("answer too large to relay")


def test_sixteen_levels_from_a_producer_leave_room_for_cellexs_own(tmp_path: Path) -> None:
    """A reply of exactly 16 levels is the OEM's limit; relayed under Cellex it is 17."""
    ask, _ = answering(_sixteen)
    answer = Cellex(tmp_path, ["siwafer"], ask).answer()
    got = reply_from_bytes(wire(answer), "cellex", ("sunarc",))
    assert [m.member for m in got.missing] == ["siwafer"]


def _sixteen(producer: str, q: TraceQuestion) -> TierAnswer:
    """`producer`'s answer of 16 levels: 8 producers, 7 of them with one of their own."""
    ids = tuple(q.batch_ids)
    names = tuple(f"{producer}.{k}" for k in range(8))
    below = [
        chain(n, tuple(f"{b}/{n}" for b in ids), (1,) if k < 7 else ()) for k, n in enumerate(names)
    ]
    answer = tier(producer, ids, names, below)
    assert len(list(answer.walk())) == 16
    return answer


# ------------------------------------------------------------------ P3: tied to the question


def test_an_answer_speaks_only_of_the_batches_it_was_asked_about() -> None:
    never = tier("cellex", ("NEVER-ASKED",))
    with pytest.raises(TraceError, match="not asked about"):
        reply_from_bytes(wire(never), "cellex", ("sunarc",), asked=frozenset({"CB-0"}))
    stray = TierAnswer(
        "cellex", ("CB-0",), 1, (BatchLink(BatchInfo("ELSEWHERE", "", "", "cellex", 1.0), ()),), ()
    )
    with pytest.raises(TraceError, match="not asked about"):
        check_answer(stray, member="cellex")


def test_a_link_is_of_the_answering_producers_own_batch() -> None:
    theirs = TierAnswer(
        "cellex", ("CB-0",), 1, (BatchLink(BatchInfo("CB-0", "", "", "rival", 1.0), ()),), ()
    )
    with pytest.raises(TraceError, match="another producer"):
        check_answer(theirs, member="cellex")


def test_a_relayed_level_answers_for_batches_named_as_that_producers() -> None:
    """Cellex names CB-0/siwafer as SiWafer's; a SiWafer level about another batch is
    not tied to anything Cellex bought."""
    wafer = tier("siwafer", ("SOMETHING-ELSE",))
    cell = tier("cellex", ("CB-0",), ("siwafer",), (wafer,))
    with pytest.raises(TraceError, match="not one it names as 'siwafer''s"):
        check_answer(cell, member="cellex")
    check_answer(tier("cellex", ("CB-0",), ("siwafer",), (tier("siwafer", ("CB-0/siwafer",)),)))


# ------------------------------------------------------------------ P4: path entries


@pytest.mark.parametrize("entry", ["\x1b[2J" + "A" * 200_000, "a\x00b", "", "x" * 65])
def test_a_questions_path_entries_are_ids(entry: str) -> None:
    message = trace_pb2.InvestigateRequest(
        agreement_id="agr", batch_ids=["B1"], path=["sunarc", entry], depth=1
    )
    with pytest.raises(TraceError, match="path entry 1"):
        question_from_proto(message)


# ------------------------------------------------------------------ P5, P6: deadline, fan-out


def test_a_customers_deadline_is_capped_for_our_producers(tmp_path: Path) -> None:
    ask, calls = answering(lambda producer, q: tier(producer, tuple(q.batch_ids)))
    Cellex(tmp_path, ["siwafer"], ask).answer(deadline_s=1e6)
    ((_, _, timeout_s),) = calls
    assert timeout_s <= 30.0


def test_producers_beyond_the_eighth_are_named_missing_and_the_trace_partial(
    tmp_path: Path,
) -> None:
    producers = [f"p{i:02d}" for i in range(12)]
    ask, calls = answering(lambda producer, q: tier(producer, tuple(q.batch_ids)))
    answer = Cellex(tmp_path, producers, ask).answer()
    assert sorted(c[0] for c in calls) == producers[:8]
    (rest,) = answer.missing
    assert rest.member == "p08" and "4 producers" in rest.reason
    assert set(rest.batch_ids) == {f"CB-0/{p}" for p in producers[8:]}
    for p in producers[8:]:
        assert p in rest.reason
    reply_from_bytes(wire(answer), "cellex", ("sunarc",))  # still what the OEM accepts
    cell = BatchInfo("CB-0", "", "", "cellex", 1.0)
    link = BatchLink(BatchInfo("MB-0", "", "", "sunarc", 1.0), (cell,))
    oem = TierAnswer("sunarc", ("MB-0",), 1, (link,), (), (answer,))
    doc = report_to_json(build_report("tr-1", {}, oem, NOW, NOW, {}))
    assert doc["partial"] is True
    assert [m["member"] for m in doc["missing"]] == ["p08"]
