"""The node's Prometheus metrics: one registry per node, every series with bounded labels.

Each node holds its own `NodeMetrics` (on the `NodeContext`), with its own
``CollectorRegistry`` rather than prometheus_client's global default: tests run two nodes
in one process, and their counts must not mix. The module only defines metrics; the
places that observe them are the adapters (the API middleware in `node.api.observe`,
the gRPC interceptor in `node.rpc.observe`, the transfer and subscription code), so
runtime, rpc and api can all import it without importing each other.

Labels are scraped without a credential, so they carry nothing about who talks to whom:
HTTP routes are the route *templates* (``/v1/peers/{name}/hello``, never the name), gRPC
methods are the fixed service methods, and no agreement, transfer or peer id is ever a
label value. Every label set is bounded by the code, not by callers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from qdspace.federation.round_status import RoundRecord

#: the route label of a request no route matched (a scanner's random paths stay one series)
UNMATCHED_ROUTE = "<unmatched>"
#: seconds; from a health probe (ms) to a large pull batch or a chain call (tens of s)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class NodeMetrics:
    """Every metric one node exports, registered in the node's own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_latency = Histogram(
            "qdspace_http_request_duration_seconds",
            "Operator API request latency by route template, method and status.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.grpc_latency = Histogram(
            "qdspace_grpc_server_handling_seconds",
            "gRPC server call latency by full method name and status code.",
            ["method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.transfer_rows = Counter(
            "qdspace_transfer_rows",
            "Rows released to consumers (sent) or stored from providers (received).",
            ["direction", "mode"],
            registry=r,
        )
        self.transfer_bytes = Counter(
            "qdspace_transfer_bytes",
            "Wire bytes of row batches released (sent) or stored (received).",
            ["direction", "mode"],
            registry=r,
        )
        self.subscriptions = Gauge(
            "qdspace_live_subscriptions",
            "Live subscription streams: served to consumers (provider) or followed (consumer).",
            ["side"],
            registry=r,
        )
        self.outbox_backlog = Gauge(
            "qdspace_contract_outbox_backlog",
            "Contract messages to peers not yet delivered.",
            registry=r,
        )
        self.anchor_queue = Gauge(
            "qdspace_anchoring_queue_depth",
            "Leaves queued for anchoring and not yet in a batch, by leaf kind.",
            ["kind"],
            registry=r,
        )
        self.anchor_lag = Gauge(
            "qdspace_anchoring_lag_seconds",
            "Age of the oldest leaf waiting for anchoring (0 when none waits), by leaf kind.",
            ["kind"],
            registry=r,
        )
        self.spc_alerts = Counter(
            "qdspace_spc_alerts",
            "SPC alerts this node raised on live data it follows, by control-chart rule.",
            ["rule"],
            registry=r,
        )
        self.federation_rounds = Histogram(
            "qdspace_federation_round_seconds",
            "Time from a federated round's opening to its aggregation, on the coordinator.",
            buckets=(1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0),
            registry=r,
        )
        self.certificate_expiry = Gauge(
            "qdspace_member_certificate_expiry_timestamp_seconds",
            "When the member certificate this node presents stops being valid (Unix time); "
            "peers refuse it after: renew before (node renew, host tenant renew).",
            registry=r,
        )
        self.dsp_refused = Counter(
            "qdspace_dsp_requests_refused",
            "DSP requests of members refused before any work (node.dsp.caps), by the limit "
            "met: rate (rpc_rate_per_peer) or in_flight (the calls and streams caps). A "
            "gRPC call refused so is a RESOURCE_EXHAUSTED in qdspace_grpc_server_handling.",
            ["limit"],
            registry=r,
        )
        self._disk: tuple[Gauge, Gauge] | None = None  # made by `sample_disk`
        for side in ("provider", "consumer"):
            self.subscriptions.labels(side=side)
        for limit in ("rate", "in_flight"):
            self.dsp_refused.labels(limit=limit)
        for direction in ("sent", "received"):
            for mode in ("pull", "stream"):
                self.transfer_rows.labels(direction=direction, mode=mode)
                self.transfer_bytes.labels(direction=direction, mode=mode)

    def rows(self, direction: str, mode: str, rows: int, size: int) -> None:
        """Count ``rows`` rows of ``size`` wire bytes sent or received by pull or stream."""
        self.transfer_rows.labels(direction=direction, mode=mode).inc(rows)
        self.transfer_bytes.labels(direction=direction, mode=mode).inc(size)

    def federation_round(self, record: RoundRecord) -> None:
        """Time one aggregated round (a record of the coordinator's history)."""
        if record.seconds is not None:
            self.federation_rounds.observe(record.seconds)

    def sample_outbox(self, backlog: Callable[[], float]) -> None:
        """Read the outbox backlog from ``backlog`` at every scrape."""
        self.outbox_backlog.set_function(backlog)

    def sample_disk(self, free: Callable[[], float], kept: float) -> None:
        """The free bytes of the database's disk, read at every scrape, and the bytes the
        node keeps free (`node.disk_room`); only a node that checks its disk has them."""
        if self._disk is None:
            self._disk = (
                Gauge(
                    "qdspace_database_disk_free_bytes",
                    "Free bytes on the filesystem of the node's SQLite database.",
                    registry=self.registry,
                ),
                Gauge(
                    "qdspace_database_disk_kept_free_bytes",
                    "Free bytes the node keeps for its own records (min_free_disk_mib): "
                    "ingests and rows received from providers that would leave less are refused.",
                    registry=self.registry,
                ),
            )
        self._disk[0].set_function(free)
        self._disk[1].set(kept)

    def sample_anchoring(
        self, kind: str, depth: Callable[[], float], lag: Callable[[], float]
    ) -> None:
        """Read one leaf kind's queue depth and lag at every scrape."""
        self.anchor_queue.labels(kind=kind).set_function(depth)
        self.anchor_lag.labels(kind=kind).set_function(lag)
