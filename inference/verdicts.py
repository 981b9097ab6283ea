"""Requests, verdicts and QDM rows: what crosses from a station to the model and on to the node.

``judge_requests`` is the one batch function both the Ray Serve replica and the
in-process judge run, so a bare onnxruntime baseline and the served tier do exactly
the same work per frame. A bad frame in a batch gets an error verdict of its own and
never fails the frames batched with it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from qdspace.inference.errors import FrameError
from qdspace.inference.frames import check_frame
from qdspace.inference.model import DEFAULT_THRESHOLD, OnnxClassifier, Verdict

logger = logging.getLogger("inference")

INSPECTION_KIND = "inspection"
#: QDM defect code for a failed cell when the model names severity, not a defect type
UNTYPED_DEFECT_CODE = "other"


@dataclass(frozen=True)
class FrameRequest:
    """One frame sent to the model; ``frame`` is unchecked (the judge checks it)."""

    station: str
    frame_id: str
    frame: Any


@dataclass(frozen=True)
class ServedVerdict:
    """The judge's answer for one frame; ``error`` is set (and verdict None) for a bad frame."""

    frame_id: str
    verdict: Verdict | None
    defect_class: str | None
    score: float | None
    model_version: str | None
    error: str | None = None


def judge_requests(
    model: OnnxClassifier,
    requests: Sequence[FrameRequest],
    threshold: float = DEFAULT_THRESHOLD,
) -> list[ServedVerdict]:
    """Judge a batch with one model; bad frames are answered with an error, not raised."""
    good: list[int] = []
    frames = []
    answers: list[ServedVerdict | None] = [None] * len(requests)
    for position, request in enumerate(requests):
        try:
            frames.append(check_frame(request.frame, request.frame_id))
        except FrameError as exc:
            answers[position] = ServedVerdict(
                request.frame_id, None, None, None, model.version, str(exc)
            )
            continue
        good.append(position)
    if frames:
        for position, judged in zip(good, model.judge(frames, threshold), strict=True):
            answers[position] = ServedVerdict(
                requests[position].frame_id,
                judged.verdict,
                judged.defect_class,
                judged.score,
                model.version,
            )
    return [a for a in answers if a is not None]


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
