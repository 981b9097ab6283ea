"""Drift: rolling false-positive and false-negative rates on labelled audit samples.

Some frames come with a label (a cell re-inspected by a person, or a labelled test
cell fed on purpose). The monitor keeps the last ``window`` audited verdicts per station
and for the whole line; when the FPR or FNR of a window with enough samples of that
class rises above its threshold, a ``drift`` alarm fires once, and fires again only
after the rate fell back under it. The state is written as JSON for the node's API.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from qdspace.inference import alarms as kinds
from qdspace.inference.alarms import AlarmLog
from qdspace.inference.errors import InferenceError
from qdspace.inference.verdicts import ServedVerdict
from qdspace.util.files import write_atomic

LINE = "*"  # the key of the whole line's window
DEFAULT_MARGIN = 0.10


@dataclass(frozen=True)
class DriftThresholds:
    """When rates count as drift: above ``max_fpr``/``max_fnr`` with enough samples."""

    max_fpr: float = 0.15
    max_fnr: float = 0.25
    window: int = 200
    min_negatives: int = 30
    min_positives: int = 15
    hysteresis: float = 0.02

    @classmethod
    def from_baseline(
        cls, metrics: Mapping[str, float], margin: float = DEFAULT_MARGIN, window: int = 200
    ) -> DriftThresholds:
        """Thresholds ``margin`` above the rates the model showed on held-out cells.

        A model is not 'drifting' when it errs as often as it did at validation; it is
        when it errs clearly more. Without held-out counts the fixed defaults apply.
        """
        try:
            fp, tn = metrics["false_positives"], metrics["true_negatives"]
            fn, tp = metrics["false_negatives"], metrics["true_positives"]
        except KeyError:
            return cls(window=window)
        fpr = fp / (fp + tn) if fp + tn else 0.0
        fnr = fn / (fn + tp) if fn + tp else 0.0
        return cls(max_fpr=min(fpr + margin, 1.0), max_fnr=min(fnr + margin, 1.0), window=window)

    def __post_init__(self) -> None:
        if not (0.0 <= self.max_fpr <= 1.0 and 0.0 <= self.max_fnr <= 1.0):
            raise InferenceError(f"drift thresholds {self.max_fpr}/{self.max_fnr} not in [0, 1]")
        if self.window < 1:
            raise InferenceError(f"drift window {self.window} must be at least 1")


@dataclass(frozen=True)
class DriftStatus:
    """Rolling rates of one station (or ``*`` for the line)."""

    station: str
    samples: int
    negatives: int
    positives: int
    false_positives: int
    false_negatives: int
    fpr: float | None
    fnr: float | None
    fpr_alarm: bool
    fnr_alarm: bool


class DriftMonitor:
    """An ``AuditHook`` for the line: rolling FPR/FNR with threshold alarms."""

    def __init__(
        self, alarms: AlarmLog, thresholds: DriftThresholds | None = None, model: str = ""
    ) -> None:
        self.thresholds = thresholds or DriftThresholds()
        self._alarms = alarms
        self._windows: dict[str, deque[tuple[int, int]]] = {}
        self._alarming: dict[tuple[str, str], bool] = {}
        self._lock = threading.Lock()
        self.model = model

    def observe(self, station: str, label: int, verdict: ServedVerdict) -> None:
        """Add one audited verdict (``label`` 1 = truly defective)."""
        if verdict.verdict is None:
            return
        predicted = 1 if verdict.verdict == "fail" else 0
        fired: list[tuple[str, str]] = []
        with self._lock:
            for key in (station, LINE):
                window = self._windows.setdefault(key, deque(maxlen=self.thresholds.window))
                window.append((int(label), predicted))
                fired += self._check(key)
        for key, message in fired:
            self._alarms.raise_alarm(kinds.DRIFT, None if key == LINE else key, message)

    def _check(self, key: str) -> list[tuple[str, str]]:
        status = self._status(key)
        fired = []
        for rate_name, rate, limit, enough in (
            ("FPR", status.fpr, self.thresholds.max_fpr, status.negatives),
            ("FNR", status.fnr, self.thresholds.max_fnr, status.positives),
        ):
            was = self._alarming.get((key, rate_name), False)
            # re-arm only once the rate is clearly back under the limit (no flapping)
            bar = limit - self.thresholds.hysteresis if was else limit
            over = rate is not None and rate > bar
            self._alarming[(key, rate_name)] = over
            if over and not was:
                fired.append(
                    (
                        key,
                        f"{rate_name} {rate:.3f} > {limit:.3f} over the last {status.samples} "
                        f"audited frames ({enough} of that class) at "
                        f"{'the line' if key == LINE else key}",
                    )
                )
        return fired

    def _status(self, key: str) -> DriftStatus:
        window = self._windows.get(key, deque())
        negatives = sum(1 for label, _ in window if label == 0)
        positives = len(window) - negatives
        fp = sum(1 for label, pred in window if label == 0 and pred == 1)
        fn = sum(1 for label, pred in window if label == 1 and pred == 0)
        fpr = fp / negatives if negatives >= self.thresholds.min_negatives else None
        fnr = fn / positives if positives >= self.thresholds.min_positives else None
        return DriftStatus(
            station=key,
            samples=len(window),
            negatives=negatives,
            positives=positives,
            false_positives=fp,
            false_negatives=fn,
            fpr=fpr,
            fnr=fnr,
            fpr_alarm=self._alarming.get((key, "FPR"), False),
            fnr_alarm=self._alarming.get((key, "FNR"), False),
        )

    def status(self) -> list[DriftStatus]:
        """Current rates of every station and of the line (``*``)."""
        with self._lock:
            return [self._status(key) for key in sorted(self._windows)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state: thresholds, rates, when."""
        return {
            "format": "qdspace.drift/1",
            "model_version": self.model,
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "thresholds": asdict(self.thresholds),
            "stations": [asdict(s) for s in self.status()],
        }

    def write(self, path: Path) -> None:
        """Write the state atomically (the API reads this file)."""
        # rewritten on every tick of the line: the API must never read half of it, but a
        # disk sync per tick is not worth it (a reader only wants the latest state)
        write_atomic(path, json.dumps(self.to_dict(), indent=1).encode("utf-8"), fsync=False)
