"""Station runners: frames at a set rate to a judge, verdicts to the node, never waiting.

Each station is a coroutine on one event loop (in its own thread) that takes a frame
every ``1/fps`` seconds. A frame is checked and hashed at the station, sent to the
judge (the Ray Serve tier, or an in-process onnxruntime session) without waiting for
the answer, and its verdict is offered to the ``VerdictWriter``. Nothing the line does
waits on the judge or the node: more than ``max_in_flight`` unanswered frames means
the next frame is skipped, a full verdict queue drops the verdict; both are counted
and alarmed. Bad frames and judge failures are counted, logged with the frame id, and
the station goes on.

A station reads its frames on a thread of its own (``_FrameReader``), never on the
loop, unless its source holds them in memory (``reads_in_loop``, `ArrayFrames`: the
hop to a thread and back doubled a burst's frame-to-stored p50, 8 -> 17-27 ms, for
reads that cannot block). A frame file is read and decoded in milliseconds, but one
big or slow file (a network share, a file the camera is still writing) read on the loop
would stall every station, and a read that hangs would freeze them all. Off the loop, a
slow read delays its own station only, and a read still hanging at stop is abandoned
and alarmed.
Whatever a source raises for a frame (an undecodable file, a bug in a source) is that
frame's failure: counted and alarmed as a bad frame, and the station reads the next.

A station that fails for any other reason (a bug, a listener that raises) must not
leave the line running with a part of it dead and nobody told: it raises a
``station_failed`` alarm, the line stops the way ``stop()`` does (frames in flight
answered, verdicts flushed), ``run()`` and ``wait()`` return at once, and ``stop()``
raises the error naming the station.
"""

from __future__ import annotations

import asyncio
import enum
import gc
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol

from qdspace.inference import alarms as kinds
from qdspace.inference.alarms import AlarmLog
from qdspace.inference.errors import FrameError, InferenceError
from qdspace.inference.frame_context import ProductionContext
from qdspace.inference.frames import check_frame, image_sha256
from qdspace.inference.mes_context import MesContext
from qdspace.inference.model import DEFAULT_THRESHOLD, OnnxClassifier
from qdspace.inference.sources import FrameSource, SourceFrame
from qdspace.inference.stats import LineSnapshot, LineStats
from qdspace.inference.verdicts import (
    UNTYPED_DEFECT_CODE,
    FrameRequest,
    ServedVerdict,
    inspection_row,
    judge_requests,
)
from qdspace.inference.writer import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CAPACITY,
    DEFAULT_FLUSH_INTERVAL_S,
    VerdictSink,
    VerdictWriter,
)

logger = logging.getLogger("inference")

DEFAULT_MAX_IN_FLIGHT = 8
DRAIN_TIMEOUT_S = 10.0
#: how often a station waiting on a slow frame read looks whether the line stops
READ_POLL_S = 0.1


class Judge(Protocol):
    """Judges one frame; the Serve tier batches concurrent calls."""

    async def __call__(self, request: FrameRequest, /) -> ServedVerdict: ...


class AuditHook(Protocol):
    """Receives verdicts of frames whose true label is known (audit samples)."""

    def observe(self, station: str, label: int, verdict: ServedVerdict, /) -> None: ...


class LocalJudge:
    """An in-process onnxruntime judge (no Ray): the baseline, and a node without Ray."""

    def __init__(self, model: OnnxClassifier, threshold: float = DEFAULT_THRESHOLD) -> None:
        self._model = model
        self._threshold = threshold

    async def __call__(self, request: FrameRequest) -> ServedVerdict:
        model = self._model
        answers = await asyncio.to_thread(judge_requests, model, [request], self._threshold)
        return answers[0]

    def swap(self, model: OnnxClassifier) -> None:
        """Judge the next frames with ``model``; frames in progress finish on the old one."""
        self._model = model


@dataclass(frozen=True)
class StationSpec:
    """A station: its name, where its frames come from and how fast; ``order_id`` and
    ``batch_id`` stand for frames whose source does not say (a frame's own win)."""

    name: str
    source: FrameSource
    fps: float
    order_id: str | None = None
    batch_id: str | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise InferenceError(
                f"station {self.name}: fps must be a positive number, not {self.fps}"
            )


