"""The inspection tier on a real local Ray: served scores match PyTorch, hot swap, bad input."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from qdspace.connector.storage import open_store
from qdspace.inference.dataset import ElImages, load_elpv
from qdspace.inference.errors import ModelLoadError
from qdspace.inference.line import InspectionLine, LineConfig, StationSpec
from qdspace.inference.model import OnnxClassifier
from qdspace.inference.registry import ModelRegistry
from qdspace.inference.serve import InspectionTier, ServeSettings
from qdspace.inference.sources import dataset_frames
from qdspace.inference.splits import split_el_images
from qdspace.inference.verdicts import FrameRequest, ServedVerdict
from qdspace.inference.writer import ingest_sink

pytestmark = pytest.mark.integration
training = pytest.importorskip("qdspace.inference.training", exc_type=ImportError)
pytest.importorskip("ray")

SIZE = 32
CONFIG = training.TrainConfig(input_size=SIZE, epochs=2, batch_size=32, widths=(4, 8, 8), threads=1)


@pytest.fixture(scope="module")
def cells() -> ElImages:
    data = load_elpv(size=SIZE)
    return data.subset(np.arange(0, len(data), 10))


@pytest.fixture(scope="module")
def trained(cells: ElImages) -> training.TrainResult:
    split = split_el_images(cells, seed=3)
    return training.train_and_export(cells.select(split.train), cells.select(split.test), CONFIG)


@pytest.fixture(scope="module")
def second_version() -> bytes:
    config = training.TrainConfig(input_size=SIZE, widths=(4, 8, 8), seed=9)
    return training.export_onnx(training.build_model(config), SIZE)


@pytest.fixture(scope="module")
def tier(local_ray: None, trained: training.TrainResult) -> Iterator[InspectionTier]:
    settings = ServeSettings(device="cpu", max_batch_size=8, batch_wait_timeout_s=0.002)
    tier = InspectionTier(settings, app_name="test-serving")
    tier.start(trained.onnx_bytes, "trained")
    try:
        yield tier
    finally:
        tier.stop()


@pytest.fixture
def on_first(tier: InspectionTier, trained: training.TrainResult) -> InspectionTier:
    """The tier, swapped back to the trained version if a test left it elsewhere."""
    if tier.version != OnnxClassifier(trained.onnx_bytes, device="cpu").version:
        tier.swap(trained.onnx_bytes, "trained")
    return tier


async def _judge_all(tier: InspectionTier, frames: list[object]) -> list[ServedVerdict]:
    judge = tier.judge()
    calls = [judge(FrameRequest("el-1", f"c{i}", f)) for i, f in enumerate(frames)]
    return list(await asyncio.gather(*calls))


def test_served_scores_match_pytorch(
    on_first: InspectionTier, trained: training.TrainResult, cells: ElImages
) -> None:
    frames = list(cells.images[:48])
    served = asyncio.run(_judge_all(on_first, frames))
    inputs, _ = training.tensors(cells.subset(range(48)), CONFIG)
    expected = training.defect_scores(training.predict_proba(trained.model, inputs), 2)
    got = np.array([v.score for v in served])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert [v.verdict for v in served] == ["fail" if s >= 0.5 else "pass" for s in expected]
    status = on_first.status()
    assert status.version == on_first.version and status.providers == ("CPUExecutionProvider",)
    assert max(status.batch_sizes) > 1, f"no request was batched: {status.batch_sizes}"


def test_bad_frames_in_a_batch_do_not_fail_the_others(on_first: InspectionTier) -> None:
    good = np.full((300, 300), 128, np.uint8)
    frames: list[object] = [good, good.astype(np.float64), np.zeros((300, 300, 3), np.uint8), good]
    served = asyncio.run(_judge_all(on_first, frames))
    assert [v.error is None for v in served] == [True, False, False, True]
    assert "c1" in (served[1].error or "") and "dtype float64" in (served[1].error or "")


def test_frames_sent_together_share_one_trip_and_its_fate(on_first: InspectionTier) -> None:
    """Frames of one loop turn go in one Serve request: a trip that cannot be sent fails
    each of its frames with the cause (the line counts them), and the tier goes on."""
    good = np.full((300, 300), 128, np.uint8)

    async def together() -> list[ServedVerdict | BaseException]:
        judge = on_first.judge()
        calls = [
            judge(FrameRequest("el-1", "ok", good)),
            judge(FrameRequest("el-2", "lock", threading.Lock())),  # cannot be pickled
        ]
        return list(await asyncio.gather(*calls, return_exceptions=True))

    first, second = asyncio.run(together())
    assert isinstance(first, BaseException) and isinstance(second, BaseException)
    assert "lock" in str(second).lower() and str(first) == str(second)
    assert asyncio.run(_judge_all(on_first, [good]))[0].error is None


def _line(tier: InspectionTier, cells: ElImages, db: Path, run_id: str) -> InspectionLine:
    """Two stations at 60 fps, half the cells each. Every frame may be in flight at once:
    these tests are about storing verdicts and swapping versions, and skipping frames
    when the judge is held up on a loaded machine is the line's own rule (``test_line``)."""
    store = open_store(f"sqlite:///{db}")
    halves = [cells.subset(range(0, 60)), cells.subset(range(60, 120))]
    stations = [
        StationSpec(f"el-{i + 1}", dataset_frames(half, loop=False), fps=60.0)
        for i, half in enumerate(halves)
    ]
    return InspectionLine(
        tier.judge(),
        ingest_sink(store.ingest_rows),
        stations,
        LineConfig(run_id=run_id, max_in_flight=len(cells)),
    )


