"""The contract background jobs of a serving node, and the outbox that carries notifications.

`OutboxDispatcher` delivers queued notifications (order closed, terminations, deletion
receipts, quality alerts) with retries and backoff, so that a peer that is down is told
later rather than never. `ContractJobs` runs what a serving node does on its own:
outbox delivery, resuming the transfers it was receiving when it stopped, the retention
sweep, and anchoring of agreements and receipts when the node has a ledger. They are
kept apart from `ContractClient` because they are loops owned by the node's lifetime
(started and stopped by ``run.serve``), not calls an operator makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

import grpc

from qdspace.connector.contract_store import OutboxMessage
from qdspace.connector.contract_store.outbox import OUTBOX_KEEP_DAYS, PendingMessage
from qdspace.node.config import DEFAULT_OUTBOX_REFUSED_AFTER
from qdspace.node.context import NodeContext
from qdspace.node.errors import NotTheMember, PeerBusy, PeerError, PeerRefused
from qdspace.node.rpc.contracts_client import TIMEOUT_S, ContractClient, call_peer
from qdspace.node.rpc.peers import PeerDirectory
from qdspace.node.runtime.contracts import ContractRuntime
from qdspace.node.runtime.contracts_base import QUOTA_WINDOW
from qdspace.node.runtime.contracts_cases import CASE_KIND
from qdspace.node.runtime.contracts_notices import NOTIFICATION
from qdspace.protocols.v1 import notification_pb2, notification_pb2_grpc

logger = logging.getLogger("node.contracts")


#: gRPC statuses by which a peer that answered refuses a message: the same message gets
#: the same answer (not: UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL...)
REFUSALS = frozenset(
    {
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "FAILED_PRECONDITION",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "UNAUTHENTICATED",
    }
)


def refused(exc: Exception) -> bool:
    """Whether a failed delivery is the peer's refusal (it answered, and said no), not a
    peer that could not be reached, was busy or failed."""
    if isinstance(exc, PeerBusy):
        return False
    if isinstance(exc, NotTheMember):  # the address is not the peer's: waiting won't help
        return True
    if isinstance(exc, PeerRefused):  # the DSP binding's 4xx
        return exc.status not in (408, 429)
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name in REFUSALS
    return isinstance(exc, PeerError) and exc.code in REFUSALS


class OutboxDispatcher:
    """Sends queued notifications to their peers, retrying with backoff until delivered.

    Each peer is delivered to by a task of its own, its messages one at a time in the
    order they were queued (a poll holds back a process's message while one queued
    before it is owed, `due_messages`), and the peers at once: a peer that takes its time answering
    (down, slow, or a member holding the connection open on purpose) holds up only the
    messages queued for it, never another peer's. A peer being delivered to is left out
    of the next polls until its task ends, so its backlog cannot fill a poll's page
    (`due_messages`' limit) and starve the others."""

    def __init__(
        self,
        runtime: ContractRuntime,
        peers: PeerDirectory,
        interval_s: float = 0.5,
        refused_after: int = DEFAULT_OUTBOX_REFUSED_AFTER,
    ):
        self.runtime = runtime
        self.peers = peers
        self.interval_s = interval_s
        #: refusals in a row after which a message is set aside (`refused`)
        self.refused_after = refused_after
        self._kick = asyncio.Event()
        # delivers messages of other transports, by outbox kind (``dsp``: the DSP binding)
        self.senders: dict[str, Callable[[OutboxMessage], Awaitable[None]]] = {}
        #: the delivery under way to each peer
        self._busy: dict[str, asyncio.Task[int]] = {}

    def kick(self) -> None:
        self._kick.set()

    def delivering(self) -> frozenset[str]:
        """The peers a delivery is under way to now."""
        return frozenset(self._busy)

    async def run(self) -> None:
        while True:
            try:
                self._start_due()
            except Exception:  # a broken database must not end the loop
                logger.exception("outbox delivery failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.interval_s)
            self._kick.clear()

    def _start_due(self) -> list[asyncio.Task[int]]:
        """Start delivering what is due to each peer not being delivered to already (one
        task a peer). The poll runs on the event loop: it is a read (~0.1 ms; in SQLite's
        WAL mode a read never waits for a writer), and it runs twice a second on every
        node, where a worker-thread hop would cost about as much as the query."""
        store = self.runtime.store
        due = store.due_messages(self.runtime.clock.now(), exclude=frozenset(self._busy))
        by_peer: dict[str, list[PendingMessage]] = {}
        for pending in due:
            by_peer.setdefault(pending.message.peer_id, []).append(pending)
        started = []
        for peer_id, messages in by_peer.items():
            task = asyncio.create_task(self._deliver(messages), name=f"outbox:{peer_id}")
            self._busy[peer_id] = task
            task.add_done_callback(functools.partial(self._done, peer_id))
            started.append(task)
        return started

    def _done(self, peer_id: str, task: asyncio.Task[int]) -> None:
        if self._busy.get(peer_id) is task:
            del self._busy[peer_id]

    async def _deliver(self, messages: list[PendingMessage]) -> int:
        """Send one peer's due `messages` in order; returns how many were delivered.
        Marking a message sent or failed is a write, which waits for the database's
        write lock as long as another writer (an ingest, a transfer's commit) holds it:
        those run in a worker thread, so a long write elsewhere never stalls the loop."""
        store = self.runtime.store
        sent = 0
        for pending in messages:
            message = pending.message
            try:
                try:
                    await self._send(message)
                except (PeerError, grpc.aio.AioRpcError) as exc:
                    await self._failed(pending, exc)
                    continue
                except Exception as exc:  # a fault of ours in sending (or in reading the
                    # answer): an attempt like any other, backed off, never sent in a loop
                    logger.exception("outbox: sending %s failed", message.message_id)
                    await self._failed(pending, PeerError(f"sending failed: {exc!r:.200}"))
                    continue
                await asyncio.to_thread(store.mark_sent, pending.id, self.runtime.clock.now())
            except Exception:  # a broken database: this message is tried again later
                logger.exception("outbox: %s to %s", message.message_id, message.peer_id)
                continue
            sent += 1
        return sent

    async def _failed(self, pending: PendingMessage, exc: Exception) -> None:
        """Record a failed delivery: tried again after a backoff, or, refused by the peer
        `refused_after` times in a row, set aside (`connector.contract_store.outbox`)."""
        outbox, message = self.runtime.store.outbox, pending.message
        now = self.runtime.clock.now()
        said_no = refused(exc)
        if said_no and pending.refusals + 1 >= self.refused_after:
            await asyncio.to_thread(outbox.set_aside, pending.id, str(exc), now)
            logger.warning(
                "outbox: %s to %s set aside after %d refusals in a row (`qdspace contracts "
                "outbox --retry %s` queues it again): %s",
                message.message_id,
                message.peer_id,
                pending.refusals + 1,
                message.peer_id,
                exc,
            )
            return
        retry_at = now + timedelta(seconds=min(60.0, 0.5 * 2**pending.attempts))
        await asyncio.to_thread(outbox.mark_failed, pending.id, str(exc), retry_at, refused=said_no)
        logger.warning("outbox: %s to %s failed: %s", message.message_id, message.peer_id, exc)

    async def deliver_due(self) -> int:
        """Deliver what is due now (to every peer at once, each peer's in order), and
        wait for it; returns how many were delivered. A peer already being delivered to
        is left to its own task."""
        started = self._start_due()
        return sum(await asyncio.gather(*started))

    async def _send(self, message: OutboxMessage) -> None:
        sender = self.senders.get(message.kind)
        if sender is not None:
            await sender(message)
            return
        if message.kind != NOTIFICATION:  # another binding's, not serving (yet): kept
            raise PeerError(
                f"no sender of {message.kind!r} messages runs here (yet): kept for later"
            )
        wire = notification_pb2.NotificationMessage.FromString(message.payload)
        if wire.recipient_id:  # only to that member, not to whoever holds its name now
            await self.peers.confirm_member(wire.recipient_id)
        stub = notification_pb2_grpc.NotificationStub(self.peers.channel(message.peer_id))
        await call_peer(message.peer_id, "notify", lambda: stub.Notify(wire, timeout=TIMEOUT_S))

    async def flush(self, timeout_s: float = 10.0) -> None:
        """Deliver everything due now, for at most `timeout_s` (used by routes that
        promise the peer was told); a delivery still under way then goes on."""
        deadline = time.monotonic() + timeout_s
        while self.runtime.store.due_messages(self.runtime.clock.now()):
            self._start_due()
            waiting = set(self._busy.values())  # what it started, and what was under way
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if waiting:
                await asyncio.wait(waiting, timeout=remaining)  # (cancels none of them)
            else:
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Cancel the deliveries under way (a message cut off is sent again later: its
        receiver knows it by its id)."""
        tasks = list(self._busy.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def client_of(ctx: NodeContext) -> tuple[ContractClient, OutboxDispatcher]:
    """The node's one ContractClient and OutboxDispatcher: made once, put on the context
    (where the operator API finds them through its ports)."""
    runtime = ctx.contracts
    if runtime is None:
        raise PeerError("this node runs no contract machinery")
    client, outbox = ctx.contract_client, ctx.outbox
    if isinstance(client, ContractClient) and isinstance(outbox, OutboxDispatcher):
        return client, outbox
    refused_after = ctx.settings.outbox_refused_after
    made = (
        ContractClient(runtime, ctx.peers, ctx.metrics),
        OutboxDispatcher(runtime, ctx.peers, refused_after=refused_after),
    )
    ctx.contract_client, ctx.outbox = made
    return made


SWEEP_INTERVAL_S = 30.0
SWEEP_HORIZON = timedelta(hours=1)
#: how often delivered outbox messages older than `OUTBOX_KEEP_DAYS`, and negotiations
#: that ended without an agreement more than `ENDED_NEGOTIATION_KEEP` ago or beyond
#: `ENDED_NEGOTIATIONS_PER_MEMBER` of a member's, are pruned
PRUNE_INTERVAL_S = 3600.0
ENDED_NEGOTIATION_KEEP = timedelta(days=90)
#: how many negotiations a member opened with us that ended without an agreement are kept
#: (the newest). The keep alone let one member, at its quota (600 an hour by default)
#: with policies of up to 64 KiB, leave ~80 GB of refused requests for 90 days; with the
#: cap a member holds at most this plus an hour's quota between two prunes: ~1,600 rows
#: of up to ~128 KiB each (the policy, twice at most: offer and reason), ~200 MB. 1,000 is
#: more than an hour at the default quota and more than an honest member's refusals over
#: the whole keep (11 a day), so only a member sending refused requests in bulk reaches it
ENDED_NEGOTIATIONS_PER_MEMBER = 1000


class ContractJobs:
    """The contract background jobs of a serving node: outbox delivery, transfer and
    subscription resume, the retention sweep (every 30 s, deleting what expires within
    the hour), and anchoring of agreements and receipts when the node has a ledger."""

    def __init__(self, ctx: NodeContext) -> None:
        self.client, self.dispatcher = client_of(ctx)
        _attach_ledger(ctx)
        self._tasks = [
            asyncio.create_task(self.dispatcher.run()),
            asyncio.create_task(self._sweep_loop()),
        ]
        self.resumed = self.client.resume_unfinished()
        self.resubscribed = self.client.resume_subscriptions()

    async def _sweep_loop(self) -> None:
        runtime = self.client.runtime
        pruned_at = time.monotonic()  # the first an hour after the start
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            if time.monotonic() - pruned_at >= PRUNE_INTERVAL_S:
                pruned_at = time.monotonic()
                await self._prune()
            try:
                report = await asyncio.to_thread(runtime.sweep, SWEEP_HORIZON)
            except Exception:  # the next run tries again
                logger.exception("retention sweep failed")
                continue
            if report.receipts:
                self.dispatcher.kick()

    async def _prune(self) -> None:
        """Delete delivered outbox messages older than `OUTBOX_KEEP_DAYS` and negotiations
        that ended without an agreement `ENDED_NEGOTIATION_KEEP` ago or beyond a member's
        `ENDED_NEGOTIATIONS_PER_MEMBER` newest, a chunk at a time."""
        runtime = self.client.runtime
        now = runtime.clock.now()
        store = runtime.store
        try:
            sent = now - timedelta(days=OUTBOX_KEEP_DAYS)
            while await asyncio.to_thread(store.outbox.prune_sent, sent) > 0:
                pass
            ended = now - ENDED_NEGOTIATION_KEEP
            while await asyncio.to_thread(store.prune_ended_negotiations, ended) > 0:
                pass
            cap, quota_start = ENDED_NEGOTIATIONS_PER_MEMBER, now - QUOTA_WINDOW
            prune = store.prune_ended_negotiations_beyond
            while await asyncio.to_thread(prune, cap, quota_start) > 0:
                pass
        except Exception:  # the next run tries again
            logger.exception("pruning the outbox or ended negotiations failed")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.dispatcher.stop()
        await self.client.close()


def _attach_ledger(ctx: NodeContext) -> None:
    """Anchor agreements and receipts through the node's ledger, when it has one."""
    runtime = ctx.contracts
    try:
        from qdspace.node.runtime.ledger import enqueue_leaf, node_ledger, register_record_loader
    except ImportError:  # a node built without the ledger room
        return
    if runtime is None or node_ledger(ctx) is None:
        return

    def record(kind: str, ref_id: str, payload: bytes) -> None:
        try:
            enqueue_leaf(ctx, kind, ref_id, payload)
        except Exception:  # anchoring must never undo a contract step; it is retried later
            logger.exception("could not queue %s %s for anchoring", kind, ref_id)

    runtime.record = record
    for kind in ("agreement", "deletion_receipt"):
        register_record_loader(ctx, kind, runtime.load_record)
    register_record_loader(ctx, CASE_KIND, lambda _kind, ref: runtime.case_record(ref))
    traces = ctx.traces
    if traces is not None:
        register_record_loader(ctx, "trace_report", lambda _kind, ref: traces.report_record(ref))
