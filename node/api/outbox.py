"""``GET /v1/outbox``: what this node owes its peers and why it is not delivered yet.

The outbox carries every message a step decided for a peer (terminations, deletion
receipts, order closures, quality alerts, the DSP binding's callbacks) and retries each
until the peer takes it. An operator whose peer is down, refuses a message or holds its
connections open needs to see which peer, how much is waiting since when, and the last
error, without reading logs: this route lists the undelivered messages by peer, with
whether a delivery to that peer is under way now. One read of the store (two
statements), no peer is called.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from qdspace.connector.contract_store.outbox import PeerBacklog
from qdspace.node.api.contracts_models import api_time
from qdspace.node.api.deps import Outbox, Runtime, require_operator


class PeerOwedPublic(BaseModel):
    """The undelivered messages to one peer: how many, the oldest queued, the next
    attempt due, the most attempts one of them took, the last error recorded, and
    whether a delivery to it is under way now."""

    peer_id: str
    undelivered: int
    oldest_queued_at: str
    next_attempt_at: str
    attempts: int
    last_error: str | None
    delivering: bool


class OutboxPublic(BaseModel):
    """Every message the node owes its peers, by peer (the peer owed the most first)."""

    undelivered: int
    peers: list[PeerOwedPublic]


def _public(owed: PeerBacklog, delivering: frozenset[str]) -> PeerOwedPublic:
    return PeerOwedPublic(
        peer_id=owed.peer_id,
        undelivered=owed.undelivered,
        oldest_queued_at=api_time(owed.oldest_queued_at) or "",
        next_attempt_at=api_time(owed.next_attempt_at) or "",
        attempts=owed.attempts,
        last_error=owed.last_error,
        delivering=owed.peer_id in delivering,
    )


def outbox_router() -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(require_operator)], tags=["contracts"])

    @router.get("/outbox", response_model=OutboxPublic)
    async def owed(rt: Runtime, outbox: Outbox) -> OutboxPublic:
        peers = await run_in_threadpool(rt.store.outbox.owed)
        delivering = outbox.delivering()
        listed = [_public(p, delivering) for p in peers]
        return OutboxPublic(undelivered=sum(p.undelivered for p in peers), peers=listed)

    return router
