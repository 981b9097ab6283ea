"""An own image is held to its decoded bytes, not its pixels: 4-byte modes cost 4x.

A few hundred KB of deflate TIFF in mode F can declare 64 MP, 256 MB decoded; the
budget is checked from the header, before decoding. The budget is made small here
instead of building big files; the 32-bit and 16-bit conversions, done a band of rows
at a time, must give the pixels the whole-image formula gives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qdspace.inference import image_folder
from qdspace.inference.errors import DatasetError
from qdspace.inference.frames import resize_frame
from qdspace.inference.image_folder import decode_image, load_labelled_images
from qdspace.inference.labels import LabelRule

SIDE = 64


def _float_tiff(path: Path, seed: int = 0) -> np.ndarray:
    values = np.random.default_rng(seed).normal(0.3, 2.0, (SIDE, SIDE + 8)).astype(np.float32)
    Image.fromarray(values, mode="F").save(path, compression="tiff_adobe_deflate")
    return values


def test_a_float_image_over_the_byte_budget_is_refused_naming_its_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(image_folder, "MAX_DECODED_BYTES", SIDE * (SIDE + 8) * 2)
    _float_tiff(tmp_path / "float.tif")
    # the same pixels at 1 byte each fit the budget
    Image.fromarray(np.zeros((SIDE, SIDE + 8), np.uint8)).save(tmp_path / "gray.png")
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\ngray.png,ok\nfloat.tif,defective\n", encoding="utf-8")
    with pytest.raises(DatasetError) as caught:
        load_labelled_images(tmp_path, labels, LabelRule(), 32)
    message = str(caught.value)
    assert "labels.csv:3: float.tif: 72x64 pixels in mode F (4 bytes a pixel)" in message
    assert f"decode to {SIDE * (SIDE + 8) * 4:,} bytes; at most {SIDE * (SIDE + 8) * 2:,}" in (
        message
    )
    assert decode_image(tmp_path / "gray.png", "gray.png", 32)[0].shape == (32, 32)


def test_wide_modes_are_brought_to_8_bits_by_bands_as_a_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(image_folder, "CONVERT_ROWS", 7)  # bands that do not divide 64
    values = _float_tiff(tmp_path / "float.tif").astype(np.float64)
    low, high = values.min(), values.max()
    expected = np.clip((values - low) * (255.0 / (high - low)), 0, 255).astype(np.uint8)
    pixels, _ = decode_image(tmp_path / "float.tif", "float.tif", SIDE)
    assert np.array_equal(pixels, resize_frame(expected, SIDE))

    wide = np.random.default_rng(1).integers(0, 65536, (SIDE, SIDE), dtype=np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    pixels, _ = decode_image(tmp_path / "wide.tif", "wide.tif", SIDE)
    assert np.array_equal(pixels, (wide >> 8).astype(np.uint8))
