"""The service's books: retried frames, dropped frames alarmed, activations and stale replicas.

The cluster itself is exercised in ``tests/integration/inference/test_inspect_serve_cluster``;
here the same ``InspectionService`` runs on the in-process judge, with real models.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qdspace.inference import alarms as kinds
from qdspace.inference.errors import ServingError
from qdspace.inference.line import InspectionLine, LineConfig, LocalJudge, StationSpec
from qdspace.inference.model import OnnxClassifier
from qdspace.inference.registry import ModelRegistry
from qdspace.inference.retry import FrameDroppedError, RetryingJudge
from qdspace.inference.service import InspectionService, ServiceSettings
from qdspace.inference.session import InspectionSession
from qdspace.inference.sources import ArrayFrames
from qdspace.inference.verdicts import FrameRequest, ServedVerdict

FPS = 200.0


class _Rows:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def __call__(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)


def _source(n: int, loop: bool = False) -> ArrayFrames:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (40, 40), dtype=np.uint8) for _ in range(n)]
    return ArrayFrames(frames, [f"f{i:03d}" for i in range(n)], loop=loop)


class LosesFirstTry:
    """A tier whose replica dies under every frame's first try (a new one answers)."""

    def __init__(self, inner: LocalJudge) -> None:
        self.inner = inner
        self.tried: set[str] = set()

    async def __call__(self, request: FrameRequest) -> ServedVerdict:
        if request.frame_id not in self.tried:
            self.tried.add(request.frame_id)
            raise RuntimeError(f"replica died holding {request.frame_id}")
        return await self.inner(request)


class Lost:
    async def __call__(self, request: FrameRequest) -> ServedVerdict:
        raise RuntimeError(f"no replica for {request.frame_id}")


def test_a_frame_whose_replica_died_is_retried(model_bytes: tuple[bytes, bytes]) -> None:
    judge = RetryingJudge(
        LosesFirstTry(LocalJudge(OnnxClassifier(model_bytes[0], device="cpu"))),
        backoff_s=(0.0,),
    )
    sink = _Rows()
    line = InspectionLine(judge, sink, [StationSpec("el-1", _source(12), FPS)], LineConfig("r1"))
    final = line.run(seconds=30)
    counts = judge.counts()
    assert final.stations["el-1"].judged == 12 == len(sink.rows)
    assert (counts.sent, counts.served, counts.retried_frames, counts.dropped) == (12, 12, 12, 0)
    assert final.alarms == {}


def test_a_frame_that_cannot_be_served_is_dropped_and_alarmed() -> None:
    judge = RetryingJudge(Lost(), attempts=2, backoff_s=(0.0,))
    line = InspectionLine(judge, _Rows(), [StationSpec("el-1", _source(5), FPS)], LineConfig("r2"))
    final = line.run(seconds=30)
    counts = judge.counts()
    assert (counts.sent, counts.served, counts.dropped, counts.retries) == (5, 0, 5, 5)
    assert final.stations["el-1"].judge_errors == 5
    assert final.alarms == {kinds.JUDGE_FAILED: 5}
    assert "f004 dropped after 2 tries" in line.alarms.recent()[-1].message
    assert isinstance(FrameDroppedError("f", 2, RuntimeError()), ServingError)
    with pytest.raises(ServingError, match="at least one attempt"):
        RetryingJudge(Lost(), attempts=0)


def _service(
    registry: ModelRegistry, n: int, loop: bool, settings: ServiceSettings
) -> tuple[InspectionService, _Rows]:
    session = InspectionSession(registry, use_ray=False)
    session.start()
    sink = _Rows()
    stations = [StationSpec("el-1", _source(n, loop), FPS)]
    return InspectionService(session, sink, stations, LineConfig("s1"), settings=settings), sink


def test_the_service_follows_activation_until_stopped(
    model_bytes: tuple[bytes, bytes], tmp_path: Path
) -> None:
    registry = ModelRegistry(tmp_path)
    first = registry.register(model_bytes[0], "one", activate=True)
    second = registry.register(model_bytes[1], "two")
    service, sink = _service(registry, 50, True, ServiceSettings(poll_s=0.05))
    stop = threading.Event()
    seen: list[str] = []

    deadline = time.monotonic() + 60

    def tick(snapshot: Any) -> None:
        seen.append(snapshot.version)
        if time.monotonic() > deadline:
            stop.set()  # the asserts below then say what did not happen
        if snapshot.served >= 40 and snapshot.version == first.version:
            registry.activate(second.version)
        if snapshot.version == second.version and snapshot.line.model_versions.get(
            second.version, 0
        ):
            stop.set()  # what SIGTERM does in the CLI

    final = service.run(stop, on_tick=tick)
    assert final.swaps == 1 and final.version == second.version
    assert set(final.line.model_versions) == {first.version, second.version}
    assert final.taken == final.served == len(sink.rows) and final.dropped == 0
    assert final.tier.in_flight == 0  # drained before the summary


def test_a_replica_that_missed_a_swap_is_swapped_again(
    model_bytes: tuple[bytes, bytes], tmp_path: Path
) -> None:
    registry = ModelRegistry(tmp_path)
    first = registry.register(model_bytes[0], "one", activate=True)
    service, _ = _service(registry, 40, True, ServiceSettings(poll_s=0.05, stale_after_s=0.0))
    judge = service.session.judge
    assert isinstance(judge, LocalJudge)
    stale = OnnxClassifier(model_bytes[1], device="cpu")  # as if restarted on another version
    stop = threading.Event()
    resynced: list[int] = []

    deadline = time.monotonic() + 60

    def tick(snapshot: Any) -> None:
        if time.monotonic() > deadline:
            stop.set()
        if snapshot.served >= 10 and not resynced:
            judge.swap(stale)
            resynced.append(snapshot.resyncs)
        elif resynced and snapshot.resyncs > resynced[0]:
            stop.set()

    final = service.run(stop, on_tick=tick)
    assert final.resyncs >= 1 and final.version == first.version
    assert stale.version in final.line.model_versions  # the stale verdicts say so
