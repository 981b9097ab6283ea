"""An EL defect classifier as an ONNX file, judged with onnxruntime (no PyTorch needed).

onnxruntime itself is loaded when a classifier is built (``inference.extras``): the
node's API imports this module for the registry and explanations, and a node installed
without the ``inspect`` extra must still start.

The ONNX file describes itself: metadata properties name the input size, the class
names and which classes count as defective, so a node that only inspects can judge
frames with any registered version without knowing how it was trained.

What a model says about its output is held to it too: the output must be declared
``[batch, classes]`` (checked when the file is loaded, so a wrong one is refused at
registration, not by an ``IndexError`` on every frame later), and every output row a
session returns must have that shape and be finite. A NaN score would compare below
any threshold and pass the cell, so a non-finite output is never a verdict.

A batch is judged by one session run, and one frame's NaN row must not cost the other
frames of the batch their verdicts (a Serve batch holds frames of several stations):
``row_judgements`` splits a run's output into a verdict or a ``RowError`` per row. A
wrong shape is the batch's failure (no row can be trusted), an ``InferenceError``. The
whole-batch helpers (``judge``, ``probabilities``) still raise on any non-finite row:
the registry's trial run and the explanations want all rows or none.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from numpy.typing import NDArray

from qdspace.inference.errors import InferenceError, ModelLoadError
from qdspace.inference.extras import load_onnxruntime
from qdspace.inference.frames import Frame, ModelInput, to_model_input

if TYPE_CHECKING:
    import onnxruntime as ort

logger = logging.getLogger("inference")

MODEL_FORMAT = "qdspace.el-classifier/1"
INPUT_NAME = "frames"
OUTPUT_NAME = "probs"
META_FORMAT = "qdspace.format"
META_INPUT_SIZE = "qdspace.input_size"
META_CLASS_NAMES = "qdspace.class_names"
META_DEFECTIVE = "qdspace.defective_classes"
DEFAULT_THRESHOLD = 0.5
CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"

Device = Literal["auto", "cpu", "cuda"]
Verdict = Literal["pass", "fail"]


@dataclass(frozen=True)
class ModelInfo:
    """What a model file says about itself, plus its content hash (the version)."""

    version: str
    input_size: int
    class_names: tuple[str, ...]
    defective_classes: tuple[int, ...]

    @property
    def short_version(self) -> str:
        """First 12 hex digits: enough to tell versions apart on a screen."""
        return self.version[:12]


@dataclass(frozen=True)
class Judgement:
    """One frame's outcome: verdict, the most likely defect class, defect score."""

    verdict: Verdict
    defect_class: str | None
    score: float


@dataclass(frozen=True)
class RowError:
    """Why one row of a batched run has no verdict; the other rows' verdicts stand."""

    reason: str


def content_hash(data: bytes) -> str:
    """The version of a model: sha256 of its ONNX bytes, in hex."""
    return hashlib.sha256(data).hexdigest()


def providers_for(device: Device) -> list[str]:
    """Execution providers: CUDA when asked for or (``auto``) present, CPU as fallback."""
    available = load_onnxruntime().get_available_providers()
    if device == "cpu":
        return [CPU_PROVIDER]
    if device == "cuda" and CUDA_PROVIDER not in available:
        raise ModelLoadError("<providers>", "CUDA asked for but onnxruntime has no CUDA provider")
    if CUDA_PROVIDER in available:
        return [CUDA_PROVIDER, CPU_PROVIDER]
    return [CPU_PROVIDER]


def _read_info(session: ort.InferenceSession, version: str, source: str) -> ModelInfo:
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get(META_FORMAT) != MODEL_FORMAT:
        raise ModelLoadError(source, f"metadata {META_FORMAT}={meta.get(META_FORMAT)!r}")
    try:
        size = int(meta[META_INPUT_SIZE])
        names = tuple(str(n) for n in json.loads(meta[META_CLASS_NAMES]))
        defective = tuple(int(i) for i in json.loads(meta[META_DEFECTIVE]))
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelLoadError(source, f"bad qdspace metadata ({exc!r})") from exc
    if len(names) < 2 or not defective or not all(0 <= i < len(names) for i in defective):
        raise ModelLoadError(source, f"classes {names} / defective {defective} do not fit")
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if [i.name for i in inputs] != [INPUT_NAME] or outputs[0].name != OUTPUT_NAME:
        raise ModelLoadError(source, f"expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}")
    if list(inputs[0].shape[1:]) != [1, size, size]:
        raise ModelLoadError(source, f"input shape {inputs[0].shape}, metadata says {size}px")
    _check_output_shape(outputs[0].shape, names, source)
    return ModelInfo(version, size, names, defective)


