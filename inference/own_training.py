"""Training the line's CNN on a member's own labelled images: check, split, train, register.

``qdspace train --images DIR`` and the node's ``POST /v1/inspection/trainings`` both
run these two steps, so the command line and the API cannot drift apart:

1. :func:`prepare` reads ``labels.csv``, checks and decodes every image, reuses or draws
   the split (``splits.json``) and counts the classes. It writes nothing: a bad row,
   file or image stops it with the row named, and no trace is left.
2. :func:`train_prepared` trains exactly like the bundled-data path (early stopping on
   val, the collapse check), then writes the split manifest, the audit set if the node
   has none (or was told to replace it), and registers the version with its held-out
   metrics and class counts. A collapsed run raises before anything is written.

Activation is the caller's (``ModelRegistry.activate``: the promotion gate), as for
the bundled data. PyTorch is imported only when training starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qdspace.inference.balance import BalanceReport, balance_report
from qdspace.inference.dataset import BINARY_CLASSES
from qdspace.inference.errors import DatasetError
from qdspace.inference.image_folder import LabelledImages, decode_image, load_labelled_images
from qdspace.inference.image_split import SPLITS_NAME, ImageSplit, SplitChanges, split_for
from qdspace.inference.labels import LabelRule
from qdspace.inference.metrics import BinaryMetrics
from qdspace.inference.registry import ModelRegistry, ModelVersion
from qdspace.inference.splits import DEFAULT_SEED

LABELS_NAME = "labels.csv"
#: audit images are kept at this side (or the model's, if larger): the gate judges later
#: versions of other input sizes on them too
AUDIT_SIDE = 256
SOURCE_PREFIX = "own-images:"


@dataclass(frozen=True)
class OwnTrainRequest:
    """What to train on and how; paths are on the machine that trains."""

    images: Path
    labels: Path | None = None
    splits: Path | None = None
    rule: LabelRule = field(default_factory=LabelRule)
    classes: int = 2
    epochs: int = 12
    size: int = 64
    seed: int = 0
    split_seed: int = DEFAULT_SEED
    threads: int = 1
    replace_audit: bool = False

    @property
    def labels_path(self) -> Path:
        """``labels.csv`` in the image folder unless given."""
        return self.labels if self.labels is not None else self.images / LABELS_NAME

    @property
    def splits_path(self) -> Path:
        """``splits.json`` beside the labels file unless given."""
        return self.splits if self.splits is not None else self.labels_path.parent / SPLITS_NAME


@dataclass(frozen=True)
class PreparedSet:
    """A checked, decoded image set with its split and class balance, ready to train."""

    request: OwnTrainRequest
    images: LabelledImages
    split: ImageSplit
    changes: SplitChanges
    balance: BalanceReport
    audit_note: str | None


@dataclass(frozen=True)
class OwnTrainResult:
    """The registered version, its held-out metrics and the epoch kept."""

    entry: ModelVersion
    metrics: BinaryMetrics
    best_epoch: int
    epochs_run: int


def prepare(request: OwnTrainRequest, registry: ModelRegistry) -> PreparedSet:
    """Check and decode the set, reuse or draw its split, count classes; writes nothing."""
    if request.classes not in (2, 4):
        raise DatasetError(f"classes {request.classes}: 2 (pass/fail) or 4 (grades)")
    if request.classes == 4 and not request.rule.grades:
        raise DatasetError("a 4-class model learns grades: label the images 0..3 and use grades")
    images = load_labelled_images(
        request.images, request.labels_path, request.rule, request.size, request.threads
    )
    labels = {row.file: row.label for row in images.rows}
    content = dict(zip(images.files, images.digests, strict=True))
    split, changes = split_for(request.splits_path, labels, content, request.split_seed)
    failing = {
        row.label: row.label_class >= 2 if request.rule.grades else row.label_class == 1
        for row in images.rows
    }
    balance = balance_report(split, failing)
    for name in ("val", "test"):
        for outcome in BINARY_CLASSES:
            if balance.outcomes[name][outcome] == 0:
                raise DatasetError(
                    f"no {outcome} image in the {name} split of {len(images.rows)} images: "
                    f"label at least 7 images of each outcome so every split has one"
                )
    return PreparedSet(request, images, split, changes, balance, _audit_note(registry, images))


def _audit_note(registry: ModelRegistry, images: LabelledImages) -> str | None:
    """A warning when the gate would judge on an audit set from other images."""
    audit = registry.audit_set()
    if audit is None:
        return None
    if set(audit.frame_ids) <= set(images.files):
        return None
    return (
        f"the promotion gate judges on the node's audit set of {len(audit.frame_ids)} "
        "images that are not from this folder; replace it with this folder's test "
        "split (--replace-audit) if the line now inspects these images"
    )


def train_prepared(
    prepared: PreparedSet,
    registry: ModelRegistry,
    on_epoch: Callable[[int, float], None] | None = None,
) -> OwnTrainResult:
    """Train, then write the split, the audit set (if due) and register the version."""
    from qdspace.inference.training import ONNX_OPSET, TrainConfig, train_and_export

    request, images, split = prepared.request, prepared.images, prepared.split
    config = TrainConfig(
        input_size=request.size,
        epochs=request.epochs,
        seed=request.seed,
        threads=request.threads,
        num_classes=request.classes,
    )
    result = train_and_export(
        images.subset(split.train),
        images.subset(split.test),
        config,
        on_epoch=on_epoch,
        val=images.subset(split.val),
    )
    if registry.audit_set() is None or request.replace_audit:
        _set_audit(registry, prepared)
    split.write(request.splits_path)
    entry = registry.register(
        result.onnx_bytes,
        source=f"{SOURCE_PREFIX}{request.images.resolve().name}",
        metrics={
            **result.metrics.as_dict(),
            "onnx_opset": float(ONNX_OPSET),
            **prepared.balance.metrics(),
        },
        split_sha256=split.sha256,
        notes=_notes(prepared, result.best_epoch),
    )
    return OwnTrainResult(entry, result.metrics, result.best_epoch, len(result.losses))


def _set_audit(registry: ModelRegistry, prepared: PreparedSet) -> None:
    """The test split, decoded again at the audit side, becomes the gate's audit set."""
    request, images = prepared.request, prepared.images
    side = max(AUDIT_SIDE, request.size)
    root = request.images.resolve()
    pixels = []
    for file in prepared.split.test:
        path = (root / file).resolve()
        if not path.is_relative_to(root):  # swapped for a symlink since it was checked
            raise DatasetError(f"{file} leads out of {root} (a symlink)")
        pixels.append(decode_image(path, file, side)[0])
    outcomes = images.subset(prepared.split.test).labels(2)
    registry.set_audit_set(pixels, np.asarray(outcomes).tolist(), prepared.split.test)


def _notes(prepared: PreparedSet, best_epoch: int) -> str:
    r = prepared.request
    warnings = len(prepared.balance.warnings)
    return (
        f"images={r.images.resolve()} labels={r.labels_path.resolve().name} "
        f"rule=[{r.rule.describe()}] classes={r.classes} epochs={r.epochs} size={r.size} "
        f"seed={r.seed} split_seed={prepared.split.seed} held-out=test "
        f"test_sha256={prepared.split.test_sha256[:16]} best_epoch={best_epoch} "
        f"split_changes={len(prepared.changes.lines())} balance_warnings={warnings}"
    )
