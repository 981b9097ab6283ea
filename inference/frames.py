"""Frames: what a station camera delivers, how it is checked, hashed and fed to a model.

One preprocessing function (``to_model_input``) is shared by training, serving and the
explanations, so a model never sees pixels prepared differently from the ones it was
trained on. Frames are grayscale ``uint8`` arrays of shape ``(height, width)``, as an EL
camera writes them; anything else is refused with a ``FrameError`` naming the frame.

A frame file comes from a folder any process on the line PC can write to, so reading
one must not let a file stop the line: ``read_bounded`` opens without blocking (a FIFO
named ``x.png`` would wait forever for a writer), refuses what is not a regular file (a
symlink to ``/dev/zero`` would be read until memory runs out) and reads at most
``MAX_FRAME_BYTES``; ``read_image`` lets Pillow open only the formats a station takes
(not EPS, which would run Ghostscript), refuses a size outside the station's limits
from the header, before a pixel is decoded (a 700 KB PNG can declare 13370 x 13370
RGBA, 700 MB decoded), and turns whatever a malformed file makes a decoder raise
(``SyntaxError``, ``TypeError``, ...) into the ``FrameError`` a station counts and
alarms as a bad frame.

EL cameras often write 16-bit grayscale. Pillow's ``convert("L")`` clips such a frame
at 255 (almost every pixel of a real one turns white), so a 16-bit frame is scaled to
8 bits by the full 16-bit range (its top byte), as ``inference.image_folder`` does for
the images a model is trained on: training and inspection see the same pixels. Modes
no station writes (32-bit, float, CMYK, ...) are refused by name, not guessed at.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from qdspace.inference.errors import FrameError

MIN_SIDE = 16
MAX_SIDE = 4096
FRAME_DTYPE = np.uint8
#: a frame file's size cap: a 4096 x 4096 frame at 4 bytes a pixel, uncompressed
MAX_FRAME_BYTES = 64 << 20
#: what Pillow may open a frame file, or an own training image, as (the formats of
#: ``sources.IMAGE_SUFFIXES``; `inference.image_folder` opens the same)
FRAME_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")
#: 16-bit grayscale as Pillow names it (byte orders), brought to 8 bits by the top byte
#: here and when training images are read (``inference.image_folder``): both see the
#: same pixels
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
#: the image modes a frame file may have: 8-bit gray, colour (made gray), 16-bit gray
FRAME_MODES = ("L", "RGB", "RGBA", "P", *SIXTEEN_BIT_MODES)

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
        raise FrameError(
            frame_id, f"dtype {frame.dtype}, expected uint8 grayscale{_non_finite(frame)}"
        )
    if frame.ndim != 2:
        raise FrameError(frame_id, f"shape {frame.shape}, expected (height, width) grayscale")
    height, width = frame.shape
    if not (MIN_SIDE <= height <= MAX_SIDE and MIN_SIDE <= width <= MAX_SIDE):
        raise FrameError(
            frame_id, f"shape {frame.shape}, each side must be in [{MIN_SIDE}, {MAX_SIDE}]"
        )
    return frame


def _non_finite(frame: NDArray[np.generic]) -> str:
    """What a refused float frame holds that no model could judge: NaN or infinity.

    Counted on the refusal path only, and only for an array up to a frame's size."""
    if frame.dtype.kind not in "fc" or frame.size > MAX_SIDE * MAX_SIDE * 4:
        return ""
    bad = int(np.count_nonzero(~np.isfinite(frame)))
    return f" (and it holds NaN or infinity in {bad:,} of {frame.size:,} values)" if bad else ""


def read_bounded(path: Path, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path`` (symlinks followed), at most ``max_bytes``.

    Raises ``ValueError`` saying why for anything else (a FIFO, a device, a folder, a
    file over the cap) without reading it, and ``OSError`` when it cannot be read. The
    type is checked before opening (opening a device can act on it) and again on the
    open descriptor, opened non-blocking, so a file swapped in between is caught too.
    """
    _check_regular(os.stat(path), max_bytes)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    with open(fd, "rb", closefd=True) as handle:
        _check_regular(os.fstat(fd), max_bytes)
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew since fstat
        raise ValueError(f"larger than {max_bytes:,} bytes")
    return data


def _check_regular(status: os.stat_result, max_bytes: int) -> None:
    mode = status.st_mode
    if not stat.S_ISREG(mode):
        raise ValueError(f"not a regular file ({_file_kind(mode)})")
    if status.st_size > max_bytes:
        raise ValueError(f"larger than {max_bytes:,} bytes ({status.st_size:,})")


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), f"file type {stat.S_IFMT(mode):o}")


def read_image(path: Path, frame_id: str | None = None) -> Frame:
    """Decode an image file into a grayscale frame; any file a station cannot judge
    (not a regular file, too big, not a PNG/JPEG/BMP/TIFF that decodes, a size outside
    ``[MIN_SIDE, MAX_SIDE]``) raises ``FrameError`` naming the frame and the file."""
    name = frame_id if frame_id is not None else path.name
    try:
        data = read_bounded(path, MAX_FRAME_BYTES)
    except ValueError as exc:
        raise FrameError(name, f"cannot read image {path}: {exc}") from None
    except OSError as exc:
        raise FrameError(name, f"cannot read image {path}: {exc.strerror or exc}") from None
    try:
        with Image.open(io.BytesIO(data), formats=FRAME_FORMATS) as image:
            width, height = image.size
            if not (MIN_SIDE <= height <= MAX_SIDE and MIN_SIDE <= width <= MAX_SIDE):
                raise FrameError(
                    name,
                    f"image {path} is {width}x{height} pixels; each side must be in "
                    f"[{MIN_SIDE}, {MAX_SIDE}] (refused before decoding)",
                )
            if image.mode not in FRAME_MODES:
                raise FrameError(
                    name,
                    f"image {path} has mode {image.mode}; a frame must be one of "
                    f"{', '.join(FRAME_MODES)} (8- or 16-bit grayscale, or colour)",
                )
            image.load()
            gray = _grayscale(image)
    except FrameError:
        raise
    except UnidentifiedImageError:
        raise FrameError(
            name, f"image {path} is not a {'/'.join(FRAME_FORMATS)} file (by its content)"
        ) from None
    except Exception as exc:  # a malformed file makes decoders raise anything
        raise FrameError(
            name,
            f"cannot decode image {path} as {'/'.join(FRAME_FORMATS)}: {type(exc).__name__}: {exc}",
        ) from None
    return check_frame(gray, name)


def _grayscale(image: Image.Image) -> Frame:
    """8-bit grayscale of a loaded image of a ``FRAME_MODES`` mode; 16-bit is scaled by
    its top byte (the full 16-bit range), never clipped at 255."""
    if image.mode in SIXTEEN_BIT_MODES:
        wide = np.asarray(image)
        return (wide >> 8).astype(np.uint8)
    return np.asarray(image.convert("L"), dtype=np.uint8)


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
