"""A member's part of a root-cause trace: answer a customer, ask its own producers.

`TraceRoom.answer` is the one method the ``Trace/Investigate`` servicer calls. It takes
one of the caller's question tokens first, so a member past its limit is refused before
we look anything up for it; then it refuses unless the caller holds an active
traceability agreement with us (asset ``traceability``, purpose ``root-cause-analysis``,
the batch's order in its scope) and bought every batch it names; a batch that does not
exist, one sold to another and a missing agreement all get one and the same
`TraceRefused`, so a caller learns nothing about which batch ids we hold. Authorizing
reads the agreement's closed orders and the caller's orders once or twice, however many
batch ids it names (`authorize`: a decision per distinct order, not per batch). Then
`tier` walks our own genealogy down to what we bought, asks the producers of it in turn
and, while they work on their parts, computes ours over our own QDM (local findings,
never raw rows): a trace takes as long as its slowest tier, not the sum of them. Each
producer is asked under our own traceability agreement with it and within what is left
of the caller's deadline;
one that is offline, slow, refuses or has no agreement with us becomes a `MissingTier`,
and the answer is partial, not failed. The path of members already asked goes along, so
a genealogy that loops back through a member ends there, and `MAX_DEPTH` bounds the
depth whatever a caller claims.

The OEM's own trace starts here too (`tier` with only itself on the path): the top of
the trace is the same computation over the OEM's module batches, under a fresh trace id
and nonce that every question of the trace carries down. Each tier signs the level it
answers with its member key for that trace, that asker and those batch ids
(`connector.trace_seal`), and the OEM keeps only the levels it can verify with the keys
it knows for their members (`KeyLookup`: the member directory, or the peer's own
handshake); a level it cannot verify becomes a missing tier saying why.

A caller's deadline is our budget for asking our producers, but never more than
`DEFAULT_DEADLINE_S`: a customer cannot keep our calls to our producers open for days.
Every producer we buy from is asked or named missing: beyond the `MAX_UPSTREAM` asked,
one missing tier names how many more there were, and the answer is partial.

Each answer we relay is checked by our customer as a whole, with the same totals ours
is: a producer's reply is checked at the depth it will sit at and with room for our own
level (`node.rpc.trace_client`), and our assembled answer is checked the way our
customer will check it; while it does not fit, the largest producer's answer is left
out as a missing tier ("answer too large to relay"), so a producer that sends too much
costs its own part, not ours.

Our own findings are computed over raw ids (an operator is an operator inside the
company) and pseudonymized only when they go to a customer (`connector.trace.
pseudonymize_own`, with the pseudonyms of the customer's agreement, the gate's).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from sqlalchemy import Engine, inspect, select

from qdspace.connector.assets import AssetKind
from qdspace.connector.contract_errors import ContractError
from qdspace.connector.contract_store import StoredAgreement
from qdspace.connector.genealogy import bought_by
from qdspace.connector.pseudonym import Pseudonymizer
from qdspace.connector.release_gate import ReleaseGate
from qdspace.connector.rootcause import Finding
from qdspace.connector.trace import (
    MAX_BATCHES,
    MAX_DEPTH,
    MAX_TEXT,
    MAX_UPSTREAM,
    ROOT_CAUSE_PURPOSE,
    TRACEABILITY_ASSET,
    AnswerSize,
    MissingTier,
    TierAnswer,
    TraceError,
    TraceRefused,
    answer_size,
    check_answer,
    check_batch_ids,
    pseudonymize_own,
)
from qdspace.connector.trace_data import batches, local_tier, tier_findings, tier_genealogy
from qdspace.connector.trace_seal import TraceNonce, seal_level, verified
from qdspace.node.config import DEFAULT_TRACES_PER_HOUR
from qdspace.node.errors import LimitExceeded
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.runtime.contracts import ContractRuntime
from qdspace.policies.model import Action
from qdspace.util.numbers import decimal
from qdspace.util.token_bucket import TokenBuckets

logger = logging.getLogger("node.trace")

#: what a producer is given when the caller set no deadline, and at most whatever it set
DEFAULT_DEADLINE_S = 30.0
#: kept back from the deadline for our own answer to travel back
DEADLINE_MARGIN_S = 0.25
MIN_ASK_S = 0.2


@dataclass(frozen=True)
class TraceQuestion:
    """What a customer asks (decoded and bounded by the servicer)."""

    agreement_id: str
    batch_ids: list[str]
    path: tuple[str, ...] = ()  # members asked above us, top first
    depth: int = 0  # tiers above us
    trace_id: str = ""  # the OEM's trace and its nonce: what our signed level binds
    nonce: str = ""


#: asks producer `name`, the member `member_id` our agreement names, a question (its
#: agreement and batch ids) within `timeout_s`
Ask = Callable[[str, str, TraceQuestion, float], Awaitable[TierAnswer]]
#: the member id and Ed25519 verify key of the member called `name`, None if unknown
KeyLookup = Callable[[str], Awaitable[tuple[str, bytes] | None]]


@runtime_checkable
class KeyedAsk(Protocol):
    """An `Ask` that also knows members' verify keys (`node.rpc.trace_client.grpc_ask`)."""

    async def __call__(
        self, producer: str, member_id: str, question: TraceQuestion, timeout_s: float
    ) -> TierAnswer: ...

    async def member_key(self, name: str) -> tuple[str, bytes] | None: ...