def _check_output_shape(shape: object, names: tuple[str, ...], source: str) -> None:
    """The output must be declared ``[batch, len(names)]``; the batch side may be symbolic."""
    dims = list(shape) if isinstance(shape, list | tuple) else None
    if dims is None or len(dims) != 2 or dims[1] != len(names):
        raise ModelLoadError(
            source,
            f"output {OUTPUT_NAME!r} has shape {shape}, expected [batch, {len(names)}] "
            f"(one probability per class of {list(names)})",
        )


class OnnxClassifier:
    """An onnxruntime session around one model version; thread-safe for ``run``."""

    def __init__(
        self,
        data: bytes,
        source: str = "<bytes>",
        device: Device = "auto",
        threads: int = 1,
        expected_version: str | None = None,
    ) -> None:
        version = content_hash(data)
        if expected_version is not None and version != expected_version:
            raise ModelLoadError(source, f"content hash {version[:12]} != {expected_version[:12]}")
        ort = load_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(data, options, providers=providers_for(device))
        except ModelLoadError:
            raise
        except Exception as exc:  # onnxruntime raises its own untyped Fail/InvalidGraph errors
            raise ModelLoadError(source, f"onnxruntime cannot load it: {exc}") from exc
        self.info = _read_info(session, version, source)
        self.source = source
        self._session = session
        self._defective = list(self.info.defective_classes)

    @classmethod
    def from_file(
        cls,
        path: Path,
        device: Device = "auto",
        threads: int = 1,
        expected_version: str | None = None,
    ) -> OnnxClassifier:
        """Load a model file; a missing, corrupt or foreign file raises ``ModelLoadError``."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(str(path), f"cannot read ({exc.strerror or exc})") from exc
        return cls(data, str(path), device, threads, expected_version)

    @property
    def version(self) -> str:
        """The content hash of the loaded ONNX bytes."""
        return self.info.version

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually runs on."""
        return list(self._session.get_providers())

    def prepare(self, frames: Sequence[Frame]) -> ModelInput:
        """Frames as this model's input batch (resized to its input size)."""
        return to_model_input(frames, self.info.input_size)

    def probabilities(self, batch: ModelInput) -> NDArray[np.float32]:
        """Class probabilities ``(N, classes)`` for a prepared batch.

        Raises ``InferenceError`` when the output is not ``(N, classes)`` or holds NaN
        or infinity: such an output is the model's failure, not a verdict on the frame.
        """
        return checked_probabilities(self.run(batch), len(batch), self.info, self.source)

    def run(self, batch: ModelInput) -> object:
        """The session's raw output for a prepared batch, unchecked (one onnxruntime run)."""
        return self._session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]

    def judge_rows(
        self, frames: Sequence[Frame], threshold: float = DEFAULT_THRESHOLD
    ) -> list[Judgement | RowError]:
        """One batched run; a verdict or a ``RowError`` per frame (see ``row_judgements``)."""
        batch = self.prepare(frames)
        return row_judgements(self.run(batch), len(batch), self.info, threshold, self.source)

    def judge_batch(
        self, batch: ModelInput, threshold: float = DEFAULT_THRESHOLD
    ) -> list[Judgement]:
        """Verdicts for a prepared batch: fail when P(defective) >= ``threshold``."""
        return judgements(self.probabilities(batch), self.info, threshold)

    def judge(
        self, frames: Sequence[Frame], threshold: float = DEFAULT_THRESHOLD
    ) -> list[Judgement]:
        """Verdicts for raw frames."""
        return self.judge_batch(self.prepare(frames), threshold)


