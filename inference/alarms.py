"""Alarms of the inspection tier: counted, logged, kept, and handed to whoever listens.

Nothing on the line fails silently: a dropped frame, a full verdict queue, a bad frame,
a model that would not load, an FPR/FNR over its threshold each raise an alarm. A burst
(a full queue drops many verdicts) is one log line per kind per second with a count,
so the log stays readable while every occurrence is still counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

logger = logging.getLogger("inference")

LOG_EVERY_S = 1.0
KEEP_ALARMS = 200

# Alarm kinds.
FRAME_BACKLOG = "frame_backlog"  # too many frames in flight: a frame was skipped
VERDICT_QUEUE_FULL = "verdict_queue_full"  # the node is slower than the line
BAD_FRAME = "bad_frame"  # wrong shape/dtype or unreadable image
JUDGE_FAILED = "judge_failed"  # the serving tier did not answer
SINK_FAILED = "sink_failed"  # the node's store failed a micro-batch (retried)
VERDICT_REJECTED = "verdict_rejected"  # the node's store refused rows as invalid
MODEL_REFUSED = "model_refused"  # a new model version did not load; the old one serves on
SWAP_FAILED = "swap_failed"  # replicas were lost during a swap; it is tried again
DRIFT = "drift"  # rolling FPR/FNR above its threshold
STATION_FAILED = "station_failed"  # a station (or the loop of all) failed: the line stops


@dataclass(frozen=True)
class Alarm:
    """One alarm: what, where (station or ``None`` for the tier), and when (UTC)."""

    kind: str
    station: str | None
    message: str
    raised_at: str


class AlarmLog:
    """Counts every alarm, keeps the latest ones, logs with throttling, calls a listener."""

    def __init__(
        self,
        listener: Callable[[Alarm], None] | None = None,
        keep: int = KEEP_ALARMS,
        log_every_s: float = LOG_EVERY_S,
    ) -> None:
        self._listener = listener
        self._recent: deque[Alarm] = deque(maxlen=keep)
        self._counts: Counter[str] = Counter()
        self._last_logged: dict[str, float] = {}
        self._unlogged: Counter[str] = Counter()
        self._log_every_s = log_every_s
        self._lock = threading.Lock()

    def raise_alarm(self, kind: str, station: str | None, message: str) -> Alarm:
        """Record an alarm; it is always counted and passed on, and logged at most 1/s/kind."""
        alarm = Alarm(kind, station, message, datetime.now(UTC).isoformat(timespec="milliseconds"))
        now = time.monotonic()
        key = f"{kind}:{station}"
        with self._lock:
            self._counts[kind] += 1
            self._recent.append(alarm)
            due = now - self._last_logged.get(key, -1e9) >= self._log_every_s
            suppressed = self._unlogged.pop(key, 0) if due else 0
            if due:
                self._last_logged[key] = now
            else:
                self._unlogged[key] += 1
        if due:
            more = f" (+{suppressed} more since last report)" if suppressed else ""
            logger.warning("inference.alarm %s [%s]: %s%s", kind, station or "-", message, more)
        if self._listener is not None:
            self._listener(alarm)
        return alarm

    def counts(self) -> dict[str, int]:
        """How many alarms of each kind were raised."""
        with self._lock:
            return dict(self._counts)

    def recent(self) -> list[Alarm]:
        """The latest alarms, oldest first."""
        with self._lock:
            return list(self._recent)
