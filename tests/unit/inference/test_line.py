"""Station runners with the in-process judge: every verdict stored, nothing silent."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from qdspace.connector.storage import open_store
from qdspace.inference import alarms as kinds
from qdspace.inference.errors import InferenceError
from qdspace.inference.frames import image_sha256
from qdspace.inference.line import InspectionLine, LineConfig, LocalJudge, StationSpec
from qdspace.inference.model import OnnxClassifier
from qdspace.inference.sources import ArrayFrames, FolderFrames
from qdspace.inference.verdicts import FrameRequest, ServedVerdict
from qdspace.inference.writer import ingest_sink

FPS = 400.0


def _frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (48, 48), dtype=np.uint8) for _ in range(n)]


def _source(n: int, prefix: str = "f", seed: int = 0) -> ArrayFrames:
    ids = [f"{prefix}{i:03d}" for i in range(n)]
    return ArrayFrames(_frames(n, seed), ids, labels=[i % 2 for i in range(n)], loop=False)


class ListSink:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.calls = 0

    def __call__(self, rows: list[dict[str, Any]]) -> None:
        self.calls += 1
        self.rows.extend(rows)


def _stored_rows(db: Path) -> list[sqlite3.Row]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM qdm_inspection ORDER BY inspection_id").fetchall()


def test_every_verdict_reaches_the_store(model_bytes: tuple[bytes, bytes], tmp_path: Path) -> None:
    model = OnnxClassifier(model_bytes[0], device="cpu")
    store = open_store(f"sqlite:///{tmp_path / 'node.db'}")
    frames = _frames(30)
    stations = [
        StationSpec(
            "el-1", ArrayFrames(frames[:15], [f"a{i}" for i in range(15)], loop=False), FPS
        ),
        StationSpec(
            "el-2", ArrayFrames(frames[15:], [f"b{i}" for i in range(15)], loop=False), FPS
        ),
    ]
    line = InspectionLine(
        LocalJudge(model), ingest_sink(store.ingest_rows), stations, LineConfig(run_id="r1")
    )
    final = line.run(seconds=30)
    rows = _stored_rows(tmp_path / "node.db")
    assert final.stored == len(rows) == 30
    assert {r["station"] for r in rows} == {"el-1", "el-2"}
    assert {r["model_version"] for r in rows} == {model.version}
    assert len({r["inspection_id"] for r in rows}) == 30
    by_frame = {r["frame_id"]: r for r in rows}
    assert by_frame["b3"]["image_hash"] == image_sha256(frames[18])
    expected = model.judge([frames[18]])[0]
    assert by_frame["b3"]["verdict"] == expected.verdict
    assert by_frame["b3"]["score"] == pytest.approx(expected.score, abs=1e-6)
    assert final.judged_latency.count == 30 and final.stored_latency.count == 30
    assert final.alarms == {} and final.dropped_verdicts == 0


def test_bad_frames_are_counted_and_named(
    model_bytes: tuple[bytes, bytes], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = _frames(4)
    frames: list[object] = [
        good[0],
        good[1].astype(np.float32),
        np.zeros((48, 48, 3), np.uint8),
        "not an image",
        good[2],
    ]
    array_station = StationSpec(
        "el-1", ArrayFrames(frames, [f"x{i}" for i in range(5)], loop=False), FPS
    )
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.fromarray(good[3]).save(folder / "cell0001.png")
    (folder / "cell0002.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    Image.fromarray(good[0]).save(folder / "cell0003.png")
    folder_station = StationSpec("el-2", FolderFrames(folder, loop=False), FPS)
    sink = ListSink()
    line = InspectionLine(
        LocalJudge(OnnxClassifier(model_bytes[0], device="cpu")),
        sink,
        [array_station, folder_station],
        LineConfig(run_id="r2"),
    )
    with caplog.at_level("WARNING", logger="inference"):
        final = line.run(seconds=30)
    assert final.stations["el-1"].bad_frames == 3 and final.stations["el-2"].bad_frames == 1
    assert sorted(r["frame_id"] for r in sink.rows) == ["cell0001", "cell0003", "x0", "x4"]
    assert final.alarms == {kinds.BAD_FRAME: 4}
    messages = [a.message for a in line.alarms.recent()]
    assert any("x1" in m and "dtype float32" in m for m in messages)
    assert any("cell0002" in m and "cell0002.png" in m for m in messages)
    assert "x1" in caplog.text


def test_a_full_verdict_queue_drops_counts_and_alarms(model_bytes: tuple[bytes, bytes]) -> None:
    release = threading.Event()
    stored: list[dict[str, Any]] = []

    def slow_sink(rows: list[dict[str, Any]]) -> None:
        release.wait(30)
        stored.extend(rows)

    judged = threading.Event()
    line = InspectionLine(
        LocalJudge(OnnxClassifier(model_bytes[0], device="cpu")),
        slow_sink,
        [StationSpec("el-1", _source(40), FPS)],
        LineConfig(run_id="r3", queue_capacity=4, write_batch_size=2),
        audit=_Signal(judged, after=40),
    )
    line.start()
    assert judged.wait(30), "the line stopped judging while the node was stuck"
    release.set()
    final = line.stop()
    assert final.stations["el-1"].judged == 40
    assert final.dropped_verdicts > 0
    assert final.dropped_verdicts + final.stored == 40 == len(stored) + final.dropped_verdicts
    assert final.alarms[kinds.VERDICT_QUEUE_FULL] == final.dropped_verdicts


class _Signal:
    """An audit hook that sets an event after ``after`` labelled verdicts."""

    def __init__(self, event: threading.Event, after: int) -> None:
        self.event, self.after, self.seen = event, after, 0

    def observe(self, station: str, label: int, verdict: ServedVerdict) -> None:
        self.seen += 1
        if self.seen >= self.after:
            self.event.set()


class StuckJudge:
    """A judge that answers only after ``release`` is set (a stalled serving tier)."""

    def __init__(self, inner: LocalJudge) -> None:
        self.inner = inner
        self.release = threading.Event()

    async def __call__(self, request: FrameRequest) -> ServedVerdict:
        while not self.release.is_set():
            await asyncio.sleep(0.005)
        return await self.inner(request)


def test_a_stalled_judge_makes_the_station_skip_not_wait(model_bytes: tuple[bytes, bytes]) -> None:
    judge = StuckJudge(LocalJudge(OnnxClassifier(model_bytes[0], device="cpu")))
    sink = ListSink()
    line = InspectionLine(
        judge, sink, [StationSpec("el-1", _source(20), FPS)], LineConfig("r4", max_in_flight=3)
    )
    line.start()
    assert line.wait(30), "the station waited for the stalled judge"
    judge.release.set()
    final = line.stop()
    counts = final.stations["el-1"]
    assert counts.captured == 20 and counts.skipped == 17 and counts.judged == 3
    assert final.alarms[kinds.FRAME_BACKLOG] == 17 and len(sink.rows) == 3


class FailingJudge:
    async def __call__(self, request: FrameRequest) -> ServedVerdict:
        raise RuntimeError(f"replica died on {request.frame_id}")


def test_judge_failures_are_counted(model_bytes: tuple[bytes, bytes]) -> None:
    line = InspectionLine(
        FailingJudge(), ListSink(), [StationSpec("el-1", _source(5), FPS)], LineConfig("r5")
    )
    final = line.run(seconds=30)
    assert final.stations["el-1"].judge_errors == 5
    assert final.alarms == {kinds.JUDGE_FAILED: 5}
    assert "replica died on f004" in line.alarms.recent()[-1].message


def test_a_failing_sink_is_retried(model_bytes: tuple[bytes, bytes], tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'node.db'}")
    ingest = ingest_sink(store.ingest_rows)
    failures = [RuntimeError("database is locked")] * 2

    def flaky(rows: list[dict[str, Any]]) -> object:
        if failures:
            raise failures.pop()
        return ingest(rows)

    line = InspectionLine(
        LocalJudge(OnnxClassifier(model_bytes[0], device="cpu")),
        flaky,
        [StationSpec("el-1", _source(10), FPS)],
        LineConfig("r6"),
    )
    final = line.run(seconds=30)
    assert final.sink_errors == 2 and final.alarms == {kinds.SINK_FAILED: 2}
    assert len(_stored_rows(tmp_path / "node.db")) == final.stored == 10


def test_rows_the_store_refuses_are_counted(
    model_bytes: tuple[bytes, bytes], tmp_path: Path
) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'node.db'}")
    line = InspectionLine(
        LocalJudge(OnnxClassifier(model_bytes[0], device="cpu"), threshold=0.0),  # all fail
        ingest_sink(store.ingest_rows),
        [StationSpec("el-1", _source(6), FPS)],
        LineConfig("r6b", defect_code="not-a-qdm-code"),
    )
    final = line.run(seconds=30)
    assert final.stations["el-1"].judged == 6
    assert final.rejected_verdicts == 6 and final.stored == 0
    assert final.alarms[kinds.VERDICT_REJECTED] >= 1
    assert "not-a-qdm-code" in line.alarms.recent()[-1].message
    assert _stored_rows(tmp_path / "node.db") == []


def test_hot_swap_drops_nothing_and_names_the_version(model_bytes: tuple[bytes, bytes]) -> None:
    first = OnnxClassifier(model_bytes[0], device="cpu")
    second = OnnxClassifier(model_bytes[1], device="cpu")
    judge = LocalJudge(first)
    sink = ListSink()
    twenty = threading.Event()
    line = InspectionLine(
        judge,
        sink,
        [StationSpec("el-1", _source(60), FPS)],
        LineConfig("r7"),
        audit=_Signal(twenty, after=20),
    )
    line.start()
    assert twenty.wait(30)
    judge.swap(second)
    assert line.wait(30)
    final = line.stop()
    rows = sorted(sink.rows, key=lambda r: r["inspection_id"])
    versions = [r["model_version"] for r in rows]
    assert len(rows) == 60 == final.stored == final.stations["el-1"].captured
    switch = versions.index(second.version)
    assert 20 <= switch < 60
    assert versions == [first.version] * switch + [second.version] * (60 - switch)
    frames = _frames(60)
    for row in rows:
        model = first if row["model_version"] == first.version else second
        index = int(row["frame_id"][1:])
        assert row["score"] == pytest.approx(model.judge([frames[index]])[0].score, abs=1e-6)


def test_verdicts_carry_the_serial_order_and_batch_of_their_frames(
    model_bytes: tuple[bytes, bytes], tmp_path: Path
) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    good = _frames(4, seed=3)
    names = ["ORD17_SN0001_B-5", "ORD17_SN0002_B-5", "ORD18_SN0003_B-6", "cell-no-serial"]
    for name, frame in zip(names, good, strict=True):
        Image.fromarray(frame).save(folder / f"{name}.png")
    # a sidecar names the batch the camera could not know (and wins over the name)
    (folder / "ORD18_SN0003_B-6.json").write_text('{"batch_id": "B-6b"}')
    store = open_store(f"sqlite:///{tmp_path / 'node.db'}")
    source = FolderFrames(
        folder,
        loop=False,
        name_pattern=r"(?P<order>ORD\d+)_(?P<serial>SN\d+)_(?P<batch>B-\d+)",
        sidecar=True,
    )
    line = InspectionLine(
        LocalJudge(OnnxClassifier(model_bytes[0], device="cpu")),
        ingest_sink(store.ingest_rows),
        [StationSpec("el-1", source, FPS, order_id="ORD-DEFAULT")],
        LineConfig(run_id="r9"),
    )
    final = line.run(seconds=30)
    rows = _stored_rows(tmp_path / "node.db")
    store.close()
    got = {r["frame_id"]: (r["serial"], r["order_id"], r["batch_id"]) for r in rows}
    assert got == {
        "ORD17_SN0001_B-5": ("SN0001", "ORD17", "B-5"),
        "ORD17_SN0002_B-5": ("SN0002", "ORD17", "B-5"),
        "ORD18_SN0003_B-6": ("SN0003", "ORD18", "B-6b"),
    }
    # a frame whose name names no unit is not judged into a verdict tied to nothing
    assert final.stations["el-1"].bad_frames == 1
    assert any("cell-no-serial" in a.message for a in line.alarms.recent())


def test_the_mes_context_fills_what_the_frames_do_not_say(
    model_bytes: tuple[bytes, bytes], tmp_path: Path
) -> None:
    """Frames with no name pattern and no sidecar: each verdict gets the order and batch
    (and serial) the MES says its station had when the frame was captured; a frame's
    own sidecar still wins; a station the MES does not name keeps the station default."""
    from datetime import UTC, datetime, timedelta

    from qdspace.inference.mes_context import read_mes_context

    now = datetime.now(UTC)
    mes_file = tmp_path / "mes.csv"
    mes_file.write_text(
        "station,start,end,serial,order_id,batch_id\n"
        f"el-1,{(now - timedelta(hours=2)).isoformat()},{(now - timedelta(hours=1)).isoformat()},"
        ",PO-OLD,B-OLD\n"
        f"el-1,{(now - timedelta(hours=1)).isoformat()},,,PO-7,B-7\n"
        f"el-2,{(now - timedelta(hours=1)).isoformat()},,SN-2,PO-8,B-8\n"
    )
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(_frames(3, seed=5)):
        Image.fromarray(frame).save(folder / f"cell{i}.png")
    (folder / "cell2.json").write_text('{"batch_id": "B-SIDECAR"}')
    store = open_store(f"sqlite:///{tmp_path / 'node.db'}")
    frames = _frames(2, seed=6)
    line = InspectionLine(
        LocalJudge(OnnxClassifier(model_bytes[0], device="cpu")),
        ingest_sink(store.ingest_rows),
        [
            StationSpec(
                "el-1",
                FolderFrames(folder, loop=False, sidecar=True, context_required=False),
                FPS,
            ),
            StationSpec("el-2", ArrayFrames(frames, ["x0", "x1"], loop=False), FPS),
            StationSpec(
                "el-3", ArrayFrames(frames, ["y0", "y1"], loop=False), FPS, batch_id="B-DEF"
            ),
        ],
        LineConfig(run_id="mes", mes=read_mes_context(mes_file)),
    )
    line.run(seconds=30)
    rows = _stored_rows(tmp_path / "node.db")
    store.close()
    got = {r["frame_id"]: (r["serial"], r["order_id"], r["batch_id"]) for r in rows}
    assert got == {
        "cell0": (None, "PO-7", "B-7"),
        "cell1": (None, "PO-7", "B-7"),
        "cell2": (None, "PO-7", "B-SIDECAR"),
        "x0": ("SN-2", "PO-8", "B-8"),
        "x1": ("SN-2", "PO-8", "B-8"),
        "y0": (None, None, "B-DEF"),
        "y1": (None, None, "B-DEF"),
    }


def test_a_station_faster_than_the_loop_still_lets_its_frames_be_judged(
    model_bytes: tuple[bytes, bytes],
) -> None:
    """A memory station asked for more frames than the loop can take never waits for a
    tick: its frames in flight must still be judged while it runs, not only at stop."""
    frames = ArrayFrames(_frames(4), [f"f{i}" for i in range(4)], loop=True)
    line = InspectionLine(
        LocalJudge(OnnxClassifier(model_bytes[0], device="cpu")),
        ListSink(),
        [StationSpec("el-1", frames, 1e9)],
        LineConfig(run_id="fast", freeze_gc=False),
    )
    line.start()
    try:
        judged = 0
        for _ in range(200):
            judged = line.snapshot().judged_latency.count
            if judged:
                break
            threading.Event().wait(0.05)
    finally:
        final = line.stop()
    assert judged > 0, "no frame was judged while the station ran"
    assert final.stored == final.judged_latency.count > 0


@pytest.mark.parametrize("fps", [0.0, -1.0, float("nan"), float("inf")])
def test_a_station_needs_a_positive_finite_rate(fps: float) -> None:
    with pytest.raises(InferenceError, match=r"station el-1: fps must be a positive number"):
        StationSpec("el-1", _source(1), fps)
