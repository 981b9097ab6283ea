"""The consumer's live subscriptions, with SPC early warning on what arrives.

A subscription is a long-running stream from a provider: every event's rows are stored
as they arrive (with the latency since the provider sent them) and fed to an SPC
monitor on one characteristic; an alarm becomes a `QualityAlert` kept with the
subscription and queued in the outbox for the provider, in one transaction. It is a
room of its own because it is the one consumer drive that never finishes and the one
that watches the data rather than moving it; `ContractClient` mixes it in.

It outlives its stream: a provider's restart or a dropped network used to end it for
good, a consumer's restart to forget it, and the line's monitoring stopped with nobody
told. It is recorded once the provider opens the stream, opened again when the stream
breaks, and resumed when the node starts (`ConsumerSubscriptions`).

The monitor is the consumer's early warning against its own supplier, so nothing the
provider sends may switch it off: a row it cannot judge (no number, an unusable time) is
passed over or judged at its arrival, the rows after it still are (`_watch_rows`), and
every stored row is fed to the monitor exactly once, reconnections included (`_take`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import uuid
from collections.abc import AsyncIterable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import grpc

from qdspace.connector.contract_errors import ContractError
from qdspace.connector.contract_store import IncomingRow, StoredSubscription
from qdspace.connector.contract_store.subscriptions import MAX_RAISED_PER_SUBSCRIPTION
from qdspace.connector.encoding import StreamRequest
from qdspace.connector.spc import (
    MAX_ALERT_POINTS,
    QualityAlert,
    SpcAlert,
    SpcMonitor,
    SpcSpec,
    characteristic_value,
)
from qdspace.connector.transfer_wire import KEY_FIELD, VERSION_FIELD, row_seqs
from qdspace.node.member_ids import peer_name
from qdspace.node.metrics import NodeMetrics
from qdspace.node.rpc.contracts_transfer_serde import (
    stream_event_from_proto,
    stream_request_to_proto,
)
from qdspace.node.rpc.peers import PeerDirectory
from qdspace.node.runtime.contract_ports import Subscription
from qdspace.node.runtime.contracts import ContractRuntime
from qdspace.protocols.v1 import subscription_pb2

SUBSCRIBE_METHOD = "/qdspace.v1.Subscription/Subscribe"

logger = logging.getLogger("node.contracts")


class _Ended(Exception):
    """The subscription may not stream again: the provider refused it for good, or sent
    what this node will not store."""


#: the first wait before a broken stream is opened again, doubled after each try that
#: brought nothing, up to the last
RECONNECT_FIRST_S = 1.0
RECONNECT_MAX_S = 60.0
#: a provider's answers that no retry changes: the subscription ends (an agreement ended,
#: expired or never held; a request the provider cannot read)
_FINAL = frozenset(
    {
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


@dataclass
class _Watch:
    """One subscription's SPC monitor, kept across its reconnections, and the alerts it
    raised that are not kept yet (a write failed: kept before the next event's)."""

    monitor: SpcMonitor
    baseline_kept: bool = False
    unkept: list[tuple[SpcAlert, dict[str, Any]]] = field(default_factory=list)


class ConsumerSubscriptions:
    """Live subscriptions of a consumer (a mixin of `ContractClient`, which sets these).

    A subscription is recorded in the contract store once its provider opened the stream
    (`connector.contract_store.subscriptions`). From then on a stream that breaks (the
    provider restarts, the network drops) is opened again after a pause that doubles
    from `RECONNECT_FIRST_S` to `RECONNECT_MAX_S`, resuming after the last position
    held, so nothing stored meanwhile is missed and nothing comes twice; a provider's
    final refusal (`_FINAL`: the agreement ended or expired) ends it, with the reason. A
    restarted node resumes every subscription not ended (`resume_subscriptions`); the
    operator ends one with `end_subscriptions`."""

    runtime: ContractRuntime
    peers: PeerDirectory
    subscriptions: dict[str, Subscription]
    metrics: NodeMetrics

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
            purpose=purpose,
        )
        self._start(sub, _Watch(SpcMonitor(sub.spec)))
        return sub

    def resume_subscriptions(self) -> list[str]:
        """Start again every subscription recorded and not ended (at the node's start):
        each resumes after the last row it stored or the position its provider opened it
        at, whichever is later, judged with the baseline its monitor established."""
        store = self.runtime.store
        resumed = []
        for kept in store.subscriptions.active():
            running = self.subscriptions.get(kept.subscription_id)
            if running is not None and running.running:
                continue  # (a hosted tenant resumed: those it ran were stopped with it)
            held, received = store.received_source(kept.subscription_id)
            known = [int(p) for p in (kept.since, held) if p is not None]
            after = str(max(known)) if known else ""  # "" (never said): from now, as asked
            spec = kept.spec
            if kept.centre is not None and kept.sigma is not None and spec.sigma is None:
                spec = replace(spec, centre=kept.centre, sigma=kept.sigma)
            sub = Subscription(
                kept.subscription_id,
                kept.provider,
                kept.agreement_id,
                kept.characteristic,
                kept.spec,
                purpose=kept.purpose,
                received=received,
                position=after,
                recorded=True,
                resumed=True,
            )
            self._start(sub, _Watch(SpcMonitor(spec), baseline_kept=kept.centre is not None))
            logger.info("resuming subscription %s to %s", kept.subscription_id, kept.provider)
            resumed.append(kept.subscription_id)
        return resumed

    async def end_subscriptions(
        self, reason: str, *, ids: Iterable[str] = (), agreements: Iterable[str] = ()
    ) -> list[str]:
        """End the subscriptions named by id, and those under `agreements`, for good (the
        stream stops, and no restart resumes them); the ids ended now."""
        wanted, under = set(ids), set(agreements)
        store = self.runtime.store
        if under:
            active = await asyncio.to_thread(store.subscriptions.active)
            wanted |= {k.subscription_id for k in active if k.agreement_id in under}
            wanted |= {s.subscription_id for s in self.subscriptions.values()
                       if s.agreement_id in under}  # fmt: skip
        ended = []
        for subscription_id in sorted(wanted):
            sub = self.subscriptions.get(subscription_id)
            if sub is not None and sub.task is not None:
                sub.task.cancel()
                await asyncio.gather(sub.task, return_exceptions=True)
            now = self.runtime.clock.now()
            kept = await asyncio.to_thread(store.subscriptions.end, subscription_id, now, reason)
            running = sub is not None and sub.state != "ended"
            if sub is not None:
                sub.state, sub.error = "ended", reason
            if kept or running:
                ended.append(subscription_id)
        return ended

    def _start(self, sub: Subscription, watch: _Watch) -> None:
        sub.task = asyncio.create_task(self._run_subscription(sub, watch))
        self.subscriptions[sub.subscription_id] = sub

    async def _run_subscription(self, sub: Subscription, watch: _Watch) -> None:
        live = self.metrics.subscriptions.labels(side="consumer")
        live.inc()
        wait = RECONNECT_FIRST_S
        try:
            while True:
                try:
                    await self._stream(sub, watch)
                    reason = "the provider ended the stream"
                except grpc.aio.AioRpcError as exc:
                    reason = f"{exc.code().name}: {exc.details()}"
                    if exc.code() in _FINAL:
                        await self._end(sub, reason)
                        return
                except _Ended as exc:
                    await self._end(sub, str(exc))
                    return
                except Exception as exc:  # e.g. the database busy, the peer unknown just now
                    reason = f"{type(exc).__name__}: {exc}"
                    if not sub.recorded:  # never opened: the caller gets the error itself
                        sub.state, sub.error = "ended", reason
                        raise
                if not sub.recorded:  # never opened: refused now, as asked (nothing kept)
                    sub.state, sub.error = "ended", reason
                    logger.warning("subscription %s refused: %s", sub.subscription_id, reason)
                    return
                if sub.state == "streaming":  # it was open: the next try comes soon
                    wait = RECONNECT_FIRST_S
                sub.state, sub.error = "reconnecting", reason
                sub.reconnects += 1
                logger.warning(
                    "subscription %s broke (%s); opening it again in %.0f s",
                    sub.subscription_id,
                    reason,
                    wait,
                )
                await asyncio.sleep(wait)
                wait = min(2 * wait, RECONNECT_MAX_S)
        finally:
            live.dec()
            sub.connected.set()

    async def _end(self, sub: Subscription, reason: str) -> None:
        sub.state, sub.error = "ended", reason
        logger.warning("subscription %s ended: %s", sub.subscription_id, reason)
        if sub.recorded:
            now = self.runtime.clock.now()
            await asyncio.to_thread(
                self.runtime.store.subscriptions.end, sub.subscription_id, now, reason
            )

    async def _record(self, sub: Subscription, position: str) -> None:
        """Keep the subscription: its provider opened the stream at `position`."""
        kept = StoredSubscription(
            sub.subscription_id,
            sub.agreement_id,
            sub.provider,
            sub.purpose,
            sub.characteristic,
            sub.spec,
            self.runtime.clock.now(),
            since=position or None,
        )
        await asyncio.to_thread(self.runtime.store.subscriptions.add, kept)
        sub.recorded = True

    async def _stream(self, sub: Subscription, watch: _Watch) -> None:
        """One stream from the provider, after `sub.position`, until it ends (`sub.state`
        is ``streaming`` once the provider opened it)."""
        # the agreement's provider, not whoever holds its name now (`confirm_member`)
        stored = await asyncio.to_thread(self.runtime.store.agreement, sub.agreement_id)
        await self.peers.confirm_member(stored.signed.agreement.provider_id)
        # the events' raw bytes are kept (deserialised here, not by the stub) so that the
        # metrics count what arrived without encoding each event again (`ByteSize()`)
        subscribe = self.peers.channel(sub.provider).unary_stream(
            SUBSCRIBE_METHOD,
            request_serializer=subscription_pb2.SubscribeRequest.SerializeToString,
            response_deserializer=None,
            _registered_method=True,
        )
        request = StreamRequest(
            sub.subscription_id, sub.agreement_id, sub.purpose, after_position=sub.position
        )
        call = subscribe(stream_request_to_proto(request))
        try:
            await self._take(sub, watch, call)
        finally:  # (a no-op once it ended) the provider's stream is not left open when we
            call.cancel()  # stop reading it: a refused event held it open until collected

    async def _take(self, sub: Subscription, watch: _Watch, events: AsyncIterable[bytes]) -> None:
        """Store and watch the `events` of one stream until it ends."""
        opened = False
        async for raw in events:
            try:
                event = stream_event_from_proto(subscription_pb2.SubscriptionEvent.FromString(raw))
            except (ContractError, ValueError) as exc:
                raise _Ended(f"the provider sent an unreadable event: {exc}") from None
            if not opened:
                opened = True
                if not sub.recorded:
                    await self._record(sub, event.position)
                sub.state, sub.error = "streaming", ""
                sub.connected.set()
            if event.heartbeat:
                if event.position:
                    sub.position = event.position
                await self._keep_alerts(sub, watch)  # (those a failed write left)
                continue
            arrived = self.runtime.clock.now()
            sub.latencies_ms.append((arrived - event.sent_at) / timedelta(milliseconds=1))
            try:
                seqs = row_seqs(event.positions)  # (checked as the event was decoded)
                rows = [
                    IncomingRow(seq, r.order_id, r.payload)
                    for seq, r in zip(seqs, event.rows, strict=True)
                ]
                keep = self.runtime.store_received
                await asyncio.to_thread(keep, sub.agreement_id, sub.subscription_id, rows, arrived)
            except (ContractError, ValueError) as exc:
                raise _Ended(str(exc)) from None
            # Fed to the monitor after the rows are stored and before the position moves
            # on; the feeding is in memory and raises nothing (`_watch_rows`), so a
            # stored row is monitored exactly once: a store that fails leaves the
            # position, the provider sends the rows again, the store keeps them once and
            # the monitor sees them then. The alerts' writes come last: one that fails
            # breaks the stream after the position moved (nothing is fed twice) and the
            # alert waits in `watch.unkept` for the next event. (The monitor lives in
            # memory: a node killed between the store and the feed resumes after the
            # rows it stored, with the baseline it kept, and does not judge those rows.)
            watch.unkept += await asyncio.to_thread(
                self._watch_rows, sub, watch.monitor, event.rows, seqs, arrived
            )
            self.metrics.rows("received", "stream", len(rows), len(raw))
            sub.received += len(rows)
            sub.position = event.positions[-1]
            await self._keep_alerts(sub, watch)
            await self._keep_baseline(sub, watch)

    async def _keep_alerts(self, sub: Subscription, watch: _Watch) -> None:
        """Keep and queue the alerts raised and not kept yet, in a worker thread: a
        provider's event of out-of-control rows raised thousands of them, a write each,
        seconds of our event loop for one message."""
        if watch.unkept:
            await asyncio.to_thread(self._raise_alerts, sub, watch.unkept)

    def _raise_alerts(
        self, sub: Subscription, unkept: list[tuple[SpcAlert, dict[str, Any]]]
    ) -> None:
        while unkept:  # each taken off once kept (a repeat of a kept one is refused by id)
            alert, record = unkept[0]
            self._raise_alert(sub, alert, record)
            del unkept[0]

    async def _keep_baseline(self, sub: Subscription, watch: _Watch) -> None:
        """Record the centre and sigma the monitor established, once (a resumed monitor
        judges with them)."""
        centre, sigma = watch.monitor.centre, watch.monitor.sigma
        if watch.baseline_kept or centre is None or sigma is None:
            return
        watch.baseline_kept = True
        if math.isfinite(centre) and math.isfinite(sigma):
            keep = self.runtime.store.subscriptions.set_baseline
            await asyncio.to_thread(keep, sub.subscription_id, centre, sigma)

    def _watch_rows(
        self,
        sub: Subscription,
        monitor: SpcMonitor,
        rows: Sequence[Any],
        seqs: Sequence[int],
        arrived: datetime,
    ) -> list[tuple[SpcAlert, dict[str, Any]]]:
        """Feed the stored `rows` to the monitor; the alerts raised, with their records.

        A row is the provider's to write, so none may stop the monitoring of the rows
        after it: one whose ``inspected_at`` is no instant with a zone is judged at its
        arrival time (as one without it always was), not skipped, since a supplier could
        otherwise hide an out-of-control value behind a broken time; one with no finite
        number to judge (or no JSON object) is passed over, as a row without the
        characteristic always was. Both are named in one warning each per event (a
        provider's rows do not flood the log): the subscription, how many, and the first
        row's position and fault. Nothing of the provider's making raises here."""
        import json

        from qdspace.policies.canonical import parse_datetime

        raised: list[tuple[SpcAlert, dict[str, Any]]] = []
        untimed: list[str] = []
        skipped: list[str] = []
        for row, seq in zip(rows, seqs, strict=True):
            try:
                record = json.loads(row.payload)
                if not isinstance(record, dict):
                    raise ValueError("the row is no JSON object")
                value = characteristic_value(record, sub.characteristic)
                if value is None:
                    continue
                at, when = record.get("inspected_at"), arrived
                try:
                    if at is not None and not isinstance(at, str):
                        raise ValueError(f"inspected_at is a JSON {type(at).__name__}, no text")
                    if at is not None:
                        when = parse_datetime(at)
                except ValueError as exc:
                    untimed.append(f"row {seq}: {exc}"[:200])
                raised += [(alert, record) for alert in monitor.add(value, when)]
            except (ValueError, TypeError, ArithmeticError, RecursionError) as exc:
                skipped.append(f"row {seq}: {exc}"[:200])
        if untimed:
            logger.warning(
                "subscription %s: %d rows from %s had no usable inspected_at, judged at "
                "their arrival (first: %s)",
                sub.subscription_id, len(untimed), sub.provider, untimed[0],
            )  # fmt: skip
        if skipped:
            logger.warning(
                "subscription %s: %d rows from %s could not be judged, passed over "
                "(first: %s)",
                sub.subscription_id, len(skipped), sub.provider, skipped[0],
            )  # fmt: skip
        return raised

    def _raise_alert(self, sub: Subscription, alert: SpcAlert, record: dict[str, Any]) -> None:
        # named by the record that set it off (its key and version), not by the point's
        # index: a resumed monitor counts from 0 again, and the provider keeps one alert
        # per id (a second with the same id would be taken for a repeat)
        record_id = f"{record.get(KEY_FIELD)}:{record.get(VERSION_FIELD)}"
        digest = hashlib.sha256(f"{sub.subscription_id}:{alert.rule}:{record_id}".encode())
        if len(alert.points) > MAX_ALERT_POINTS:  # the newest: what a notice may carry
            alert = replace(alert, points=alert.points[-MAX_ALERT_POINTS:])
        notice = QualityAlert(
            f"alert-{digest.hexdigest()[:16]}",
            alert,
            sub.agreement_id,
            str(record.get("order_id") or ""),
            str(record.get("station") or ""),
            sub.characteristic,
        )
        # for the member the agreement names (the name it is reached by can change hands)
        provider_id = self.runtime.store.agreement(sub.agreement_id).signed.agreement.provider_id
        message = self.runtime.notification(provider_id, notice, notice.alert_id)
        keep = self.runtime.store.subscriptions.record_alert
        kept = keep(sub.subscription_id, notice, self.runtime.clock.now(), [message])
        self.metrics.spc_alerts.labels(rule=alert.rule).inc()
        if kept == "kept":
            sub.alerts_raised += 1
            logger.warning(
                "SPC alert on %s from %s: %s", sub.characteristic, sub.provider, alert.description
            )
        elif kept == "full":
            sub.alerts_unsent += 1
            if sub.alerts_unsent == 1:
                logger.warning(
                    "subscription %s keeps %d alerts already: further ones are counted only",
                    sub.subscription_id,
                    MAX_RAISED_PER_SUBSCRIPTION,
                )
