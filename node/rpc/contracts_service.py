"""``qdspace.v1`` Catalog, Negotiation, Transfer, Subscription and Notification servicers.

Each method decodes, calls one `ContractRuntime` method with the authenticated
caller, encodes, and maps errors in one place (`_guard`): a contract error
becomes the gRPC status it names (a request outside its agreement is
PERMISSION_DENIED with the reason), a wire error INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import grpc

from qdspace.connector.assets import AssetKind, catalog_entry
from qdspace.connector.contract_errors import ContractError, UnknownContractError
from qdspace.node.errors import QuotaError
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.metrics import NodeMetrics
from qdspace.node.rpc.auth import current_peer
from qdspace.node.rpc.codes import status_code
from qdspace.node.rpc.contracts_notification_serde import notification_from_proto
from qdspace.node.rpc.contracts_serde import (
    WireFormatError,
    catalog_entry_to_proto,
    catalog_to_proto,
    datetime_to_us,
    negotiation_ack_to_proto,
    negotiation_message_from_proto,
    negotiation_message_to_proto,
    negotiation_to_proto,
    required,
)
from qdspace.node.rpc.contracts_transfer_serde import (
    pull_request_from_proto,
    row_batch_wire,
    stream_request_from_proto,
    transfer_ack_to_proto,
    transfer_message_from_proto,
)
from qdspace.node.runtime.contracts import ContractRuntime
from qdspace.node.runtime.contracts_base import GateRecheck
from qdspace.node.runtime.table_watch import FALLBACK_POLL_S
from qdspace.policies.errors import PolicyError
from qdspace.protocols.v1 import (
    catalog_pb2,
    catalog_pb2_grpc,
    negotiation_pb2,
    negotiation_pb2_grpc,
    notification_pb2,
    notification_pb2_grpc,
    subscription_pb2,
    subscription_pb2_grpc,
    transfer_pb2,
    transfer_pb2_grpc,
)

logger = logging.getLogger("node.rpc")

DEFAULT_BATCH_ROWS = 1000
MAX_BATCH_ROWS = 10_000
RECHECK_S = 1.0
HEARTBEAT_S = 5.0


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@contextmanager
def _guard(what: str) -> Iterator[None]:
    """Turn domain errors into one gRPC status (`qdspace.node.faults`) with a safe reason."""
    try:
        yield
    except ContractError as exc:
        code = status_code(exc, grpc.StatusCode.FAILED_PRECONDITION)
        logger.warning("%s refused: %s: %s", what, code.name, exc)
        raise _Abort(code, str(exc)) from None
    except (WireFormatError, PolicyError) as exc:
        raise _Abort(status_code(exc, grpc.StatusCode.INVALID_ARGUMENT), str(exc)) from None
    except QuotaError as exc:  # no room here for what the peer sent (disk, a host's quota)
        code = status_code(exc, grpc.StatusCode.RESOURCE_EXHAUSTED)
        logger.warning("%s refused: %s: %s", what, code.name, exc)
        raise _Abort(code, str(exc)) from None


def _settle(future: asyncio.Future[Any]) -> None:
    """Retrieve a finished read-ahead nobody awaits (so its error is not logged as lost)."""
    if not future.cancelled():
        future.exception()


_KINDS = frozenset({"", *(k.value for k in AssetKind)})
_MAX_REPLIES = 64


def _peer() -> MemberIdentity:
    return current_peer().identity


class CatalogServicer(catalog_pb2_grpc.CatalogServicer):
    """Catalog replies are encoded once per (role, kind) until the runtime's assets change:
    encoding every offer's policy as JSON was most of a ListAssets call's time, and the
    catalog is what every peer asks first and most often."""

    def __init__(self, runtime: ContractRuntime):
        self._rt = runtime
        #: (role, kind, catalog generation, ids the access policies hide) -> the reply
        self._replies: dict[tuple[str, str, int, tuple[str, ...]], catalog_pb2.CatalogReply] = {}

    async def ListAssets(
        self, request: catalog_pb2.CatalogRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.CatalogReply:
        peer = _peer()
        hidden: tuple[str, ...] = ()
        entries = None
        if self._rt.access.policies:  # what the access policies hide from this member
            entries = self._rt.catalog_for(peer, request.kind)
            shown = {e.asset_id for e in entries}
            every = self._rt.catalog(peer.role, request.kind)
            hidden = tuple(sorted(e.asset_id for e in every if e.asset_id not in shown))
        key = (peer.role, request.kind, self._rt.catalog_generation, hidden)
        reply = self._replies.get(key)
        if reply is None:
            if entries is None:
                entries = self._rt.catalog_for(peer, request.kind)
            reply = catalog_to_proto(self._rt.me.member_id, entries)
            if request.kind in _KINDS:  # not one per string a peer makes up
                if len(self._replies) >= _MAX_REPLIES:
                    self._replies.clear()  # roles x kinds x a few generations: rarely
                self._replies[key] = reply
        return reply

    async def GetAsset(
        self, request: catalog_pb2.AssetRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.Asset:
        try:
            with _guard("GetAsset"):
                # NOT_FOUND when not for its role or hidden by an access policy
                asset = self._rt.asset_for_peer(request.asset_id, _peer())
        except _Abort as abort:
            await context.abort(abort.code, abort.reason)
        entry = catalog_entry(asset, self._rt.me.member_id)
        return catalog_entry_to_proto(entry)

    def register(self, server: grpc.aio.Server) -> None:
        catalog_pb2_grpc.add_CatalogServicer_to_server(self, server)


class NegotiationServicer(negotiation_pb2_grpc.NegotiationServicer):
    def __init__(self, runtime: ContractRuntime):
        self._rt = runtime

    async def Send(
        self, request: negotiation_pb2.NegotiationMessage, context: grpc.aio.ServicerContext
    ) -> negotiation_pb2.NegotiationAck:
        peer = _peer()

        def send() -> negotiation_pb2.NegotiationAck:
            # all of it in a worker thread: the policy's parse and canonical form (10 ms
            # for 64 KiB) and the write, which holds every member's calls and streams
            # while another writer has the database's write lock (up to its timeout)
            message = negotiation_message_from_proto(request)
            negotiation, replies = self._rt.handle_negotiation(peer, message)
            ack = negotiation_ack_to_proto(negotiation)
            ack.replies.extend(negotiation_message_to_proto(r) for r in replies)
            return ack

        try:
            with _guard("Negotiation/Send"):
                ack = await asyncio.to_thread(send)
        except _Abort as abort:
            await context.abort(abort.code, abort.reason)
        return ack

    async def Get(
        self, request: negotiation_pb2.NegotiationQuery, context: grpc.aio.ServicerContext
    ) -> negotiation_pb2.NegotiationStatus:
        """The caller's own negotiation. Another member's is answered exactly as one that
        is not here (NOT_FOUND, the same words), as Trace, Pull and the DSP binding do:
        a member who learns or guesses a negotiation id learns nothing from asking."""
        caller = _peer().member_id

        def get() -> negotiation_pb2.NegotiationStatus:
            # checked as every other id a peer sends: it goes into the refusal and the log
            negotiation_id = required(request.negotiation_id, "negotiation_id")
            # a read and the offer's parse (4 ms for a 58 KB policy): off the event loop
            negotiation = self._rt.store.find_negotiation(negotiation_id)
            if negotiation is None or caller not in (
                negotiation.provider_id,
                negotiation.consumer_id,
            ):
                raise UnknownContractError(f"no negotiation {negotiation_id} here")
            return negotiation_to_proto(negotiation)

        try:
            with _guard("Negotiation/Get"):
                status = await asyncio.to_thread(get)
        except _Abort as abort:
            await context.abort(abort.code, abort.reason)
        return status

    def register(self, server: grpc.aio.Server) -> None:
        negotiation_pb2_grpc.add_NegotiationServicer_to_server(self, server)


class TransferServicer(transfer_pb2_grpc.TransferServicer):
    def __init__(self, runtime: ContractRuntime, metrics: NodeMetrics):
        self._rt = runtime
        self._metrics = metrics

    async def Send(
        self, request: transfer_pb2.TransferMessage, context: grpc.aio.ServicerContext
    ) -> transfer_pb2.TransferAck:
        try:
            with _guard("Transfer/Send"):
                message = transfer_message_from_proto(request)
                process = await asyncio.to_thread(self._rt.transfer_message, _peer(), message)
        except _Abort as abort:
            await context.abort(abort.code, abort.reason)
        return transfer_ack_to_proto(process)

    async def Pull(
        self, request: transfer_pb2.PullRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """The transfer's batches, each serialised here (`row_batch_wire`, registered to
        be sent as it is by `register`)."""
        peer = _peer()
        try:
            with _guard("Transfer/Pull"):
                pull = pull_request_from_proto(request)
                size = min(pull.max_batch_rows or DEFAULT_BATCH_ROWS, MAX_BATCH_ROWS)
                # the gate is built again every RECHECK_S, as a live stream's is: a
                # termination or a closed order ends the stream (PERMISSION_DENIED)
                batches = self._rt.pull(peer, pull, size, recheck_s=RECHECK_S)
                # Read and encode the next batch (in a worker thread) while this one is
                # written: one batch ahead at most, so the provider's saved cursor runs at
                # most two batches ahead of the consumer's (a resume rewinds to the latter).
                ahead = asyncio.ensure_future(asyncio.to_thread(next, batches, None))
                try:
                    while True:
                        batch = await ahead
                        if batch is None:
                            return
                        ahead = asyncio.ensure_future(asyncio.to_thread(next, batches, None))
                        wire = row_batch_wire(batch)
                        yield wire
                        # counted once written: the rows have left this node for the consumer
                        self._metrics.rows("sent", "pull", batch.count, len(wire))
                finally:
                    ahead.add_done_callback(_settle)  # the consumer left: drop what was read
        except _Abort as abort:
            await context.abort(abort.code, abort.reason)

    def register(self, server: grpc.aio.Server) -> None:
        add_transfer_service(self, server)


def _sent_as_is(wire: bytes) -> bytes:
    return wire


def _register(server: grpc.aio.Server, service: str, handlers: dict[str, Any]) -> None:
    """What a generated ``add_*Servicer_to_server`` does with its method handlers."""
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


def add_transfer_service(servicer: TransferServicer, server: grpc.aio.Server) -> None:
    """`transfer_pb2_grpc.add_TransferServicer_to_server`, with `Pull` yielding batches
    already serialised (`row_batch_wire`) and sent as they are."""
    handlers = {
        "Send": grpc.unary_unary_rpc_method_handler(
            servicer.Send,
            request_deserializer=transfer_pb2.TransferMessage.FromString,
            response_serializer=transfer_pb2.TransferAck.SerializeToString,
        ),
        "Pull": grpc.unary_stream_rpc_method_handler(
            servicer.Pull,
            request_deserializer=transfer_pb2.PullRequest.FromString,
            response_serializer=_sent_as_is,
        ),
    }
    _register(server, "qdspace.v1.Transfer", handlers)


class SubscriptionServicer(subscription_pb2_grpc.SubscriptionServicer):
    def __init__(self, runtime: ContractRuntime, metrics: NodeMetrics):
        self._rt = runtime
        self._metrics = metrics

    async def Subscribe(
        self, request: subscription_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Each event is serialised here, once, and sent as it is (`add_subscription_service`):
        its size for the metrics is then the length of those bytes, not a second encoding
        of the event by `ByteSize()`."""
        peer = _peer()
        rt = self._rt
        try:
            with _guard("Subscription/Subscribe"), self._live():
                stream = stream_request_from_proto(request)
                # (the agreement, its closures, the consumer's orders: reads of the database)
                gate, position = await asyncio.to_thread(rt.open_stream, peer, stream)
                recheck, beat = GateRecheck(rt.store, RECHECK_S), time.monotonic()
                yield _heartbeat(stream.subscription_id, datetime.now(UTC), position)
                watch = rt.new_inspections
                seen = watch.generation if watch is not None else 0
                while True:
                    if recheck.due():  # terminated or expired since?
                        stored = await asyncio.to_thread(
                            rt.provider_agreement, stream.agreement_id, peer
                        )
                        gate = await asyncio.to_thread(rt.stream_gate, stored, stream)
                        recheck.rebuilt()
                    # the database is read in a worker thread, never on the event loop
                    rows, positions, position = await asyncio.to_thread(
                        rt.stream_page, gate, position
                    )
                    if rows:
                        wire = subscription_pb2.SubscriptionEvent(
                            subscription_id=stream.subscription_id,
                            rows=[
                                transfer_pb2.Row(json=r.payload, order_id=r.order_id) for r in rows
                            ],
                            positions=positions,
                            sent_at_unix_us=datetime_to_us(rt.clock.now()),
                        ).SerializeToString()
                        yield wire
                        self._metrics.rows("sent", "stream", len(rows), len(wire))
                        beat = time.monotonic()
                        continue
                    if time.monotonic() - beat > HEARTBEAT_S:
                        yield _heartbeat(stream.subscription_id, rt.clock.now(), position)
                        beat = time.monotonic()
                    if watch is None:
                        await asyncio.sleep(FALLBACK_POLL_S)
                    else:  # woken by a commit of new inspections, or looks again anyway
                        seen = await watch.wait(seen, FALLBACK_POLL_S)
        except _Abort as abort:
            await context.abort(abort.code, abort.reason)

    @contextmanager
    def _live(self) -> Iterator[None]:
        """One live stream served to a consumer while the block runs."""
        live = self._metrics.subscriptions.labels(side="provider")
        live.inc()
        try:
            yield
        finally:
            live.dec()

    def register(self, server: grpc.aio.Server) -> None:
        add_subscription_service(self, server)


