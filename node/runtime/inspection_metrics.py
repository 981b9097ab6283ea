"""Prometheus series of a running inspection service (``inspect serve --metrics-port``).

The service is its own process, next to the node rather than inside it, so it cannot
add to the node's ``/metrics``; it serves its own on a port of its own, from its own
registry. Nothing is counted twice: a collector reads the service's snapshot at each
scrape (the line's counters and the tier's books are the one source), so the series
are exactly what the final summary will say.

Labels are fixed by the code (``outcome``, ``quantile``); no frame, station or model
id becomes a label value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from qdspace.inference.service import ServiceSnapshot

DEFAULT_METRICS_HOST = "127.0.0.1"


class ServiceCollector(Collector):
    """Frames by outcome, throughput, latency quantiles and replicas, read at scrape."""

    def __init__(self, snapshot: Callable[[], ServiceSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self._snapshot()
        frames = CounterMetricFamily(
            "qdspace_inspection_frames",
            "Frames taken by the line, by outcome (served, dropped, bad).",
            labels=["outcome"],
        )
        for outcome, value in (("served", s.served), ("dropped", s.dropped), ("bad", s.bad_frames)):
            frames.add_metric([outcome], value)
        yield frames
        yield CounterMetricFamily(
            "qdspace_inspection_frames_retried",
            "Frames sent to the tier again after a failed call (a replica lost).",
            value=s.tier.retried_frames,
        )
        yield GaugeMetricFamily(
            "qdspace_inspection_fps",
            "Verdicts per second over the last seconds.",
            value=s.line.throughput_fps,
        )
        latency = GaugeMetricFamily(
            "qdspace_inspection_latency_seconds",
            "Frame to verdict latency quantiles over the latest frames.",
            labels=["quantile"],
        )
        j = s.line.judged_latency
        for quantile, ms in (("0.5", j.p50), ("0.9", j.p90), ("0.99", j.p99)):
            latency.add_metric([quantile], ms / 1000.0)  # NaN while no frame was judged
        yield latency
        if s.replicas is not None:
            yield GaugeMetricFamily(
                "qdspace_inspection_replicas",
                "Serve replicas running now.",
                value=s.replicas,
            )


def serve_metrics(
    snapshot: Callable[[], ServiceSnapshot], port: int, host: str = DEFAULT_METRICS_HOST
) -> Callable[[], None]:
    """Serve the service's series on ``host:port``; returns a function that stops it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(snapshot))
    server, thread = start_http_server(port, host, registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop
