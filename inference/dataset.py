"""The EL image data set (``elpv-dataset``), its labels, and member partitions.

The images are CC BY-NC-SA 4.0 (non-commercial) and come with the optional ``elpv``
extra; this module imports that package only when images are asked for and says how to
install it when it is missing. Everything else (labels, partitions) is plain numpy.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from qdspace.inference.errors import DatasetError, DatasetUnavailableError
from qdspace.inference.frames import resize_frame

logger = logging.getLogger("inference")

ELPV_PACKAGE = "elpv_dataset"
ELPV_IMAGE_SIZE = 300
ELPV_IMAGE_COUNT = 2624
DEFECT_THRESHOLD = 0.5
DECODE_THREADS = 4
GRADES = (0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0)
BINARY_CLASSES = ("ok", "defective")
GRADE_CLASSES = ("intact", "possibly_defective", "likely_defective", "defective")
CELL_TYPES = ("mono", "poly")
SUPPLIER_BY_CELL_TYPE = {"mono": "cellex", "poly": "polycell"}
MISSING_EXTRA_HINT = (
    "the EL image data set is an optional extra (CC BY-NC-SA 4.0, non-commercial use only): "
    "install it with `pip install 'qdspace[elpv]'`"
)


@dataclass(frozen=True)
class ElImages:
    """EL cell images with their defect probability and cell type, aligned by position.

    ``indices`` are positions in the full data set, so a subset still names its cells
    the way the split manifest does.
    """

    images: NDArray[np.uint8]
    probabilities: NDArray[np.float64]
    cell_types: tuple[str, ...]
    indices: NDArray[np.int64]

    def __post_init__(self) -> None:
        count = len(self.images)
        if not (len(self.probabilities) == len(self.cell_types) == len(self.indices) == count):
            raise DatasetError(
                f"misaligned EL data: {count} images, {len(self.probabilities)} probabilities, "
                f"{len(self.cell_types)} cell types, {len(self.indices)} indices"
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def frame_ids(self) -> tuple[str, ...]:
        """Stable names of the cells (``cell0001`` is the data set's first image)."""
        return tuple(frame_id_of(int(index)) for index in self.indices)

    def labels(self, num_classes: int = 2) -> NDArray[np.int64]:
        """Binary (defective when p >= 0.5) or 4-grade class labels."""
        return class_labels(self.probabilities, num_classes)

    def subset(self, positions: Sequence[int] | NDArray[np.int64]) -> ElImages:
        """The cells at ``positions`` of this collection (not data set indices)."""
        chosen = np.asarray(positions, dtype=np.int64)
        return ElImages(
            images=self.images[chosen],
            probabilities=self.probabilities[chosen],
            cell_types=tuple(self.cell_types[int(i)] for i in chosen),
            indices=self.indices[chosen],
        )

    def select(self, dataset_indices: Sequence[int] | NDArray[np.int64]) -> ElImages:
        """The cells with the given data set indices (as a split manifest lists them)."""
        position = {int(index): pos for pos, index in enumerate(self.indices)}
        try:
            positions = [position[int(index)] for index in dataset_indices]
        except KeyError as exc:
            raise DatasetError(f"data set index {exc.args[0]} is not in this collection") from exc
        return self.subset(positions)


def frame_id_of(index: int) -> str:
    """The data set's own file stem for image ``index`` (0-based): ``cell0001`` for 0."""
    return f"cell{index + 1:04d}"


def binary_labels(probabilities: NDArray[np.float64]) -> NDArray[np.int64]:
    """1 where a cell counts as defective (probability >= 0.5), else 0."""
    return (np.asarray(probabilities) >= DEFECT_THRESHOLD).astype(np.int64)


def grade_labels(probabilities: NDArray[np.float64]) -> NDArray[np.int64]:
    """Index of the nearest expert grade (0, 1/3, 2/3, 1) of each probability."""
    grades = np.asarray(GRADES)
    distance = np.abs(np.asarray(probabilities)[:, None] - grades[None, :])
    nearest: NDArray[np.int64] = np.argmin(distance, axis=1).astype(np.int64)
    return nearest


def class_labels(probabilities: NDArray[np.float64], num_classes: int) -> NDArray[np.int64]:
    """Labels for a 2-class or 4-class model."""
    if num_classes == 2:
        return binary_labels(probabilities)
    if num_classes == len(GRADES):
        return grade_labels(probabilities)
    raise DatasetError(f"num_classes={num_classes}: EL labels exist for 2 or 4 classes only")


def class_names(num_classes: int) -> tuple[str, ...]:
    """Names of the classes a 2- or 4-class model predicts."""
    if num_classes == 2:
        return BINARY_CLASSES
    if num_classes == len(GRADES):
        return GRADE_CLASSES
    raise DatasetError(f"num_classes={num_classes}: EL labels exist for 2 or 4 classes only")


def defective_classes(num_classes: int) -> tuple[int, ...]:
    """Class indices whose probability mass counts as 'defective' (p >= 0.5)."""
    if num_classes == 2:
        return (1,)
    return tuple(i for i, grade in enumerate(GRADES) if grade >= DEFECT_THRESHOLD)


def elpv_root() -> Path:
    """Folder holding ``labels.csv`` and ``images/``; raises when the extra is missing."""
    try:
        module = importlib.import_module(ELPV_PACKAGE)
    except ImportError as exc:
        raise DatasetUnavailableError(
            f"{ELPV_PACKAGE} is not installed; {MISSING_EXTRA_HINT}"
        ) from exc
    module_file = getattr(module, "__file__", None)
    if module_file is None:
        raise DatasetUnavailableError(f"{ELPV_PACKAGE} has no files; {MISSING_EXTRA_HINT}")
    return Path(module_file).parent / "data"


def read_labels(root: Path) -> tuple[list[str], NDArray[np.float64], tuple[str, ...]]:
    """Parse ``labels.csv``: image path, defect probability, cell type per line."""
    labels_file = root / "labels.csv"
    try:
        lines = labels_file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DatasetError(f"cannot read {labels_file}: {exc}") from exc
    paths: list[str] = []
    probabilities: list[float] = []
    cell_types: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 3 or fields[2] not in CELL_TYPES:
            raise DatasetError(f"{labels_file}:{number}: expected 'PATH PROBABILITY mono|poly'")
        try:
            probability = float(fields[1])
        except ValueError as exc:
            raise DatasetError(f"{labels_file}:{number}: probability {fields[1]!r}") from exc
        paths.append(fields[0])
        probabilities.append(probability)
        cell_types.append(fields[2])
    return paths, np.asarray(probabilities, dtype=np.float64), tuple(cell_types)


def load_elpv(size: int = ELPV_IMAGE_SIZE, root: Path | None = None) -> ElImages:
    """Load all EL cells, downscaled to ``size`` x ``size`` (300 keeps the originals).

    Decoding the 2,624 PNGs takes a few seconds on two cores, so the decoded pixels are
    kept (read-only) for the life of the process: a second load, at any size, only
    resizes. A changed ``labels.csv`` is decoded afresh.
    """
    data_root = (root if root is not None else elpv_root()).resolve()
    try:
        stamp = (data_root / "labels.csv").stat().st_mtime_ns
    except OSError as exc:
        raise DatasetError(f"cannot read {data_root / 'labels.csv'}: {exc}") from exc
    probabilities, cell_types, originals = _decoded(data_root, stamp)
    images = np.empty((len(originals), size, size), dtype=np.uint8)
    for position, pixels in enumerate(originals):
        images[position] = resize_frame(pixels, size)
    images.setflags(write=False)
    return ElImages(
        images=images,
        probabilities=probabilities,
        cell_types=cell_types,
        indices=np.arange(len(originals), dtype=np.int64),
    )


@functools.lru_cache(maxsize=2)
def _decoded(
    data_root: Path, stamp: int
) -> tuple[NDArray[np.float64], tuple[str, ...], tuple[NDArray[np.uint8], ...]]:
    """Labels and decoded grayscale pixels of a data set folder (cached per ``stamp``)."""
    paths, probabilities, cell_types = read_labels(data_root)
    # PNG decoding releases the GIL: one thread per core nearly divides the time
    workers = max(1, min(DECODE_THREADS, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers, thread_name_prefix="elpv-decode") as pool:
        originals = list(pool.map(_decode, [data_root / p for p in paths], chunksize=32))
    probabilities.setflags(write=False)
    logger.info("inference.dataset: decoded %s EL images from %s", len(paths), data_root)
    return probabilities, cell_types, tuple(originals)


def _decode(file: Path) -> NDArray[np.uint8]:
    try:
        with Image.open(file) as image:
            pixels = np.asarray(image.convert("L"), dtype=np.uint8)
    except OSError as exc:
        raise DatasetError(f"cannot read EL image {file}: {exc}") from exc
    pixels.setflags(write=False)
    return pixels


def partition_by_supplier(data: ElImages) -> dict[str, ElImages]:
    """Non-IID member partition: mono cells to Cellex Mono, poly cells to PolyCell Works."""
    parts: dict[str, ElImages] = {}
    for cell_type, supplier in SUPPLIER_BY_CELL_TYPE.items():
        positions = [i for i, kind in enumerate(data.cell_types) if kind == cell_type]
        parts[supplier] = data.subset(positions)
    return parts


ALL_MEMBERS = "all"


def select_member(data: ElImages, member: str) -> ElImages:
    """A member's own cells: ``cellex`` (mono), ``polycell`` (poly), or ``all``."""
    if member == ALL_MEMBERS:
        return data
    parts = partition_by_supplier(data)
    if member not in parts:
        raise DatasetError(
            f"member {member!r} has no EL cells; one of: {', '.join([*parts, ALL_MEMBERS])}"
        )
    return parts[member]
