"""The consumer's live subscriptions, with SPC early warning on what arrives.

A subscription is a long-running stream from a provider: every event's rows are stored
as they arrive (with the latency since the provider sent them) and fed to an SPC
monitor on one characteristic; an alarm becomes a `QualityAlert` kept on the
subscription and queued in the outbox for the provider. It is a room of its own because
it is the one consumer drive that never finishes and the one that watches the data
rather than moving it; `ContractClient` mixes it in.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import grpc

from qdspace.connector.contract_errors import ContractError
from qdspace.connector.contract_store import IncomingRow
from qdspace.connector.encoding import StreamRequest
from qdspace.connector.spc import (
    QualityAlert,
    SpcAlert,
    SpcMonitor,
    SpcSpec,
    characteristic_value,
)
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


class ConsumerSubscriptions:
    """Live subscriptions of a consumer (a mixin of `ContractClient`, which sets these)."""

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
        )
        sub.task = asyncio.create_task(self._run_subscription(sub, purpose))
        self.subscriptions[sub.subscription_id] = sub
        return sub

    async def _run_subscription(self, sub: Subscription, purpose: str) -> None:
        monitor = SpcMonitor(sub.spec)
        # the events' raw bytes are kept (deserialised here, not by the stub) so that the
        # metrics count what arrived without encoding each event again (`ByteSize()`)
        subscribe = self.peers.channel(sub.provider).unary_stream(
            SUBSCRIBE_METHOD,
            request_serializer=subscription_pb2.SubscribeRequest.SerializeToString,
            response_deserializer=None,
            _registered_method=True,
        )
        store = self.runtime.store
        request = StreamRequest(sub.subscription_id, sub.agreement_id, purpose)
        live = self.metrics.subscriptions.labels(side="consumer")
        live.inc()
        try:
            async for raw in subscribe(stream_request_to_proto(request)):
                sub.connected.set()
                wire = subscription_pb2.SubscriptionEvent.FromString(raw)
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
                self.metrics.rows("received", "stream", len(rows), len(raw))
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
            live.dec()
            sub.connected.set()

    def _spc(self, sub: Subscription, monitor: SpcMonitor, rows: Sequence[Any]) -> None:
        import json

        from qdspace.policies.canonical import parse_datetime

        for row in rows:
            record = json.loads(row.payload)
            value = characteristic_value(record, sub.characteristic)
            if value is None:
                continue
            at = record.get("inspected_at")
            when = parse_datetime(at) if isinstance(at, str) else self.runtime.clock.now()
            for alert in monitor.add(value, when):
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
        self.metrics.spc_alerts.labels(rule=alert.rule).inc()
        logger.warning(
            "SPC alert on %s from %s: %s", sub.characteristic, sub.provider, alert.description
        )
        message = self.runtime.notification(sub.provider, notice, notice.alert_id)
        self.runtime.store.enqueue([message], self.runtime.clock.now())
