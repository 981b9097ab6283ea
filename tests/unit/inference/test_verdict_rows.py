"""One bad frame of a batch fails alone: the pure splitting of a batch into answers.

A batch is one onnxruntime run over frames of several stations. ``row_judgements``
splits the run's output by row, so a NaN row is that frame's error and the other rows
keep their verdicts; ``served_verdicts`` merges the frames refused before the run and
the run's rows back into one answer per request, in order, each error naming its
frame and station. Both are plain functions of arrays: no model, no Ray.
"""

from __future__ import annotations

import numpy as np
import pytest

from qdspace.inference.errors import FrameError, InferenceError
from qdspace.inference.frames import Frame
from qdspace.inference.model import Judgement, ModelInfo, RowError, judgements, row_judgements
from qdspace.inference.verdicts import FrameRequest, served_verdicts

INFO = ModelInfo("ab" * 32, 16, ("ok", "crack", "finger"), (1, 2))
NAN, INF = float("nan"), float("inf")


def test_a_nan_row_is_an_error_of_its_own_and_the_other_rows_are_judged() -> None:
    output = np.array(
        [[0.2, 0.5, 0.3], [NAN, 0.1, 0.1], [0.9, 0.05, 0.05], [0.1, INF, 0.0], [0.0, 0.3, 0.7]],
        dtype=np.float32,
    )
    rows = row_judgements(output, 5, INFO, 0.5, "m.onnx")
    assert rows[0] == Judgement("fail", "crack", pytest.approx(0.8))
    assert rows[2] == Judgement("pass", None, pytest.approx(0.1))
    assert rows[4] == Judgement("fail", "finger", pytest.approx(1.0))
    for row in (1, 3):
        error = rows[row]
        assert isinstance(error, RowError)
        assert f"row {row} of 5" in error.reason and "not finite" in error.reason
        assert "m.onnx" in error.reason and INFO.short_version in error.reason


def test_a_defect_score_that_overflows_is_an_error_not_a_pass() -> None:
    """Each probability is finite, their sum is not: it would compare below 0.5 as NaN."""
    output = np.array([[0.0, 3e38, 3e38], [0.9, 0.1, 0.0]], dtype=np.float32)
    first, second = row_judgements(output, 2, INFO)
    assert isinstance(first, RowError) and "defect score is not finite" in first.reason
    assert second == Judgement("pass", None, pytest.approx(0.1))
    with pytest.raises(InferenceError, match="batch row 0 is NaN or infinite"):
        judgements(output, INFO)


def test_an_output_of_the_wrong_shape_fails_the_whole_batch() -> None:
    with pytest.raises(InferenceError, match=r"shape \(2, 2\) for 2 frames, expected \(2, 3\)"):
        row_judgements(np.zeros((2, 2), np.float32), 2, INFO)


def _request(frame_id: str, station: str = "el-1") -> FrameRequest:
    return FrameRequest(station, frame_id, None)


def test_answers_come_back_in_request_order_each_error_naming_its_frame() -> None:
    requests = [_request("a"), _request("b"), _request("c", "el-2"), _request("d")]
    frame = np.zeros((16, 16), np.uint8)
    checked: list[Frame | FrameError] = [frame, FrameError("b", "dtype float64, expected uint8")]
    checked += [frame, frame]
    outcomes: list[Judgement | RowError] = [
        Judgement("fail", "crack", 0.9),
        RowError("output 'probs' is not finite (NaN or infinity) in batch row 1 of 3"),
        Judgement("pass", None, 0.1),
    ]
    a, b, c, d = served_verdicts(requests, checked, outcomes, "v1")
    assert (a.frame_id, a.verdict, a.score, a.error) == ("a", "fail", 0.9, None)
    assert (d.frame_id, d.verdict, d.error) == ("d", "pass", None)
    assert (b.verdict, b.fault, b.model_version) == (None, "frame", "v1")
    assert b.error == "frame b: dtype float64, expected uint8"
    assert (c.frame_id, c.verdict, c.score, c.fault) == ("c", None, None, "model")
    assert c.error is not None and c.error.startswith("frame c (station el-2): output 'probs'")


def test_answers_that_do_not_add_up_are_refused() -> None:
    requests = [_request("a"), _request("b")]
    frame = np.zeros((16, 16), np.uint8)
    with pytest.raises(InferenceError, match="1 model answers for 2 judged frames"):
        served_verdicts(requests, [frame, frame], [Judgement("pass", None, 0.1)], "v1")
    with pytest.raises(InferenceError, match="1 frame checks for 2 requests"):
        served_verdicts(requests, [frame], [], "v1")
