"""Verdicts into the node's QDM in micro-batches, off the line's path.

Stations ``offer`` rows to a bounded queue and never wait: when the node is slower than
the line the queue fills, and each verdict that does not fit is counted and alarmed.
One writer thread drains the queue into a ``VerdictSink`` (for a node, its quality
store's ``ingest_rows``) in batches of up to ``batch_size`` rows. By default it never
waits for a batch to fill (group commit): it writes what is queued as soon as a verdict
arrives, and what arrives during a write goes into the next batch, so a quiet line
stores each verdict at once and a busy one in larger batches; ``flush_interval_s > 0``
makes it wait that long for company instead. A failing sink is retried with back-off;
meanwhile the queue absorbs what it can.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from qdspace.inference.alarms import SINK_FAILED, VERDICT_QUEUE_FULL, VERDICT_REJECTED, AlarmLog

logger = logging.getLogger("inference")

DEFAULT_CAPACITY = 4096
DEFAULT_BATCH_SIZE = 64
DEFAULT_FLUSH_INTERVAL_S = 0.0
RETRY_BACKOFF_S = (0.05, 0.2, 1.0)


class VerdictSink(Protocol):
    """Stores a micro-batch of QDM ``inspection`` rows; raises when it could not.

    It may return an ingest report: one with a ``rejected`` list (or count) has the rows
    the store refused counted and alarmed, and ``duplicates`` counted.
    """

    def __call__(self, rows: list[dict[str, Any]], /) -> object: ...


class RowIngest(Protocol):
    """The node store's ingest method (``QualityStore.ingest_rows``), duck-typed."""

    def __call__(self, kind: str, rows: Any, /, *, source: str = ...) -> object: ...


def ingest_sink(ingest_rows: RowIngest, source: str = "inspection-line") -> VerdictSink:
    """A sink that hands each micro-batch to a store's ``ingest_rows('inspection', ...)``."""

    def sink(rows: list[dict[str, Any]]) -> object:
        return ingest_rows("inspection", list(enumerate(rows, start=1)), source=source)

    return sink


@dataclass(frozen=True)
class WriterCounts:
    """How many verdicts were offered, stored, dropped, and how the sink fared."""

    offered: int
    stored: int
    dropped: int
    batches: int
    sink_errors: int
    queued: int
    rejected: int = 0
    duplicates: int = 0


class VerdictWriter:
    """A bounded queue and one thread that writes micro-batches to a sink."""

    def __init__(
        self,
        sink: VerdictSink,
        alarms: AlarmLog,
        capacity: int = DEFAULT_CAPACITY,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        on_stored: Callable[[Sequence[Mapping[str, Any]], list[float]], None] | None = None,
    ) -> None:
        self._sink = sink
        self._alarms = alarms
        self._queue: queue.Queue[tuple[dict[str, Any], float]] = queue.Queue(capacity)
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._on_stored = on_stored
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._offered = self._stored = self._dropped = self._batches = self._errors = 0
        self._rejected = self._duplicates = 0

    def start(self) -> None:
        """Start the writer thread."""
        self._thread = threading.Thread(target=self._run, name="verdict-writer", daemon=True)
        self._thread.start()

    def offer(self, row: dict[str, Any], captured: float) -> bool:
        """Queue a row without waiting; ``False`` (counted, alarmed) when the queue is full.

        ``captured`` is the ``time.perf_counter()`` of the frame, so the writer can tell
        how long a frame took to become a stored verdict.
        """
        with self._lock:
            self._offered += 1
        try:
            self._queue.put_nowait((row, captured))
        except queue.Full:
            with self._lock:
                self._dropped += 1
            self._alarms.raise_alarm(
                VERDICT_QUEUE_FULL,
                str(row.get("station")),
                f"verdict of frame {row.get('frame_id')} dropped: "
                f"{self._queue.maxsize} verdicts wait for the node",
            )
            return False
        return True

    def counts(self) -> WriterCounts:
        """A consistent snapshot of the counters."""
        with self._lock:
            return WriterCounts(
                self._offered,
                self._stored,
                self._dropped,
                self._batches,
                self._errors,
                self._queue.qsize(),
                self._rejected,
                self._duplicates,
            )

    def stop(self, timeout_s: float = 10.0) -> WriterCounts:
        """Flush what is queued (as long as the sink takes it) and stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                logger.error("inference.writer: still flushing after %.1fs", timeout_s)
        return self.counts()

    def _take_batch(self) -> list[tuple[dict[str, Any], float]]:
        try:
            first = self._queue.get(timeout=0.1)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self._flush_interval_s
        while len(batch) < self._batch_size:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else None
                if item is None:
                    item = self._queue.get_nowait()
            except queue.Empty:
                break
            batch.append(item)
        return batch

    def _run(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            batch = self._take_batch()
            if batch:
                self._write(batch)

    def _write(self, batch: list[tuple[dict[str, Any], float]]) -> None:
        rows = [row for row, _ in batch]
        attempt = 0
        while True:
            try:
                report = self._sink(rows)
                break
            except Exception as exc:  # any store failure: count, alarm, retry
                with self._lock:
                    self._errors += 1
                self._alarms.raise_alarm(
                    SINK_FAILED, None, f"storing {len(rows)} verdicts failed: {exc!r}"
                )
                if self._stop.is_set() and attempt >= len(RETRY_BACKOFF_S):
                    with self._lock:
                        self._dropped += len(rows)
                    return
                time.sleep(RETRY_BACKOFF_S[min(attempt, len(RETRY_BACKOFF_S) - 1)])
                attempt += 1
        stored_at = time.perf_counter()
        rejected = _rejected_of(report)
        duplicates = int(getattr(report, "duplicates", 0) or 0)
        with self._lock:
            self._stored += len(rows) - len(rejected)
            self._rejected += len(rejected)
            self._duplicates += duplicates
            self._batches += 1
        if rejected:
            self._alarms.raise_alarm(
                VERDICT_REJECTED,
                None,
                f"the store refused {len(rejected)} of {len(rows)} verdicts, first: {rejected[0]}",
            )
        if self._on_stored is not None:
            self._on_stored(rows, [stored_at - captured for _, captured in batch])


def _rejected_of(report: object) -> list[str]:
    """The refused rows of an ingest report, as printable reasons."""
    rejected = getattr(report, "rejected", None)
    if rejected is None:
        return []
    if isinstance(rejected, int):
        return [f"row {i}" for i in range(rejected)]
    return [str(r) for r in rejected]
