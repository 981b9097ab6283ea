"""Rolling FPR/FNR on audit samples: alarms fire on crossing, once, and re-arm."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qdspace.inference import alarms as kinds
from qdspace.inference.alarms import AlarmLog
from qdspace.inference.drift import LINE, DriftMonitor, DriftThresholds
from qdspace.inference.errors import InferenceError
from qdspace.inference.verdicts import ServedVerdict


def _v(verdict: str) -> ServedVerdict:
    return ServedVerdict("f", verdict, None, 0.5, "v1")  # type: ignore[arg-type]


def test_fpr_alarm_fires_once_per_crossing(tmp_path: Path) -> None:
    log = AlarmLog()
    monitor = DriftMonitor(log, DriftThresholds(max_fpr=0.2, window=20, min_negatives=10))
    for _ in range(10):
        monitor.observe("el-1", 0, _v("pass"))
    assert log.counts() == {}
    for _ in range(3):
        monitor.observe("el-1", 0, _v("fail"))  # 3 FP of 13 negatives: 0.23 > 0.2
    assert log.counts() == {kinds.DRIFT: 2}  # station el-1 and the line, once each
    assert {a.station for a in log.recent()} == {"el-1", None}
    assert "FPR 0.231 > 0.200" in log.recent()[0].message
    for _ in range(20):
        monitor.observe("el-1", 0, _v("pass"))  # window slides, FPR back to 0
    status = {s.station: s for s in monitor.status()}
    assert status["el-1"].fpr == 0.0 and not status["el-1"].fpr_alarm
    for _ in range(5):
        monitor.observe("el-1", 0, _v("fail"))
    assert log.counts() == {kinds.DRIFT: 4}
    path = tmp_path / "drift.json"
    monitor.write(path)
    saved = json.loads(path.read_text())
    assert {s["station"] for s in saved["stations"]} == {"el-1", LINE}


def test_fnr_needs_enough_positives_and_bad_frames_are_ignored() -> None:
    log = AlarmLog()
    monitor = DriftMonitor(log, DriftThresholds(max_fnr=0.1, min_positives=5))
    for _ in range(4):
        monitor.observe("el-2", 1, _v("pass"))
    assert monitor.status()[1].fnr is None and log.counts() == {}
    monitor.observe("el-2", 1, ServedVerdict("f", None, None, None, "v1", "bad frame"))
    assert monitor.status()[1].samples == 4
    monitor.observe("el-2", 1, _v("pass"))
    assert monitor.status()[1].fnr == 1.0 and log.counts() == {kinds.DRIFT: 2}
    with pytest.raises(InferenceError, match="not in"):
        DriftThresholds(max_fpr=1.5)


def test_thresholds_sit_above_the_held_out_rates() -> None:
    metrics = {
        "false_positives": 10,
        "true_negatives": 90,
        "false_negatives": 5,
        "true_positives": 45,
    }
    t = DriftThresholds.from_baseline(metrics, margin=0.1)
    assert t.max_fpr == pytest.approx(0.2) and t.max_fnr == pytest.approx(0.2)
    assert DriftThresholds.from_baseline({}) == DriftThresholds()


def test_hysteresis_keeps_an_alarm_from_flapping() -> None:
    log = AlarmLog()
    monitor = DriftMonitor(
        log, DriftThresholds(max_fpr=0.2, window=10, min_negatives=10, hysteresis=0.05)
    )
    for verdict in ["fail"] * 3 + ["pass"] * 7:
        monitor.observe("el-1", 0, _v(verdict))  # FPR 0.3: alarm
    assert log.counts() == {kinds.DRIFT: 2}
    monitor.observe("el-1", 0, _v("pass"))  # 0.2: not above 0.2, but above 0.15: still on
    monitor.observe("el-1", 0, _v("fail"))  # 0.2 again: no new alarm
    assert log.counts() == {kinds.DRIFT: 2}
