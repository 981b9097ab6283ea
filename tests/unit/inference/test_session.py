"""An in-process inspection session follows the registry's active version while frames flow."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from qdspace.inference import alarms as kinds
from qdspace.inference.line import InspectionLine, LineConfig, StationSpec
from qdspace.inference.registry import ModelRegistry
from qdspace.inference.session import InspectionSession
from qdspace.inference.sources import ArrayFrames
from qdspace.inference.verdicts import ServedVerdict


class _Rows:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def __call__(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)


class _After:
    """Sets an event once ``n`` labelled verdicts were seen."""

    def __init__(self, n: int) -> None:
        self.n, self.seen, self.event = n, 0, threading.Event()

    def observe(self, station: str, label: int, verdict: ServedVerdict) -> None:
        self.seen += 1
        if self.seen >= self.n:
            self.event.set()


def test_activation_hot_swaps_and_a_corrupt_version_is_refused(
    model_bytes: tuple[bytes, bytes], tmp_path: Path
) -> None:
    registry = ModelRegistry(tmp_path)
    first = registry.register(model_bytes[0], "one", activate=True)
    second = registry.register(model_bytes[1], "two")
    session = InspectionSession(registry, use_ray=False)
    assert session.start().version == first.version
    assert session.follow_active() is None  # nothing changed

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (40, 40), dtype=np.uint8) for _ in range(80)]
    source = ArrayFrames(frames, [f"f{i:03d}" for i in range(80)], [0] * 80, loop=False)
    sink, seen = _Rows(), _After(20)
    line = InspectionLine(
        session.judge, sink, [StationSpec("el-1", source, 400.0)], LineConfig("s1"), audit=seen
    )
    line.start()
    assert seen.event.wait(30)
    registry.activate(second.version)
    swapped = session.follow_active()
    assert swapped is not None and swapped.version == second.version
    assert session.version is not None and session.version.version == second.version

    (registry.root / first.file).write_bytes(b"\x00 corrupted on disk")
    registry.activate(first.version)
    assert session.follow_active() is None
    assert session.follow_active() is None  # refused once, not retried every tick
    assert session.alarms.counts() == {kinds.MODEL_REFUSED: 1}
    message = session.alarms.recent()[-1].message
    assert first.file in message and f"still serving {second.version[:12]}" in message
    assert session.version.version == second.version

    assert line.wait(30)
    final = line.stop()
    session.close()
    versions = [r["model_version"] for r in sorted(sink.rows, key=lambda r: r["inspection_id"])]
    assert len(versions) == 80 == final.stored and final.dropped_verdicts == 0
    switch = versions.index(second.version)
    assert switch >= 20 and versions == [first.version] * switch + [second.version] * (80 - switch)
