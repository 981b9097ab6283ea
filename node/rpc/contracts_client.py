"""The consumer's side of the contract services: catalog, negotiation, transfers.

`ContractClient` drives what a consumer starts: it reads a provider's catalog,
negotiates (request, accept a counter-offer that grants no more than asked,
countersign, until FINALIZED), pulls a transfer batch by batch (each batch's
checkpoint verified; a few verified batches committed with their rows and the cursor
after them in one transaction, in the background while the next ones arrive, so a
consumer killed mid-transfer resumes exactly where its rows stop), and runs
live subscriptions with SPC early warning on what arrives (those live in
`contracts_subscriber`, a mixin of the client). The outbox that carries
notifications and the node's contract background jobs are in `contracts_jobs`.

The provider's Ed25519 verify key comes from its `Hello` over mutual TLS and is
accepted only if it hashes to the member id in the provider's certificate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import grpc
from nacl.signing import VerifyKey

from qdspace.connector.assets import CatalogEntry
from qdspace.connector.contract_errors import MessageOutOfTime
from qdspace.connector.contract_store import IncomingRun
from qdspace.connector.negotiation import (
    ContractRequest,
    Negotiation,
    NegotiationMessage,
    NegotiationState,
    PartyKeys,
    Role,
    Termination,
    apply,
    expect_agreement,
    open_negotiation,
)
from qdspace.connector.peer_time import check_sent_at
from qdspace.connector.transfer import (
    TransferProcess,
    TransferState,
    accept_batch,
    completion_id,
    open_transfer,
)
from qdspace.connector.transfer import apply as apply_transfer
from qdspace.connector.transfer_messages import TransferCompletion, TransferRequest, TransferStart
from qdspace.node.errors import PeerError, WireFormatError
from qdspace.node.member_ids import member_id_for, peer_name
from qdspace.node.metrics import NodeMetrics
from qdspace.node.rpc.client import oversized_reply
from qdspace.node.rpc.contracts_serde import (
    catalog_entry_from_proto,
    catalog_from_proto,
    negotiation_message_from_proto,
    negotiation_message_to_proto,
)
from qdspace.node.rpc.contracts_subscriber import ConsumerSubscriptions
from qdspace.node.rpc.contracts_transfer_serde import (
    PullRequest,
    pull_request_to_proto,
    row_batch_from_proto,
    transfer_ack_from_proto,
    transfer_message_to_proto,
)
from qdspace.node.rpc.peers import PeerDirectory
from qdspace.node.runtime.contract_ports import Subscription
from qdspace.node.runtime.contracts import ContractRuntime
from qdspace.policies.model import OfferTerms, Policy, make_offer
from qdspace.protocols.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    negotiation_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
    transfer_pb2_grpc,
)

logger = logging.getLogger("node.contracts")

TIMEOUT_S = 15.0
MAX_ROUNDS = 8
#: the characters of a refusal kept as our negotiation's reason
MAX_REASON = 1000
_T = TypeVar("_T")


async def call_peer(peer: str, what: str, call: Callable[[], Any]) -> Any:
    """One peer call; a gRPC status becomes a PeerError naming peer, call, code and reason."""
    try:
        return await call()
    except grpc.aio.AioRpcError as exc:
        code = exc.code().name
        if (sizes := oversized_reply(exc)) is not None:  # its fault: a 502, not its quota
            size, limit = sizes
            raise PeerError(
                f"peer {peer}: {what}: a reply of {size} bytes, more than the {limit} read"
            ) from None
        raise PeerError(f"peer {peer}: {what}: {code}: {exc.details()}", code) from None


GROUP_BATCHES = 5  # verified batches committed in one transaction (at most) ...
GROUP_ROWS = 10_000  # ... or this many rows
#: a pull ends (PeerError) when its provider sends no batch for this long: an honest one
#: reads a page (at most `MAX_BATCH_ROWS` rows) between two, one that holds the stream
#: open without sending held the transfer's task for ever
PULL_IDLE_S = 60.0
#: ... or sends this many batches in a row that bring no row and are not the last: an
#: honest provider's empty batch is a page of rows its gate withheld (at least
#: `MIN_BATCH_ROWS` each), one that sends nothing but empty batches cost a commit of
#: the cursor every `GROUP_BATCHES` for ever
MAX_EMPTY_BATCHES = 1000


class _GroupCommits:
    """The consumer's pending rows of a pull and the one commit in flight.

    `add` takes a verified batch (its rows and the process after it); `flush` waits for
    the commit in flight, then starts committing the rows gathered so far with the cursor
    after their last batch (`commit_received_batch`: rows and cursor in one transaction)
    in a worker thread; `settle` waits for it and raises what it raised. Rows are counted
    as received once committed."""

    def __init__(
        self,
        commit: Callable[..., Any],
        metrics: NodeMetrics,
        committed: TransferProcess,
    ) -> None:
        self._commit = commit
        self._metrics = metrics
        self._committed = committed
        self._latest = committed
        self._rows = IncomingRun(committed.offset, [], [])
        self._batches = 0
        self._bytes = 0
        self._flight: asyncio.Future[Any] | None = None
        self._counts = (0, 0)

    def add(
        self,
        first: int,
        orders: list[str],
        payloads: list[bytes],
        after: TransferProcess,
        size: int,
    ) -> None:
        """A verified batch: its rows (seq `first` on; their orders and bytes as columns,
        no tuple per row) and the process after it."""
        self._rows.extend(first, orders, payloads)
        self._latest = after
        self._batches += 1
        self._bytes += size

    @property
    def full(self) -> bool:
        return self._batches >= GROUP_BATCHES or len(self._rows) >= GROUP_ROWS

    async def flush(self, now: datetime) -> None:
        await self.settle()
        if not self._batches:
            return
        before, after, rows, size = self._committed, self._latest, self._rows, self._bytes
        self._committed, self._batches, self._bytes = after, 0, 0
        self._rows = IncomingRun(after.offset, [], [])
        self._flight = asyncio.ensure_future(
            asyncio.to_thread(self._commit, before, after, rows, now)
        )
        self._counts = (len(rows), size)

    async def settle(self) -> None:
        flight, self._flight = self._flight, None
        if flight is not None:
            await flight
            self._metrics.rows("received", "pull", *self._counts)


async def _next_batch(call: Any, peer: str, transfer_id: str) -> Any:
    """The pull's next batch (None at the stream's end), awaited `PULL_IDLE_S` at most:
    a provider that sends nothing ends the pull with a PeerError saying so. What was
    committed stays, with the cursor after it: a later pull (`resume`, or the node's
    start) continues from there, as after any broken pull."""
    try:
        wire = await asyncio.wait_for(call.read(), PULL_IDLE_S)
    except TimeoutError:
        raise PeerError(
            f"peer {peer}: transfer {transfer_id}: the provider sent no batch for "
            f"{PULL_IDLE_S:g} s; the pull ends (resume it from its checkpoint)"
        ) from None
    return None if wire is grpc.aio.EOF else wire


class ContractClient(ConsumerSubscriptions):
    """Consumer-side drivers over the peer directory; one per node."""

    def __init__(
        self, runtime: ContractRuntime, peers: PeerDirectory, metrics: NodeMetrics | None = None
    ) -> None:
        self.runtime = runtime
        self.peers = peers
        self.metrics = metrics or NodeMetrics()
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
            reply = await call_peer(peer, "Hello", lambda: stub.Hello(request, timeout=TIMEOUT_S))
            server = reply.server
            if server.name != peer or member_id_for(peer, server.verify_key) != server.member_id:
                raise PeerError(f"peer {peer}: its verify key does not match its member id")
            self._keys[peer] = VerifyKey(server.verify_key)
            self._member_ids[peer] = server.member_id
        return self._keys[peer]

    # ------------------------------------------------------------- catalog

    async def catalog(self, peer: str, kind: str = "") -> list[CatalogEntry]:
        """The peer's catalog, read in a worker thread (every offer is a policy to parse;
        the reply is bounded on the channel, `node.rpc.client.REPLY_LIMITS`). What the
        provider sent that cannot be read is its failure (502), not the caller's."""
        stub = catalog_pb2_grpc.CatalogStub(self.peers.channel(peer))
        request = catalog_pb2.CatalogRequest(kind=kind)
        reply = await call_peer(
            peer, "catalog", lambda: stub.ListAssets(request, timeout=TIMEOUT_S)
        )
        try:
            return await asyncio.to_thread(catalog_from_proto, reply)
        except WireFormatError as exc:
            raise PeerError(f"peer {peer}: catalog: {exc}") from None

    async def asset(self, peer: str, asset_id: str) -> CatalogEntry:
        stub = catalog_pb2_grpc.CatalogStub(self.peers.channel(peer))
        request = catalog_pb2.AssetRequest(asset_id=asset_id)
        reply = await call_peer(peer, "asset", lambda: stub.GetAsset(request, timeout=TIMEOUT_S))
        try:
            entry = await asyncio.to_thread(catalog_entry_from_proto, reply)
        except WireFormatError as exc:
            raise PeerError(f"peer {peer}: asset: {exc}") from None
        if entry.asset_id != asset_id or entry.offer.target != asset_id:
            raise PeerError(
                f"peer {peer}: asked for asset {asset_id[:128]!r}, it answered with another"
            )
        return entry

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
            ack = await call_peer(
                peer, "negotiation", functools.partial(stub.Send, wire, timeout=TIMEOUT_S)
            )
            try:
                negotiation = self._take_replies(negotiation, ack.replies, keys)
            except (WireFormatError, MessageOutOfTime) as exc:
                end = self._refuse_replies(saved, keys, f"the provider's reply was refused: {exc}")
                try:  # its copy ends too (an honest provider's clock may be what is wrong)
                    told = negotiation_message_to_proto(end)
                    await call_peer(
                        peer, "negotiation", functools.partial(stub.Send, told, timeout=TIMEOUT_S)
                    )
                except PeerError as why:
                    logger.warning(
                        "negotiation %s: the provider was not told it ended: %s", nid, why
                    )
                raise PeerError(f"peer {peer}: negotiation {nid}: {exc}") from None
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

    def _take_replies(
        self, negotiation: Negotiation, replies: Sequence[Any], keys: PartyKeys
    ) -> Negotiation:
        """`negotiation` after the provider's `replies`, each read and dated as a request
        to this node is (`check_sent_at`): a reply dated ahead of our clock moved our copy
        to that date, and our answers after it (dated ``max(now, last message)``)."""
        now = self.runtime.clock.now()
        for reply in replies:
            if reply.WhichOneof("body") == "agreement":  # as expected: compared, not parsed
                expect_agreement(negotiation, reply.agreement.agreement.agreement_json)
            message = negotiation_message_from_proto(reply)
            check_sent_at(message.at, now, f"the provider's reply {message.message_id[:128]}")
            negotiation = apply(negotiation, message, keys)
        return negotiation

    def _refuse_replies(self, saved: Negotiation, keys: PartyKeys, why: str) -> Termination:
        """Our copy (`saved`, as it stood when we called) ends TERMINATED, saying why: a
        provider whose replies we refuse leaves it waiting for an answer that never comes
        (none of its replies was applied; nothing else moves a gRPC negotiation here).
        Returns the termination, for the provider to be told."""
        mid = f"{saved.negotiation_id}:c{len(saved.seen)}"
        at = max(self.runtime.clock.now(), saved.updated_at)
        end = Termination(mid, saved.negotiation_id, self.me, why[:MAX_REASON], at)
        self.runtime.store.save_negotiation(saved, apply(saved, end, keys))
        return end

    def _answer(self, n: Negotiation, asked: Any) -> NegotiationMessage | None:
        """The consumer's next message in state `n` (`ContractRuntime.consumer_answer`)."""
        provider_vk = self._keys.get(peer_name(n.provider_id))
        return self.runtime.consumer_answer(n, asked, provider_vk)

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
        # the agreement's provider, not whoever holds its name now: rows from another
        # member would enter this node's copy as the provider's
        peer = await self.peers.confirm_member(terms.provider_id)
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
        reply = await call_peer(
            peer, "transfer request", lambda: stub.Send(wire, timeout=TIMEOUT_S)
        )
        try:
            ack = transfer_ack_from_proto(reply)
        except WireFormatError as exc:  # the provider's fault: a 502, not the caller's 400
            raise PeerError(f"peer {peer}: transfer request: {exc}") from None
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
        """Pull from the stored checkpoint to the end. Verified batches are committed in
        groups (`GROUP_BATCHES` batches or `GROUP_ROWS` rows, whichever comes first), each
        group with the cursor after its last batch in one transaction, in a worker thread
        while the next batches arrive (one commit in flight at most): the stored cursor
        is always at a batch boundary and a resume continues from it. A provider that
        sends no batch for `PULL_IDLE_S`, or `MAX_EMPTY_BATCHES` empty ones in a row,
        ends the pull (PeerError) as a broken stream does: the transfer stays STARTED."""
        store = self.runtime.store
        process = store.load_transfer(transfer_id)
        if process.state is not TransferState.STARTED:
            return process
        peer = await self.peers.confirm_member(process.provider_id)
        stub = transfer_pb2_grpc.TransferStub(self.peers.channel(peer))
        request = pull_request_to_proto(PullRequest(transfer_id, process.checkpoint, batch_rows))
        commits = _GroupCommits(self.runtime.commit_received_batch, self.metrics, process)
        call = stub.Pull(request)
        empty = 0  # batches in a row without a row
        try:
            while (wire := await _next_batch(call, peer, transfer_id)) is not None:
                batch = row_batch_from_proto(wire)
                after = accept_batch(process, batch)
                commits.add(
                    process.offset, batch.orders(), batch.payloads(), after, wire.ByteSize()
                )
                process = after
                if batch.last or commits.full:
                    await commits.flush(self.runtime.clock.now())
                if batch.last:
                    await commits.settle()
                    return await self._complete(stub, peer, process, batch.checkpoint)
                empty = 0 if batch.count else empty + 1
                if empty >= MAX_EMPTY_BATCHES:
                    raise PeerError(
                        f"peer {peer}: transfer {transfer_id}: {empty} batches in a row "
                        "without a row; the pull ends (resume it from its checkpoint)"
                    )
        except grpc.aio.AioRpcError as exc:
            await commits.settle()  # what was verified before the break is kept
            code = exc.code().name
            raise PeerError(
                f"peer {peer}: transfer {transfer_id}: {code}: {exc.details()}", code
            ) from None
        finally:
            call.cancel()  # (a no-op once it ended) the provider's stream is not left open
            await commits.settle()
        raise PeerError(f"peer {peer}: transfer {transfer_id} stream ended before its last batch")

    async def _complete(
        self, stub: Any, peer: str, process: TransferProcess, final: Any
    ) -> TransferProcess:
        tid = process.transfer_id
        now = self.runtime.clock.now()
        pid = completion_id(process, Role.PROVIDER)
        done = TransferCompletion(pid, tid, process.provider_id, final, now)
        completed = apply_transfer(process, done)
        self.runtime.store.save_transfer(process, completed)
        ack = TransferCompletion(completion_id(process, Role.CONSUMER), tid, self.me, final, now)
        wire = transfer_message_to_proto(ack)
        await call_peer(peer, "transfer completion", lambda: stub.Send(wire, timeout=TIMEOUT_S))
        logger.info("transfer %s completed: %d rows", tid, final.offset)
        return completed

    def resume_unfinished(self) -> list[str]:
        """Start pulling every transfer this node was receiving over gRPC when it stopped
        (a DSP transfer asks its provider for a new data address first:
        `DspTransfers.resume_after_restart`)."""
        ids = [t.transfer_id for t, bound in self.runtime.store.receiving() if bound is None]
        for transfer_id in ids:
            logger.info("resuming transfer %s", transfer_id)
            self.start_pull(transfer_id)
        return ids

    async def close(self) -> None:
        tasks: list[asyncio.Task[Any]] = [
            s.task for s in self.subscriptions.values() if s.task is not None
        ]
        tasks += list(self.transfers.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
