"""Requests, verdicts and QDM rows: what crosses from a station to the model and on to the node.

``judge_requests`` is the one batch function both the Ray Serve replica and the
in-process judge run, so a bare onnxruntime baseline and the served tier do exactly
the same work per frame. A bad frame in a batch gets an error verdict of its own and
never fails the frames batched with it: a Serve batch mixes the frames of several
stations, and a frame the camera got wrong, or one the model answers with NaN, must
not cost the cells beside it their verdicts (they would be counted as judge errors
and never stored). So:

- each frame is checked before the batch is run: one that cannot be judged (wrong
  dtype, a float frame holding NaN, wrong shape) is answered ``fault="frame"``;
- the checked frames go through one onnxruntime run, and its output is split by row
  (``model.row_judgements``): a non-finite row is answered ``fault="model"``, the
  other rows get their verdicts;
- only when the batched run itself fails (onnxruntime raises, the output has the
  wrong shape) is each frame run again alone, so the failure lands on the frames
  that cause it. The happy path stays one run per batch.

``served_verdicts`` is the pure merge of those three into one answer per request, in
request order, each error naming its frame and station.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np

from qdspace.inference.errors import FrameError, InferenceError
from qdspace.inference.frames import Frame, check_frame
from qdspace.inference.model import (
    DEFAULT_THRESHOLD,
    Judgement,
    OnnxClassifier,
    RowError,
    Verdict,
)

logger = logging.getLogger("inference")

INSPECTION_KIND = "inspection"
#: QDM defect code for a failed cell when the model names severity, not a defect type
UNTYPED_DEFECT_CODE = "other"

#: whose fault a verdict's ``error`` is: the frame's (it cannot be judged: counted as a
#: bad frame) or the model's (it gave no usable answer for it: a judge error)
Fault = Literal["frame", "model"]


@dataclass(frozen=True)
class FrameRequest:
    """One frame sent to the model; ``frame`` is unchecked (the judge checks it)."""

    station: str
    frame_id: str
    frame: Any


@dataclass(frozen=True)
class ServedVerdict:
    """The judge's answer for one frame: a verdict, or (verdict None) an ``error`` naming
    the frame and what is wrong, the frame's own ``fault`` or the model's."""

    frame_id: str
    verdict: Verdict | None
    defect_class: str | None
    score: float | None
    model_version: str | None
    error: str | None = None
    #: whose fault ``error`` is, when it is set
    fault: Fault = "frame"


def judge_requests(
    model: OnnxClassifier,
    requests: Sequence[FrameRequest],
    threshold: float = DEFAULT_THRESHOLD,
) -> list[ServedVerdict]:
    """Judge a batch with one model: one answer per request, in order; a frame that
    cannot be judged, or that the model fails on, gets an error of its own, never raised."""
    checked: list[Frame | FrameError] = []
    for request in requests:
        try:
            checked.append(check_frame(request.frame, request.frame_id))
        except FrameError as exc:
            checked.append(exc)
    frames = [c for c in checked if not isinstance(c, FrameError)]
    outcomes = _judge_frames(model, frames, threshold) if frames else []
    return served_verdicts(requests, checked, outcomes, model.version)


def _judge_frames(
    model: OnnxClassifier, frames: Sequence[Frame], threshold: float
) -> list[Judgement | RowError]:
    """One batched run split by row; if the run itself fails, each frame alone."""
    try:
        return model.judge_rows(frames, threshold)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        if len(frames) == 1:
            return [_run_failed(model, exc)]
        logger.warning(
            "inference.verdicts: a batch of %d frames failed (%s), judging each alone",
            len(frames),
            _describe(exc),
        )
    out: list[Judgement | RowError] = []
    for frame in frames:
        try:
            out += model.judge_rows([frame], threshold)
        except Exception as exc:  # this frame fails alone
            out.append(_run_failed(model, exc))
    return out


def _run_failed(model: OnnxClassifier, exc: Exception) -> RowError:
    if isinstance(exc, InferenceError):  # names the model already
        return RowError(f"{exc}: no verdict")
    return RowError(
        f"model {model.info.short_version} ({model.source}): the run failed: "
        f"{_describe(exc)}: no verdict"
    )


def _describe(exc: Exception) -> str:
    return str(exc) if isinstance(exc, InferenceError) else f"{type(exc).__name__}: {exc}"


def served_verdicts(
    requests: Sequence[FrameRequest],
    checked: Sequence[Frame | FrameError],
    outcomes: Sequence[Judgement | RowError],
    model_version: str,
) -> list[ServedVerdict]:
    """One answer per request, in order, from a batch's parts (pure: no model, no I/O).

    ``checked`` holds, per request, the ``FrameError`` that kept its frame out of the
    run, or the checked frame that went in; ``outcomes`` holds, in order, the
    run's verdict or ``RowError`` for each frame that went in. Errors name the frame
    and its station, so an operator can find the one frame in the log line.
    """
    if len(checked) != len(requests):
        raise InferenceError(f"{len(checked)} frame checks for {len(requests)} requests")
    judged = sum(1 for c in checked if not isinstance(c, FrameError))
    if judged != len(outcomes):
        raise InferenceError(f"{len(outcomes)} model answers for {judged} judged frames")
    rows = iter(outcomes)
    answers: list[ServedVerdict] = []
    for request, check in zip(requests, checked, strict=True):
        if isinstance(check, FrameError):
            answers.append(_error(request, model_version, str(check), "frame"))
            continue
        outcome = next(rows)
        if isinstance(outcome, RowError):
            answers.append(model_failed(request, model_version, outcome.reason))
            continue
        answers.append(
            ServedVerdict(
                request.frame_id,
                outcome.verdict,
                outcome.defect_class,
                outcome.score,
                model_version,
            )
        )
    return answers


def model_failed(request: FrameRequest, model_version: str | None, reason: str) -> ServedVerdict:
    """The answer for a frame the judge failed on (the model's fault), naming the frame."""
    where = f"frame {request.frame_id} (station {request.station})"
    return _error(request, model_version, f"{where}: {reason}", "model")


def _error(
    request: FrameRequest, model_version: str | None, message: str, fault: Fault
) -> ServedVerdict:
    return ServedVerdict(request.frame_id, None, None, None, model_version, message, fault)


def inspection_row(
    *,
    inspection_id: str,
    station: str,
    inspected_at: datetime,
    verdict: ServedVerdict,
    image_hash: str | None,
    latency_ms: float | None,
    defect_code: str | None = UNTYPED_DEFECT_CODE,
    order_id: str | None = None,
    serial: str | None = None,
    batch_id: str | None = None,
) -> dict[str, Any]:
    """The QDM ``inspection`` row of a judged frame (the node's store validates it again).

    The EL model grades how likely a cell is defective, not which defect it has, so a
    failed cell gets ``defect_code`` (QDM ``other`` by default: a defect of unnamed type)
    and a passed one ``none``; the model's own class name stays in the score's meaning.
    """
    if verdict.verdict is None or verdict.score is None:
        raise FrameError(verdict.frame_id, f"has no verdict to store ({verdict.error})")
    row: dict[str, Any] = {
        "inspection_id": inspection_id,
        "station": station,
        "inspected_at": inspected_at.isoformat(timespec="microseconds"),
        "verdict": verdict.verdict,
        "defect_class": defect_code if verdict.verdict == "fail" else "none",
        "score": float(np.clip(verdict.score, 0.0, 1.0)),
        "model_version": verdict.model_version,
        "image_hash": image_hash,
        "frame_id": verdict.frame_id,
        "latency_ms": None if latency_ms is None else round(latency_ms, 3),
    }
    for key, value in (("order_id", order_id), ("serial", serial), ("batch_id", batch_id)):
        if value is not None:
            row[key] = value
    return row
