"""The outbox dispatcher marks what it sent off the event loop: while another connection
holds the SQLite file's write lock (an ingest, a transfer's commit), the loop keeps
serving, and the mark lands once the lock is free."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import threading
from pathlib import Path

from nacl.signing import SigningKey

from qdspace.connector.contract_store import ContractStore, ensure_schema
from qdspace.connector.contract_store.outbox import OutboxMessage
from qdspace.connector.storage import create_store_engine
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.member_ids import member_id_for
from qdspace.node.rpc.contracts_jobs import OutboxDispatcher
from qdspace.node.rpc.peers import PeerDirectory
from qdspace.node.runtime.contracts import ContractRuntime
from qdspace.node.runtime.contracts_clock import ContractClock

HELD_S = 1.0


def runtime(root: Path) -> ContractRuntime:
    key = SigningKey(b"o" * 32)
    vk = bytes(key.verify_key)
    me = MemberIdentity(
        member_id_for("sunarc", vk),
        "sunarc",
        "oem",
        vk,
        1,
        dt.datetime(2100, 1, 1, tzinfo=dt.UTC),
        "sunarc",
    )
    engine = create_store_engine(f"sqlite:///{root / 'node.db'}")
    ensure_schema(engine)
    clock = ContractClock(root / "node.clock", control=False)
    return ContractRuntime(me, key, ContractStore(engine, bytes(32)), engine, clock, bytes(32), {})


def test_marking_a_sent_message_waits_for_the_write_lock_off_the_event_loop(
    tmp_path: Path,
) -> None:
    rt = runtime(tmp_path)
    message = OutboxMessage("cellex", "probe", "proc-1", "msg-1", b"payload")
    rt.store.enqueue([message], rt.clock.now())
    dispatcher = OutboxDispatcher(rt, PeerDirectory.__new__(PeerDirectory))
    sent: list[OutboxMessage] = []
    holder = sqlite3.connect(tmp_path / "node.db", timeout=30, check_same_thread=False)

    async def send(m: OutboxMessage) -> None:
        sent.append(m)
        holder.execute("BEGIN IMMEDIATE")  # another writer takes the lock before the mark
        threading.Timer(HELD_S, holder.commit).start()

    dispatcher.senders["probe"] = send

    async def main() -> tuple[int, int]:
        ticks = 0
        delivery = asyncio.create_task(dispatcher.deliver_due())
        while not delivery.done():
            await asyncio.sleep(0.02)
            ticks += 1
        return await delivery, ticks

    try:
        delivered, ticks = asyncio.run(main())
    finally:
        holder.close()
        rt.qdm.dispose()
    assert delivered == 1 and sent == [message]
    # the loop ran on while the mark waited for the lock (blocked, it could not tick at all)
    assert ticks >= int(HELD_S / 0.02) // 4, ticks
    assert rt.store.due_messages(rt.clock.now()) == [], "marked sent once the lock was free"
