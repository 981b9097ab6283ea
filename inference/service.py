"""The inspection line as a long-running service: until stopped, following activations.

``inspect run`` is a timed run for a demo or a benchmark; a factory runs the line for
weeks. ``InspectionService`` runs the same ``InspectionLine`` until its stop event is
set (the CLI sets it on SIGTERM/SIGINT), or until finite sources are exhausted, and then
stops it the graceful way the line already knows: no new frames, frames in flight
answered (or given up and counted), queued verdicts flushed.

While it runs, a tick every ``poll_s`` keeps the tier honest:

- **activation**: the registry's manifest is read and, when ``inspect activate`` made
  another version active, the tier hot-swaps to it (frames keep flowing; the batch in
  progress finishes on the old version; every verdict names its version);
- **stale replicas**: a replica Serve restarted after a node loss comes up with the
  version it was first deployed with; a verdict from an unexpected version some time
  after a swap means exactly that, and the current version is swapped in again
  (idempotent on replicas that already have it).

Frames go through a ``RetryingJudge``, so a frame whose replica died is asked again and
one that cannot be served is counted as dropped and alarmed (``inference.retry``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from qdspace.inference.alarms import AlarmLog
from qdspace.inference.errors import InferenceError, ServingError
from qdspace.inference.line import AuditHook, InspectionLine, LineConfig, StationSpec
from qdspace.inference.retry import DEFAULT_ATTEMPTS, DEFAULT_BACKOFF_S, RetryCounts, RetryingJudge
from qdspace.inference.session import InspectionSession
from qdspace.inference.stats import LineSnapshot
from qdspace.inference.writer import VerdictSink

logger = logging.getLogger("inference")

DEFAULT_POLL_S = 0.5
#: a verdict from an old version this long after a swap is not a frame that was
#: already in a batch when the swap came, but a replica that missed it
STALE_AFTER_S = 2.0


@dataclass(frozen=True)
class ServiceSettings:
    """How often the service looks at the registry, and how hard it retries a frame."""

    poll_s: float = DEFAULT_POLL_S
    attempts: int = DEFAULT_ATTEMPTS
    backoff_s: tuple[float, ...] = DEFAULT_BACKOFF_S
    stale_after_s: float = STALE_AFTER_S


@dataclass(frozen=True)
class ServiceSnapshot:
    """The line's counters and the tier's books; every frame taken is in one column.

    ``taken == served + dropped + bad_frames`` once the line has stopped: ``dropped``
    is frames skipped for backlog plus frames the tier gave up on, each alarmed.
    """

    line: LineSnapshot
    tier: RetryCounts
    version: str
    swaps: int
    resyncs: int
    replicas: int | None
    alarms: dict[str, int] = field(default_factory=dict)

    @property
    def served(self) -> int:
        """Frames that got a verdict."""
        return sum(c.judged for c in self.line.stations.values())

    @property
    def dropped(self) -> int:
        """Frames that got no verdict: skipped (backlog) or given up by the tier."""
        return sum(c.skipped + c.judge_errors for c in self.line.stations.values())

    @property
    def bad_frames(self) -> int:
        """Frames that could not be judged (unreadable, wrong shape)."""
        return sum(c.bad_frames for c in self.line.stations.values())

    @property
    def taken(self) -> int:
        """Every frame the sources handed out."""
        return self.served + self.dropped + self.bad_frames


class InspectionService:
    """Runs a started session's line until stopped, following activations."""

    def __init__(
        self,
        session: InspectionSession,
        sink: VerdictSink,
        stations: Sequence[StationSpec],
        config: LineConfig,
        alarms: AlarmLog | None = None,
        audit: AuditHook | None = None,
        settings: ServiceSettings | None = None,
    ) -> None:
        if session.version is None:
            raise InferenceError("start the inspection session before building its service")
        self.session = session
        self.settings = settings or ServiceSettings()
        self.alarms = alarms or session.alarms
        self.judge = RetryingJudge(session.judge, self.settings.attempts, self.settings.backoff_s)
        self.judge.expect(session.version.version)
        self.line = InspectionLine(self.judge, sink, stations, config, self.alarms, audit)
        self._swapped_at = time.monotonic()
        self._swaps = self._resyncs = 0

    def run(
        self,
        stop: threading.Event,
        on_tick: Callable[[ServiceSnapshot], None] | None = None,
    ) -> ServiceSnapshot:
        """Serve until ``stop`` is set or every source is exhausted; the final snapshot."""
        self.line.start()
        try:
            while not stop.is_set() and not self.line.wait(0):
                stop.wait(self.settings.poll_s)
                self.tick()
                if on_tick is not None:
                    on_tick(self.snapshot())
        finally:
            line = self.line.stop()
        return self.snapshot(line)

    def tick(self) -> None:
        """Follow the registry's active version; re-swap a replica that missed a swap."""
        swapped = self.session.follow_active()
        if swapped is not None:
            self._swaps += 1
            self._mark(swapped.version)
            logger.info("inference.service: following activation, now %s", swapped.version[:12])
            return
        stale = self.judge.stale_since()
        if stale is not None and stale - self._swapped_at > self.settings.stale_after_s:
            assert self.session.version is not None
            current = self.session.version.version
            logger.warning("inference.service: a replica judges with an old version, re-swapping")
            self._resyncs += 1
            if self._resync(current):
                self._mark(current)

    def _resync(self, version: str) -> bool:
        try:
            return self.session.swap(version)
        except ServingError:  # alarmed by the session; the next tick tries again
            return False

    def _mark(self, version: str) -> None:
        self._swapped_at = time.monotonic()
        self.judge.expect(version)

    def snapshot(self, line: LineSnapshot | None = None) -> ServiceSnapshot:
        """Counters now (or around a final line snapshot)."""
        tier = self.session.tier
        return ServiceSnapshot(
            line=line or self.line.snapshot(),
            tier=self.judge.counts(),
            version=self.session.version.version if self.session.version else "-",
            swaps=self._swaps,
            resyncs=self._resyncs,
            replicas=None if tier is None else _quiet(tier.running_replicas),
            alarms=self.alarms.counts(),
        )


def _quiet(count: Callable[[], int]) -> int | None:
    """A replica count for display; ``None`` when the controller cannot be asked now."""
    try:
        return count()
    except Exception:  # a display must not stop the service
        return None