def anchored_through(engine: Engine) -> dict[str, int]:
    """Per QDM table, the highest record id covered by an *anchored* ledger leaf (the
    ledger sweep anchors QDM rows in id order as ``record_batch`` leaves)."""
    if not inspect(engine).has_table("ledger_leaf_ref"):
        return {}
    from qdspace.ledger.leaves import kind_code
    from qdspace.ledger.queue_schema import ANCHORED, batch_table, ref_table

    code = kind_code("record_batch")
    with engine.connect() as conn:
        top = conn.execute(
            select(batch_table.c.seq_to).where(
                batch_table.c.kind == "record_batch", batch_table.c.state == ANCHORED
            )
        ).scalars()
        spans = [int(s) for s in top]
        if not spans:
            return {}
        refs = conn.execute(
            select(ref_table.c.ref_id).where(
                ref_table.c.kind == code, ref_table.c.seq <= max(spans)
            )
        ).scalars()
        out: dict[str, int] = {}
        for ref in refs:
            qdm_kind, _, span = str(ref).partition(":")
            last = decimal(span.rpartition("-")[2])
            if last is not None:
                table = f"qdm_{qdm_kind}"
                out[table] = max(out.get(table, 0), last)
    return out


#: answered traces one customer may ask for at once (then `traces_per_member_hour`)
TRACE_BURST = 10


