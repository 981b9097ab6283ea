"""One file in a station's folder must not stop the line: it is one refused frame.

Each case puts one hostile file between two good ones in a station's folder, beside a
second station reading from memory, and runs the line with the real onnxruntime judge:
the file is counted and alarmed as a bad frame naming the file and why, the good files
after it and the other station are all inspected, and no image larger than a station
takes is ever decoded. A failure of the station itself (not of a frame) is alarmed and
ends the line at once with the error, rather than leaving it running with a part dead.
"""

from __future__ import annotations

import errno
import io
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile

from qdspace.inference import alarms as kinds
from qdspace.inference.alarms import Alarm, AlarmLog
from qdspace.inference.errors import FrameError, InferenceError
from qdspace.inference.frames import MAX_SIDE
from qdspace.inference.line import InspectionLine, LineConfig, LocalJudge, StationSpec
from qdspace.inference.model import OnnxClassifier
from qdspace.inference.sources import ArrayFrames, FolderFrames, SourceFrame

FPS = 400.0
#: an upper bound for a line whose sources end in well under a second
RUN_S = 60.0
MEMORY_FRAMES = 10


class ListSink:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def __call__(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)


def _frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (48, 48), dtype=np.uint8) for _ in range(n)]


def _memory_station(loop: bool = False) -> StationSpec:
    ids = [f"m{i}" for i in range(MEMORY_FRAMES)]
    return StationSpec("el-2", ArrayFrames(_frames(MEMORY_FRAMES, 1), ids, loop=loop), FPS)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int, idat: list[bytes] | None = None) -> bytes:
    """A grayscale PNG of zeros, or with the given IDAT chunk types for its data."""
    data = zlib.compress(b"".join(b"\0" + bytes(width) for _ in range(height)))
    kinds_ = idat or [b"IDAT"]
    step = -(-len(data) // len(kinds_))
    parts = [data[i * step : (i + 1) * step] for i in range(len(kinds_))]
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = b"".join(_chunk(k, p) for k, p in zip(kinds_, parts, strict=True))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + body + _chunk(b"IEND", b"")


def _malformed_png(folder: Path) -> str:
    # the second data chunk's type is no chunk type: Pillow raises SyntaxError in load()
    (folder / "b_bad.png").write_bytes(_png(48, 48, [b"IDAT", b"I\xffAT"]))
    return "SyntaxError"


def _fuzzed_tiff(folder: Path) -> str:
    # StripOffsets typed SRATIONAL: Pillow raises TypeError in load()
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(buffer, format="TIFF")
    data = bytearray(buffer.getvalue())
    ifd = struct.unpack("<I", data[4:8])[0]
    for entry in range(struct.unpack("<H", data[ifd : ifd + 2])[0]):
        at = ifd + 2 + 12 * entry
        if struct.unpack("<H", data[at : at + 2])[0] == 273:
            data[at + 2 : at + 4] = struct.pack("<H", 10)
    (folder / "b_bad.tif").write_bytes(bytes(data))
    return "TypeError"


def _fifo(folder: Path) -> str:
    os.mkfifo(folder / "b_bad.png")
    return "not a regular file (a FIFO)"


def _dev_zero(folder: Path) -> str:
    (folder / "b_bad.png").symlink_to("/dev/zero")
    return "not a regular file (a character device)"


def _huge(folder: Path) -> str:
    # 35 KB of file, 36 MB of pixels: refused from its header
    (folder / "b_bad.png").write_bytes(_png(6000, 6000))
    return "6000x6000 pixels"


def _gif(folder: Path) -> str:
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(folder / "b_bad.png", format="GIF")
    return "is not a PNG/JPEG/BMP/TIFF file"


BAD_FILES: dict[str, Callable[[Path], str]] = {
    "malformed-png": _malformed_png,
    "fuzzed-tiff": _fuzzed_tiff,
    "fifo": _fifo,
    "dev-zero": _dev_zero,
    "huge-dimensions": _huge,
    "gif-named-png": _gif,
}


@pytest.fixture
def decoded_sizes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The sizes of the images Pillow decodes (in any thread) while the test runs."""
    sizes: list[tuple[int, int]] = []
    load = ImageFile.ImageFile.load

    def recording(image: ImageFile.ImageFile) -> Any:
        sizes.append(image.size)
        return load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording)
    return sizes


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "frames"
    folder.mkdir()
    good = _frames(2)
    Image.fromarray(good[0]).save(folder / "a_good.png")
    Image.fromarray(good[1]).save(folder / "c_good.png")
    yield folder
    fifo = folder / "b_bad.png"
    if fifo.is_fifo():  # a reader blocked on it (the code this test guards against) ends
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: nobody is reading it
                raise


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_hostile_file_is_one_bad_frame_and_the_line_goes_on(
    model_bytes: tuple[bytes, bytes],
    folder: Path,
    decoded_sizes: list[tuple[int, int]],
    case: str,
) -> None:
    fragment = BAD_FILES[case](folder)
    bad_file = next(folder.glob("b_bad.*"))
    sink = ListSink()
    line = InspectionLine(
        LocalJudge(OnnxClassifier(model_bytes[0], device="cpu")),
        sink,
        [StationSpec("el-1", FolderFrames(folder, loop=False), FPS), _memory_station()],
        LineConfig(run_id="bad", freeze_gc=False),
    )
    final = line.run(seconds=RUN_S)
    assert final.stations["el-1"].bad_frames == 1
    assert final.stations["el-1"].judged == 2
    assert final.stations["el-2"].judged == MEMORY_FRAMES
    assert final.stations["el-2"].bad_frames == 0
    expected = ["a_good", "c_good", *(f"m{i}" for i in range(MEMORY_FRAMES))]
    assert sorted(r["frame_id"] for r in sink.rows) == sorted(expected)
    assert final.alarms == {kinds.BAD_FRAME: 1}
    (alarm,) = line.alarms.recent()
    assert alarm.station == "el-1"
    assert "frame b_bad" in alarm.message and str(bad_file) in alarm.message
    assert fragment in alarm.message
    assert all(max(size) <= MAX_SIDE for size in decoded_sizes), decoded_sizes


class _Flaky:
    """A source whose second read fails with an error no source should raise."""

    def __init__(self) -> None:
        self._inner = ArrayFrames(_frames(3, 2), ["f0", "f1", "f2"], loop=False)
        self._taken = 0

    def next_frame(self) -> SourceFrame | None:
        self._taken += 1
        if self._taken == 2:
            raise RuntimeError("camera buffer went away")
        return self._inner.next_frame()


def test_a_source_error_is_a_bad_frame_not_a_dead_line(model_bytes: tuple[bytes, bytes]) -> None:
    sink = ListSink()
    line = InspectionLine(
        LocalJudge(OnnxClassifier(model_bytes[0], device="cpu")),
        sink,
        [StationSpec("el-1", _Flaky(), FPS), _memory_station()],
        LineConfig(run_id="flaky", freeze_gc=False),
    )
    final = line.run(seconds=RUN_S)
    assert final.stations["el-1"].bad_frames == 1 and final.stations["el-1"].judged == 3
    assert final.stations["el-2"].judged == MEMORY_FRAMES
    (alarm,) = line.alarms.recent()
    assert alarm.kind == kinds.BAD_FRAME and alarm.station == "el-1"
    assert "_Flaky failed" in alarm.message and "camera buffer went away" in alarm.message


class _BrokenFile:
    """A source whose first frame is an unreadable file, then nothing."""

    def __init__(self) -> None:
        self._done = False

    def next_frame(self) -> SourceFrame | None:
        if self._done:
            return None
        self._done = True
        raise FrameError("x1", "cannot read image x1.png")


@pytest.mark.parametrize("where", ["station", "inspection"])
def test_a_failing_station_is_alarmed_and_ends_the_line(
    model_bytes: tuple[bytes, bytes], where: str
) -> None:
    """A listener that fails on the bad-frame alarm fails the station raising it, in the
    station's own loop (a bad file) or in a frame's inspection (a bad array)."""

    def listener(alarm: Alarm) -> None:
        if alarm.kind == kinds.BAD_FRAME:
            raise ConnectionError("alarm relay unreachable")

    source = _BrokenFile() if where == "station" else ArrayFrames(["not a frame"], ["x1"])
    line = InspectionLine(
        LocalJudge(OnnxClassifier(model_bytes[0], device="cpu")),
        ListSink(),
        # the memory station never runs out: only the failure can end this line
        [StationSpec("el-1", source, FPS), _memory_station(loop=True)],
        LineConfig(run_id="fail", freeze_gc=False),
        alarms=AlarmLog(listener),
    )
    line.start()
    ended = line.wait(RUN_S)
    with pytest.raises(InferenceError, match=r"at station el-1: ConnectionError") as caught:
        line.stop()
    assert ended, "the line ran on with a failed station"
    assert isinstance(caught.value.__cause__, ConnectionError)
    failed = [a for a in line.alarms.recent() if a.kind == kinds.STATION_FAILED]
    assert [(a.station, "alarm relay unreachable" in a.message) for a in failed] == [("el-1", True)]


def test_a_station_fails_once_though_its_frames_in_flight_fail_too(
    model_bytes: tuple[bytes, bytes],
) -> None:
    """Frames a station had in flight when it failed may fail the same way before they see
    the stop: the line still raises one ``station_failed`` alarm for that station."""

    def listener(alarm: Alarm) -> None:
        if alarm.kind == kinds.BAD_FRAME:
            raise ConnectionError("alarm relay unreachable")

    bad = ArrayFrames(["not a frame"] * 5, [f"x{i}" for i in range(5)], loop=False)
    line = InspectionLine(
        LocalJudge(OnnxClassifier(model_bytes[0], device="cpu")),
        ListSink(),
        # far faster than the loop goes: the station takes its next frame at once
        [StationSpec("el-1", bad, 1e6)],
        LineConfig(run_id="once", freeze_gc=False),
        alarms=AlarmLog(listener),
    )
    line.start()
    assert line.wait(RUN_S)
    with pytest.raises(InferenceError, match=r"at station el-1: ConnectionError"):
        line.stop()
    assert line.alarms.counts()[kinds.BAD_FRAME] >= 2, "only one frame was in flight"
    failed = [a.station for a in line.alarms.recent() if a.kind == kinds.STATION_FAILED]
    assert failed == ["el-1"]
