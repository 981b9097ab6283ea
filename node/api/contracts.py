"""Operator REST endpoints of usage contracts: catalog, negotiate, transfer, subscribe,
agreements, order closure, retention sweep, deletion duties and receipts.

Routes decode, call one runtime/client method, encode. Errors are not caught here: a
contract error, a peer's refusal (`PeerError`) or a timeout rises to the app's one table
(`node.api.problems`), which maps it by the gRPC status it names (PERMISSION_DENIED ->
403, NOT_FOUND -> 404...). Every number a caller sends is finite and bounded, every id
non-empty and printable, so bad input is a 422 naming the field, never a 500.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, HTTPException, Query
from pydantic import AwareDatetime, BaseModel, Field
from starlette.concurrency import run_in_threadpool

from qdspace.connector.agreement import SignedReceipt
from qdspace.connector.assets import CatalogEntry
from qdspace.connector.contract_store import ReceivedChange, StoredAgreement
from qdspace.connector.negotiation import Negotiation
from qdspace.connector.spc import QualityAlert, SpcSpec
from qdspace.connector.transfer import TransferProcess
from qdspace.connector.versions import Withdrawal, withdraw
from qdspace.node.api.models import Id, IdPath, Text
from qdspace.node.api.problems import PeerTimeout
from qdspace.node.context import NodeContext
from qdspace.node.contract_client import Subscription, client_of
from qdspace.node.contract_runtime import ContractRuntime
from qdspace.policies.canonical import format_datetime
from qdspace.policies.codec import policy_to_dict

_T = TypeVar("_T")


#: bounds of what a caller may ask for (a century of retention or clock offset at most)
MAX_DAYS = 36_500
MAX_LIST = 1000
MAX_BATCH_ROWS = 100_000
MAX_BASELINE = 10_000
#: how long POST /subscriptions waits for the provider to open the stream
SUBSCRIBE_WAIT_S = 10.0
Finite = Annotated[float, Field(allow_inf_nan=False)]


class NegotiateBody(BaseModel):
    peer: Id
    asset_id: Id
    purposes: list[Id] = Field(min_length=1, max_length=MAX_LIST)
    orders: list[Id] | None = Field(default=None, max_length=MAX_LIST)
    fields: list[Id] | None = Field(default=None, max_length=MAX_LIST)
    retention_days: int | None = Field(default=None, ge=0, le=MAX_DAYS)
    valid_until: AwareDatetime | None = None
    #: ask for exactly the offer of the provider's catalog (a federated job's terms)
    as_offered: bool = False


class TransferBody(BaseModel):
    agreement_id: Id
    purpose: Id
    order_id: Id | None = None
    fields: list[Id] | None = Field(default=None, max_length=MAX_LIST)
    wait: bool = True
    batch_rows: int = Field(default=0, ge=0, le=MAX_BATCH_ROWS)
    #: only the changes since the last completed pull of the same scope (incremental)
    since_last: bool = False


class WithdrawBody(BaseModel):
    """Withdraw one of our QDM records: consumers holding a copy get a tombstone."""

    kind: Id
    key: dict[Id, Text] = Field(min_length=1, max_length=MAX_LIST)


class SubscribeBody(BaseModel):
    agreement_id: Id
    purpose: Id = "spc-monitoring"
    characteristic: Id = "score"
    usl: Finite | None = 0.5
    lsl: Finite | None = None
    baseline_size: int = Field(default=20, ge=2, le=MAX_BASELINE)


class TerminateBody(BaseModel):
    reason: Text = "terminated by the operator"


class ClockBody(BaseModel):
    offset_days: Finite = Field(ge=-MAX_DAYS, le=MAX_DAYS)


def _time(value: Any) -> str | None:
    return None if value is None else format_datetime(value)


def negotiation_public(n: Negotiation) -> dict[str, Any]:
    signed = n.agreement
    return {
        "negotiation_id": n.negotiation_id,
        "role": n.role.value,
        "state": n.state.value,
        "provider_id": n.provider_id,
        "consumer_id": n.consumer_id,
        "asset_id": n.asset_id,
        "reason": n.reason,
        "agreement_id": None if signed is None else signed.agreement.agreement_id,
        "provider_signed": signed is not None,
        "consumer_signed": signed is not None and signed.consumer_signature is not None,
        "offer": policy_to_dict(n.offer),
        "messages": len(n.seen),
    }


def agreement_public(stored: StoredAgreement, full: bool = False) -> dict[str, Any]:
    signed = stored.signed
    terms = signed.agreement
    out: dict[str, Any] = {
        "agreement_id": terms.agreement_id,
        "role": stored.role.value,
        "provider_id": terms.provider_id,
        "consumer_id": terms.consumer_id,
        "asset_id": terms.asset_id,
        "agreed_at": _time(terms.agreed_at),
        "digest": terms.digest().hex(),
        "active": stored.active,
        "terminated_at": _time(stored.terminated_at),
        "termination_reason": stored.termination_reason,
        "provider_signature": signed.provider_signature.hex(),
        "consumer_signature": None
        if signed.consumer_signature is None
        else signed.consumer_signature.hex(),
    }
    if full:
        out["canonical"] = signed.canonical_bytes.decode()
        out["policy"] = policy_to_dict(terms.policy)
    return out


def transfer_public(p: TransferProcess, error: str = "") -> dict[str, Any]:
    return {
        "transfer_id": p.transfer_id,
        "agreement_id": p.agreement_id,
        "role": p.role.value,
        "state": p.state.value,
        "offset": p.offset,
        "digest": p.checkpoint.digest.hex(),
        "order_id": p.order_id,
        "purpose": p.purpose,
        "since": p.since,
        "position": p.checkpoint.position,
        "reason": p.reason,
        "error": error,
    }


def change_public(c: ReceivedChange) -> dict[str, Any]:
    return {
        "agreement_id": c.agreement_id,
        "record_key": c.record_key,
        "version": c.version,
        "order_id": c.order_id,
        "withdrawn": c.withdrawn,
        "content_sha256": c.content_sha256,
        "source_id": c.source_id,
        "received_at": _time(c.received_at),
    }


def alert_public(a: QualityAlert) -> dict[str, Any]:
    return {
        "alert_id": a.alert_id,
        "rule": a.alert.rule,
        "description": a.alert.description,
        "agreement_id": a.agreement_id,
        "order_id": a.order_id,
        "station": a.station,
        "characteristic": a.characteristic,
        "points": [p.value for p in a.alert.points],
        "at": _time(a.alert.at),
    }


def subscription_public(s: Subscription) -> dict[str, Any]:
    lat = sorted(s.latencies_ms)
    return {
        "subscription_id": s.subscription_id,
        "provider": s.provider,
        "agreement_id": s.agreement_id,
        "running": s.running,
        "received": s.received,
        "position": s.position,
        "error": s.error,
        "latency_ms_p50": lat[len(lat) // 2] if lat else None,
        "latency_ms_max": lat[-1] if lat else None,
        "alerts": [alert_public(a) for a in s.alerts],
    }


def receipt_public(s: SignedReceipt) -> dict[str, Any]:
    r = s.receipt
    return {
        "receipt_id": r.receipt_id,
        "agreement_id": r.agreement_id,
        "order_id": r.order_id,
        "consumer_id": r.consumer_id,
        "row_count": r.row_count,
        "content_sha256": r.content_sha256,
        "deleted_at": _time(r.deleted_at),
        "signature": s.signature.hex(),
    }


def entry_public(e: CatalogEntry) -> dict[str, Any]:
    return {
        "provider_id": e.provider_id,
        "asset_id": e.asset_id,
        "title": e.title,
        "kind": e.kind.value,
        "fields": sorted(e.fields),
        "pseudonymized": sorted(e.pseudonymized),
        "offer": policy_to_dict(e.offer),
    }


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


def contracts_router(ctx: NodeContext, operator: Any) -> APIRouter:
    """The ``/v1/contracts`` routes of a node; `operator` is the app's token dependency."""
    router = APIRouter(prefix="/v1/contracts", dependencies=[operator], tags=["contracts"])

    def runtime() -> ContractRuntime:
        if ctx.contracts is None:
            raise HTTPException(503, "this node runs no contract machinery")
        return ctx.contracts

    @router.get("/catalog/{peer}")
    async def peer_catalog(
        peer: IdPath, kind: Annotated[str, Query(max_length=64)] = ""
    ) -> list[dict[str, Any]]:
        client, _ = client_of(ctx)
        return [entry_public(e) for e in await client.catalog(peer, kind)]

    @router.get("/assets")
    def own_assets() -> list[dict[str, Any]]:
        return [entry_public(e) for e in runtime().catalog("oem")]

    @router.post("/negotiations")
    async def negotiate(body: NegotiateBody) -> dict[str, Any]:
        client, _ = client_of(ctx)

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
        result["elapsed_ms"] = (time.perf_counter() - started) * 1000  # in this node
        return result

    @router.get("/negotiations")
    def negotiations() -> list[dict[str, Any]]:
        return [negotiation_public(n) for n in runtime().store.negotiations()]

    @router.get("/agreements")
    def agreements() -> list[dict[str, Any]]:
        return [agreement_public(a) for a in runtime().store.agreements()]

    @router.get("/agreements/{agreement_id}")
    async def agreement(agreement_id: IdPath) -> dict[str, Any]:
        stored = await _domain(_sync(runtime().store.agreement, agreement_id))
        return agreement_public(stored, full=True)

    @router.post("/agreements/{agreement_id}/terminate")
    async def terminate(agreement_id: IdPath, body: TerminateBody) -> dict[str, Any]:
        stored = await _domain(_sync(runtime().terminate, agreement_id, body.reason))
        await client_of(ctx)[1].flush()
        return agreement_public(stored)

    @router.post("/transfers")
    async def transfer(body: TransferBody) -> dict[str, Any]:
        client, _ = client_of(ctx)

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

    @router.get("/transfers")
    def transfers() -> list[dict[str, Any]]:
        return [transfer_public(t) for t in runtime().store.transfers()]

    @router.get("/transfers/{transfer_id}")
    async def transfer_status(
        transfer_id: IdPath, wait_s: float = Query(0, ge=0, le=300, allow_inf_nan=False)
    ) -> dict[str, Any]:
        client, _ = client_of(ctx)
        task = client.transfers.get(transfer_id)
        error = ""
        if task is not None and wait_s:
            await asyncio.wait({task}, timeout=wait_s)
        if task is not None and task.done() and not task.cancelled() and task.exception():
            error = str(task.exception())
        process = await _domain(_sync(runtime().store.load_transfer, transfer_id))
        return transfer_public(process, error)

    @router.post("/transfers/{transfer_id}/resume")
    async def resume(transfer_id: IdPath, wait: bool = True) -> dict[str, Any]:
        client, _ = client_of(ctx)
        task = client.start_pull(transfer_id)
        if wait:
            return transfer_public(await _domain(lambda: asyncio.shield(task)))
        return transfer_public(await _domain(_sync(runtime().store.load_transfer, transfer_id)))

    @router.get("/received")
    async def received(
        agreement_id: Annotated[str, Query(min_length=1, max_length=256)],
        order_id: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
        limit: int = Query(1000, ge=1, le=100_000),
    ) -> dict[str, Any]:
        store = runtime().store
        rows = await _domain(
            _sync(lambda: store.received_rows(agreement_id, order_id, limit=limit))
        )
        return {
            "agreement_id": agreement_id,
            "total": store.count_received(agreement_id),
            "rows": [json.loads(r.payload) for r in rows],
        }

    @router.get("/received/changes")
    async def received_changes(agreement_id: str | None = None) -> list[dict[str, Any]]:
        """The corrections and withdrawals received (the consumer's audit trail)."""
        store = runtime().store
        changes = await _domain(_sync(store.received_changes, agreement_id))
        return [change_public(c) for c in changes]

    @router.post("/withdrawals")
    async def withdraw_record(body: WithdrawBody) -> dict[str, Any]:
        rt = runtime()

        def run() -> Withdrawal:
            with rt.qdm.begin() as connection:
                return withdraw(connection, body.kind, body.key, rt.clock.now())

        done = await _domain(_sync(run))
        return {
            "kind": done.kind,
            "key": done.key,
            "version": done.version,
            "withdrawn_at": _time(done.withdrawn_at),
        }

    @router.post("/subscriptions")
    async def subscribe(body: SubscribeBody) -> dict[str, Any]:
        client, _ = client_of(ctx)
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
        if sub.error:
            code = 403 if sub.error.startswith("PERMISSION_DENIED") else 502
            raise HTTPException(code, f"subscription refused: {sub.error}")
        return subscription_public(sub)

    @router.get("/subscriptions")
    def subscriptions() -> list[dict[str, Any]]:
        return [subscription_public(s) for s in client_of(ctx)[0].subscriptions.values()]

    @router.get("/subscriptions/{subscription_id}")
    def subscription(subscription_id: IdPath) -> dict[str, Any]:
        sub = client_of(ctx)[0].subscriptions.get(subscription_id)
        if sub is None:
            raise HTTPException(404, f"no subscription {subscription_id}")
        return subscription_public(sub)

    @router.get("/alerts")
    def alerts() -> dict[str, Any]:
        raised = [a for s in client_of(ctx)[0].subscriptions.values() for a in s.alerts]
        return {
            "raised": [alert_public(a) for a in raised],
            "received": [alert_public(a) for a in runtime().received_alerts],
        }

    @router.post("/orders/{order_id}/close")
    async def close_order(order_id: IdPath) -> dict[str, Any]:
        closed_at, ids = await _domain(_sync(runtime().close_order, order_id))
        await client_of(ctx)[1].flush()
        return {"order_id": order_id, "closed_at": _time(closed_at), "agreements": ids}

    @router.get("/closures")
    def closures() -> list[dict[str, Any]]:
        return [
            {
                "agreement_id": c.agreement_id,
                "order_id": c.order_id,
                "closed_at": _time(c.closed_at),
                "deadline": _time(c.deadline),
            }
            for c in runtime().store.closures()
        ]

    @router.post("/retention/sweep")
    async def sweep(
        horizon_hours: float = Query(0, ge=0, le=720, allow_inf_nan=False),
    ) -> dict[str, Any]:
        """Delete what expires by now + horizon; sign and send the receipts."""
        horizon = timedelta(hours=horizon_hours)
        report = await _domain(_sync(runtime().sweep, horizon))
        await client_of(ctx)[1].flush()
        return {
            "rows_deleted": report.rows_deleted,
            "receipts": [receipt_public(r) for r in report.receipts],
            "failures": [f.__dict__ for f in report.failures],
        }

    @router.get("/receipts")
    def receipts() -> list[dict[str, Any]]:
        return [receipt_public(r) for r in runtime().store.receipts()]

    @router.get("/duties")
    def duties() -> list[dict[str, Any]]:
        return [
            {
                "agreement_id": d.duty.agreement_id,
                "consumer_id": d.duty.consumer_id,
                "order_id": d.duty.order_id,
                "retention_days": d.duty.retention_days,
                "deadline": _time(d.duty.deadline),
                "status": d.status.value,
                "receipt_id": None if d.receipt is None else d.receipt.receipt_id,
            }
            for d in runtime().duties()
        ]

    @router.get("/clock")
    def clock() -> dict[str, Any]:
        c = runtime().clock
        return {
            "now": _time(c.now()),
            "offset_days": c.offset / timedelta(days=1),
            "control": c.control,
        }

    @router.post("/clock")
    async def move_clock(body: ClockBody) -> dict[str, Any]:
        c = runtime().clock
        await _domain(_sync(c.set_offset, timedelta(days=body.offset_days)))
        return {"now": _time(c.now()), "offset_days": body.offset_days, "control": c.control}

    return router