class TraceRoom:
    """Our part of traces (see the module docstring); built once per node.

    Each answered question costs our analysis of the batches' genealogy and findings,
    and asks our producers in turn, who ask theirs: a customer asking as fast as its
    calls allowed would keep every tier below it busy. So a customer's answered
    questions are limited, `TRACE_BURST` at once and then ``per_hour`` an hour (a
    `util.token_bucket.TokenBuckets`, a bucket per customer). The token is taken before
    any look-up: authorizing 500 batch ids costs database reads too, so a refused
    question costs its token like an answered one, and a member past its limit is told
    so without our reading anything. Only a malformed question (too many ids, a bad id,
    too deep), refused on its shape alone, costs none."""

    def __init__(
        self,
        contracts: ContractRuntime,
        ask: Ask | None,
        per_hour: int = DEFAULT_TRACES_PER_HOUR,
        keys: KeyLookup | None = None,
    ) -> None:
        self.contracts = contracts
        self.engine = contracts.qdm
        self.ask = ask
        #: how the OEM learns the keys its producers' levels are verified with
        self.keys = keys if keys is not None or not isinstance(ask, KeyedAsk) else ask.member_key
        self.me = contracts.me.name
        self.per_hour = per_hour
        self._asked = TokenBuckets(per_hour / 3600, min(TRACE_BURST, per_hour))

    def _take(self, peer: MemberIdentity) -> None:
        """One of `peer`'s answered questions, or `LimitExceeded` saying when to ask again."""
        wait_s = self._asked.take(peer.member_id, time.monotonic())
        if wait_s > 0:
            raise LimitExceeded(
                f"{peer.name} asks {self.me} for traces more often than it answers "
                f"(traces_per_member_hour {self.per_hour}, {self._asked.burst} at once): ask "
                f"again in {wait_s:.0f} s"
            )

    # ----------------------------------------------------------------- refusals

    def authorize(
        self, peer: MemberIdentity, question: TraceQuestion
    ) -> tuple[frozenset[str], Pseudonymizer]:
        """The batch ids the caller may ask about and the pseudonyms of its agreement, or
        the one `TraceRefused`."""
        ids = check_batch_ids(question.batch_ids)
        refused = TraceRefused(f"no traceability answer for these batches to {peer.name}")
        try:
            stored = self.contracts.provider_agreement(question.agreement_id[:128], peer)
        except ContractError:
            raise refused from None
        asset = self.contracts.assets.get(stored.signed.agreement.asset_id)
        if asset is None or asset.kind is not AssetKind.TRACEABILITY or not stored.active:
            raise refused
        rows = batches(self.engine, ids)
        orders: set[str | None] = set()
        for batch_id in ids:
            row = rows.get(batch_id)
            if row is None or row["customer"] != peer.name or row["producer"] != self.me:
                raise refused
            order = row["order_id"]
            if order is None:
                raise refused
            orders.add(str(order) if order else None)
        if not self._placed_by(peer, orders):
            raise refused
        gates = self._order_gates(stored, orders)
        if not all(gate.decision.allowed for gate in gates):
            raise refused
        return ids, gates[0].pseudonymizer

    def _placed_by(self, peer: MemberIdentity, orders: set[str | None]) -> bool:
        """Whether the member that placed each of `orders` is `peer`, as far as the
        agreements held here tell (`genealogy.bought_by`): a batch row names its customer
        by name, and a name passes to a newcomer once its holder leaves; the newcomer's own
        traceability agreement (for any order, or naming its predecessor's) opened its
        predecessor's batches to it."""
        with self.engine.connect() as connection:
            return all(bought_by(connection, peer.name, peer.member_id, order) for order in orders)

    def _order_gates(self, stored: StoredAgreement, orders: set[str | None]) -> list[ReleaseGate]:
        """The release gate `ContractRuntime.gate` would build for each of `orders` under
        `stored` (root-cause use), reading the closed orders twice and the customer's
        orders once, however many orders.

        ``contracts.gate`` reads both each time it is called: once per batch id that was
        batch ids times orders (seconds for 500 ids of a customer with 10,000 orders).
        So the gate is built once without an order (its request, time, frameworks,
        pseudonyms and the customer's orders, read now), the closed orders are read
        once more (their times), and a gate is made per distinct order with only what
        ``contracts.gate`` sets per order: the order and its closing time. `ReleaseGate`
        itself decides, as for every other release (the agreement's policy, then whether
        the customer placed the order). The gates are for their decisions only: each
        holds its own order's closing time alone, and no row passes through them."""
        base = self.contracts.gate(stored, Action.USE, ROOT_CAUSE_PURPOSE, None, None)
        terms = stored.signed.agreement
        closed = self.contracts.store.closed_orders(terms.agreement_id)
        gates = [base] if None in orders else []  # a batch of order "": as before, no order
        for order in sorted(o for o in orders if o is not None):
            closed_at = closed.get(order)
            gates.append(
                ReleaseGate(
                    base.asset,
                    terms.policy,
                    replace(base.request, order_id=order, order_closed_at=closed_at),
                    base.pseudonymizer,
                    closed_orders={} if closed_at is None else {order: closed_at},
                    owned_orders=base.owned_orders,
                )
            )
        return gates

    async def answer(
        self, peer: MemberIdentity, question: TraceQuestion, deadline_s: float | None
    ) -> TierAnswer:
        """A customer's question, answered (the servicer's one call): its shape checked,
        then its token taken, then the look-ups of `authorize` (off the event loop)."""
        check_batch_ids(question.batch_ids)
        if question.depth >= MAX_DEPTH or len(question.path) > MAX_DEPTH:
            raise TraceError(f"a trace goes at most {MAX_DEPTH} tiers deep")
        self._take(peer)  # before any look-up: a refused question costs its token too
        ids, pseudonyms = await asyncio.to_thread(self.authorize, peer, question)
        path = (*question.path, self.me)
        trace = TraceNonce(question.trace_id, question.nonce)
        ours = await self.tier(ids, path, question.depth + 1, deadline_s, trace)
        sent = pseudonymize_own(ours, pseudonyms)
        me = self.contracts.me.member_id
        key = self.contracts.signing_key
        return seal_level(sent, key, trace, me, peer.member_id, tuple(sorted(ids)))

    # ----------------------------------------------------------------- our part

    def local_part(self, ids: frozenset[str]) -> tuple[TierAnswer, dict[str, set[str]]]:
        """Our findings and genealogy for `ids` (no peer asked yet), and what we bought."""
        return local_tier(self.engine, ids, self.me, anchored_through(self.engine))

    async def tier(
        self,
        ids: frozenset[str],
        path: tuple[str, ...],
        depth: int,
        deadline_s: float | None,
        trace: TraceNonce | None = None,
    ) -> TierAnswer:
        """Our part for `ids` with our producers' answers below it; `path` holds the
        members asked above us and ourselves last (the OEM's: only itself), `trace` the
        trace's id and nonce (the OEM's top tier makes a fresh one). At the top (depth
        0) only the levels verified as their members' own are kept; below it, the
        answer is made to fit what our customer accepts (see the module docstring)."""
        started = time.perf_counter()
        if trace is None:
            trace = TraceNonce(uuid.uuid4().hex, secrets.token_hex(16))
        budget = DEFAULT_DEADLINE_S if deadline_s is None else deadline_s
        budget = min(budget, DEFAULT_DEADLINE_S)  # a customer's 1e6 s is not ours to give
        rows, links, bought = await asyncio.to_thread(tier_genealogy, self.engine, ids, self.me)
        left = budget - (time.perf_counter() - started) - DEADLINE_MARGIN_S
        # our producers work on their parts while we work on ours: a trace takes as
        # long as its slowest tier, not the sum of all tiers
        asking = asyncio.ensure_future(self._ask_all(bought, path, depth, left, trace))
        try:
            comparable_n, findings = await asyncio.to_thread(self._findings, rows)
        except BaseException:
            asking.cancel()
            raise
        upstream, missing = await asking
        answer = TierAnswer(
            member=self.me,
            implicated=tuple(sorted(rows)),
            comparable_n=comparable_n,
            links=tuple(links),
            findings=tuple(findings),
            upstream=tuple(upstream),
            missing=tuple(missing),
        )
        if depth == 0:
            answer = await self._verified(answer, trace)
        else:
            answer = await asyncio.to_thread(fit_for_customer, answer, depth, path, len(ids))
        return replace(answer, elapsed_ms=(time.perf_counter() - started) * 1000)

    async def _verified(self, answer: TierAnswer, trace: TraceNonce) -> TierAnswer:
        """Our answer (the OEM's) with only the levels below it that verify
        (`connector.trace_seal.verified`), with the keys we know for their members."""
        names = sorted({tier.member for depth, tier in answer.walk() if depth > 0})
        keys: dict[str, tuple[str, bytes]] = {}
        if self.keys is not None and names:
            found = await asyncio.gather(*(self.keys(n) for n in names), return_exceptions=True)
            keys = {n: k for n, k in zip(names, found, strict=True) if isinstance(k, tuple)}
        me = self.contracts.me.member_id
        return await asyncio.to_thread(verified, answer, me, trace, keys)

    def _findings(self, rows: Mapping[str, Mapping[str, object]]) -> tuple[int, list[Finding]]:
        return tier_findings(self.engine, rows, self.me, anchored_through(self.engine))

    # ----------------------------------------------------------------- our producers

    def own_agreement(self, producer: str) -> tuple[str, str] | None:
        """Our newest active traceability agreement with `producer`, if any: its id and
        the member id of its provider (who must answer, whoever holds the name now)."""
        found = self.contracts.agreed_with(TRACEABILITY_ASSET, producer)
        if found is None:
            return None
        return found.agreement_id, found.signed.agreement.provider_id

    def _own_agreements(self, producers: list[str]) -> dict[str, tuple[str, str] | None]:
        return {producer: self.own_agreement(producer) for producer in producers}

    async def _ask_all(
        self,
        bought: Mapping[str, set[str]],
        path: tuple[str, ...],
        depth: int,
        left_s: float,
        trace: TraceNonce,
    ) -> tuple[list[TierAnswer], list[MissingTier]]:
        answers: list[TierAnswer] = []
        missing: list[MissingTier] = []
        calls: dict[str, Awaitable[TierAnswer]] = {}
        producers = sorted(bought)[:MAX_UPSTREAM]
        if beyond := not_asked(bought):
            missing.append(beyond)
        askable = [p for p in producers if self._cannot_ask(p, path, depth, left_s) is None]
        agreements = await asyncio.to_thread(self._own_agreements, askable)  # reads the store
        for producer in producers:
            ids = tuple(sorted(bought[producer]))[:500]
            reason = self._cannot_ask(producer, path, depth, left_s)
            agreement = agreements.get(producer)
            if reason is None and agreement is None:
                reason = f"no traceability agreement of {self.me} with {producer}"
            if reason is not None or self.ask is None or agreement is None:
                missing.append(MissingTier(producer, ids, reason or "this node cannot call peers"))
                continue
            agreement_id, member_id = agreement
            question = TraceQuestion(
                agreement_id, list(ids), path, depth, trace.trace_id, trace.nonce
            )
            calls[producer] = self.ask(producer, member_id, question, left_s)
        results = await asyncio.gather(*calls.values(), return_exceptions=True)
        for producer, result in zip(calls, results, strict=True):
            if isinstance(result, TierAnswer):
                answers.append(result)
            else:
                reason = _reason(result)
                logger.warning("trace: %s did not answer: %s", producer, reason)
                missing.append(MissingTier(producer, tuple(sorted(bought[producer]))[:500], reason))
        return answers, missing

    def _cannot_ask(
        self, producer: str, path: tuple[str, ...], depth: int, left_s: float
    ) -> str | None:
        if producer in path:
            return f"{producer} is already on this trace's path (a genealogy cycle)"
        if depth >= MAX_DEPTH:
            return f"the trace reached its depth limit of {MAX_DEPTH} tiers"
        if left_s < MIN_ASK_S:
            return "no time left before the deadline"
        return None


