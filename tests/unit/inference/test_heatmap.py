"""A heatmap PNG shows what drove the score: the planted patch is where the colour is.

Issue 21: the first overlay was a faint red wash. These tests plant one bright patch
on a flat cell, so the patch is the only thing the model can react to, and check that
the occlusion map peaks there, that the PNG shows the original beside the coloured
cell with the colour strongest on the patch, and that a colour bar is drawn.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from qdspace.inference.explain import MIN_PANEL, colour_map, occlusion_map, overlay_png
from qdspace.inference.model import OnnxClassifier

CELL = 64
PATCH = (slice(40, 52), slice(8, 20))  # rows, columns of the planted patch


def _cell() -> np.ndarray:
    frame = np.full((CELL, CELL), 120, np.uint8)
    frame[PATCH] = 250
    return frame


def _in_patch(row: float, col: float, size: int) -> bool:
    f = size / CELL
    return PATCH[0].start * f - 2 <= row < PATCH[0].stop * f + 2 and (
        PATCH[1].start * f - 2 <= col < PATCH[1].stop * f + 2
    )


def test_occlusion_peaks_on_the_planted_patch(model_bytes: tuple[bytes, bytes]) -> None:
    model = OnnxClassifier(model_bytes[0], device="cpu")
    heat = occlusion_map(model, _cell())
    size = model.info.input_size
    row, col = np.unravel_index(int(np.abs(heat).argmax()), heat.shape)
    assert _in_patch(row, col, size), (row, col)
    # an untrained model barely reacts at all, but the patch still stands out
    assert np.abs(heat).max() > 5 * np.median(np.abs(heat)) > 0


def test_png_shows_the_original_beside_the_map_with_its_strongest_colour_on_the_patch(
    model_bytes: tuple[bytes, bytes],
) -> None:
    model = OnnxClassifier(model_bytes[0], device="cpu")
    frame = _cell()
    heat = occlusion_map(model, frame)
    image = np.asarray(Image.open(io.BytesIO(overlay_png(frame, heat, "FP c1"))).convert("RGB"))
    scale = -(-MIN_PANEL // CELL)
    side = CELL * scale
    assert image.shape[1] > 2 * side  # two panels and a colour bar
    # find the panels by their content: the original is the cell scaled up, unchanged
    top = int(np.argmax((image[:, :side] == 120).all(axis=(1, 2))))  # first row of the cell
    original = image[top : top + side, :side]
    expected = np.kron(frame, np.ones((scale, scale), np.uint8))
    assert (original == expected[..., None]).all()
    # the map panel: colour (distance from grey) is strongest on the patch
    mapped = image[top : top + side, side : 2 * side + 32].astype(np.int32)
    colourfulness = mapped.max(axis=2) - mapped.min(axis=2)
    left = int(np.argmax(colourfulness.any(axis=0)))
    panel = colourfulness[:, left : left + side]
    row, col = np.unravel_index(int(panel.argmax()), panel.shape)
    assert _in_patch(row / scale, col / scale, CELL), (row, col)
    assert panel.max() > 100  # clearly coloured, not a faint wash
    # the colour bar: both ends of the diverging map appear right of the panels
    bar = image[top : top + side, 2 * side :].reshape(-1, 3)
    ends = colour_map(np.array([1.0, -1.0], np.float32))
    for end in ends:
        assert (np.abs(bar.astype(np.int32) - end).sum(axis=1) < 30).any(), end


def test_colour_map_runs_from_blue_through_grey_to_yellow() -> None:
    rgb = colour_map(np.array([-1.0, 0.0, 1.0], np.float32))
    assert rgb[0, 2] > rgb[0, 0]  # blue end
    assert abs(int(rgb[1, 0]) - int(rgb[1, 2])) < 10  # neutral middle
    assert rgb[2, 0] > 200 and rgb[2, 1] > 200 and rgb[2, 2] < 50  # yellow end
