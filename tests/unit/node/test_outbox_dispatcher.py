"""The outbox dispatcher marks what it sent off the event loop: while another connection
holds the SQLite file's write lock (an ingest, a transfer's commit), the loop keeps
serving, and the mark lands once the lock is free."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import threading
from pathlib import Path

import httpx

from qdspace.connector.contract_store.outbox import OutboxMessage
from qdspace.node.dsp.client import peer_reason
from qdspace.node.errors import PeerBusy, PeerError, PeerRefused
from qdspace.node.rpc.contracts_jobs import OutboxDispatcher
from qdspace.node.rpc.peers import PeerDirectory

from .conftest import sqlite_runtime

HELD_S = 1.0


def test_marking_a_sent_message_waits_for_the_write_lock_off_the_event_loop(
    tmp_path: Path,
) -> None:
    rt = sqlite_runtime(tmp_path)
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


def test_a_peer_that_never_answers_holds_up_only_its_own_messages(tmp_path: Path) -> None:
    """Voltis takes its messages and never answers (a member holding the connection open
    on purpose), and holds more of them than one poll reads: Cellex's message, queued
    after all of them, is delivered meanwhile; a flush gives up at its deadline; and
    Voltis's are delivered, in order, once it answers."""
    rt = sqlite_runtime(tmp_path)
    now = rt.clock.now()
    held = [OutboxMessage("voltis", "probe", f"p-{i}", f"v-{i:03d}", b"x") for i in range(150)]
    rt.store.enqueue(held, now)
    rt.store.enqueue([OutboxMessage("cellex", "probe", "q-1", "c-1", b"y")], now)
    dispatcher = OutboxDispatcher(rt, PeerDirectory.__new__(PeerDirectory), interval_s=0.05)
    sent: list[str] = []

    async def main() -> None:
        answer = asyncio.Event()

        async def send(m: OutboxMessage) -> None:
            if m.peer_id == "voltis":
                await answer.wait()
            sent.append(m.message_id)

        dispatcher.senders["probe"] = send
        loop = asyncio.create_task(dispatcher.run())
        try:
            for _ in range(500):  # ~10 s: the delivery to Cellex does not wait for Voltis
                if "c-1" in sent:
                    break
                await asyncio.sleep(0.02)
            assert sent == ["c-1"], sent
            await asyncio.wait_for(dispatcher.flush(timeout_s=0.2), 10)  # bounded
            answer.set()
            for _ in range(1000):  # until every message is marked sent
                if not rt.store.due_messages(rt.clock.now()):
                    break
                await asyncio.sleep(0.02)
        finally:
            loop.cancel()
            await dispatcher.stop()

    try:
        asyncio.run(main())
    finally:
        rt.qdm.dispose()
    assert sent[1:] == [m.message_id for m in held]  # each peer's in the order queued
    assert rt.store.due_messages(rt.clock.now()) == []


def test_stopping_cancels_a_delivery_under_way_and_keeps_its_message(tmp_path: Path) -> None:
    rt = sqlite_runtime(tmp_path)
    rt.store.enqueue([OutboxMessage("voltis", "probe", "p", "v-1", b"x")], rt.clock.now())
    dispatcher = OutboxDispatcher(rt, PeerDirectory.__new__(PeerDirectory))
    started = asyncio.Event()

    async def send(m: OutboxMessage) -> None:
        started.set()
        await asyncio.Event().wait()  # never answers

    dispatcher.senders["probe"] = send

    async def main() -> None:
        delivery = asyncio.create_task(dispatcher.deliver_due())
        await asyncio.wait_for(started.wait(), 10)
        await dispatcher.stop()
        (outcome,) = await asyncio.gather(delivery, return_exceptions=True)
        assert isinstance(outcome, asyncio.CancelledError), outcome

    try:
        asyncio.run(main())
        (pending,) = rt.store.due_messages(rt.clock.now())  # still due: sent again later
        assert pending.message.message_id == "v-1" and pending.attempts == 0
    finally:
        rt.qdm.dispose()


def test_a_message_no_sender_runs_for_is_kept_for_later_not_read_as_a_notification(
    tmp_path: Path,
) -> None:
    """A node restarted with DSP callbacks in its outbox starts delivering before the DSP
    listener registers its sender (or runs with the listener turned off): such a message
    is a delivery that failed (kept, tried again later, the reason recorded), not a DSP
    body parsed as a gRPC notification (a DecodeError, a traceback at every poll)."""
    rt = sqlite_runtime(tmp_path)
    rt.store.enqueue([OutboxMessage("voltis", "dsp", "p", "v-1", b'{"url":"x"}')], rt.clock.now())
    dispatcher = OutboxDispatcher(rt, PeerDirectory.__new__(PeerDirectory))
    try:
        assert asyncio.run(dispatcher.deliver_due()) == 0
        assert rt.store.due_messages(rt.clock.now()) == []  # not before its backoff
        (owed,) = rt.store.outbox.owed()
        assert owed.undelivered == 1 and owed.attempts == 1
        assert owed.last_error is not None and "no sender of 'dsp' messages" in owed.last_error
    finally:
        rt.qdm.dispose()


