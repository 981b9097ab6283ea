"""Frames: what a station camera delivers, how it is checked, hashed and fed to a model.

One preprocessing function (``to_model_input``) is shared by training, serving and the
explanations, so a model never sees pixels prepared differently from the ones it was
trained on. Frames are grayscale ``uint8`` arrays of shape ``(height, width)``, as an EL
camera writes them; anything else is refused with a ``FrameError`` naming the frame.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from qdspace.inference.errors import FrameError

MIN_SIDE = 16
MAX_SIDE = 4096
FRAME_DTYPE = np.uint8

Frame = NDArray[np.uint8]
ModelInput = NDArray[np.float32]


def check_frame(frame: object, frame_id: str) -> Frame:
    """Return ``frame`` if a model can judge it, else raise ``FrameError`` saying why.

    The check is cheap (no pixel is read) so a station can run it on every frame
    before the frame leaves the line.
    """
    if not isinstance(frame, np.ndarray):
        raise FrameError(frame_id, f"expected a numpy array, got {type(frame).__name__}")
    if frame.dtype != FRAME_DTYPE:
        raise FrameError(frame_id, f"dtype {frame.dtype}, expected uint8 grayscale")
    if frame.ndim != 2:
        raise FrameError(frame_id, f"shape {frame.shape}, expected (height, width) grayscale")
    height, width = frame.shape
    if not (MIN_SIDE <= height <= MAX_SIDE and MIN_SIDE <= width <= MAX_SIDE):
        raise FrameError(
            frame_id, f"shape {frame.shape}, each side must be in [{MIN_SIDE}, {MAX_SIDE}]"
        )
    return frame


def read_image(path: Path, frame_id: str | None = None) -> Frame:
    """Decode an image file into a grayscale frame; a corrupt file raises ``FrameError``."""
    name = frame_id if frame_id is not None else path.name
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            gray = image.convert("L")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise FrameError(name, f"cannot read image {path}: {exc}") from exc
    return check_frame(np.asarray(gray, dtype=np.uint8), name)


def resize_frame(frame: Frame, size: int) -> Frame:
    """Downscale (or upscale) a frame to ``size`` x ``size`` with bilinear filtering."""
    if frame.shape == (size, size):
        return frame
    image = Image.fromarray(frame)
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def to_model_input(frames: Sequence[Frame], size: int) -> ModelInput:
    """Stack frames into the ``(N, 1, size, size)`` float32 batch in [0, 1] a model expects."""
    batch = np.empty((len(frames), 1, size, size), dtype=np.float32)
    for index, frame in enumerate(frames):
        batch[index, 0] = resize_frame(frame, size)
    batch *= np.float32(1.0 / 255.0)
    return batch


def image_sha256(frame: Frame) -> str:
    """Content hash recorded with each verdict: sha256 of the row-major uint8 pixels.

    Hashing pixels rather than a file means a frame from the camera and the same frame
    read back from a PNG hash the same, so an auditor can match a verdict to an image
    without the image ever leaving the company.
    """
    return hashlib.sha256(np.ascontiguousarray(frame).tobytes()).hexdigest()