@dataclass(frozen=True)
class LineConfig:
    """How the line runs; ``run_id`` makes inspection ids unique across runs."""

    run_id: str
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    queue_capacity: int = DEFAULT_CAPACITY
    write_batch_size: int = DEFAULT_BATCH_SIZE
    flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S
    defect_code: str = UNTYPED_DEFECT_CODE
    #: keep the objects alive at start out of the cyclic GC while the line runs: a full
    #: collection of a process that imported PyTorch and Ray scans ~300k objects and
    #: stalls every station for 100+ ms (the p99), while the line's own garbage is young
    freeze_gc: bool = True
    #: which unit each station had when (the MES): fills what a frame does not say
    mes: MesContext | None = None


class _NoFrame(enum.Enum):
    """A tick without a frame to judge: it was bad (counted, alarmed) or never came."""

    SKIP = enum.auto()


_ReadRequest = tuple[asyncio.AbstractEventLoop, "asyncio.Future[SourceFrame | None]"]


class _FrameReader:
    """One station's frame reads, one at a time, on a daemon thread of its own.

    Not the loop's default executor: its threads are shared by every station (and the
    local judge), and joined when the loop and the process end, so a read that hangs
    (a hard-mounted share that went away) would hold up the stop and the exit. This
    thread is the station's only; a hanging read holds up nothing but itself.
    """

    def __init__(self, station: str, source: FrameSource) -> None:
        self._source = source
        self._requests: queue.SimpleQueue[_ReadRequest | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=f"frames-{station}", daemon=True)
        self._thread.start()

    def read(self) -> asyncio.Future[SourceFrame | None]:
        """The next frame of the source, as a future of the running loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[SourceFrame | None] = loop.create_future()
        self._requests.put((loop, future))
        return future

    def close(self) -> None:
        """End the thread after the read in progress, if any."""
        self._requests.put(None)

    def _serve(self) -> None:
        while (request := self._requests.get()) is not None:
            loop, future = request
            try:
                item = self._source.next_frame()
            except Exception as exc:  # the station judges what it was
                settle = _settler(future, None, exc)
            else:
                settle = _settler(future, item, None)
            try:
                loop.call_soon_threadsafe(settle)
            except RuntimeError:  # the loop ended while this read hung: nobody waits
                return


def _settler(
    future: asyncio.Future[SourceFrame | None],
    item: SourceFrame | None,
    error: Exception | None,
) -> Callable[[], None]:
    def settle() -> None:
        if future.done():  # given up at stop
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(item)

    return settle


class InspectionLine:
    """Runs stations on one event loop thread and a writer thread until stopped."""

    def __init__(
        self,
        judge: Judge,
        sink: VerdictSink,
        stations: Sequence[StationSpec],
        config: LineConfig,
        alarms: AlarmLog | None = None,
        audit: AuditHook | None = None,
    ) -> None:
        if not stations:
            raise InferenceError("a line needs at least one station")
        if len({s.name for s in stations}) != len(stations):
            raise InferenceError(f"station names repeat: {[s.name for s in stations]}")
        self._judge = judge
        self._stations = list(stations)
        self._config = config
        self.alarms = alarms or AlarmLog()
        self.stats = LineStats()
        self._audit = audit
        self._writer = VerdictWriter(
            sink,
            self.alarms,
            config.queue_capacity,
            config.write_batch_size,
            config.flush_interval_s,
            on_stored=lambda _rows, latencies: self.stats.stored(latencies),
        )
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._finished = threading.Event()
        self._exhausted = threading.Event()
        #: the stations ended: every source exhausted, stopped, or one failed
        self._ended = threading.Event()
        self._error: BaseException | None = None
        self._failed_station: str | None = None
        self._failed_stations: set[str | None] = set()
        self._failed_lock = threading.Lock()
        self._frozen = False

    def start(self) -> None:
        """Start the writer and the stations (returns at once)."""
        if self._thread is not None:
            raise InferenceError("this line was already started")
        if self._config.freeze_gc:
            gc.collect()
            gc.freeze()
            self._frozen = True
        self._writer.start()
        self._thread = threading.Thread(target=self._run_loop, name="stations", daemon=True)
        self._thread.start()

    def stop(self) -> LineSnapshot:
        """Stop taking frames, wait for answers in flight, flush verdicts; final snapshot."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(DRAIN_TIMEOUT_S + 5.0)
        self._writer.stop(DRAIN_TIMEOUT_S)
        if self._frozen:
            gc.unfreeze()
            self._frozen = False
        if self._error is not None:
            where = "" if self._failed_station is None else f" at station {self._failed_station}"
            raise InferenceError(f"station loop failed{where}: {self._error!r}") from self._error
        return self.snapshot()

    def wait(self, timeout_s: float) -> bool:
        """Wait until the stations have ended: every source exhausted, or a station
        failed (``stop()`` then raises why); ``False`` on timeout."""
        return self._ended.wait(timeout_s)

    def run(
        self,
        seconds: float,
        on_tick: Callable[[LineSnapshot], None] | None = None,
        tick_s: float = 0.5,
    ) -> LineSnapshot:
        """Run for ``seconds`` (or until every source is exhausted), calling ``on_tick``."""
        self.start()
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline and not self._ended.is_set():
                self._ended.wait(min(tick_s, max(deadline - time.monotonic(), 0.0)))
                if on_tick is not None:
                    on_tick(self.snapshot())
        finally:
            final = self.stop()
        return final

    def snapshot(self) -> LineSnapshot:
        """Counters and latency percentiles now."""
        judged, stored, rate, versions, elapsed = self.stats.summaries()
        writer = self._writer.counts()
        return LineSnapshot(
            elapsed_s=elapsed,
            stations=self.stats.station_counts(),
            judged_latency=judged,
            stored_latency=stored,
            throughput_fps=rate,
            model_versions=versions,
            stored=writer.stored,
            dropped_verdicts=writer.dropped,
            queued_verdicts=writer.queued,
            sink_errors=writer.sink_errors,
            rejected_verdicts=writer.rejected,
            alarms=self.alarms.counts(),
        )

    def _run_loop(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by stop(); the thread must not die silently
            self._failed(None, exc)
        finally:
            self._finished.set()
            self._ended.set()

    def _failed(self, station: str | None, exc: BaseException) -> None:
        """A station (``None``: the loop of all) failed: alarm, and stop the line.

        A station fails once: frames it had in flight may fail the same way before they
        see the stop (a listener that raises on every alarm), and one station stopping the
        line is one ``station_failed`` alarm, not one per frame."""
        self._stopping.set()
        self._ended.set()
        with self._failed_lock:
            if station in self._failed_stations:
                logger.debug("inference.line: %s failed again while stopping: %r", station, exc)
                return
            self._failed_stations.add(station)
            if self._error is None:
                self._error, self._failed_station = exc, station
        logger.error(
            "inference.line: station loop failed at %s", station or "the loop", exc_info=exc
        )
        try:
            self.alarms.raise_alarm(
                kinds.STATION_FAILED, station, f"the line stops: {type(exc).__name__}: {exc}"
            )
        except Exception:  # the listener failed too; the error is kept for stop()
            logger.exception("inference.line: the alarm listener failed")

    async def _main(self) -> None:
        in_flight = await asyncio.gather(*(self._guarded(spec) for spec in self._stations))
        if self._error is None:
            self._exhausted.set()
        self._ended.set()
        pending = set().union(*in_flight)
        if not pending:
            return
        _, late = await asyncio.wait(pending, timeout=DRAIN_TIMEOUT_S)
        for task in late:
            task.cancel()
            station = task.get_name()
            self.stats.count(station, "judge_errors")
            self.alarms.raise_alarm(
                kinds.JUDGE_FAILED, station, f"no verdict {DRAIN_TIMEOUT_S}s after stop"
            )

    async def _guarded(self, spec: StationSpec) -> set[asyncio.Task[None]]:
        """Run a station; if it fails, stop the line. The frames still in flight."""
        in_flight: set[asyncio.Task[None]] = set()
        in_loop = getattr(spec.source, "reads_in_loop", False)
        reader = None if in_loop else _FrameReader(spec.name, spec.source)
        try:
            await self._station(spec, reader, in_flight)
        except Exception as exc:
            self._failed(spec.name, exc)
        finally:
            if reader is not None:
                reader.close()
        return set(in_flight)

    async def _read(
        self, spec: StationSpec, reader: _FrameReader | None
    ) -> SourceFrame | Literal[_NoFrame.SKIP] | None:
        """The station's next frame (``None``: exhausted), or ``SKIP`` when it could not
        be had: a bad frame (counted and alarmed), or a read still running at stop.
        ``reader`` None: the source reads from memory (``reads_in_loop``), taken here."""
        try:
            if reader is None:
                return spec.source.next_frame()
            pending = reader.read()
            while not pending.done():
                if self._stopping.is_set():
                    pending.cancel()
                    self._bad_frame(spec.name, "a frame read had not returned at stop: abandoned")
                    return _NoFrame.SKIP
                await asyncio.wait({pending}, timeout=READ_POLL_S)
            return pending.result()
        except FrameError as exc:
            self._bad_frame(spec.name, str(exc))
        except Exception as exc:  # a source's own failure is that frame's, not the line's
            source = type(spec.source).__name__
            self._bad_frame(spec.name, f"frame source {source} failed: {exc!r}")
        return _NoFrame.SKIP

    async def _station(
        self, spec: StationSpec, reader: _FrameReader | None, in_flight: set[asyncio.Task[None]]
    ) -> None:
        """Take frames until stopped or exhausted; ``in_flight`` holds unanswered ones."""
        period = 1.0 / spec.fps
        next_tick = time.perf_counter()
        sequence = 0
        while not self._stopping.is_set():
            now = time.perf_counter()
            if now < next_tick:
                await asyncio.sleep(next_tick - now)
                continue
            if now - next_tick > 2 * period:  # the loop fell behind: resynchronise
                self.stats.count(spec.name, "late_ticks")
                next_tick = now
            next_tick += period
            if reader is None:
                # a read from memory never waits: without this a station behind its ticks
                # would take frames without ever letting the ones in flight be judged
                await asyncio.sleep(0)
                if self._stopping.is_set():
                    break
            item = await self._read(spec, reader)
            if item is _NoFrame.SKIP:
                continue
            if item is None:
                break
            sequence += 1
            self.stats.count(spec.name, "captured")
            if len(in_flight) >= self._config.max_in_flight:
                self.stats.count(spec.name, "skipped")
                self.alarms.raise_alarm(
                    kinds.FRAME_BACKLOG,
                    spec.name,
                    f"frame {item.frame_id} skipped: {len(in_flight)} frames await a verdict",
                )
                continue
            task = asyncio.create_task(self._inspect(spec, sequence, item, now), name=spec.name)
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            task.add_done_callback(self._inspected)

    def _inspected(self, task: asyncio.Task[None]) -> None:
        """A frame's inspection that raised (a bug, not a bad frame or a judge failure,
        which it handles) fails its station, instead of a verdict lost without a word."""
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._failed(task.get_name(), exc)

    def _bad_frame(self, station: str, message: str) -> None:
        self.stats.count(station, "bad_frames")
        self.alarms.raise_alarm(kinds.BAD_FRAME, station, message)

    async def _inspect(
        self, spec: StationSpec, sequence: int, item: SourceFrame, captured: float
    ) -> None:
        captured_at = datetime.now(UTC)
        try:
            frame = check_frame(item.frame, item.frame_id)
        except FrameError as exc:
            self._bad_frame(spec.name, str(exc))
            return
        request = FrameRequest(spec.name, item.frame_id, frame)
        try:
            verdict = await self._judge(request)
        except Exception as exc:  # the tier failed this call: count it, keep the line going
            self.stats.count(spec.name, "judge_errors")
            self.alarms.raise_alarm(
                kinds.JUDGE_FAILED, spec.name, f"frame {item.frame_id}: {exc!r}"
            )
            return
        latency_ms = (time.perf_counter() - captured) * 1000.0
        if verdict.error is not None and verdict.fault == "model":  # e.g. NaN: a judge error
            self.stats.count(spec.name, "judge_errors")
            self.alarms.raise_alarm(kinds.JUDGE_FAILED, spec.name, verdict.error)
            return
        if verdict.error is not None:
            self._bad_frame(spec.name, str(FrameError(item.frame_id, verdict.error)))
            return
        self.stats.judged(spec.name, latency_ms, verdict.model_version)
        image_hash = image_sha256(
            frame
        )  # after the verdict: it is the line's time, not the judge's
        context = item.context or ProductionContext()
        if self._config.mes is not None:
            known = self._config.mes.at(spec.name, captured_at)
            if known is not None:  # the frame's own name / sidecar wins
                context = context.over(known)
        row = inspection_row(
            inspection_id=f"{spec.name}-{self._config.run_id}-{sequence:07d}",
            station=spec.name,
            inspected_at=captured_at,
            verdict=verdict,
            image_hash=image_hash,
            latency_ms=latency_ms,
            defect_code=self._config.defect_code,
            order_id=context.order_id or spec.order_id,
            serial=context.serial,
            batch_id=context.batch_id or spec.batch_id,
        )
        self._writer.offer(row, captured)
        if self._audit is not None and item.label is not None:
            self._audit.observe(spec.name, item.label, verdict)
