"""A model's output is held to what a verdict needs: ``[batch, classes]``, finite.

The models are small hand-built ONNX graphs run by the real onnxruntime: a NaN defect
score would compare below any threshold and pass the cell, so it must be a judge error
(no verdict, no row) of that frame alone, never of the frames batched with it (one
batched run, split by row); an output of the wrong shape must be refused when the version is
registered, naming the output and its shape, not fail every frame later with a bare
``IndexError``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qdspace.inference.errors import InferenceError, ModelLoadError
from qdspace.inference.frames import ModelInput
from qdspace.inference.line import InspectionLine, LineConfig, LocalJudge, StationSpec
from qdspace.inference.model import MODEL_FORMAT, OnnxClassifier
from qdspace.inference.registry import ModelRegistry
from qdspace.inference.sources import ArrayFrames
from qdspace.inference.verdicts import FrameRequest, judge_requests

onnx = pytest.importorskip("onnx")
helper, TensorProto = onnx.helper, onnx.TensorProto

SIZE = 16
#: the hand-built models score a frame by its mean brightness: P(bad) = mean
DARK, BRIGHT = 40, 220
#: a frame darker than this (mean, in [0, 1]) makes the "nan"/"inf" models answer it so
CUTOFF = 0.5


def _const(name: str, value: float) -> Any:
    tensor = helper.make_tensor(name, TensorProto.FLOAT, [], [value])
    return helper.make_node("Constant", [], [name], value=tensor)


def _model(kind: str) -> bytes:
    """An EL classifier scoring P(bad) = a frame's mean brightness, broken as ``kind`` says.

    ``ok``: a good model. ``nan``/``inf``: NaN/infinity for frames darker than ``CUTOFF``.
    ``narrow``: one column for two classes. ``scalar``: a 0-d output.
    """
    frames = helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])
    nodes = [
        helper.make_node("ReduceMean", ["frames"], ["m"], axes=[2, 3], keepdims=0),  # [N, 1]
        _const("one", 1.0),
        _const("zero", 0.0),
        _const("cut", CUTOFF),
        helper.make_node("Sub", ["one", "m"], ["good"]),
    ]
    shape: list[Any] = ["N", 2]
    if kind in ("ok", "nan", "inf"):
        if kind == "ok":
            nodes.append(helper.make_node("Mul", ["m", "zero"], ["spoil"]))
        elif kind == "nan":  # sqrt(m - cut) * 0: NaN below the cutoff, 0 above
            nodes += [
                helper.make_node("Sub", ["m", "cut"], ["d"]),
                helper.make_node("Sqrt", ["d"], ["r"]),
                helper.make_node("Mul", ["r", "zero"], ["spoil"]),
            ]
        else:  # 0 / max(m - cut, 0): infinity below the cutoff, 0 above
            nodes += [
                helper.make_node("Sub", ["cut", "m"], ["d"]),
                helper.make_node("Max", ["d", "zero"], ["p"]),
                helper.make_node("Sub", ["m", "cut"], ["e"]),
                helper.make_node("Max", ["e", "zero"], ["q"]),
                helper.make_node("Div", ["p", "q"], ["spoil"]),
            ]
        nodes += [
            helper.make_node("Add", ["good", "spoil"], ["g"]),
            helper.make_node("Add", ["m", "spoil"], ["b"]),
            helper.make_node("Concat", ["g", "b"], ["probs"], axis=1),
        ]
    elif kind == "narrow":
        nodes.append(helper.make_node("Identity", ["m"], ["probs"]))
        shape = ["N", 1]
    elif kind == "scalar":
        nodes.append(helper.make_node("ReduceMean", ["m"], ["probs"], keepdims=0))
        shape = []
    else:
        raise AssertionError(kind)
    return _serialise(nodes, kind, frames, shape)


def _lying_model() -> bytes:
    """Declares ``[N, 2]`` but answers ``[N, 1]``: the mean tiled by repeats computed from
    the pixels (always 1), so onnxruntime cannot see the real shape when loading it."""
    frames = helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])
    axis = helper.make_tensor("axis", TensorProto.INT64, [1], [0])
    nodes = [
        helper.make_node("ReduceMean", ["frames"], ["m"], axes=[2, 3], keepdims=0),  # [N, 1]
        helper.make_node("ReduceMax", ["frames"], ["top"], keepdims=0),
        _const("zero", 0.0),
        _const("one", 1.0),
        helper.make_node("Mul", ["top", "zero"], ["z"]),
        helper.make_node("Add", ["z", "one"], ["onef"]),
        helper.make_node("Cast", ["onef"], ["onei"], to=TensorProto.INT64),
        helper.make_node("Unsqueeze", ["onei", "axis"], ["r"]),
        helper.make_node("Concat", ["r", "r"], ["reps"], axis=0),
        helper.make_node("Tile", ["m", "reps"], ["probs"]),
    ]
    return _serialise(nodes, "lying", frames, ["N", 2], [axis])


def _batch_shaped_model() -> bytes:
    """A good model, except that a batch holding a frame darker than ``CUTOFF`` answers
    ``[N, 4]`` (the rows tiled twice): a whole-batch failure one frame causes."""
    frames = helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])
    axis = helper.make_tensor("axis", TensorProto.INT64, [1], [0])
    one_i = helper.make_tensor("one_i", TensorProto.INT64, [], [1])
    nodes = [
        helper.make_node("ReduceMean", ["frames"], ["m"], axes=[2, 3], keepdims=0),  # [N, 1]
        _const("one", 1.0),
        _const("cut", CUTOFF),
        helper.make_node("Sub", ["one", "m"], ["good"]),
        helper.make_node("Concat", ["good", "m"], ["p"], axis=1),
        helper.make_node("ReduceMin", ["m"], ["darkest"], keepdims=0),
        helper.make_node("Less", ["darkest", "cut"], ["dark"]),
        helper.make_node("Cast", ["dark"], ["extra"], to=TensorProto.INT64),
        helper.make_node("Add", ["extra", "one_i"], ["k"]),
        helper.make_node("Unsqueeze", ["one_i", "axis"], ["r0"]),
        helper.make_node("Unsqueeze", ["k", "axis"], ["r1"]),
        helper.make_node("Concat", ["r0", "r1"], ["reps"], axis=0),
        helper.make_node("Tile", ["p", "reps"], ["probs"]),
    ]
    return _serialise(nodes, "batch-shaped", frames, ["N", 2], [axis, one_i])


def _serialise(
    nodes: list[Any], name: str, frames: Any, shape: list[Any], initializer: Sequence[Any] = ()
) -> bytes:
    probs = helper.make_tensor_value_info("probs", TensorProto.FLOAT, shape)
    model = helper.make_model(
        helper.make_graph(nodes, name, [frames], [probs], initializer=list(initializer)),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    model.ir_version = 8
    meta = {
        "qdspace.format": MODEL_FORMAT,
        "qdspace.input_size": str(SIZE),
        "qdspace.class_names": json.dumps(["ok", "bad"]),
        "qdspace.defective_classes": "[1]",
    }
    for key, value in meta.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    return bytes(model.SerializeToString())


def _frame(level: int) -> np.ndarray:
    return np.full((32, 32), level, dtype=np.uint8)


def test_the_good_hand_built_model_judges_by_brightness(tmp_path: Path) -> None:
    model = OnnxClassifier(_model("ok"), device="cpu")
    dark, bright = model.judge([_frame(DARK), _frame(BRIGHT)])
    assert (dark.verdict, bright.verdict) == ("pass", "fail")
    assert ModelRegistry(tmp_path).register(_model("ok"), "test").class_names == ("ok", "bad")


@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_a_non_finite_score_is_an_error_never_a_verdict(kind: str) -> None:
    model = OnnxClassifier(_model(kind), device="cpu")
    assert model.judge([_frame(BRIGHT)])[0].verdict == "fail"  # finite rows still judge
    with pytest.raises(InferenceError, match=r"not finite .*rows \[1\] of 2"):
        model.judge([_frame(BRIGHT), _frame(DARK)])
    batch = model.prepare([_frame(DARK)])
    with pytest.raises(InferenceError, match="not finite"):
        model.probabilities(batch)


class _Rows:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def __call__(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)


def test_on_the_line_a_nan_score_is_a_judge_error_and_no_row() -> None:
    frames = [_frame(BRIGHT), _frame(DARK), _frame(BRIGHT)]
    sink = _Rows()
    line = InspectionLine(
        LocalJudge(OnnxClassifier(_model("nan"), device="cpu")),
        sink,
        [StationSpec("el-1", ArrayFrames(frames, ["b0", "d1", "b2"], loop=False), 400.0)],
        LineConfig(run_id="nan", freeze_gc=False),
    )
    final = line.run(seconds=60.0)
    assert final.stations["el-1"].judge_errors == 1
    assert final.stations["el-1"].judged == 2
    assert sorted((r["frame_id"], r["verdict"]) for r in sink.rows) == [
        ("b0", "fail"),
        ("b2", "fail"),
    ]
    (alarm,) = line.alarms.recent()
    assert "frame d1" in alarm.message and "not finite" in alarm.message


@pytest.mark.parametrize(
    ("kind", "shape"), [("narrow", r"\['N', 1\]"), ("scalar", r"\[\]")], ids=["n-by-1", "0-d"]
)
def test_an_output_of_the_wrong_shape_is_refused_at_registration(
    tmp_path: Path, kind: str, shape: str
) -> None:
    registry = ModelRegistry(tmp_path)
    with pytest.raises(ModelLoadError, match=rf"output 'probs' has shape {shape}, expected"):
        registry.register(_model(kind), "test")
    assert registry.versions() == []
    assert not (tmp_path / "models").exists()


def test_a_file_that_lies_about_its_output_shape_is_refused_by_the_trial_run(
    tmp_path: Path,
) -> None:
    lying = _lying_model()
    with pytest.raises(InferenceError, match=r"shape \(1, 1\) for 1 frames, expected \(1, 2\)"):
        OnnxClassifier(lying, device="cpu").judge([_frame(BRIGHT)])
    registry = ModelRegistry(tmp_path)
    with pytest.raises(ModelLoadError, match="trial run"):
        registry.register(lying, "test")
    assert registry.versions() == []


class _Counting(OnnxClassifier):
    """The real classifier, noting the batch size of every onnxruntime run."""

    def __init__(self, data: bytes, source: str) -> None:
        super().__init__(data, source, device="cpu")
        self.runs: list[int] = []

    def run(self, batch: ModelInput) -> object:
        self.runs.append(len(batch))
        return super().run(batch)


def test_a_nan_row_fails_its_frame_alone_in_one_batched_run() -> None:
    """The model answers NaN for the dark frame only: the bright frames batched with it
    keep their verdicts, from the one run; the dark one (and a float frame holding NaN,
    refused before the run) get errors naming the frame, its station and the cause."""
    model = _Counting(_model("nan"), "nan.onnx")
    nan_frame = np.full((32, 32), np.nan)
    requests = [
        FrameRequest("el-1", "b0", _frame(BRIGHT)),
        FrameRequest("el-2", "d1", _frame(DARK)),
        FrameRequest("el-1", "x2", nan_frame),
        FrameRequest("el-2", "b3", _frame(BRIGHT)),
    ]
    b0, d1, x2, b3 = judge_requests(model, requests)
    assert model.runs == [3]
    assert (b0.frame_id, b0.verdict, b0.error) == ("b0", "fail", None)
    assert (b3.frame_id, b3.verdict, b3.error) == ("b3", "fail", None)
    assert (d1.verdict, d1.score, d1.fault, d1.model_version) == (
        None,
        None,
        "model",
        model.version,
    )
    assert d1.error is not None and d1.error.startswith("frame d1 (station el-2): model ")
    assert "nan.onnx" in d1.error and "not finite (NaN or infinity) in batch row 1 of 3" in d1.error
    assert (x2.verdict, x2.fault) == (None, "frame")
    assert x2.error == (
        "frame x2: dtype float64, expected uint8 grayscale "
        "(and it holds NaN or infinity in 1,024 of 1,024 values)"
    )


def test_a_batch_one_frame_breaks_is_judged_again_frame_by_frame() -> None:
    """The batched run fails for all (a dark frame makes the output [N, 4]): each frame
    is run again alone, so only the dark one fails, naming the shape it got."""
    model = _Counting(_batch_shaped_model(), "tiled.onnx")
    ids = ["b0", "d1", "b2"]
    frames = [_frame(BRIGHT), _frame(DARK), _frame(BRIGHT)]
    b0, d1, b2 = judge_requests(
        model, [FrameRequest("el-1", i, f) for i, f in zip(ids, frames, strict=True)]
    )
    assert model.runs == [3, 1, 1, 1]
    assert [b0.verdict, b2.verdict] == ["fail", "fail"] and b0.error is None is b2.error
    assert (d1.verdict, d1.fault) == (None, "model")
    assert d1.error is not None and d1.error.startswith("frame d1 (station el-1): model ")
    assert "shape (1, 4) for 1 frames, expected (1, 2)" in d1.error
    assert judge_requests(model, [FrameRequest("el-1", "b4", _frame(BRIGHT))])[0].verdict == "fail"
    assert model.runs == [3, 1, 1, 1, 1]  # a batch the run does not fail: one run