def _versions(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT model_version FROM qdm_inspection ORDER BY id").fetchall()
    return [r[0] for r in rows]


def test_two_stations_store_every_verdict(
    on_first: InspectionTier, cells: ElImages, tmp_path: Path
) -> None:
    db = tmp_path / "node.db"
    final = _line(on_first, cells, db, "it1").run(seconds=60)
    assert final.stored == 120 == len(_versions(db))
    assert set(_versions(db)) == {on_first.version}
    assert final.alarms == {}


def test_hot_swap_under_load_drops_nothing(
    on_first: InspectionTier, second_version: bytes, cells: ElImages, tmp_path: Path
) -> None:
    """No frame sent to the tier is lost while its replica switches versions.

    Every frame may be in flight at once here: the swap loads the new model in the
    driver and in the replica, and on a loaded 2-core machine that can hold the replica
    past 8 frames (133 ms at 2 x 60 fps), which the line answers by skipping frames, a
    backlog rule of its own that ``test_line`` checks. This test is about the swap.
    """
    db = tmp_path / "node.db"
    old = on_first.version
    line = _line(on_first, cells, db, "it2")
    line.start()
    while line.snapshot().stored < 30:
        threading.Event().wait(0.01)
    new = on_first.swap(second_version, "second")
    assert line.wait(60)
    final = line.stop()
    versions = _versions(db)
    assert final.stored == 120 == len(versions) and final.alarms == {}
    assert sum(c.captured for c in final.stations.values()) == 120
    assert sum(c.skipped for c in final.stations.values()) == 0
    assert set(versions) == {old, new} and versions.count(old) >= 30
    assert on_first.status().version == new


def test_a_model_that_does_not_load_keeps_the_current_one(
    on_first: InspectionTier, tmp_path: Path, trained: training.TrainResult
) -> None:
    before = on_first.version
    broken = trained.onnx_bytes[: len(trained.onnx_bytes) // 2]
    with pytest.raises(ModelLoadError, match=r"broken\.onnx"):
        on_first.swap(broken, "broken.onnx")
    outcome = on_first.handle.swap.remote(broken, "broken.onnx").result()  # past the driver check
    assert outcome.error is not None and outcome.version == before
    status = on_first.status()
    assert status.version == before and status.failed_swaps >= 1
    good = np.full((300, 300), 90, np.uint8)
    assert asyncio.run(_judge_all(on_first, [good]))[0].model_version == before
    registry = ModelRegistry(tmp_path)
    with pytest.raises(ModelLoadError):
        registry.register(broken, "broken.onnx")
