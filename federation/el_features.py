"""Fixed features of EL cell images that carry the defect signal, computed by each member.

Federating a whole CNN costs more CPU than a two-core demo has, and logistic
regression on raw pixels learns next to nothing (about the majority rate). Instead
every member maps its own images through the same fixed, data-independent feature
extractor and the federation trains a small model on top (``federation.mlp``). The
extractor needs no training and no one's data, so sharing it leaks nothing.

What it measures on each per-image standardised cell (``size`` x ``size``):

* brightness quantiles and the fraction of dark pixels at several depths
  (inactive, disconnected areas are dark);
* on a 4 x 4 grid: mean, spread and minimum brightness, and mean gradient
  (local damage);
* dark-line (ridge) responses in four directions at two widths, pooled on the grid
  (mean and maximum): cracks are thin dark lines, busbars are regular ones;
* the cell texture (mono cells are smooth, poly cells grainy).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

GRID = 4
QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5)
DARK_LEVELS = (-1.5, -2.0, -2.5, -3.0)
#: (row, column) steps of the ridge detectors: horizontal, vertical and both diagonals.
DIRECTIONS = ((0, 1), (1, 0), (1, 1), (1, -1))
WIDTHS = (1, 2)

Features = NDArray[np.float32]


def standardise(images: NDArray[np.generic]) -> NDArray[np.float32]:
    """Each image to zero mean and unit spread (exposure and gain differ between lines)."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"images must be (count, height, width), got shape {x.shape}")
    out: NDArray[np.float32] = x - x.mean(axis=(1, 2), keepdims=True)
    out /= out.std(axis=(1, 2), keepdims=True) + 1e-6
    return out


def _grid(values: NDArray[np.float32]) -> NDArray[np.float32]:
    """``values`` (n, h, w) cut into GRID x GRID blocks: (n, GRID, GRID, block pixels)."""
    n, h, w = values.shape
    bh, bw = h // GRID, w // GRID
    blocks = values[:, : bh * GRID, : bw * GRID].reshape(n, GRID, bh, GRID, bw)
    return blocks.transpose(0, 1, 3, 2, 4).reshape(n, GRID, GRID, bh * bw)


def _ridges(x: NDArray[np.float32], step: tuple[int, int], width: int) -> NDArray[np.float32]:
    """How much darker each pixel is than its two neighbours ``width`` steps away (>= 0)."""
    dy, dx = step[0] * width, step[1] * width
    pad = max(abs(dy), abs(dx))
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    h, w = x.shape[1:]
    ahead = padded[:, pad + dy : pad + dy + h, pad + dx : pad + dx + w]
    behind = padded[:, pad - dy : pad - dy + h, pad - dx : pad - dx + w]
    ridge: NDArray[np.float32] = 0.5 * (ahead + behind) - x
    np.maximum(ridge, 0.0, out=ridge)
    return ridge


def el_features(images: NDArray[np.generic]) -> Features:
    """The feature vectors of EL cell images (count, height, width) -> (count, FEATURES)."""
    x = standardise(images)
    n = len(x)
    flat = x.reshape(n, -1)
    parts: list[NDArray[np.float32]] = [
        np.quantile(flat, QUANTILES, axis=1).T.astype(np.float32),
        np.stack([(flat < level).mean(axis=1) for level in DARK_LEVELS], axis=1),
    ]
    blocks = _grid(x)
    parts += [blocks.mean(-1), blocks.std(-1), blocks.min(-1)]
    gradient = np.abs(np.diff(x, axis=1))[:, :, :-1] + np.abs(np.diff(x, axis=2))[:, :-1, :]
    parts.append(_grid(gradient).mean(-1))
    parts.append(gradient.reshape(n, -1).mean(axis=1, keepdims=True))
    for step in DIRECTIONS:
        for width in WIDTHS:
            ridge = _grid(_ridges(x, step, width))
            parts += [ridge.mean(-1), ridge.max(-1)]
    out = np.concatenate([p.reshape(n, -1) for p in parts], axis=1).astype(np.float32)
    return out


def feature_count() -> int:
    """How many features ``el_features`` makes per image."""
    cells = GRID * GRID
    ridge_maps = len(DIRECTIONS) * len(WIDTHS)
    return len(QUANTILES) + len(DARK_LEVELS) + 4 * cells + 1 + 2 * cells * ridge_maps


#: The demo's members: Cellex Mono (mono cells), PolyCell Works (poly cells) and the
#: OEM SunArc (incoming inspection: few cells of both kinds, few defects).
SPLIT_MEMBERS = ("cellex", "polycell", "sunarc")


def member_split(
    labels: NDArray[np.int64],
    cell_types: NDArray[np.str_],
    *,
    held_out: float = 0.2,
    oem_cells: int = 240,
    oem_defect_rate: float = 0.08,
    seed: int = 7,
) -> tuple[dict[str, NDArray[np.int64]], NDArray[np.int64]]:
    """Non-IID member shares (row indices) and a held-out split of the EL cells.

    The held-out rows are a random ``held_out`` share of all cells (mono and poly, as
    the OEM's line sees them). Of the rest, the OEM gets ``oem_cells`` cells with
    ``oem_defect_rate`` defective; the mono cells left go to Cellex, the poly cells
    to PolyCell, each with its own defect rate.
    """
    y = np.asarray(labels)
    kinds = np.asarray(cell_types)
    order = np.random.default_rng(seed).permutation(len(y))
    cut = int(held_out * len(y))
    test, train = np.sort(order[:cut]), order[cut:]
    defective = train[y[train] == 1]
    fine = train[y[train] == 0]
    n_bad = round(oem_cells * oem_defect_rate)
    oem = np.concatenate([fine[: oem_cells - n_bad], defective[:n_bad]])
    rest = np.setdiff1d(train, oem)
    shares = {
        "cellex": rest[kinds[rest] == "mono"],
        "polycell": rest[kinds[rest] == "poly"],
        "sunarc": np.sort(oem),
    }
    return shares, test
