"""The consumer's side of the contract services, and the outbox that carries notifications.

`ContractClient` drives what a consumer starts: it reads a provider's catalog,
negotiates (request, accept a counter-offer that grants no more than asked,
countersign, until FINALIZED), pulls a transfer batch by batch (each batch's
checkpoint verified and committed with the rows in one transaction, so a
consumer killed mid-transfer resumes exactly where its rows stop), and runs
live subscriptions with SPC early warning on what arrives. `OutboxDispatcher`
delivers queued notifications (order closed, terminations, deletion
receipts, quality alerts) with retries.

The provider's Ed25519 verify key comes from its `Hello` over mutual TLS and is
accepted only if it hashes to the member id in the provider's certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import grpc
from nacl.signing import VerifyKey

from qdspace.connector.agreement import countersign
from qdspace.connector.assets import CatalogEntry
from qdspace.connector.contract_errors import ContractError
from qdspace.connector.contract_store import IncomingRow, OutboxMessage
from qdspace.connector.encoding import StreamRequest
from qdspace.connector.negotiation import (
    Accepted,
    ContractRequest,
    Negotiation,
    NegotiationMessage,
    NegotiationState,
    PartyKeys,
    Role,
    Termination,
    Verification,
    apply,
    open_negotiation,
)
from qdspace.connector.offers import acceptable_counter
from qdspace.connector.spc import QualityAlert, SpcAlert, SpcMonitor, SpcSpec
from qdspace.connector.transfer import TransferProcess, TransferState, accept_batch, open_transfer
from qdspace.connector.transfer import apply as apply_transfer
from qdspace.connector.transfer_messages import TransferCompletion, TransferRequest, TransferStart
from qdspace.node.context import NodeContext
from qdspace.node.errors import PeerError
from qdspace.node.identity.member import member_id_for
from qdspace.node.rpc.contracts_serde import (
    PullRequest,
    catalog_entry_from_proto,
    catalog_from_proto,
    negotiation_message_from_proto,
    negotiation_message_to_proto,
    pull_request_to_proto,
    row_batch_from_proto,
    stream_event_from_proto,
    stream_request_to_proto,
    transfer_ack_from_proto,
    transfer_message_to_proto,
)
from qdspace.node.rpc.peers import PeerDirectory
from qdspace.node.runtime.contract_ports import Subscription
from qdspace.node.runtime.contracts import ContractRuntime, peer_name
from qdspace.policies.model import OfferTerms, Policy, make_offer
from qdspace.protocols.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    negotiation_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
    notification_pb2,
    notification_pb2_grpc,
    subscription_pb2_grpc,
    transfer_pb2_grpc,
)

logger = logging.getLogger("node.contracts")

TIMEOUT_S = 15.0
MAX_ROUNDS = 8
_T = TypeVar("_T")


async def _call(peer: str, what: str, call: Callable[[], Any]) -> Any:
    """One peer call; a gRPC status becomes a PeerError naming peer, call, code and reason."""
    try:
        return await call()
    except grpc.aio.AioRpcError as exc:
        code = exc.code().name
        raise PeerError(f"peer {peer}: {what}: {code}: {exc.details()}", code) from None


class ContractClient:
    """Consumer-side drivers over the peer directory; one per node."""

    def __init__(self, runtime: ContractRuntime, peers: PeerDirectory) -> None:
        self.runtime = runtime
        self.peers = peers
        self._keys: dict[str, VerifyKey] = {}
        self._member_ids: dict[str, str] = {}
        self.transfers: dict[str, asyncio.Task[TransferProcess]] = {}
        self.subscriptions: dict[str, Subscription] = {}

    @property
    def me(self) -> str:
        return self.runtime.me.member_id

    async def provider_key(self, peer: str) -> VerifyKey:
        """The peer's Ed25519 verify key, bound to the member id of its certificate."""
        if peer not in self._keys:
            stub = node_pb2_grpc.NodeStub(self.peers.channel(peer))
            request = node_pb2.HelloRequest(nonce=uuid.uuid4().hex)
            reply = await _call(peer, "Hello", lambda: stub.Hello(request, timeout=TIMEOUT_S))
            server = reply.server
            if server.name != peer or member_id_for(peer, server.verify_key) != server.member_id:
                raise PeerError(f"peer {peer}: its verify key does not match its member id")
            self._keys[peer] = VerifyKey(server.verify_key)
            self._member_ids[peer] = server.member_id
        return self._keys[peer]

    # ------------------------------------------------------------- catalog

    async def catalog(self, peer: str, kind: str = "") -> list[CatalogEntry]:
        stub = catalog_pb2_grpc.CatalogStub(self.peers.channel(peer))
        request = catalog_pb2.CatalogRequest(kind=kind)
        reply = await _call(peer, "catalog", lambda: stub.ListAssets(request, timeout=TIMEOUT_S))
        return catalog_from_proto(reply)

    async def asset(self, peer: str, asset_id: str) -> CatalogEntry:
        stub = catalog_pb2_grpc.CatalogStub(self.peers.channel(peer))
        request = catalog_pb2.AssetRequest(asset_id=asset_id)
        reply = await _call(peer, "asset", lambda: stub.GetAsset(request, timeout=TIMEOUT_S))
        return catalog_entry_from_proto(reply)

    # --------------------------------------------------------- negotiation

    async def negotiate(
        self,
        peer: str,
        asset_id: str,
        *,
        purposes: frozenset[str],
        orders: frozenset[str] | None = None,
        fields: frozenset[str] | None = None,
        retention_days: int | None = None,
        valid_until: datetime | None = None,
    ) -> Negotiation:
        """Ask `peer` for `asset_id` on these terms; see it through to FINALIZED or TERMINATED.

        Two round trips: the request (answered by the provider's signed agreement, or
        a counter-offer or termination) and the countersignature (answered by FINALIZED).
        The offer asked for is the provider's (its member id, bound to its verify key by
        the Hello); an asset it does not offer us is refused by the provider.
        """
        await self.provider_key(peer)
        provider_id = self._member_ids[peer]
        terms = OfferTerms(purposes=purposes, orders=orders, fields=fields, not_after=valid_until)
        if retention_days is not None:
            terms = dataclasses.replace(terms, retention_days=retention_days)
        nid = f"neg-{uuid.uuid4().hex}"
        asked = make_offer(f"{nid}:request", provider_id, asset_id, terms)
        return await self._negotiate(peer, nid, asked)

    async def negotiate_offer(self, peer: str, asset_id: str) -> Negotiation:
        """Ask `peer` for `asset_id` on exactly the offer in its catalog (a federated job's
        terms are the same for every member and are agreed as published)."""
        entry = await self.asset(peer, asset_id)
        await self.provider_key(peer)
        if entry.offer.assigner != self._member_ids[peer]:
            raise PeerError(f"peer {peer}: asset {asset_id} is offered by {entry.offer.assigner}")
        nid = f"neg-{uuid.uuid4().hex}"
        asked = dataclasses.replace(entry.offer, uid=f"{nid}:request")
        return await self._negotiate(peer, nid, asked)

    async def _negotiate(self, peer: str, nid: str, asked: Policy) -> Negotiation:
        provider_vk = await self.provider_key(peer)
        keys = PartyKeys(provider_vk, self.runtime.verify_key)
        message: NegotiationMessage = ContractRequest(
            f"{nid}:c0", nid, self.me, asked, self.runtime.clock.now()
        )
        negotiation = open_negotiation(message, Role.CONSUMER)  # type: ignore[arg-type]
        store = self.runtime.store
        store.save_negotiation(None, negotiation)
        saved = negotiation
        stub = negotiation_pb2_grpc.NegotiationStub(self.peers.channel(peer))
        for _ in range(MAX_ROUNDS):
            wire = negotiation_message_to_proto(message)
            ack = await _call(
                peer, "negotiation", functools.partial(stub.Send, wire, timeout=TIMEOUT_S)
            )
            for reply in ack.replies:
                negotiation = apply(negotiation, negotiation_message_from_proto(reply), keys)
            answer = self._answer(negotiation, asked)
            if answer is not None:
                negotiation = apply(negotiation, answer, keys)
            # One commit per round, before the answer leaves: the provider's reply and our
            # answer together (a retry after a crash rebuilds the same answer: its id and
            # Ed25519 signature are deterministic).
            if negotiation != saved:
                store.save_negotiation(saved, negotiation)
                saved = negotiation
            if answer is None:
                if negotiation.state is NegotiationState.FINALIZED:
                    self.runtime.record_agreement(negotiation)
                return negotiation
            message = answer
        raise PeerError(f"peer {peer}: negotiation {nid} did not finish in {MAX_ROUNDS} rounds")

    def _answer(self, n: Negotiation, asked: Any) -> NegotiationMessage | None:
        """The consumer's next message in state `n`, or None when there is nothing to say."""
        mid = f"{n.negotiation_id}:c{len(n.seen)}"
        at = max(self.runtime.clock.now(), n.updated_at)
        if n.state is NegotiationState.OFFERED:
            if acceptable_counter(asked, n.offer):
                return Accepted(mid, n.negotiation_id, self.me, at)
            reason = "the counter-offer grants more than was asked"
            return Termination(mid, n.negotiation_id, self.me, reason, at)
        if n.state is NegotiationState.AGREED:
            assert n.agreement is not None
            provider_vk = self._keys[peer_name(n.provider_id)]
            signed = countersign(n.agreement, self.runtime.signing_key, provider_vk)
            assert signed.consumer_signature is not None
            return Verification(mid, n.negotiation_id, self.me, signed.consumer_signature, at)
        return None

    # ------------------------------------------------------------ transfer

    async def request_transfer(
        self,
        agreement_id: str,
        *,
        purpose: str,
        order_id: str | None,
        fields: frozenset[str] | None = None,
        since_last: bool = False,
    ) -> TransferProcess:
        """Ask the provider to start a transfer; a denial raises PeerError (PERMISSION_DENIED).

        `since_last`: an incremental pull, of the changes after the last completed pull of
        the same scope (a full pull when there is none)."""
        stored = self.runtime.store.agreement(agreement_id)
        since = ""
        if since_last:
            last = self.runtime.store.last_completed_pull(agreement_id, order_id, fields, purpose)
            if last is not None and last.final is not None:
                since = last.final.position
        terms = stored.signed.agreement
        peer = peer_name(terms.provider_id)
        tid = f"trf-{uuid.uuid4().hex}"
        at = self.runtime.clock.now()
        request = TransferRequest(
            f"{tid}:c-request",
            tid,
            self.me,
            agreement_id,
            terms.provider_id,
            at,
            purpose=purpose,
            order_id=order_id,
            fields=fields,
            since=since,
        )
        stub = transfer_pb2_grpc.TransferStub(self.peers.channel(peer))
        wire = transfer_message_to_proto(request)
        ack = transfer_ack_from_proto(
            await _call(peer, "transfer request", lambda: stub.Send(wire, timeout=TIMEOUT_S))
        )
        process = open_transfer(request, Role.CONSUMER)
        start = TransferStart(f"{tid}:p-start", tid, terms.provider_id, ack.checkpoint, at)
        process = apply_transfer(process, start)
        self.runtime.store.save_transfer(None, process)
        return process

    def start_pull(self, transfer_id: str, batch_rows: int = 0) -> asyncio.Task[TransferProcess]:
        """Pull a transfer in the background (one task per transfer id)."""
        task = self.transfers.get(transfer_id)
        if task is None or task.done():
            task = asyncio.create_task(self.pull(transfer_id, batch_rows))
            self.transfers[transfer_id] = task
        return task

    async def pull(self, transfer_id: str, batch_rows: int = 0) -> TransferProcess:
        """Pull from the stored checkpoint to the end; every batch is committed with its rows."""
        store = self.runtime.store
        process = store.load_transfer(transfer_id)
        if process.state is not TransferState.STARTED:
            return process
        peer = peer_name(process.provider_id)
        stub = transfer_pb2_grpc.TransferStub(self.peers.channel(peer))
        request = pull_request_to_proto(PullRequest(transfer_id, process.checkpoint, batch_rows))
        try:
            async for wire in stub.Pull(request):
                batch = row_batch_from_proto(wire)
                after = accept_batch(process, batch)
                first = process.offset
                rows = [
                    IncomingRow(first + i, order, payload)
                    for i, (order, payload) in enumerate(
                        zip(batch.orders(), batch.payloads(), strict=True)
                    )
                ]
                now = self.runtime.clock.now()
                await asyncio.to_thread(store.commit_transfer_batch, process, after, rows, now)
                process = after
                if batch.last:
                    return await self._complete(stub, peer, process, batch.checkpoint)
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
            raise PeerError(
                f"peer {peer}: transfer {transfer_id}: {code}: {exc.details()}", code
            ) from None
        raise PeerError(f"peer {peer}: transfer {transfer_id} stream ended before its last batch")

    async def _complete(
        self, stub: Any, peer: str, process: TransferProcess, final: Any
    ) -> TransferProcess:
        tid = process.transfer_id
        now = self.runtime.clock.now()
        done = TransferCompletion(f"{tid}:p-complete", tid, process.provider_id, final, now)
        completed = apply_transfer(process, done)
        self.runtime.store.save_transfer(process, completed)
        ack = TransferCompletion(f"{tid}:c-complete", tid, self.me, final, now)
        wire = transfer_message_to_proto(ack)
        await _call(peer, "transfer completion", lambda: stub.Send(wire, timeout=TIMEOUT_S))
        logger.info("transfer %s completed: %d rows", tid, final.offset)
        return completed

    def resume_unfinished(self) -> list[str]:
        """Start pulling every transfer this node was receiving when it stopped."""
        ids = [
            t.transfer_id
            for t in self.runtime.store.transfers()
            if t.role is Role.CONSUMER and t.state is TransferState.STARTED
        ]
        for transfer_id in ids:
            logger.info("resuming transfer %s", transfer_id)
            self.start_pull(transfer_id)
        return ids

    # -------------------------------------------------------- subscription

    def subscribe(
        self,
        agreement_id: str,
        *,
        purpose: str,
        characteristic: str = "score",
        spec: SpcSpec | None = None,
    ) -> Subscription:
        stored = self.runtime.store.agreement(agreement_id)
        provider = peer_name(stored.signed.agreement.provider_id)
        sub = Subscription(
            f"sub-{uuid.uuid4().hex}",
            provider,
            agreement_id,
            characteristic,
            spec or SpcSpec(usl=0.5, baseline_size=20, cpk_window=20),
        )
        sub.task = asyncio.create_task(self._run_subscription(sub, purpose))
        self.subscriptions[sub.subscription_id] = sub
        return sub

    async def _run_subscription(self, sub: Subscription, purpose: str) -> None:
        monitor = SpcMonitor(sub.spec)
        stub = subscription_pb2_grpc.SubscriptionStub(self.peers.channel(sub.provider))
        store = self.runtime.store
        request = StreamRequest(sub.subscription_id, sub.agreement_id, purpose)
        try:
            async for wire in stub.Subscribe(stream_request_to_proto(request)):
                sub.connected.set()
                event = stream_event_from_proto(wire)
                if event.heartbeat:
                    continue
                arrived = self.runtime.clock.now()
                sub.latencies_ms.append((arrived - event.sent_at) / timedelta(milliseconds=1))
                rows = [
                    IncomingRow(int(p), r.order_id, r.payload)
                    for p, r in zip(event.positions, event.rows, strict=True)
                ]
                await asyncio.to_thread(
                    store.store_received_rows, sub.agreement_id, sub.subscription_id, rows, arrived
                )
                sub.received += len(rows)
                sub.position = event.positions[-1]
                self._spc(sub, monitor, event.rows)
        except grpc.aio.AioRpcError as exc:
            sub.error = f"{exc.code().name}: {exc.details()}"
            logger.warning("subscription %s ended: %s", sub.subscription_id, sub.error)
        except (ContractError, ValueError) as exc:
            sub.error = str(exc)
            logger.warning("subscription %s failed: %s", sub.subscription_id, exc)
        finally:
            sub.connected.set()

    def _spc(self, sub: Subscription, monitor: SpcMonitor, rows: Sequence[Any]) -> None:
        import json

        from qdspace.policies.canonical import parse_datetime

        for row in rows:
            record = json.loads(row.payload)
            value = record.get(sub.characteristic)
            if not isinstance(value, int | float):
                continue
            at = record.get("inspected_at")
            when = parse_datetime(at) if isinstance(at, str) else self.runtime.clock.now()
            for alert in monitor.add(float(value), when):
                self._raise_alert(sub, alert, record)

    def _raise_alert(self, sub: Subscription, alert: SpcAlert, record: dict[str, Any]) -> None:
        digest = hashlib.sha256(
            f"{sub.subscription_id}:{alert.rule}:{alert.points[-1].index}".encode()
        )
        notice = QualityAlert(
            f"alert-{digest.hexdigest()[:16]}",
            alert,
            sub.agreement_id,
            str(record.get("order_id") or ""),
            str(record.get("station") or ""),
            sub.characteristic,
        )
        sub.alerts.append(notice)
        logger.warning(
            "SPC alert on %s from %s: %s", sub.characteristic, sub.provider, alert.description
        )
        message = self.runtime.notification(sub.provider, notice, notice.alert_id)
        self.runtime.store.enqueue([message], self.runtime.clock.now())

    async def close(self) -> None:
        tasks: list[asyncio.Task[Any]] = [
            s.task for s in self.subscriptions.values() if s.task is not None
        ]
        tasks += list(self.transfers.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class OutboxDispatcher:
    """Sends queued notifications to their peers, retrying with backoff until delivered."""

    def __init__(self, runtime: ContractRuntime, peers: PeerDirectory, interval_s: float = 0.5):
        self.runtime = runtime
        self.peers = peers
        self.interval_s = interval_s
        self._kick = asyncio.Event()

    def kick(self) -> None:
        self._kick.set()

    async def run(self) -> None:
        while True:
            try:
                await self.deliver_due()
            except Exception:  # a broken database must not end the loop
                logger.exception("outbox delivery failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.interval_s)
            self._kick.clear()

    async def deliver_due(self) -> int:
        store = self.runtime.store
        sent = 0
        for pending in store.due_messages(self.runtime.clock.now()):
            message = pending.message
            try:
                await self._send(message)
            except (PeerError, grpc.aio.AioRpcError) as exc:
                backoff = timedelta(seconds=min(60.0, 0.5 * 2**pending.attempts))
                store.mark_failed(pending.id, str(exc), self.runtime.clock.now() + backoff)
                logger.warning(
                    "outbox: %s to %s failed: %s", message.message_id, message.peer_id, exc
                )
                continue
            store.mark_sent(pending.id, self.runtime.clock.now())
            sent += 1
        return sent

    async def _send(self, message: OutboxMessage) -> None:
        wire = notification_pb2.NotificationMessage.FromString(message.payload)
        stub = notification_pb2_grpc.NotificationStub(self.peers.channel(message.peer_id))
        await _call(message.peer_id, "notify", lambda: stub.Notify(wire, timeout=TIMEOUT_S))

    async def flush(self, timeout_s: float = 10.0) -> None:
        """Deliver everything due now (used by routes that promise the peer was told)."""
        deadline = time.monotonic() + timeout_s
        while self.runtime.store.due_messages(self.runtime.clock.now()):
            await self.deliver_due()
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(0.05)


def client_of(ctx: NodeContext) -> tuple[ContractClient, OutboxDispatcher]:
    """The node's one ContractClient and OutboxDispatcher: made once, put on the context
    (where the operator API finds them through its ports)."""
    runtime = ctx.contracts
    if runtime is None:
        raise PeerError("this node runs no contract machinery")
    client, outbox = ctx.contract_client, ctx.outbox
    if isinstance(client, ContractClient) and isinstance(outbox, OutboxDispatcher):
        return client, outbox
    made = ContractClient(runtime, ctx.peers), OutboxDispatcher(runtime, ctx.peers)
    ctx.contract_client, ctx.outbox = made
    return made


SWEEP_INTERVAL_S = 30.0
SWEEP_HORIZON = timedelta(hours=1)


class ContractJobs:
    """The contract background jobs of a serving node: outbox delivery, transfer resume,
    the retention sweep (every 30 s, deleting what expires within the hour), and anchoring
    of agreements and receipts when the node has a ledger."""

    def __init__(self, ctx: NodeContext) -> None:
        self.client, self.dispatcher = client_of(ctx)
        _attach_ledger(ctx)
        self._tasks = [
            asyncio.create_task(self.dispatcher.run()),
            asyncio.create_task(self._sweep_loop()),
        ]
        self.resumed = self.client.resume_unfinished()

    async def _sweep_loop(self) -> None:
        runtime = self.client.runtime
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                report = await asyncio.to_thread(runtime.sweep, SWEEP_HORIZON)
            except Exception:  # the next run tries again
                logger.exception("retention sweep failed")
                continue
            if report.receipts:
                self.dispatcher.kick()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
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
