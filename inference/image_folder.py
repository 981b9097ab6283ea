"""A folder of a member's own labelled images, read into the same shape as the EL cells.

``labels.csv`` (``inference.labels``) says which files and which labels; this module
opens them. Every file is checked before any pixel is used, and the first problem stops
the whole load with its row and file named: a file that is missing, not a regular
file, reached through a symlink that leads out of the folder, too big, or not a PNG,
JPEG, BMP or TIFF that decodes. Nothing is written here, so a bad set leaves no trace.

Images of any size and mode are accepted: RGB and palette images become grayscale
(the model has one channel, like the EL camera), 16-bit TIFFs are scaled down to
8 bits instead of clipped, and every image is resized to the side the model is
trained at, with the same bilinear filter serving uses (``inference.frames``). The
result is an :class:`~inference.dataset.ElImages`, so training, export and the
registry treat own images exactly like the bundled ones.

What an image costs is its decoded bytes, not its pixels: a few hundred KB of deflate
TIFF in mode F (4 bytes a pixel) at 8000 x 8000 decodes to 256 MB, so the header's
size and mode are held to ``MAX_DECODED_BYTES`` before anything is decoded, and
32-bit and 16-bit images are brought to 8 bits a band of rows at a time instead of
through full float64 copies.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageMode, UnidentifiedImageError

from qdspace.inference.dataset import DECODE_THREADS, ElImages
from qdspace.inference.errors import DatasetError
from qdspace.inference.frames import (
    FRAME_FORMATS,
    SIXTEEN_BIT_MODES,
    read_bounded,
    resize_frame,
)
from qdspace.inference.labels import LabelRow, LabelRule, parse_labels

MAX_LABELS_BYTES = 32 << 20
MAX_IMAGE_BYTES = 256 << 20
MAX_PIXELS = 64_000_000
#: decoded bytes an image may take: a 64 MP RGB photo (3 bytes a pixel) still loads,
#: 4-byte modes (RGBA, CMYK, I, F) up to 48 MP
MAX_DECODED_BYTES = 3 * MAX_PIXELS
#: rows of a 16/32-bit image brought to 8 bits at a time
CONVERT_ROWS = 256
OWN_CELL_TYPE = "own"


@dataclass(frozen=True)
class LabelledImages:
    """A member's decoded images with their files, labels and content hashes, aligned."""

    data: ElImages
    rows: tuple[LabelRow, ...]
    digests: tuple[str, ...]
    rule: LabelRule

    @property
    def files(self) -> tuple[str, ...]:
        """The relative file names, in ``labels.csv`` order."""
        return tuple(r.file for r in self.rows)

    def positions(self, files: Sequence[str]) -> list[int]:
        """Positions of ``files`` in this set (they must all be in it)."""
        where = {row.file: pos for pos, row in enumerate(self.rows)}
        return [where[f] for f in files]

    def subset(self, files: Sequence[str]) -> ElImages:
        """The decoded images of ``files``, in that order."""
        return self.data.subset(self.positions(files))


def read_labels_file(path: Path, rule: LabelRule) -> list[LabelRow]:
    """Parse a labels file from disk (bounded size, UTF-8)."""
    try:
        size = path.stat().st_size
        if size > MAX_LABELS_BYTES:
            raise DatasetError(
                f"{path}: {size:,} bytes; a labels file may have {MAX_LABELS_BYTES:,}"
            )
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DatasetError(f"cannot read labels file {path}: {exc.strerror or exc}") from None
    return parse_labels(text, rule, source=str(path))


def resolve_inside(folder: Path, row: LabelRow, source: str) -> Path:
    """The file of ``row`` under ``folder``; refused if it (or a symlink) leads out of it."""
    where = f"{source}:{row.line}"
    target = folder / row.file
    try:
        resolved = target.resolve(strict=True)
    except FileNotFoundError:
        raise DatasetError(f"{where}: {row.file} does not exist in {folder}") from None
    except (OSError, RuntimeError) as exc:  # a symlink loop, a permission
        raise DatasetError(f"{where}: {row.file} cannot be opened ({exc})") from None
    if not resolved.is_relative_to(folder):
        raise DatasetError(f"{where}: {row.file} leads out of {folder} (a symlink)")
    if not resolved.is_file():
        raise DatasetError(f"{where}: {row.file} is not a regular file")
    return resolved


