"""A model's output is held to what a verdict needs: ``[batch, classes]``, finite.

The models are small hand-built ONNX graphs run by the real onnxruntime: a NaN defect
score would compare below any threshold and pass the cell, so it must be a judge error
(no verdict, no row); an output of the wrong shape must be refused when the version is
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
from qdspace.inference.line import InspectionLine, LineConfig, LocalJudge, StationSpec
from qdspace.inference.model import MODEL_FORMAT, OnnxClassifier
from qdspace.inference.registry import ModelRegistry
from qdspace.inference.sources import ArrayFrames

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
