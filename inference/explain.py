"""Explanations: where the model looked when it misjudged labelled validation cells.

Misjudged cells are grouped by error (FP: an intact cell failed, FN: a defective cell
passed), cell type and the experts' defect probability; the five largest groups get
occlusion heatmaps of their most confident mistakes. Occlusion needs only the ONNX
model (no PyTorch): grey out one patch at a time and record how much the defect score
drops. Everything is written under one folder with an ``index.json`` the node's API
serves.

Each PNG is meant to be read by a quality engineer without a manual (issue 21: the
first overlay, a faint red wash, was barely visible): the cell as the line saw it,
the same cell under a diverging colour map (red-yellow where a region pushes the
score towards 'defective', blue where it pushes towards 'intact', the cell's own
grey where it does not matter), and a colour bar whose ends are labelled with the
score change they stand for, under a caption with the verdict and score. Drawn with
NumPy and Pillow only: the inspection tier does not pull in matplotlib.
"""

from __future__ import annotations

import io
import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from qdspace.inference.dataset import ElImages
from qdspace.inference.frames import Frame
from qdspace.inference.model import DEFAULT_THRESHOLD, OnnxClassifier
from qdspace.util.files import write_atomic

INDEX_FILE = "index.json"
INDEX_FORMAT = "qdspace.explanations/1"
TOP_GROUPS = 5
PER_GROUP = 3


@dataclass(frozen=True)
class Misjudgment:
    """One labelled cell the model got wrong."""

    frame_id: str
    kind: str  # "FP" or "FN"
    cell_type: str
    probability: float  # the experts' defect probability of the cell
    score: float  # the model's defect score
    position: int


@dataclass(frozen=True)
class Example:
    """A heatmap of one misjudged cell."""

    frame_id: str
    score: float
    probability: float
    png: str


@dataclass(frozen=True)
class MisjudgmentGroup:
    """Misjudgments of one kind, cell type and expert probability."""

    group_id: str
    kind: str
    cell_type: str
    probability: float
    count: int
    examples: tuple[Example, ...]


def find_misjudgments(
    model: OnnxClassifier, data: ElImages, threshold: float = DEFAULT_THRESHOLD
) -> list[Misjudgment]:
    """Judge every labelled cell and keep the wrong verdicts."""
    labels = data.labels(2)
    out: list[Misjudgment] = []
    for start in range(0, len(data), 128):
        chunk = list(data.images[start : start + 128])
        for offset, judged in enumerate(model.judge(chunk, threshold)):
            position = start + offset
            predicted = 1 if judged.verdict == "fail" else 0
            if predicted == labels[position]:
                continue
            out.append(
                Misjudgment(
                    frame_id=data.frame_ids[position],
                    kind="FP" if predicted else "FN",
                    cell_type=data.cell_types[position],
                    probability=round(float(data.probabilities[position]), 4),
                    score=judged.score,
                    position=position,
                )
            )
    return out


def group_misjudgments(
    misjudged: list[Misjudgment], top: int = TOP_GROUPS
) -> list[tuple[str, list[Misjudgment]]]:
    """The ``top`` largest groups, each with its members most confident mistake first."""
    groups: dict[str, list[Misjudgment]] = defaultdict(list)
    for m in misjudged:
        groups[f"{m.kind}-{m.cell_type}-p{m.probability:.2f}"].append(m)
    ranked = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))[:top]
    return [
        (gid, sorted(members, key=lambda m: -abs(m.score - DEFAULT_THRESHOLD)))
        for gid, members in ranked
    ]


