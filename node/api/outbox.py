"""``GET /v1/outbox``: what this node owes its peers and why it is not delivered yet.

The outbox carries every message a step decided for a peer (terminations, deletion
receipts, order closures, quality alerts, the DSP binding's callbacks) and retries each
until the peer takes it. An operator whose peer is down, refuses a message or holds its
connections open needs to see which peer, how much is waiting since when, and the last
error, without reading logs: this route lists the undelivered messages by peer, with
whether a delivery to that peer is under way now. One read of the store (two
statements), no peer is called.

A message the peer refused `outbox_refused_after` times in a row is set aside (no longer
tried; `connector.contract_store.outbox`) and listed apart (``refused``, with the
refusal); ``POST /v1/outbox/{peer_id}/retry`` queues that peer's again, once whatever
made it refuse is settled.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from qdspace.connector.contract_store.common import ID_LENGTH
from qdspace.connector.contract_store.outbox import PeerBacklog
from qdspace.node.api.contracts_models import api_time
from qdspace.node.api.deps import Outbox, Runtime, require_operator

#: a peer as the outbox addresses it: a member id, or a member's name (`NAME_PATTERN`)
PeerId = Annotated[str, Path(min_length=1, max_length=ID_LENGTH, pattern=r"^[A-Za-z0-9._-]+$")]


class PeerOwedPublic(BaseModel):
    """The undelivered messages to one peer: how many are still tried, the oldest
    queued, the next attempt due ("" when none is tried), the most attempts one of them
    took, the last error recorded, whether a delivery to it is under way now, and how
    many were set aside after its refusals (`refused`, with the last refusal)."""

    peer_id: str
    undelivered: int
    oldest_queued_at: str
    next_attempt_at: str
    attempts: int
    last_error: str | None
    delivering: bool
    refused: int = 0
    refused_error: str | None = None


class OutboxPublic(BaseModel):
    """Every message the node owes its peers, by peer (the peer owed the most first):
    those still tried (`undelivered`) and those set aside after refusals (`refused`)."""

    undelivered: int
    peers: list[PeerOwedPublic]
    refused: int = 0


class RetriedPublic(BaseModel):
    """The messages to a peer set aside after its refusals, queued again (due now)."""

    peer_id: str
    requeued: int


def _public(owed: PeerBacklog, delivering: frozenset[str]) -> PeerOwedPublic:
    return PeerOwedPublic(
        peer_id=owed.peer_id,
        undelivered=owed.undelivered,
        oldest_queued_at=api_time(owed.oldest_queued_at) or "",
        next_attempt_at=api_time(owed.next_attempt_at) or "",
        attempts=owed.attempts,
        last_error=owed.last_error,
        delivering=owed.peer_id in delivering,
        refused=owed.refused,
        refused_error=owed.refused_error,
    )


def outbox_router() -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(require_operator)], tags=["contracts"])

    @router.get("/outbox", response_model=OutboxPublic)
    async def owed(rt: Runtime, outbox: Outbox) -> OutboxPublic:
        peers = await run_in_threadpool(rt.store.outbox.owed)
        delivering = outbox.delivering()
        listed = [_public(p, delivering) for p in peers]
        return OutboxPublic(
            undelivered=sum(p.undelivered for p in peers),
            peers=listed,
            refused=sum(p.refused for p in peers),
        )

    @router.post("/outbox/{peer_id}/retry", response_model=RetriedPublic)
    async def retry(rt: Runtime, outbox: Outbox, peer_id: PeerId) -> RetriedPublic:
        """Queue again what was set aside after `peer_id` refused it (as the outbox
        addresses it: a member id, or a peer name for gRPC notifications)."""
        now = rt.clock.now()
        requeued = await run_in_threadpool(rt.store.outbox.retry_refused, peer_id, now)
        if requeued:
            outbox.kick()
        return RetriedPublic(peer_id=peer_id, requeued=requeued)

    return router
