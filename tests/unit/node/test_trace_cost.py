"""What a ``Trace/Investigate`` question costs the producer before it is answered.

A customer's question names up to 500 batch ids. Authorizing them used to build a
release gate per batch id, each reading the agreement's closed orders and all of the
customer's orders (seconds for a customer with 10,000 orders), and did so before the
customer's token bucket was looked at: a member past its limit, or asking about batches
it may not, still cost all of it. These tests use a real `ContractRuntime` on SQLite
and count the look-ups (never the time): a member with an empty bucket is refused
before any, a refused question costs its token, the customer's orders are read once
per question however many batch ids it names, and every decision is the one the
per-batch gates gave (`_authorize_per_batch`, the old algorithm, kept here as the
reference). The servicer's database reads and large encodings run in a worker thread.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from qdspace.connector.agreement import ContractAgreement, countersign, sign_agreement
from qdspace.connector.contract_errors import ContractError
from qdspace.connector.contract_store import ContractStore
from qdspace.connector.negotiation import Role
from qdspace.connector.offer_choices import chosen_assets
from qdspace.connector.pseudonym import Pseudonymizer
from qdspace.connector.storage import open_store
from qdspace.connector.trace import (
    ROOT_CAUSE_PURPOSE,
    TraceError,
    TraceRefused,
    check_batch_ids,
)
from qdspace.connector.trace_data import batches
from qdspace.node.errors import LimitExceeded
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.rpc import auth, trace_service
from qdspace.node.rpc.trace_service import TraceServicer
from qdspace.node.runtime import trace_producer
from qdspace.node.runtime.contracts import ContractRuntime
from qdspace.node.runtime.contracts_clock import ContractClock
from qdspace.node.runtime.trace_producer import TRACE_BURST, TraceQuestion, TraceRoom
from qdspace.policies.model import Action, OfferTerms, make_offer, to_agreement
from qdspace.protocols.v1 import trace_pb2

from ..servicer_doubles import Aborted, AbortingContext, seeded_member

NOW = dt.datetime.now(dt.UTC)
#: the orders the agreement names (PO-X, sunarc's too, is outside it)
SCOPE = frozenset({"PO-1", "PO-2", "PO-OLD", "PO-NEW", "PO-M", "PO-GHOST"})


def _batch(batch_id: str, order: str | None, customer: str = "sunarc", producer: str = "cellex"):
    return {
        "batch_id": batch_id,
        "material": "cell",
        "kind": "cell",
        "producer": producer,
        "quantity": 1.0,
        "made_at": (NOW - dt.timedelta(days=3)).isoformat(),
        "customer": customer,
        "order_id": order,
    }


#: batch id -> whether sunarc may ask about it under its agreement (and why)
EXPECTED = {
    "B-1a": True,  # its order, in scope
    "B-1b": True,  # the same order
    "B-2": True,
    "B-NEW": True,  # order closed a day ago: within the retention
    "B-OLD": False,  # order closed 30 days ago: past the 7-day retention
    "B-X": False,  # its order, outside the agreement's scope
    "B-M": False,  # mallory's batch
    "B-MO": False,  # sold to sunarc under mallory's order (not one sunarc placed)
    "B-GHOST": False,  # an order in scope that nobody placed
    "B-NOORDER": False,  # no order
    "B-OTHER": False,  # made by another producer
    "B-NONE": False,  # no such batch
}


class Provider:
    """Cellex's runtime on SQLite with sunarc's traceability agreement (`SCOPE`, 7 days'
    retention) and the `EXPECTED` batches; and `orders` more orders of sunarc's in the
    agreement's scope, with two batches each (``B-00000``...)."""

    def __init__(self, root: Path, orders: int = 0, per_hour: int = 120) -> None:
        self.qdm = open_store(f"sqlite:///{root / 'cellex.db'}")
        self.pkey, self.me = seeded_member("cellex", b"p", "supplier")
        self.ckey, self.sunarc = seeded_member("sunarc", b"c", "oem")
        assets = {a.asset_id: a for a in chosen_assets(self.me.member_id, {})}
        clock = ContractClock(root / "clock", control=False)
        store = ContractStore(self.qdm.engine, bytes(32))
        self.rt = ContractRuntime(
            self.me, self.pkey, store, self.qdm.engine, clock, bytes(32), assets
        )
        names = ["PO-1", "PO-2", "PO-OLD", "PO-NEW", "PO-X"] + [
            f"PO-{i:05d}" for i in range(orders)
        ]
        rows = [self._order(o, "sunarc") for o in names] + [self._order("PO-M", "mallory")]
        self.qdm.ingest_rows("order", enumerate(rows, 1))
        self.agreement_id = self._agree(SCOPE | set(names[5:]))
        for order, days in (("PO-OLD", 30), ("PO-NEW", 1)):
            closed_at = NOW - dt.timedelta(days=days)
            self.rt.store.record_order_closed(self.agreement_id, order, closed_at)
        rows = [
            _batch("B-1a", "PO-1"),
            _batch("B-1b", "PO-1"),
            _batch("B-2", "PO-2"),
            _batch("B-NEW", "PO-NEW"),
            _batch("B-OLD", "PO-OLD"),
            _batch("B-X", "PO-X"),
            _batch("B-M", "PO-M", customer="mallory"),
            _batch("B-MO", "PO-M"),
            _batch("B-GHOST", "PO-GHOST"),
            _batch("B-NOORDER", None),
            _batch("B-OTHER", "PO-1", producer="siwafer"),
            _batch("W-1", "PO-W", customer="cellex", producer="siwafer"),  # B-1a's wafer
        ]
        rows += [_batch(f"B-{i:05d}", f"PO-{i % orders:05d}") for i in range(2 * orders)]
        self.qdm.ingest_rows("batch", enumerate(rows, 1))
        edge = {"child_batch_id": "B-1a", "parent_batch_id": "W-1"}
        self.qdm.ingest_rows("genealogy", enumerate([edge], 1))
        self.room = TraceRoom(self.rt, None, per_hour)

    @staticmethod
    def _order(order_id: str, customer: str) -> dict[str, Any]:
        return {
            "order_id": order_id,
            "customer": customer,
            "supplier": "cellex",
            "product": "cell",
            "quantity": 10,
            "status": "open",
            "opened_at": (NOW - dt.timedelta(days=60)).isoformat(),
        }

    def _agree(self, scope: frozenset[str]) -> str:
        agreement_id = f"agr-{uuid.uuid4().hex[:8]}"
        terms = OfferTerms(frozenset({ROOT_CAUSE_PURPOSE}), orders=scope, retention_days=7)
        offer = make_offer(agreement_id, self.me.member_id, "traceability", terms)
        policy = to_agreement(offer, agreement_id, self.sunarc.member_id)
        t0 = NOW - dt.timedelta(days=50)
        agreement = ContractAgreement(
            agreement_id, f"neg-{agreement_id}", self.me.member_id,
            self.sunarc.member_id, "traceability", policy, t0, t0,
        )  # fmt: skip
        signed = countersign(sign_agreement(agreement, self.pkey), self.ckey, self.pkey.verify_key)
        self.rt.store.save_agreement(signed, Role.PROVIDER)
        return agreement_id

    def ask(self, batch_ids: list[str]) -> TraceQuestion:
        return TraceQuestion(self.agreement_id, batch_ids)

    def count(self, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
        """Counts of the authorization look-ups from now on, by name."""
        counts = {"customer_orders": 0, "closed_orders": 0, "gate": 0, "batches": 0}

        def counted(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                counts[name] += 1
                return fn(*args, **kwargs)

            return wrapper

        monkeypatch.setattr(
            self.rt, "customer_orders", counted("customer_orders", self.rt.customer_orders)
        )
        monkeypatch.setattr(self.rt, "gate", counted("gate", self.rt.gate))
        store = self.rt.store
        monkeypatch.setattr(store, "closed_orders", counted("closed_orders", store.closed_orders))
        monkeypatch.setattr(trace_producer, "batches", counted("batches", batches))
        return counts


def _authorize_per_batch(
    room: TraceRoom, peer: MemberIdentity, question: TraceQuestion
) -> tuple[frozenset[str], Pseudonymizer]:
    """`TraceRoom.authorize` as it was: a gate built per batch id (the reference)."""
    ids = check_batch_ids(question.batch_ids)
    refused = TraceRefused(f"no traceability answer for these batches to {peer.name}")
    try:
        stored = room.contracts.provider_agreement(question.agreement_id[:128], peer)
    except ContractError:
        raise refused from None
    asset = room.contracts.assets.get(stored.signed.agreement.asset_id)
    if asset is None or asset.kind.value != "traceability" or not stored.active:
        raise refused
    rows = batches(room.engine, ids)
    pseudonyms: Pseudonymizer | None = None
    for batch_id in ids:
        row = rows.get(batch_id)
        if row is None or row["customer"] != peer.name or row["producer"] != room.me:
            raise refused
        order = row["order_id"]
        gate = room.contracts.gate(
            stored, Action.USE, ROOT_CAUSE_PURPOSE, str(order) if order else None, None
        )
        if order is None or not gate.decision.allowed:
            raise refused
        pseudonyms = gate.pseudonymizer
    if pseudonyms is None:
        raise refused
    return ids, pseudonyms


def _decision(
    authorize: Callable[[TraceRoom, MemberIdentity, TraceQuestion], Any],
    p: Provider,
    question: TraceQuestion,
    peer: MemberIdentity | None = None,
) -> tuple[frozenset[str], str] | str:
    """What `authorize` decides for `peer` (sunarc): the ids and the pseudonyms'
    agreement, or the refusal's words."""
    try:
        ids, pseudonyms = authorize(p.room, peer or p.sunarc, question)
    except TraceRefused as exc:
        return f"refused: {exc}"
    return ids, pseudonyms.agreement_id


@pytest.fixture
def provider(tmp_path: Path) -> Provider:
    return Provider(tmp_path)


# ---------------------------------------------------------------- the same decisions


def test_every_decision_is_the_one_per_batch_gates_gave(provider: Provider) -> None:
    """Each batch alone, every pair and the whole mixed set, under sunarc's agreement,
    under no agreement and as another member: the same answers as a gate per batch id,
    and each batch's the expected one (a batch asked with a refused one is refused)."""
    p = provider
    new = TraceRoom.authorize
    ids = sorted(EXPECTED)
    questions = [p.ask([b]) for b in ids]
    questions += [p.ask(list(pair)) for pair in itertools.combinations(ids, 2)]
    allowed = [b for b in ids if EXPECTED[b]]
    questions += [p.ask(allowed), p.ask(ids), p.ask([*allowed, "B-NONE"]), p.ask(allowed * 3)]
    questions += [TraceQuestion("agr-none", allowed), TraceQuestion("", ["B-1a"])]
    for q in questions:
        assert _decision(new, p, q) == _decision(_authorize_per_batch, p, q), q
    for b in ids:
        answer = _decision(new, p, p.ask([b]))
        assert isinstance(answer, tuple) is EXPECTED[b], (b, answer)
    assert _decision(new, p, p.ask(allowed)) == (frozenset(allowed), p.agreement_id)
    _, mallory = seeded_member("mallory", b"m", "oem")
    for q in (p.ask(["B-M"]), p.ask(allowed)):  # not mallory's agreement
        answer = _decision(new, p, q, mallory)
        assert answer == _decision(_authorize_per_batch, p, q, mallory)
        assert answer == "refused: no traceability answer for these batches to mallory"


def test_an_order_closing_or_a_terminated_agreement_refuses_as_before(provider: Provider) -> None:
    """Decisions read now: an order closed past its retention since the last question,
    then the agreement terminated, refuse with the per-batch gates and without them."""
    p = provider
    new = TraceRoom.authorize
    q = p.ask(["B-1a", "B-2"])
    assert isinstance(_decision(new, p, q), tuple)
    p.rt.store.record_order_closed(p.agreement_id, "PO-2", NOW - dt.timedelta(days=10))
    assert _decision(new, p, q) == _decision(_authorize_per_batch, p, q)
    assert isinstance(_decision(new, p, p.ask(["B-1a"])), tuple)
    assert isinstance(_decision(new, p, q), str)
    p.rt.store.terminate_agreement(p.agreement_id, "ended", NOW)
    for q in (p.ask(["B-1a"]), p.ask(["B-NEW"])):
        assert isinstance(_decision(new, p, q), str)
        assert _decision(new, p, q) == _decision(_authorize_per_batch, p, q)


# ---------------------------------------------------------------- the cost


def test_authorizing_reads_the_customers_orders_once_however_many_batch_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One batch id or 400 of 200 orders: the customer's orders read once per question,
    the closed orders at most twice, the batches once (per gate, as before, it was 400)."""
    p = Provider(tmp_path, orders=200)
    counts = p.count(monkeypatch)
    for n in (1, 40, 400):
        for key in counts:
            counts[key] = 0
        ids, _ = p.room.authorize(p.sunarc, p.ask([f"B-{i:05d}" for i in range(n)]))
        assert len(ids) == n
        assert counts["customer_orders"] == 1, (n, counts)
        assert counts["closed_orders"] <= 2, (n, counts)
        assert counts["batches"] == 1, (n, counts)
        assert counts["gate"] == 1, (n, counts)


def test_a_member_with_an_empty_bucket_is_refused_before_any_look_up(
    provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its bucket emptied, sunarc asks about its batches (and then about one it may not):
    LimitExceeded both times, with no agreement, batch, order or gate read."""
    p = provider
    while p.room._asked.take(p.sunarc.member_id, time.monotonic()) == 0:
        pass
    counts = p.count(monkeypatch)
    agreements = {"n": 0}
    real = p.rt.provider_agreement

    def provider_agreement(*args: Any) -> Any:
        agreements["n"] += 1
        return real(*args)

    monkeypatch.setattr(p.rt, "provider_agreement", provider_agreement)
    allowed = [b for b in sorted(EXPECTED) if EXPECTED[b]]
    for q in (p.ask(allowed), p.ask(["B-M"])):
        with pytest.raises(LimitExceeded, match="ask again in"):
            asyncio.run(p.room.answer(p.sunarc, q, 5.0))
    assert counts == {"customer_orders": 0, "closed_orders": 0, "gate": 0, "batches": 0}
    assert agreements["n"] == 0


def test_a_refused_question_costs_its_token_a_malformed_one_does_not(provider: Provider) -> None:
    """`TRACE_BURST` questions about batches sunarc may not ask about are refused, and so
    is the next one it may: refusals cost tokens, as answers do. Malformed questions
    (no batch, too deep) are refused on their shape before a token is taken."""
    p = provider
    for bad in (p.ask([]), TraceQuestion(p.agreement_id, ["B-1a"], depth=99)):
        for _ in range(TRACE_BURST + 1):
            with pytest.raises(TraceError):
                asyncio.run(p.room.answer(p.sunarc, bad, 5.0))
    for _ in range(TRACE_BURST):
        with pytest.raises(TraceRefused):
            asyncio.run(p.room.answer(p.sunarc, p.ask(["B-M"]), 5.0))
    with pytest.raises(LimitExceeded):
        asyncio.run(p.room.answer(p.sunarc, p.ask(["B-1a"]), 5.0))


# ---------------------------------------------------------------- off the event loop


def _threads(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[threading.Thread]:
    """Patch `module.name` to note the thread each call runs in."""
    seen: list[threading.Thread] = []
    real = getattr(module, name)

    def noted(*args: Any, **kwargs: Any) -> Any:
        seen.append(threading.current_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, noted)
    return seen


def test_the_servicer_reads_and_encodes_in_a_worker_thread(
    provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Upstream's genealogy reads, the trace's own agreement look-ups and Investigate's
    encoding of the answer run off the event loop's thread; Upstream's refusal stays one
    answer for an unknown batch and another's batch."""
    p = provider
    reads = _threads(monkeypatch, trace_service, "upstream")
    encodes = _threads(monkeypatch, trace_service, "answer_to_proto")
    agreements = _threads(monkeypatch, p.room, "own_agreement")
    servicer = TraceServicer(p.qdm, p.room)
    context: Any = AbortingContext()

    async def serve() -> tuple[threading.Thread, list[Any]]:
        auth._CURRENT_PEER.set(auth.Peer(p.sunarc, "ipv4:10.0.0.9:1"))
        got: list[Any] = []
        for batch_id in ("B-1a", "B-M", "B-NONE"):
            try:
                got.append(
                    await servicer.Upstream(trace_pb2.UpstreamRequest(batch_id=batch_id), context)
                )
            except Aborted as exc:
                got.append((exc.code, str(exc)))
        request = trace_pb2.InvestigateRequest(agreement_id=p.agreement_id, batch_ids=["B-1a"])
        got.append(await servicer.Investigate(request, context))
        return threading.current_thread(), got

    loop_thread, got = asyncio.run(serve())
    assert got[0].batch.batch_id == "B-1a"
    assert got[1] == (grpc.StatusCode.PERMISSION_DENIED, "batch 'B-M' was not sold to sunarc")
    assert got[2] == (grpc.StatusCode.PERMISSION_DENIED, "batch 'B-NONE' was not sold to sunarc")
    assert got[3].answer.member == "cellex"
    assert [m.member for m in got[3].answer.missing] == ["siwafer"]  # (no agreement)
    assert len(reads) == 3 and len(encodes) == 1 and len(agreements) == 1
    assert loop_thread not in reads + encodes + agreements


def test_a_question_over_the_batch_limit_is_refused_on_its_count(
    provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """5,000 batch ids: INVALID_ARGUMENT before the question is decoded or a token taken."""
    p = provider
    decoded = _threads(monkeypatch, trace_service, "question_from_proto")
    servicer = TraceServicer(p.qdm, p.room)
    request = trace_pb2.InvestigateRequest(
        agreement_id=p.agreement_id, batch_ids=[f"B-{i}" for i in range(5000)]
    )

    async def serve() -> None:
        auth._CURRENT_PEER.set(auth.Peer(p.sunarc, "ipv4:10.0.0.9:1"))
        context: Any = AbortingContext()
        await servicer.Investigate(request, context)

    with pytest.raises(Aborted) as refused:
        asyncio.run(serve())
    assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 500 batches" in str(refused.value)
    assert decoded == []
    assert p.room._asked.take(p.sunarc.member_id, time.monotonic()) == 0


def test_a_newcomer_under_a_freed_name_is_refused_its_predecessors_batches(
    provider: Provider,
) -> None:
    """The batch rows name their customer by name, and a name passes to a newcomer once
    its holder leaves. A newcomer "sunarc" with a traceability agreement of its own, for
    any order or naming its predecessor's, was answered about its predecessor's batches;
    the member that placed an order is the one the agreements held name for it."""
    p = provider
    key, newcomer = seeded_member("sunarc", b"n", "oem")
    assert newcomer.member_id != p.sunarc.member_id
    later = NOW - dt.timedelta(days=5)
    for scope in (frozenset(), frozenset({"PO-1"})):  # any order; the predecessor's order
        agreement_id = f"agr-{uuid.uuid4().hex[:8]}"
        terms = OfferTerms(frozenset({ROOT_CAUSE_PURPOSE}), orders=scope, retention_days=7)
        policy = to_agreement(
            make_offer(agreement_id, p.me.member_id, "traceability", terms),
            agreement_id,
            newcomer.member_id,
        )
        agreement = ContractAgreement(
            agreement_id, f"neg-{agreement_id}", p.me.member_id,
            newcomer.member_id, "traceability", policy, later, later,
        )  # fmt: skip
        signed = countersign(sign_agreement(agreement, p.pkey), key, p.pkey.verify_key)
        p.rt.store.save_agreement(signed, Role.PROVIDER)
        question = TraceQuestion(agreement_id, ["B-1a"])
        decided = _decision(TraceRoom.authorize, p, question, newcomer)
        assert decided == "refused: no traceability answer for these batches to sunarc"
    # the member that placed the order is answered as before
    assert _decision(TraceRoom.authorize, p, p.ask(["B-1a"]))[0] == frozenset({"B-1a"})