def _heartbeat(subscription_id: str, at: datetime, position: int) -> bytes:
    """A keep-alive saying where the stream stands: every row up to `position` that the
    gate lets out was sent before it, so a consumer resuming after it misses none."""
    wire: bytes = subscription_pb2.SubscriptionEvent(
        subscription_id=subscription_id,
        heartbeat=True,
        sent_at_unix_us=datetime_to_us(at),
        position=str(position),
    ).SerializeToString()
    return wire


def add_subscription_service(servicer: SubscriptionServicer, server: grpc.aio.Server) -> None:
    """`subscription_pb2_grpc.add_SubscriptionServicer_to_server`, with `Subscribe`
    yielding events already serialised and sent as they are."""
    handlers = {
        "Subscribe": grpc.unary_stream_rpc_method_handler(
            servicer.Subscribe,
            request_deserializer=subscription_pb2.SubscribeRequest.FromString,
            response_serializer=_sent_as_is,
        ),
    }
    _register(server, "qdspace.v1.Subscription", handlers)


class NotificationServicer(notification_pb2_grpc.NotificationServicer):
    def __init__(self, runtime: ContractRuntime):
        self._rt = runtime

    async def Notify(
        self, request: notification_pb2.NotificationMessage, context: grpc.aio.ServicerContext
    ) -> notification_pb2.NotificationAck:
        try:
            with _guard("Notification/Notify"):
                note = notification_from_proto(request)
                first = await asyncio.to_thread(self._rt.handle_notification, _peer(), note)
        except _Abort as abort:
            await context.abort(abort.code, abort.reason)
        return notification_pb2.NotificationAck(
            notification_id=request.notification_id, first_delivery=first
        )

    def register(self, server: grpc.aio.Server) -> None:
        notification_pb2_grpc.add_NotificationServicer_to_server(self, server)


def contract_registrations(
    runtime: ContractRuntime, metrics: NodeMetrics | None = None
) -> list[Callable[..., None]]:
    """The register functions of every contract servicer, for `build_server`."""
    metrics = metrics or NodeMetrics()
    servicers = (
        CatalogServicer(runtime),
        NegotiationServicer(runtime),
        TransferServicer(runtime, metrics),
        SubscriptionServicer(runtime, metrics),
        NotificationServicer(runtime),
    )
    return [s.register for s in servicers]
