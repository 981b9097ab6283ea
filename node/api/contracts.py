"""Operator REST endpoints of usage contracts: catalog, negotiate, transfer, subscribe,
agreements, order closure, retention sweep, purge (leaving the data space), deletion
duties and receipts.

Routes decode, call one runtime/client method, encode. Errors are not caught here: a
contract error, a peer's refusal (`PeerError`) or a timeout rises to the app's problem
handlers, which answer by the node's fault table (`qdspace.node.faults`: PERMISSION_DENIED
-> 403, NOT_FOUND -> 404...). Every number a caller sends is finite and bounded, every id
non-empty and printable, so bad input is a 422 naming the field, never a 500. What a route
needs (the runtime, the contract client, the page asked for) comes in as a typed
dependency (`qdspace.node.api.deps`); what it answers is a model
(`qdspace.node.api.contracts_models`). List routes page by cursor (``limit``, ``cursor``;
the next page's cursor in ``X-Next-Cursor``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from starlette.concurrency import run_in_threadpool

from qdspace.connector.negotiation import Negotiation, Role
from qdspace.connector.spc import SpcSpec
from qdspace.connector.transfer import TransferProcess
from qdspace.connector.versions import RecordVersion, Withdrawal, history, withdraw
from qdspace.node.api.contracts_models import (
    AgreementFull,
    AgreementPublic,
    CatalogEntryPublic,
    ChangePublic,
    ClockBody,
    ClockPublic,
    ExplainBody,
    NegotiateBody,
    NegotiationPublic,
    NegotiationResult,
    ReceivedPublic,
    RecordKeyBody,
    RecordVersionPublic,
    TerminateBody,
    TransferBody,
    TransferPublic,
    WithdrawalPublic,
    WithdrawBody,
    agreement_full,
    agreement_public,
    api_time,
    change_public,
    entry_public,
    negotiation_public,
    record_version_public,
    transfer_public,
)
from qdspace.node.api.deps import (
    MAX_PAGE,
    NEXT_CURSOR_HEADER,
    Client,
    Outbox,
    Paging,
    Runtime,
    decode_cursor,
    encode_cursor,
    require_operator,
)
from qdspace.node.api.models import ID_MAX, ID_PATTERN, IdPath
from qdspace.node.api.policy_models import JsonLd, PolicyExplanation
from qdspace.node.api.problems import PeerTimeout
from qdspace.node.api.subscription_models import (
    AlertsPublic,
    SubscribeBody,
    SubscriptionEnded,
    SubscriptionPublic,
    alert_public,
    received_alert_public,
    subscription_public,
)
from qdspace.node.errors import PeerError
from qdspace.node.runtime.contract_ports import Subscription
from qdspace.node.runtime.contracts import ContractRuntime
from qdspace.policies.model import Action
from qdspace.policies.odrl.dsp import agreement_jsonld

_T = TypeVar("_T")

#: how long POST /subscriptions waits for the provider to open the stream
SUBSCRIBE_WAIT_S = 10.0
#: the newest alerts a subscription's answer carries (all: GET /alerts)
SUBSCRIPTION_ALERTS = 100


async def _domain(call: Callable[[], Awaitable[_T]]) -> _T:
    """Await a domain call; its errors map in the app's one table (`node.api.problems`)."""
    return await call()