def occlusion_map(
    model: OnnxClassifier, frame: Frame, patch: int | None = None, stride: int | None = None
) -> NDArray[np.float32]:
    """Defect-score drop when each region is greyed out, at the model's input size."""
    x = model.prepare([frame])
    size = model.info.input_size
    patch = patch or max(size // 8, 2)
    stride = stride or max(patch // 2, 1)
    starts = list(range(0, size - patch + 1, stride))
    fill = float(x.mean())
    variants = np.repeat(x, len(starts) ** 2, axis=0)
    boxes = [(r, c) for r in starts for c in starts]
    for index, (r, c) in enumerate(boxes):
        variants[index, 0, r : r + patch, c : c + patch] = fill
    defective = list(model.info.defective_classes)
    base = float(model.probabilities(x)[0, defective].sum())
    scores = np.concatenate(
        [
            model.probabilities(variants[i : i + 64])[:, defective].sum(axis=1)
            for i in range(0, len(variants), 64)
        ]
    )
    heat = np.zeros((size, size), dtype=np.float32)
    cover = np.zeros((size, size), dtype=np.float32)
    for (r, c), score in zip(boxes, scores, strict=True):
        heat[r : r + patch, c : c + patch] += base - float(score)
        cover[r : r + patch, c : c + patch] += 1.0
    result: NDArray[np.float32] = (heat / np.maximum(cover, 1.0)).astype(np.float32)
    return result


#: diverging colour map anchors, position in [-1, 1] -> RGB (blue: towards intact,
#: red-yellow: towards defective); between anchors colours are interpolated
_ANCHORS = (
    (-1.0, (33, 64, 154)),
    (-0.5, (67, 147, 227)),
    (0.0, (245, 245, 245)),
    (0.35, (253, 174, 97)),
    (0.7, (215, 48, 39)),
    (1.0, (255, 237, 0)),
)
MIN_PANEL = 192  # cells are scaled up (nearest neighbour) to at least this many pixels
_GAP, _BAR, _CAPTION = 8, 14, 34


def colour_map(values: NDArray[np.float32]) -> NDArray[np.uint8]:
    """RGB of the diverging map for ``values`` in [-1, 1] (clipped), shape ``(..., 3)``."""
    v = np.clip(values, -1.0, 1.0)
    points = np.array([a for a, _ in _ANCHORS], dtype=np.float32)
    colours = np.array([c for _, c in _ANCHORS], dtype=np.float32)
    rgb = np.stack([np.interp(v, points, colours[:, i]) for i in range(3)], axis=-1)
    out: NDArray[np.uint8] = rgb.round().astype(np.uint8)
    return out


def _panel(frame: Frame, norm: NDArray[np.float32], scale: int) -> NDArray[np.uint8]:
    """The cell with the map blended in by strength: neutral regions stay the cell's grey."""
    gray = frame.astype(np.float32)[..., None].repeat(3, axis=2)
    colour = colour_map(norm).astype(np.float32)
    alpha = (0.85 * np.abs(norm) ** 0.6)[..., None]
    rgb = (gray * (1 - alpha) + colour * alpha).clip(0, 255).astype(np.uint8)
    return np.kron(rgb, np.ones((scale, scale, 1), dtype=np.uint8))


def overlay_png(frame: Frame, heat: NDArray[np.float32], caption: str = "") -> bytes:
    """Original cell | cell under the occlusion map | labelled colour bar, as PNG bytes.

    ``heat`` (model input size) is resized to the cell; colours are scaled to the
    largest absolute score change, printed at the ends of the colour bar.
    """
    height, width = frame.shape
    peak = float(np.abs(heat).max())
    norm_small = heat / peak if peak > 0 else np.zeros_like(heat)
    resized = Image.fromarray(norm_small.astype(np.float32), mode="F").resize(
        (width, height), Image.Resampling.BILINEAR
    )
    norm = np.asarray(resized, dtype=np.float32)
    scale = max(1, -(-MIN_PANEL // max(height, width)))
    h, w = height * scale, width * scale
    original = np.kron(
        frame.astype(np.uint8)[..., None].repeat(3, axis=2), np.ones((scale, scale, 1), np.uint8)
    )
    font = ImageFont.load_default()
    label_w = 64
    canvas = Image.new("RGB", (2 * w + 3 * _GAP + _BAR + label_w, h + _CAPTION + _GAP), "white")
    canvas.paste(Image.fromarray(original, "RGB"), (0, _CAPTION))
    canvas.paste(Image.fromarray(_panel(frame, norm, scale), "RGB"), (w + _GAP, _CAPTION))
    ramp = np.linspace(1.0, -1.0, h, dtype=np.float32)[:, None].repeat(_BAR, axis=1)
    bar_x = 2 * w + 2 * _GAP
    canvas.paste(Image.fromarray(colour_map(ramp), "RGB"), (bar_x, _CAPTION))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((bar_x, _CAPTION, bar_x + _BAR - 1, _CAPTION + h - 1), outline="black")
    text_x = bar_x + _BAR + 4
    draw.text((text_x, _CAPTION), f"+{peak:.3f}", fill="black", font=font)
    draw.text((text_x, _CAPTION + h // 2 - 6), "0", fill="black", font=font)
    draw.text((text_x, _CAPTION + h - 12), f"-{peak:.3f}", fill="black", font=font)
    draw.text((0, 2), caption or "cell as inspected", fill="black", font=font)
    draw.text(
        (0, 16),
        "right: red/yellow pushed the score to 'defective', blue to 'intact'",
        fill="black",
        font=font,
    )
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def explain(
    model: OnnxClassifier,
    data: ElImages,
    out_dir: Path,
    top: int = TOP_GROUPS,
    per_group: int = PER_GROUP,
    split: str = "val",
) -> list[MisjudgmentGroup]:
    """Write heatmaps of the top misjudgment groups and their ``index.json``."""
    misjudged = find_misjudgments(model, data)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups: list[MisjudgmentGroup] = []
    for group_id, members in group_misjudgments(misjudged, top):
        examples = []
        for m in members[:per_group]:
            frame = data.images[m.position]
            name = f"{group_id}-{m.frame_id}.png"
            caption = (
                f"{m.kind} {m.frame_id}: model score {m.score:.2f}, "
                f"experts' defect probability {m.probability:.2f}"
            )
            png = overlay_png(frame, occlusion_map(model, frame), caption)
            write_atomic(out_dir / name, png)
            examples.append(Example(m.frame_id, round(m.score, 4), m.probability, name))
        first = members[0]
        groups.append(
            MisjudgmentGroup(
                group_id,
                first.kind,
                first.cell_type,
                first.probability,
                len(members),
                tuple(examples),
            )
        )
    index = {
        "format": INDEX_FORMAT,
        "model_version": model.version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "split": split,
        "cells": len(data),
        "misjudged": len(misjudged),
        "method": "occlusion",
        "groups": [asdict(g) for g in groups],
    }
    write_atomic(out_dir / INDEX_FILE, (json.dumps(index, indent=1) + "\n").encode())
    return groups


def read_index(out_dir: Path) -> dict[str, Any] | None:
    """The ``index.json`` of an explanation folder, or ``None`` when there is none."""
    path = out_dir / INDEX_FILE
    if not path.exists():
        return None
    raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return raw
