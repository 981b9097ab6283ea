"""Line counters and latency windows, shared by the station loop, the writer and displays."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

DEFAULT_WINDOW = 4096
RATE_WINDOW_S = 5.0
PERCENTILES = (50.0, 90.0, 99.0)


@dataclass(frozen=True)
class LatencySummary:
    """Percentiles (ms) of the latest samples; NaN when there are none."""

    count: int
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, samples: Iterable[float]) -> LatencySummary:
        """Summarise a set of latency samples in ms."""
        values = np.fromiter(samples, dtype=np.float64)
        if values.size == 0:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan)
        p50, p90, p99 = (float(v) for v in np.percentile(values, PERCENTILES))
        return cls(int(values.size), p50, p90, p99, float(values.max()))


@dataclass(frozen=True)
class StationCounts:
    """What happened to one station's frames so far."""

    captured: int = 0
    judged: int = 0
    bad_frames: int = 0
    skipped: int = 0
    judge_errors: int = 0
    late_ticks: int = 0


@dataclass(frozen=True)
class LineSnapshot:
    """A point-in-time view of the line, for the live display and the benchmark."""

    elapsed_s: float
    stations: Mapping[str, StationCounts]
    judged_latency: LatencySummary
    stored_latency: LatencySummary
    throughput_fps: float
    model_versions: Mapping[str, int]
    stored: int
    dropped_verdicts: int
    queued_verdicts: int
    sink_errors: int
    rejected_verdicts: int
    alarms: Mapping[str, int] = field(default_factory=dict)


class LineStats:
    """Thread-safe counters and bounded latency windows (frame -> verdict, frame -> stored)."""

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, Counter[str]] = {}
        self._judged_ms: deque[float] = deque(maxlen=window)
        self._stored_ms: deque[float] = deque(maxlen=window)
        self._done_at: deque[float] = deque(maxlen=window)
        self._versions: Counter[str] = Counter()
        self._started = time.monotonic()

    def count(self, station: str, what: str, n: int = 1) -> None:
        """Add ``n`` to a station counter (a ``StationCounts`` field name)."""
        with self._lock:
            self._counts.setdefault(station, Counter())[what] += n

    def judged(self, station: str, latency_ms: float, version: str | None) -> None:
        """A frame got its verdict after ``latency_ms``."""
        with self._lock:
            self._counts.setdefault(station, Counter())["judged"] += 1
            self._judged_ms.append(latency_ms)
            self._done_at.append(time.monotonic())
            self._versions[version or "-"] += 1

    def stored(self, latencies_s: Iterable[float]) -> None:
        """Verdicts reached the node, ``latencies_s`` after their frames were captured."""
        with self._lock:
            self._stored_ms.extend(1000.0 * s for s in latencies_s)

    def station_counts(self) -> dict[str, StationCounts]:
        """Per-station counters."""
        with self._lock:
            return {name: StationCounts(**dict(c)) for name, c in self._counts.items()}

    def latencies(self) -> tuple[list[float], list[float]]:
        """Copies of the judged and stored latency windows (ms)."""
        with self._lock:
            return list(self._judged_ms), list(self._stored_ms)

    def summaries(self) -> tuple[LatencySummary, LatencySummary, float, dict[str, int], float]:
        """Latency summaries, throughput over the last seconds, versions, elapsed time."""
        now = time.monotonic()
        with self._lock:
            judged = LatencySummary.of(self._judged_ms)
            stored = LatencySummary.of(self._stored_ms)
            recent = [t for t in self._done_at if now - t <= RATE_WINDOW_S]
            versions = dict(self._versions)
            elapsed = now - self._started
        span = min(RATE_WINDOW_S, elapsed)
        rate = len(recent) / span if span > 0 else 0.0
        return judged, stored, rate, versions, elapsed