def shaped_probabilities(
    output: object, frames: int, info: ModelInfo, source: str = "<model>"
) -> NDArray[np.float32]:
    """A session's output as ``(frames, classes)`` float32 (values unchecked), or
    ``InferenceError`` naming the shape it has instead."""
    probs: NDArray[np.float32] = np.asarray(output, dtype=np.float32)
    expected = (frames, len(info.class_names))
    if probs.shape != expected:
        raise InferenceError(
            f"model {info.short_version} ({source}): output {OUTPUT_NAME!r} has shape "
            f"{probs.shape} for {frames} frames, expected {expected}"
        )
    return probs


def checked_probabilities(
    output: object, frames: int, info: ModelInfo, source: str = "<model>"
) -> NDArray[np.float32]:
    """A session's output as ``(frames, classes)`` float32, or ``InferenceError`` saying
    why not: another shape, or a NaN/infinite value (named by its batch rows)."""
    probs = shaped_probabilities(output, frames, info, source)
    finite = np.isfinite(probs).all(axis=1)
    if not finite.all():
        rows = np.flatnonzero(~finite).tolist()
        raise InferenceError(
            f"model {info.short_version} ({source}): output {OUTPUT_NAME!r} is not finite "
            f"(NaN or infinity) for batch rows {rows[:10]} of {frames}: no verdict"
        )
    return probs


def judgements(
    probs: NDArray[np.float32], info: ModelInfo, threshold: float = DEFAULT_THRESHOLD
) -> list[Judgement]:
    """Turn class probabilities into verdicts; the defect class is the likeliest defective one.

    Raises ``InferenceError`` when any row's defect score is NaN or infinite."""
    out: list[Judgement] = []
    for row, judged in enumerate(_row_verdicts(probs, info, threshold)):
        if judged is None:  # NaN >= threshold is False: it would pass
            raise InferenceError(
                f"model {info.short_version}: the defect score of batch row {row} is NaN or "
                "infinite"
            )
        out.append(judged)
    return out


def row_judgements(
    output: object,
    frames: int,
    info: ModelInfo,
    threshold: float = DEFAULT_THRESHOLD,
    source: str = "<model>",
) -> list[Judgement | RowError]:
    """Split one batched run's output into a verdict or a ``RowError`` per row (frame).

    A row whose probabilities or defect score are NaN or infinite is that frame's
    failure only; the other rows keep their verdicts. An output of the wrong shape
    cannot be split into rows and raises ``InferenceError`` for the whole batch.
    """
    probs = shaped_probabilities(output, frames, info, source)
    not_finite = set(np.flatnonzero(~np.isfinite(probs).all(axis=1)).tolist())
    model = f"model {info.short_version} ({source})"
    out: list[Judgement | RowError] = []
    for row, judged in enumerate(_row_verdicts(probs, info, threshold)):
        if row in not_finite:
            out.append(
                RowError(
                    f"{model}: output {OUTPUT_NAME!r} is not finite (NaN or "
                    f"infinity) in batch row {row} of {frames}: no verdict"
                )
            )
        elif judged is None:
            out.append(
                RowError(
                    f"{model}: the defect score is not finite (the defective "
                    f"classes' probabilities overflow) in batch row {row} of "
                    f"{frames}: no verdict"
                )
            )
        else:
            out.append(judged)
    return out


def _row_verdicts(
    probs: NDArray[np.float32], info: ModelInfo, threshold: float
) -> list[Judgement | None]:
    """A verdict per row of ``(N, classes)`` probabilities; ``None`` where the defect
    score is NaN or infinite (it would compare below any threshold and pass)."""
    defective = list(info.defective_classes)
    with np.errstate(over="ignore", invalid="ignore"):  # judged per row below
        raw_scores = probs[:, defective].sum(axis=1)
    finite = np.isfinite(raw_scores)
    scores = np.clip(np.where(finite, raw_scores, 0.0), 0.0, 1.0)
    # NaN wins argmax: only the class of a finite row is used
    worst = np.asarray(defective)[np.argmax(probs[:, defective], axis=1)]
    out: list[Judgement | None] = []
    for ok, score, cls in zip(finite.tolist(), scores.tolist(), worst.tolist(), strict=True):
        if not ok:
            out.append(None)
            continue
        failed = score >= threshold
        out.append(
            Judgement(
                verdict="fail" if failed else "pass",
                defect_class=info.class_names[int(cls)] if failed else None,
                score=float(score),
            )
        )
    return out