def load_labelled_images(
    folder: Path, labels: Path, rule: LabelRule, size: int, threads: int = DECODE_THREADS
) -> LabelledImages:
    """Check and decode every image ``labels`` lists, resized to ``size`` x ``size``."""
    try:
        root = folder.resolve(strict=True)
    except OSError as exc:
        raise DatasetError(f"image folder {folder}: {exc.strerror or exc}") from None
    if not root.is_dir():
        raise DatasetError(f"image folder {folder} is not a folder")
    rows = read_labels_file(labels, rule)
    files = [resolve_inside(root, row, str(labels)) for row in rows]
    workers = max(1, min(threads, os.cpu_count() or 1))
    where = [f"{labels}:{row.line}: {row.file}" for row in rows]
    with ThreadPoolExecutor(workers, thread_name_prefix="own-decode") as pool:
        decoded = list(pool.map(lambda f, w: decode_image(f, w, size), files, where))
    images = np.stack([pixels for pixels, _ in decoded])  # parse_labels refuses no rows
    images.setflags(write=False)
    probabilities = np.array([rule.probability(r.label_class) for r in rows], dtype=np.float64)
    data = ElImages(
        images=images,
        probabilities=probabilities,
        cell_types=(OWN_CELL_TYPE,) * len(rows),
        indices=np.arange(len(rows), dtype=np.int64),
    )
    return LabelledImages(data, tuple(rows), tuple(d for _, d in decoded), rule)


def decode_image(path: Path, where: str, size: int) -> tuple[NDArray[np.uint8], str]:
    """Grayscale pixels resized to ``size`` and the sha256 of the file's bytes."""
    try:
        data = read_bounded(path, MAX_IMAGE_BYTES)
    except ValueError as exc:  # not a regular file (swapped since it was checked), too big
        raise DatasetError(f"{where}: {exc}") from None
    except OSError as exc:
        raise DatasetError(f"{where}: cannot read ({exc.strerror or exc})") from None
    try:
        with Image.open(io.BytesIO(data), formats=FRAME_FORMATS) as image:
            width, height = image.size
            if width * height > MAX_PIXELS or min(width, height) < 1:
                raise DatasetError(f"{where}: {width}x{height} pixels; at most {MAX_PIXELS:,}")
            per_pixel = _bytes_per_pixel(image.mode)
            if width * height * per_pixel > MAX_DECODED_BYTES:
                raise DatasetError(
                    f"{where}: {width}x{height} pixels in mode {image.mode} ({per_pixel} bytes "
                    f"a pixel) decode to {width * height * per_pixel:,} bytes; "
                    f"at most {MAX_DECODED_BYTES:,}"
                )
            image.draft("L", (size, size))  # JPEG: decode at a reduced scale
            gray = _grayscale(image)
    except DatasetError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(
            f"{where}: not a PNG, JPEG, BMP or TIFF image that decodes ({exc})"
        ) from None
    return resize_frame(gray, size), hashlib.sha256(data).hexdigest()


def _bytes_per_pixel(mode: str) -> int:
    """Bytes a pixel of ``mode`` holds (bands x band size); 4 for a mode Pillow does not
    describe."""
    try:
        described = ImageMode.getmode(mode)
    except KeyError:
        return 4
    return len(described.bands) * np.dtype(described.typestr).itemsize


def _grayscale(image: Image.Image) -> NDArray[np.uint8]:
    """8-bit grayscale of any mode: 16-bit scaled (not clipped), float/int32 stretched."""
    image.load()
    if image.mode in SIXTEEN_BIT_MODES:
        return _by_rows(image, lambda rows: (rows >> 8).astype(np.uint8))
    if image.mode in ("I", "F"):
        low, high = (float(v) for v in np.asarray(image.getextrema(), dtype=np.float64))
        scale = 255.0 / (high - low if high > low else 1.0)
        return _by_rows(
            image,
            lambda rows: np.clip((rows.astype(np.float64) - low) * scale, 0, 255).astype(np.uint8),
        )
    return np.asarray(image.convert("L"), dtype=np.uint8)


def _by_rows(
    image: Image.Image, convert: Callable[[NDArray[Any]], NDArray[np.uint8]]
) -> NDArray[np.uint8]:
    """``convert`` applied to ``CONVERT_ROWS`` rows at a time: a full-size copy of a
    32-bit image in float64 is twice its decoded size, here only a band is."""
    width, height = image.size
    out = np.empty((height, width), dtype=np.uint8)
    for top in range(0, height, CONVERT_ROWS):
        bottom = min(top + CONVERT_ROWS, height)
        out[top:bottom] = convert(np.asarray(image.crop((0, top, width, bottom))))
    return out
