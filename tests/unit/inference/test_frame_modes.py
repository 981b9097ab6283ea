"""A frame file's pixel format: 16-bit grayscale is scaled, not clipped; odd modes refused.

EL cameras often write 16-bit grayscale. Clipped to 8 bits (Pillow's ``convert("L")``)
a real frame turns almost all white and a dark defect on it vanishes, yet it would be
judged without a word. Each 16-bit case plants a dark patch on a bright cell and checks
that the frame read for inspection keeps it, with the very pixels the training reader
(``inference.image_folder``) makes of the same file, so a model is judged on what it
learned from.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qdspace.inference.errors import FrameError
from qdspace.inference.frames import read_image
from qdspace.inference.image_folder import decode_image

SIDE = 64
BACKGROUND, PATCH = 40_000, 9_000  # 16-bit levels of a lit cell and a dark crack
PATCH_AT = (slice(20, 36), slice(24, 40))


def _planted_16bit(byte_order: str) -> np.ndarray:
    pixels = np.full((SIDE, SIDE), BACKGROUND, dtype=f"{byte_order}u2")
    pixels[PATCH_AT] = PATCH
    return pixels


@pytest.mark.parametrize(
    ("suffix", "byte_order"), [("png", "<"), ("tif", "<"), ("tif", ">")], ids=str
)
def test_a_16_bit_frame_keeps_its_planted_defect(
    tmp_path: Path, suffix: str, byte_order: str
) -> None:
    path = tmp_path / f"cell.{suffix}"
    Image.fromarray(_planted_16bit(byte_order)).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I;16")  # what the camera wrote

    frame = read_image(path)

    assert frame.dtype == np.uint8 and frame.shape == (SIDE, SIDE)
    assert frame[0, 0] == BACKGROUND >> 8  # scaled by the full 16-bit range
    assert frame[PATCH_AT].max() == PATCH >> 8  # the crack is still dark
    assert (frame == 255).mean() == 0.0
    trained, _ = decode_image(path, "cell", SIDE)
    np.testing.assert_array_equal(frame, trained)


def test_a_16_bit_gradient_spans_the_8_bit_range(tmp_path: Path) -> None:
    ramp = (np.arange(SIDE * SIDE, dtype=np.uint32) * 16).astype(np.uint16).reshape(SIDE, SIDE)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    frame = read_image(tmp_path / "ramp.png")
    np.testing.assert_array_equal(frame, (ramp >> 8).astype(np.uint8))


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P"])
def test_eight_bit_and_colour_frames_are_still_read(tmp_path: Path, mode: str) -> None:
    Image.new(mode, (SIDE, SIDE), 0).save(tmp_path / "cell.png")
    assert read_image(tmp_path / "cell.png").shape == (SIDE, SIDE)


def _tiff(mode: str, pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="TIFF")
    return buffer.getvalue()


REFUSED = {
    "I": lambda: _tiff("I", np.full((SIDE, SIDE), 70_000, dtype=np.int32)),
    "F": lambda: _tiff("F", np.full((SIDE, SIDE), 0.5, dtype=np.float32)),
    "LA": lambda: _tiff("LA", np.zeros((SIDE, SIDE), dtype=np.uint8)),
    "CMYK": lambda: _tiff("CMYK", np.zeros((SIDE, SIDE, 3), dtype=np.uint8)),
    "1": lambda: _tiff("1", np.zeros((SIDE, SIDE), dtype=np.uint8)),
}


@pytest.mark.parametrize("mode", list(REFUSED))
def test_a_mode_no_station_writes_is_refused_by_name(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "odd.tif"
    path.write_bytes(REFUSED[mode]())
    with Image.open(path) as image:
        assert image.mode == mode
    with pytest.raises(FrameError, match=rf"frame odd: image .*odd.tif has mode {mode};"):
        read_image(path, "odd")
