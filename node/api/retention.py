"""The ``/v1/contracts`` routes of retention: orders closed, what a closure obliges
consumers to delete (the deletion duties), the deletions (sweeps, a purge) and the
receipts that prove them.

Apart from `node.api.contracts` (negotiations, agreements, transfers, subscriptions)
because they answer to another user: whoever must show what was deleted and when (a
provider's compliance officer, a regulator's request), not whoever moves data. Each route
decodes, calls the runtime or the store once and encodes; domain errors map in the app's
one table (`node.api.problems`).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from starlette.concurrency import run_in_threadpool

from qdspace.node.api.contracts_models import (
    ClosurePublic,
    DutyCountsPublic,
    DutyPublic,
    OrderClosedPublic,
    PurgeBody,
    PurgePublic,
    ReceiptPublic,
    SweepFailurePublic,
    SweepPublic,
    api_time,
    duty_counts_public,
    duty_public,
    receipt_public,
)
from qdspace.node.api.deps import Client, Outbox, Paging, Runtime, require_operator
from qdspace.node.api.models import IdPath
from qdspace.node.errors import PurgeNotConfirmed
from qdspace.policies.retention import DutyStatus


def retention_router() -> APIRouter:
    """Closures, sweeps, the purge, receipts and deletion duties under ``/v1/contracts``."""
    router = APIRouter(
        prefix="/v1/contracts", dependencies=[Depends(require_operator)], tags=["contracts"]
    )

    @router.post("/orders/{order_id}/close", response_model=OrderClosedPublic)
    async def close_order(rt: Runtime, outbox: Outbox, order_id: IdPath) -> OrderClosedPublic:
        closed_at, ids = await run_in_threadpool(rt.close_order, order_id)
        await outbox.flush()
        return OrderClosedPublic(order_id=order_id, closed_at=api_time(closed_at), agreements=ids)

    @router.get("/closures", response_model=list[ClosurePublic])
    def closures(rt: Runtime, page: Paging, response: Response) -> list[ClosurePublic]:
        """The order closures recorded here, by agreement and order, a page at a time."""

        def read(limit: int | None, offset: int) -> list[ClosurePublic]:
            return [
                ClosurePublic(
                    agreement_id=c.agreement_id,
                    order_id=c.order_id,
                    closed_at=api_time(c.closed_at),
                    deadline=api_time(c.deadline),
                )
                for c in rt.store.closures(limit=limit, offset=offset)
            ]

        return page.read(read, response)

    @router.post("/retention/sweep", response_model=SweepPublic)
    async def sweep(
        rt: Runtime,
        outbox: Outbox,
        horizon_hours: float = Query(0, ge=0, le=720, allow_inf_nan=False),
    ) -> SweepPublic:
        """Delete what expires by now + horizon; sign and send the receipts."""
        horizon = timedelta(hours=horizon_hours)
        report = await run_in_threadpool(rt.sweep, horizon)
        await outbox.flush()
        return SweepPublic(
            rows_deleted=report.rows_deleted,
            receipts=[receipt_public(r) for r in report.receipts],
            failures=[SweepFailurePublic(**f.__dict__) for f in report.failures],
        )

    @router.post("/purge", response_model=PurgePublic)
    async def purge(rt: Runtime, client: Client, outbox: Outbox, body: PurgeBody) -> PurgePublic:
        """Leave the data space: end every agreement held as consumer, delete all data
        received under them now, and send the signed receipts. Cannot be undone; the
        body names this node (``confirm``: its member id). A repeat deletes nothing more."""
        if body.confirm != rt.me.member_id:
            raise PurgeNotConfirmed(
                f"confirm: {body.confirm!r} is not this node's member id "
                f"({rt.me.member_id}); nothing was deleted"
            )
        report = await run_in_threadpool(rt.purge)
        # their rows are refused from now on, and no restart resumes them
        await client.end_subscriptions("its agreement was purged", agreements=report.agreements)
        await outbox.flush()
        return PurgePublic(
            agreements=list(report.agreements),
            terminated=list(report.terminated),
            rows_deleted=report.rows_deleted,
            receipts=[receipt_public(r) for r in report.receipts],
            already_answered=report.already_answered,
            failures=[SweepFailurePublic(**f.__dict__) for f in report.failures],
            undelivered=rt.store.outbox_backlog(),
        )

    @router.get("/receipts", response_model=list[ReceiptPublic])
    def receipts(
        rt: Runtime,
        page: Paging,
        response: Response,
        newest_first: Annotated[
            bool, Query(description="the newest first (default: in the order deleted)")
        ] = False,
    ) -> list[ReceiptPublic]:
        def read(limit: int | None, offset: int) -> list[ReceiptPublic]:
            found = rt.store.receipts(limit=limit, offset=offset, newest_first=newest_first)
            return [receipt_public(r) for r in found]

        return page.read(read, response)

    @router.get("/duties", response_model=list[DutyPublic])
    def duties(
        rt: Runtime,
        page: Paging,
        response: Response,
        attention_first: Annotated[
            bool,
            Query(
                description="overdue and due first (nearest deadline first), then pending, "
                "fulfilled late, fulfilled (default: in the order the agreements were made)"
            ),
        ] = False,
        status: Annotated[DutyStatus | None, Query(description="only those in this status")] = None,
    ) -> list[DutyPublic]:
        now = rt.clock.now()  # one moment for the whole page

        def read(limit: int | None, offset: int) -> list[DutyPublic]:
            found = rt.store.deletion_duties(
                now, limit=limit, offset=offset, attention_first=attention_first, status=status
            )
            return [duty_public(d) for d in found]

        return page.read(read, response)

    @router.get("/duties/counts", response_model=DutyCountsPublic)
    def duty_counts(rt: Runtime) -> DutyCountsPublic:
        """How many deletion duties stand in each status now."""
        return duty_counts_public(rt.store.count_duties(rt.clock.now()))

    return router