def not_asked(bought: Mapping[str, set[str]]) -> MissingTier | None:
    """The producers beyond the `MAX_UPSTREAM` a tier asks, as one missing tier (named
    after the first of them, with their batch ids as far as they fit): neither asked
    nor silently dropped, they make the trace partial."""
    rest = sorted(bought)[MAX_UPSTREAM:]
    if not rest:
        return None
    ids = tuple(b for producer in rest for b in sorted(bought[producer]))[:MAX_BATCHES]
    reason = (
        f"not asked: {len(rest)} producers beyond the {MAX_UPSTREAM} a tier asks "
        f"({', '.join(rest)})"
    )
    return MissingTier(
        rest[0], ids, reason[: MAX_TEXT - 3] + "..." if len(reason) > MAX_TEXT else reason
    )


def fit_for_customer(
    answer: TierAnswer, depth: int, path: tuple[str, ...], asked: int
) -> TierAnswer:
    """`answer` (ours, at `depth`, asked about `asked` batch ids; `path` ends with us)
    as our customer will accept it: checked the way it checks it, and while it does not
    fit, the largest answer we relay left out as a missing tier ("answer too large to
    relay"). A `TraceError` only if our own level alone does not fit."""
    customer = depth - 1  # the depth our customer checks our answer at
    # the members above us; a question claiming a path through us ends with us (we ask
    # nobody on it), and our answer is not ours to refuse for that
    above = tuple(m for m in path[:-1] if m != answer.member)
    reserve = AnswerSize(levels=1 if customer > 0 else 0, ids=asked)
    while True:
        try:
            check_answer(answer, customer, path=above, reserve=reserve)
            return answer
        except TraceError as exc:
            if not answer.upstream:
                raise
            largest = max(answer.upstream, key=lambda up: answer_size(up).weight)
            ids = largest.seal.asked if largest.seal is not None else largest.implicated
            reason = f"answer too large to relay: {exc}"[:MAX_TEXT]
            logger.warning("trace: %s: %s", largest.member, reason)
            answer = replace(
                answer,
                upstream=tuple(up for up in answer.upstream if up is not largest),
                missing=(*answer.missing, MissingTier(largest.member, ids, reason)),
            )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "no answer before the deadline"
    text = str(exc) or type(exc).__name__
    return text[:300]
