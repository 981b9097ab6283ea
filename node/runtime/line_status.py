"""The inspection line's status as a file the node reads: ``inspection/line.json``.

The line runs in its own process (``inspect run``, ``inspect serve``), next to the node;
what only that process knows (frames dropped before a verdict, the throughput and
latency it measures, when it hot-swapped, how FPR and FNR moved) would be gone when it
stops, and the node's console could not show it. So each tick of the line hands its
snapshot here and the file is rewritten (atomically, at most once per `EVERY_S`): the
latest counters, the versions it swapped to with their times, and the line's rolling
FPR/FNR at each write (the newest `KEEP_POINTS`, so the file stays small), with the
drift thresholds they are judged against. The console's inspection page
(`node.console.inspection`) reads it; the verdicts themselves are in the node's store.
"""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qdspace.util.files import write_atomic

if TYPE_CHECKING:
    from qdspace.inference.drift import DriftMonitor
    from qdspace.inference.stats import LineSnapshot

FORMAT = "qdspace.line-status/1"
#: the newest drift points and swaps kept in the file
KEEP_POINTS = 720
KEEP_SWAPS = 100
#: the file is rewritten at most this often (a forced write ignores it)
EVERY_S = 1.0


def _num(value: float) -> float | None:
    return value if math.isfinite(value) else None


class LineStatusWriter:
    """Keeps the history a line's ticks add up to and writes it to ``path``."""

    def __init__(self, path: Path, every_s: float = EVERY_S) -> None:
        self.path = path
        self.every_s = every_s
        self._last = -math.inf
        self._drift: list[dict[str, Any]] = []
        self._swaps: list[dict[str, str]] = []

    def write(
        self,
        line: LineSnapshot,
        version: str,
        drift: DriftMonitor | None = None,
        dropped: int | None = None,
        force: bool = False,
    ) -> None:
        """Record this tick; rewrite the file when `every_s` passed (or ``force``)."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        if not self._swaps or self._swaps[-1]["version"] != version:
            self._swaps = [*self._swaps, {"at": now, "version": version}][-KEEP_SWAPS:]
        if not force and time.monotonic() - self._last < self.every_s:
            return
        self._last = time.monotonic()
        thresholds: dict[str, Any] = {}
        if drift is not None:
            thresholds = {"max_fpr": drift.thresholds.max_fpr, "max_fnr": drift.thresholds.max_fnr}
            whole = next((s for s in drift.status() if s.station == "*"), None)
            if whole is not None:
                point = {"at": now, "fpr": whole.fpr, "fnr": whole.fnr, "samples": whole.samples}
                self._drift = [*self._drift, point][-KEEP_POINTS:]
        stations = {name: vars(counts) for name, counts in line.stations.items()}
        if dropped is None:
            dropped = sum(c.skipped + c.judge_errors for c in line.stations.values())
        j = line.judged_latency
        doc = {
            "format": FORMAT,
            "updated_at": now,
            "version": version,
            "fps": _num(line.throughput_fps),
            "latency_ms": {
                "count": j.count,
                "p50": _num(j.p50),
                "p90": _num(j.p90),
                "p99": _num(j.p99),
            },
            "stations": stations,
            "dropped": dropped,
            "dropped_verdicts": line.dropped_verdicts,
            "stored": line.stored,
            "alarms": dict(line.alarms),
            "swaps": self._swaps,
            "thresholds": thresholds,
            "drift": self._drift,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(doc, indent=1).encode("utf-8"), fsync=False)