def test_a_message_its_peer_keeps_refusing_is_set_aside_and_one_it_cannot_reach_is_not(
    tmp_path: Path,
) -> None:
    """Cellex answers every try with a refusal (the DSP binding's 404, then gRPC's
    NOT_FOUND): after `refused_after` of them in a row the message is set aside, no
    longer tried; Voltis cannot be reached (UNAVAILABLE, a 503, a busy 429): it is tried
    on and on. A refusal after an outage counts from one again."""
    rt = sqlite_runtime(tmp_path)
    rt.store.enqueue(
        [
            OutboxMessage("cellex", "probe", "p", "c-1", b"x"),
            OutboxMessage("voltis", "probe", "q", "v-1", b"y"),
        ],
        rt.clock.now(),
    )
    dispatcher = OutboxDispatcher(rt, PeerDirectory.__new__(PeerDirectory), refused_after=3)
    failures = {
        "cellex": [
            PeerRefused("DSP POST: refused (HTTP 404)", 404, "no transfer here", "NOT_FOUND"),
            PeerError("peer cellex: notify: UNAVAILABLE: down", "UNAVAILABLE"),  # starts over
            PeerError("peer cellex: notify: NOT_FOUND: no such case", "NOT_FOUND"),
            PeerRefused("DSP POST: refused (HTTP 404)", 404, "no transfer here", "NOT_FOUND"),
            PeerRefused("DSP POST: refused (HTTP 409)", 409, "wrong state", None),
        ],
        "voltis": [
            PeerError("peer voltis: notify: UNAVAILABLE: down", "UNAVAILABLE"),
            PeerError("DSP POST: HTTP 503: busy"),
            PeerBusy("DSP GET: HTTP 429: over its cap"),
            PeerError("peer voltis: notify: DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED"),
            PeerError("peer voltis: notify: UNAVAILABLE: down", "UNAVAILABLE"),
        ],
    }

    async def send(m: OutboxMessage) -> None:
        raise failures[m.peer_id].pop(0)

    dispatcher.senders["probe"] = send
    later = rt.clock.now() + dt.timedelta(days=1)  # past every backoff
    try:
        for _ in range(5):
            due = rt.store.due_messages(later)
            asyncio.run(dispatcher._deliver(due))
        assert failures == {"cellex": [], "voltis": []}  # each was tried five times
        owed = {b.peer_id: b for b in rt.store.outbox.owed()}
        assert (owed["cellex"].undelivered, owed["cellex"].refused) == (0, 1)
        assert owed["cellex"].refused_error is not None
        assert "HTTP 409" in owed["cellex"].refused_error
        assert (owed["voltis"].undelivered, owed["voltis"].refused) == (1, 0)
        assert [m.message.peer_id for m in rt.store.due_messages(later)] == ["voltis"]
    finally:
        rt.qdm.dispose()


def test_a_sender_s_own_fault_is_an_attempt_backed_off_not_a_message_sent_in_a_loop(
    tmp_path: Path,
) -> None:
    """A DSP peer's error answer nested 200,000 deep made reading its reason raise a
    RecursionError, which the dispatcher took for a database fault: no attempt counted, no
    backoff, the message sent again at every poll (twice a second) for ever. Now its
    reason is read bounded, and any fault of a sender is a failed attempt, backed off."""
    rt = sqlite_runtime(tmp_path)
    rt.store.enqueue([OutboxMessage("cellex", "probe", "p", "c-1", b"x")], rt.clock.now())
    dispatcher = OutboxDispatcher(rt, PeerDirectory.__new__(PeerDirectory))
    tries: list[str] = []

    async def send(m: OutboxMessage) -> None:
        tries.append(m.message_id)
        raise RecursionError("maximum recursion depth exceeded")

    dispatcher.senders["probe"] = send
    try:
        for _ in range(3):
            asyncio.run(dispatcher._deliver(rt.store.due_messages(rt.clock.now())))
        assert tries == ["c-1"], "tried once, then backed off"
        (owed,) = rt.store.outbox.owed()
        assert owed.undelivered == 1 and owed.refused == 0
        (pending,) = rt.store.due_messages(rt.clock.now() + dt.timedelta(days=1))
        assert pending.attempts == 1 and "RecursionError" in (pending.last_error or "")
    finally:
        rt.qdm.dispose()


def test_a_peer_s_reason_is_read_bounded() -> None:
    deep = httpx.Response(400, content=b"[" * 200_000)
    assert peer_reason(deep).startswith("[[[")
    nested = httpx.Response(409, json={"reason": ["wrong state"], "@type": "TransferError"})
    assert peer_reason(nested) == "wrong state"


def test_what_a_process_is_owed_is_made_due_when_its_peer_asks_again(tmp_path: Path) -> None:
    """A DSP consumer retrying its transfer request is not sent a new start while one is
    owed (a row and a POST a retry, before); the owed one is made due at once instead
    of waiting out its backoff. A message set aside after refusals is not owed."""
    rt = sqlite_runtime(tmp_path)
    now = rt.clock.now()
    outbox = rt.store.outbox
    rt.store.enqueue(
        [
            OutboxMessage("cellex", "probe", "proc-1", "start-1", b"x"),
            OutboxMessage("cellex", "probe", "proc-2", "start-2", b"y"),
        ],
        now,
    )
    first, second = rt.store.due_messages(now)
    later = now + dt.timedelta(minutes=10)
    outbox.mark_failed(first.id, "unreachable", later)
    outbox.set_aside(second.id, "refused", now)
    try:
        assert rt.store.due_messages(now) == []
        assert outbox.queued_for("cellex", "proc-1") == (1, 1)
        assert outbox.queued_for("cellex", "proc-2") == (0, 1)  # set aside: not owed
        assert outbox.hasten("cellex", "proc-1", now) == 1
        assert [m.message.message_id for m in rt.store.due_messages(now)] == ["start-1"]
        assert outbox.hasten("cellex", "proc-2", now) == 0
    finally:
        rt.qdm.dispose()
