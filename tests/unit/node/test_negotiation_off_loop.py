"""Negotiation/Send writes in a worker thread: while another writer holds the SQLite
write lock (an ingest, a pull's commit), a member's negotiation waits for it off the
event loop, and every other member's calls and streams go on. On the old code the
loop stood still for as long as the lock was held (2 s here; up to the busy timeout)."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from qdspace.connector.negotiation import ContractRequest
from qdspace.connector.offers import standard_assets
from qdspace.node.rpc.auth import _CURRENT_PEER, Peer
from qdspace.node.rpc.contracts_serde import negotiation_message_to_proto
from qdspace.node.rpc.contracts_service import NegotiationServicer
from qdspace.policies.model import OfferTerms, make_offer

from ..servicer_doubles import seeded_member
from .test_peer_time_and_receipts import _runtime

HELD_S = 1.5


class _Context:
    async def abort(self, code: Any, reason: str) -> None:
        raise AssertionError(f"{code}: {reason}")


def test_a_negotiation_waits_for_the_write_lock_off_the_event_loop(tmp_path: Path) -> None:
    cellex = _runtime(tmp_path, "cellex", b"p", "supplier")
    cellex.assets = {a.asset_id: a for a in standard_assets(cellex.me.member_id)}
    _, sunarc = seeded_member("sunarc", b"c", "oem")
    offer = make_offer(
        "neg-1:request",
        cellex.me.member_id,
        "inspections",
        OfferTerms(purposes=frozenset({"quality-assurance"})),
    )
    request = ContractRequest("neg-1:c0", "neg-1", sunarc.member_id, offer, dt.datetime.now(dt.UTC))
    holder = sqlite3.connect(tmp_path / "cellex.db", timeout=30, check_same_thread=False)

    async def main() -> float:
        _CURRENT_PEER.set(Peer(sunarc, "test"))
        gaps: list[float] = []

        async def ticker() -> None:
            last = time.perf_counter()
            while True:
                await asyncio.sleep(0.01)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        threading.Timer(HELD_S, holder.commit).start()
        ack = await NegotiationServicer(cellex).Send(
            negotiation_message_to_proto(request), _Context()
        )
        await asyncio.sleep(0.05)  # the ticker measures the gap a stall left
        ticking.cancel()
        assert ack.negotiation_id == "neg-1"
        return max(gaps)

    try:
        stall = asyncio.run(main())
    finally:
        holder.close()
        cellex.qdm.dispose()
    assert stall < HELD_S / 2, f"the event loop stood still {stall:.2f} s"
