"""On the Ray Serve tier, one bad frame of a batch fails alone.

A Serve batch holds frames of several stations and is judged by one onnxruntime run.
A frame the model answers with NaN, or a float frame holding NaN, used to fail the
whole batch (and every frame of the trips that fed it): good cells lost their verdicts
as judge errors. Here a hand-built model (P(bad) = mean brightness, NaN for dark
frames; no PyTorch needed) is served by a real local Ray, and the batch's good frames
must come back judged while the bad one gets an error naming it and the cause.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from qdspace.inference.model import MODEL_FORMAT
from qdspace.inference.serve import InspectionTier, ServeSettings
from qdspace.inference.verdicts import FrameRequest, ServedVerdict

pytestmark = pytest.mark.integration
pytest.importorskip("ray")
onnx = pytest.importorskip("onnx")
helper, TensorProto = onnx.helper, onnx.TensorProto

SIZE = 16
DARK, BRIGHT = 40, 220
#: every test sends this many frames in one trip, which the replica judges as one batch
#: (the batch waits for all of them; the wait is a ceiling, not a timing assertion)
BATCH = 4


def _const(name: str, value: float) -> Any:
    tensor = helper.make_tensor(name, TensorProto.FLOAT, [], [value])
    return helper.make_node("Constant", [], [name], value=tensor)


def _nan_for_dark_frames() -> bytes:
    """P(bad) = a frame's mean brightness; NaN (sqrt of a negative) below half."""
    frames = helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["N", 1, SIZE, SIZE])
    probs = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 2])
    nodes = [
        helper.make_node("ReduceMean", ["frames"], ["m"], axes=[2, 3], keepdims=0),  # [N, 1]
        _const("one", 1.0),
        _const("zero", 0.0),
        _const("cut", 0.5),
        helper.make_node("Sub", ["one", "m"], ["good"]),
        helper.make_node("Sub", ["m", "cut"], ["d"]),
        helper.make_node("Sqrt", ["d"], ["r"]),
        helper.make_node("Mul", ["r", "zero"], ["spoil"]),
        helper.make_node("Add", ["good", "spoil"], ["g"]),
        helper.make_node("Add", ["m", "spoil"], ["b"]),
        helper.make_node("Concat", ["g", "b"], ["probs"], axis=1),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "nan-for-dark", [frames], [probs]),
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


@pytest.fixture(scope="module")
def tier(local_ray: None) -> Iterator[InspectionTier]:
    settings = ServeSettings(device="cpu", max_batch_size=BATCH, batch_wait_timeout_s=5.0)
    tier = InspectionTier(settings, app_name="test-bad-rows")
    tier.start(_nan_for_dark_frames(), "nan-for-dark.onnx")
    try:
        yield tier
    finally:
        tier.stop()


def _frame(level: int) -> np.ndarray:
    return np.full((32, 32), level, dtype=np.uint8)


def _one_trip(tier: InspectionTier, requests: list[FrameRequest]) -> list[Any]:
    """The frames sent together (one loop turn: one trip, one batch); answers or errors."""
    assert len(requests) == BATCH

    async def together() -> list[ServedVerdict | BaseException]:
        judge = tier.judge()
        return list(await asyncio.gather(*map(judge, requests), return_exceptions=True))

    return asyncio.run(together())


def test_a_nan_output_row_fails_its_frame_alone(tier: InspectionTier) -> None:
    before = tier.status().batch_sizes.get(BATCH, 0)
    requests = [
        FrameRequest("el-1", "b0", _frame(BRIGHT)),
        FrameRequest("el-2", "d1", _frame(DARK)),
        FrameRequest("el-1", "b2", _frame(BRIGHT)),
        FrameRequest("el-3", "b3", _frame(BRIGHT)),
    ]
    b0, d1, b2, b3 = _one_trip(tier, requests)
    for verdict, frame_id in ((b0, "b0"), (b2, "b2"), (b3, "b3")):
        assert isinstance(verdict, ServedVerdict), f"{frame_id} lost its verdict: {verdict!r}"
        assert (verdict.frame_id, verdict.verdict, verdict.error) == (frame_id, "fail", None)
        assert verdict.score == pytest.approx(BRIGHT / 255, abs=1e-3)
        assert verdict.model_version == tier.version
    assert isinstance(d1, ServedVerdict), f"the NaN frame raised instead: {d1!r}"
    assert (d1.frame_id, d1.verdict, d1.score, d1.fault) == ("d1", None, None, "model")
    assert d1.error is not None and d1.error.startswith("frame d1 (station el-2): model ")
    assert "nan-for-dark.onnx" in d1.error and "not finite (NaN or infinity)" in d1.error
    # the four were one batch, one run: the split happened inside it
    assert tier.status().batch_sizes.get(BATCH, 0) == before + 1


def test_a_float_frame_holding_nan_fails_alone(tier: InspectionTier) -> None:
    requests = [
        FrameRequest("el-1", "g0", _frame(DARK + 100)),
        FrameRequest("el-2", "n1", np.full((32, 32), np.nan, dtype=np.float32)),
        FrameRequest("el-1", "g2", _frame(BRIGHT)),
        FrameRequest("el-2", "g3", _frame(BRIGHT)),
    ]
    g0, n1, g2, g3 = _one_trip(tier, requests)
    assert [(v.frame_id, v.verdict) for v in (g0, g2, g3)] == [
        ("g0", "fail"),
        ("g2", "fail"),
        ("g3", "fail"),
    ]
    assert isinstance(n1, ServedVerdict) and (n1.verdict, n1.fault) == (None, "frame")
    assert n1.error == (
        "frame n1: dtype float32, expected uint8 grayscale "
        "(and it holds NaN or infinity in 1,024 of 1,024 values)"
    )