async def _opened(sub: Subscription) -> None:
    """Wait until the provider opened ``sub``'s stream, or its task failed, or time ran out.

    A task that fails before the stream opens (an agreement this node provides, a peer
    that cannot be reached) raises its own error here at once instead of leaving the
    caller waiting; a peer that never answers is a 504 after `SUBSCRIBE_WAIT_S`.
    """
    assert sub.task is not None
    opened = asyncio.ensure_future(sub.connected.wait())
    try:
        await asyncio.wait(
            {opened, sub.task}, timeout=SUBSCRIBE_WAIT_S, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        opened.cancel()
    failed = sub.task.exception() if sub.task.done() and not sub.task.cancelled() else None
    if failed is not None:
        raise failed
    if not sub.connected.is_set():
        raise PeerTimeout(
            f"peer {sub.provider} did not open the stream within {SUBSCRIBE_WAIT_S:.0f} s"
        )


def _sync(fn: Callable[..., _T], *args: Any) -> Callable[[], Awaitable[_T]]:
    async def run() -> _T:
        return await run_in_threadpool(fn, *args)

    return run


def contracts_router() -> APIRouter:
    """The ``/v1/contracts`` routes of a node (the node comes from ``app.state.node``)."""
    router = APIRouter(
        prefix="/v1/contracts", dependencies=[Depends(require_operator)], tags=["contracts"]
    )

    @router.get("/catalog/{peer}", response_model=list[CatalogEntryPublic])
    async def peer_catalog(
        client: Client,
        page: Paging,
        response: Response,
        peer: IdPath,
        kind: Annotated[str, Query(max_length=64)] = "",
    ) -> list[CatalogEntryPublic]:
        entries = [entry_public(e) for e in await client.catalog(peer, kind)]
        return page.take(entries, response)

    @router.get("/assets", response_model=list[CatalogEntryPublic])
    def own_assets(rt: Runtime, page: Paging, response: Response) -> list[CatalogEntryPublic]:
        return page.take([entry_public(e) for e in rt.catalog("oem")], response)

    @router.post("/negotiations", response_model=NegotiationResult)
    async def negotiate(client: Client, body: NegotiateBody) -> NegotiationResult:
        async def run() -> Negotiation:
            if body.as_offered:
                return await client.negotiate_offer(body.peer, body.asset_id)
            return await client.negotiate(
                body.peer,
                body.asset_id,
                purposes=frozenset(body.purposes),
                orders=None if body.orders is None else frozenset(body.orders),
                fields=None if body.fields is None else frozenset(body.fields),
                retention_days=body.retention_days,
                valid_until=body.valid_until,
            )

        started = time.perf_counter()
        result = negotiation_public(await _domain(run))
        elapsed_ms = (time.perf_counter() - started) * 1000  # in this node
        return NegotiationResult(**result.model_dump(), elapsed_ms=elapsed_ms)

    @router.get("/negotiations", response_model=list[NegotiationPublic])
    def negotiations(rt: Runtime, page: Paging, response: Response) -> list[NegotiationPublic]:
        def read(limit: int | None, offset: int) -> list[NegotiationPublic]:
            found = rt.store.negotiations(limit=limit, offset=offset)
            return [negotiation_public(n) for n in found]

        return page.read(read, response)

    @router.get("/negotiations/{negotiation_id}", response_model=NegotiationPublic)
    async def negotiation(rt: Runtime, negotiation_id: IdPath) -> NegotiationPublic:
        """One negotiation (a DSP one runs on after its request was acknowledged)."""
        return negotiation_public(await _domain(_sync(rt.store.load_negotiation, negotiation_id)))

    @router.get("/agreements", response_model=list[AgreementPublic])
    def agreements(
        rt: Runtime,
        page: Paging,
        response: Response,
        role: Annotated[Role | None, Query(description="only those held in this role")] = None,
        asset_id: Annotated[
            str | None,
            Query(
                min_length=1,
                max_length=ID_MAX,
                pattern=ID_PATTERN,
                description="only those of this asset",
            ),
        ] = None,
        newest_first: Annotated[
            bool, Query(description="the newest first (default: in the order agreed)")
        ] = False,
    ) -> list[AgreementPublic]:
        def read(limit: int | None, offset: int) -> list[AgreementPublic]:
            found = rt.store.agreements(
                role,
                asset_id=asset_id,
                limit=limit,
                offset=offset,
                newest_first=newest_first,
            )
            return [agreement_public(a) for a in found]

        return page.read(read, response)

    @router.get("/agreements/{agreement_id}", response_model=AgreementFull)
    async def agreement(rt: Runtime, agreement_id: IdPath) -> AgreementFull:
        stored = await _domain(_sync(rt.store.agreement, agreement_id))
        return agreement_full(stored)

    @router.post("/agreements/{agreement_id}/explain", response_model=PolicyExplanation)
    async def explain(rt: Runtime, agreement_id: IdPath, body: ExplainBody) -> PolicyExplanation:
        """The ODRL report (per rule, per constraint) of a request under the agreement."""
        fields = None if body.fields is None else frozenset(body.fields)
        action = Action(body.action)
        report = await _domain(
            _sync(rt.explain, agreement_id, action, body.purpose, body.order_id, fields)
        )
        return PolicyExplanation.model_validate(report.to_dict())

    @router.get("/agreements/{agreement_id}/odrl", response_model=JsonLd)
    async def agreement_odrl(rt: Runtime, agreement_id: IdPath) -> JsonLd:
        """The agreement's policy in the DSP 2025-1 JSON-LD form (ODRL Agreement)."""
        stored = await _domain(_sync(rt.store.agreement, agreement_id))
        terms = stored.signed.agreement
        return agreement_jsonld(terms.policy, terms.agreed_at)

    @router.post("/agreements/{agreement_id}/terminate", response_model=AgreementPublic)
    async def terminate(
        rt: Runtime, outbox: Outbox, agreement_id: IdPath, body: TerminateBody
    ) -> AgreementPublic:
        stored = await _domain(_sync(rt.terminate, agreement_id, body.reason))
        await outbox.flush()
        return agreement_public(stored)

    @router.post("/transfers", response_model=TransferPublic)
    async def transfer(client: Client, body: TransferBody) -> TransferPublic:
        async def run() -> TransferProcess:
            return await client.request_transfer(
                body.agreement_id,
                purpose=body.purpose,
                order_id=body.order_id,
                fields=None if body.fields is None else frozenset(body.fields),
                since_last=body.since_last,
            )

        process = await _domain(run)
        task = client.start_pull(process.transfer_id, body.batch_rows)
        if body.wait:
            process = await _domain(lambda: asyncio.shield(task))
        return transfer_public(process)

    @router.get("/transfers", response_model=list[TransferPublic])
    def transfers(
        rt: Runtime,
        page: Paging,
        response: Response,
        newest_first: Annotated[
            bool, Query(description="the newest first (default: in the order they were made)")
        ] = False,
    ) -> list[TransferPublic]:
        def read(limit: int | None, offset: int) -> list[TransferPublic]:
            found = rt.store.transfers(limit=limit, offset=offset, newest_first=newest_first)
            return [transfer_public(t) for t in found]

        return page.read(read, response)

    @router.get("/transfers/{transfer_id}", response_model=TransferPublic)
    async def transfer_status(
        client: Client,
        rt: Runtime,
        transfer_id: IdPath,
        wait_s: float = Query(0, ge=0, le=300, allow_inf_nan=False),
    ) -> TransferPublic:
        task = client.transfers.get(transfer_id)
        error = ""
        if task is not None and wait_s:
            await asyncio.wait({task}, timeout=wait_s)
        if task is not None and task.done() and not task.cancelled() and task.exception():
            error = str(task.exception())
        process = await _domain(_sync(rt.store.load_transfer, transfer_id))
        return transfer_public(process, error)

    @router.post("/transfers/{transfer_id}/resume", response_model=TransferPublic)
    async def resume(
        client: Client, rt: Runtime, transfer_id: IdPath, wait: bool = True
    ) -> TransferPublic:
        task = client.start_pull(transfer_id)
        if wait:
            return transfer_public(await _domain(lambda: asyncio.shield(task)))
        return transfer_public(await _domain(_sync(rt.store.load_transfer, transfer_id)))

    @router.get("/received", response_model=ReceivedPublic)
    async def received(
        rt: Runtime,
        response: Response,
        agreement_id: Annotated[str, Query(min_length=1, max_length=256)],
        order_id: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
        limit: int = Query(1000, ge=1, le=100_000),
        cursor: Annotated[
            str | None, Query(max_length=200, description="the next_cursor of the last page")
        ] = None,
    ) -> ReceivedPublic:
        """The rows held under an agreement (of one order) in the order they came, ``limit``
        at a time: the first page, or the page after ``cursor``; ``next_cursor`` (and the
        ``X-Next-Cursor`` header) names the page after this one, None on the last.
        ``total`` counts every row held under the agreement. A cursor stands for the last
        row read, so a page is a range of the agreement's rows wherever it starts, and rows
        that come in between pages are read on a later page, none twice."""
        after = 0 if cursor is None else decode_cursor(cursor)
        store = rt.store

        def read() -> tuple[list[Any], int]:
            rows = store.received_rows(agreement_id, order_id, after_id=after, limit=limit + 1)
            return rows, store.count_received(agreement_id)

        rows, total = await _domain(_sync(read))
        following = None
        if len(rows) > limit:
            rows = rows[:limit]
            following = encode_cursor(rows[-1].id)
            response.headers[NEXT_CURSOR_HEADER] = following
        return ReceivedPublic(
            agreement_id=agreement_id,
            total=total,
            rows=[json.loads(r.payload) for r in rows],
            next_cursor=following,
        )

    @router.get("/received/changes", response_model=list[ChangePublic])
    async def received_changes(
        rt: Runtime, page: Paging, response: Response, agreement_id: str | None = None
    ) -> list[ChangePublic]:
        """The corrections and withdrawals received (the consumer's audit trail)."""

        def read(limit: int | None, offset: int) -> list[ChangePublic]:
            found = rt.store.received_changes(agreement_id, limit=limit, offset=offset)
            return [change_public(c) for c in found]

        return await _domain(_sync(page.read, read, response))

    @router.post("/withdrawals", response_model=WithdrawalPublic)
    async def withdraw_record(rt: Runtime, body: WithdrawBody) -> WithdrawalPublic:
        def run() -> Withdrawal:
            with rt.qdm.begin() as connection:
                return withdraw(connection, body.kind, body.key, rt.clock.now())

        done = await _domain(_sync(run))
        return WithdrawalPublic(
            kind=done.kind,
            key=done.key,
            version=done.version,
            withdrawn_at=api_time(done.withdrawn_at),
        )

    @router.post("/records/history", response_model=list[RecordVersionPublic])
    async def record_history(rt: Runtime, body: RecordKeyBody) -> list[RecordVersionPublic]:
        """Every version of one of our QDM records, oldest first (the auditor's view of
        its corrections and withdrawals). A read: POST only to carry the key."""

        def run() -> list[RecordVersion]:
            with rt.qdm.connect() as connection:
                return history(connection, body.kind, body.key)

        return [record_version_public(v) for v in await _domain(_sync(run))]

    @router.post("/subscriptions", response_model=SubscriptionPublic)
    async def subscribe(client: Client, body: SubscribeBody) -> SubscriptionPublic:
        spec = SpcSpec(
            usl=body.usl,
            lsl=body.lsl,
            baseline_size=body.baseline_size,
            cpk_window=max(2, body.baseline_size),
        )

        async def run() -> Subscription:
            sub = client.subscribe(
                body.agreement_id,
                purpose=body.purpose,
                characteristic=body.characteristic,
                spec=spec,
            )
            try:
                await _opened(sub)
            except BaseException:  # do not leave a stream behind that nobody asked for
                if sub.task is not None:
                    sub.task.cancel()
                client.subscriptions.pop(sub.subscription_id, None)
                raise
            return sub

        sub = await _domain(run)
        if sub.error:  # a peer's PERMISSION_DENIED is relayed (403); anything else is 502
            denied = "PERMISSION_DENIED" if sub.error.startswith("PERMISSION_DENIED") else None
            raise PeerError(f"subscription refused: {sub.error}", denied)
        return subscription_public(sub)

    def with_alerts(rt: ContractRuntime, sub: Subscription) -> SubscriptionPublic:
        """`sub` with the newest alerts it raised (kept in the store) and their count."""
        kept = rt.store.subscriptions
        sid = sub.subscription_id
        newest = kept.raised_alerts(sid, limit=SUBSCRIPTION_ALERTS, newest_first=True)
        return subscription_public(sub, newest[::-1], kept.count_raised_alerts(sid))

    @router.get("/subscriptions", response_model=list[SubscriptionPublic])
    def subscriptions(
        client: Client, rt: Runtime, page: Paging, response: Response
    ) -> list[SubscriptionPublic]:
        subs = page.take(list(client.subscriptions.values()), response)
        return [with_alerts(rt, s) for s in subs]

    @router.get("/subscriptions/{subscription_id}", response_model=SubscriptionPublic)
    def subscription(client: Client, rt: Runtime, subscription_id: IdPath) -> SubscriptionPublic:
        sub = client.subscriptions.get(subscription_id)
        if sub is None:
            raise HTTPException(404, f"no subscription {subscription_id}")
        return with_alerts(rt, sub)

    @router.delete("/subscriptions/{subscription_id}", response_model=SubscriptionEnded)
    async def end_subscription(client: Client, subscription_id: IdPath) -> SubscriptionEnded:
        """End a subscription for good: its stream stops and no restart resumes it."""
        ended = await client.end_subscriptions("ended by the operator", ids=[subscription_id])
        if not ended:
            raise HTTPException(404, f"no running subscription {subscription_id}")
        return SubscriptionEnded(subscription_id=subscription_id, reason="ended by the operator")

    @router.get("/alerts", response_model=AlertsPublic)
    def alerts(
        client: Client,
        rt: Runtime,
        limit: Annotated[
            int | None, Query(ge=1, le=MAX_PAGE, description="the newest this many of each")
        ] = None,
    ) -> AlertsPublic:
        """The alerts raised here and received, oldest first; with ``limit`` the newest
        ``limit`` of each (read so from the store: a peer may keep 10,000 here, and each
        of this node's subscriptions as many)."""
        newest = limit is not None
        raised = rt.store.subscriptions.raised_alerts(limit=limit, newest_first=newest)
        notices = rt.store.notices
        received = notices.received_alerts_with_senders(limit=limit, newest_first=newest)
        if newest:
            raised, received = raised[::-1], received[::-1]
        return AlertsPublic(
            raised=[alert_public(a) for a in raised],
            received=[received_alert_public(r) for r in received],
            raised_total=rt.store.subscriptions.count_raised_alerts() if newest else len(raised),
            received_total=rt.store.notices.count_received_alerts() if newest else len(received),
        )

    @router.get("/clock", response_model=ClockPublic)
    def clock(rt: Runtime) -> ClockPublic:
        c = rt.clock
        return ClockPublic(
            now=api_time(c.now()), offset_days=c.offset / timedelta(days=1), control=c.control
        )

    @router.post("/clock", response_model=ClockPublic)
    async def move_clock(rt: Runtime, body: ClockBody) -> ClockPublic:
        c = rt.clock
        await _domain(_sync(c.set_offset, timedelta(days=body.offset_days)))
        return ClockPublic(now=api_time(c.now()), offset_days=body.offset_days, control=c.control)

    return router
