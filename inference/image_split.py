"""The fixed split of a member's own images (``splits.json``), and what changed since.

The bundled EL cells are split by position (``inference.splits``); a member's own set
grows and shrinks, so its split names files. The first training draws it (stratified
by label, seeded) and writes it beside ``labels.csv``; every later training on the same
folder reuses it, so the held-out figures of two versions are measured on the same
images. When the folder changed, the differences are reported and resolved so that
the held-out images stay put: a new image goes to train only, a removed one leaves its
split, and a relabelled or re-shot image stays where it was (flagged, because its
figures moved). The manifest carries a sha256 over its content; an edited one is
refused, as a split manifest of the EL cells is.

Pure apart from :meth:`ImageSplit.read` / :meth:`ImageSplit.write`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qdspace.inference.errors import DatasetError
from qdspace.inference.splits import DEFAULT_FRACTIONS, DEFAULT_SEED, SPLIT_NAMES, make_split
from qdspace.util.files import write_atomic

FORMAT = "qdspace.image-split/1"
SPLITS_NAME = "splits.json"


@dataclass(frozen=True)
class ImageSplit:
    """Which files are in train, val and test, with each file's label and content hash."""

    seed: int
    fractions: tuple[float, float, float]
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    content: Mapping[str, str] = field(default_factory=dict)

    def files(self, split: str) -> tuple[str, ...]:
        """The files of ``split`` ('train', 'val' or 'test')."""
        if split not in SPLIT_NAMES:
            raise DatasetError(f"unknown split {split!r}; expected one of {SPLIT_NAMES}")
        chosen: tuple[str, ...] = getattr(self, split)
        return chosen

    def split_of(self) -> dict[str, str]:
        """Each file's split."""
        return {f: name for name in SPLIT_NAMES for f in self.files(name)}

    @property
    def sha256(self) -> str:
        """Hash of everything the manifest says (files, labels, contents, how drawn)."""
        return _digest(self._body())

    @property
    def test_sha256(self) -> str:
        """Hash of the held-out images alone: versions with the same one are comparable."""
        return _digest([[f, self.labels.get(f), self.content.get(f)] for f in self.test])

    def _body(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "seed": self.seed,
            "fractions": list(self.fractions),
            "train": list(self.train),
            "val": list(self.val),
            "test": list(self.test),
            "labels": dict(sorted(self.labels.items())),
            "content": dict(sorted(self.content.items())),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form with the hash readers check."""
        return self._body() | {"sha256": self.sha256}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = SPLITS_NAME) -> ImageSplit:
        """Rebuild a manifest; a wrong format, a file in two splits or an edit is refused."""
        if raw.get("format") != FORMAT:
            raise DatasetError(f"{source}: format {raw.get('format')!r}, want {FORMAT}")
        try:
            fractions = tuple(float(f) for f in raw["fractions"])
            split = cls(
                seed=int(raw["seed"]),
                fractions=(fractions[0], fractions[1], fractions[2]),
                train=tuple(str(f) for f in raw["train"]),
                val=tuple(str(f) for f in raw["val"]),
                test=tuple(str(f) for f in raw["test"]),
                labels={str(k): str(v) for k, v in dict(raw["labels"]).items()},
                content={str(k): str(v) for k, v in dict(raw["content"]).items()},
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DatasetError(f"{source}: malformed split manifest ({exc!r})") from None
        if split.sha256 != raw.get("sha256"):
            raise DatasetError(
                f"{source}: sha256 does not match its content (edited?); delete it to draw "
                "a new split"
            )
        listed = [*split.train, *split.val, *split.test]
        if len(set(listed)) != len(listed):
            twice = sorted({f for f in listed if listed.count(f) > 1})
            raise DatasetError(f"{source}: files in more than one split: {twice[:5]}")
        return split

    def write(self, path: Path) -> None:
        """Write atomically (a reader never sees half a manifest)."""
        text = json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n"
        write_atomic(path, text.encode("utf-8"), mode=0o644)

    @classmethod
    def read(cls, path: Path) -> ImageSplit:
        """Load and verify a manifest written by :meth:`write`."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{path}: cannot read split manifest ({exc})") from None
        if not isinstance(raw, dict):
            raise DatasetError(f"{path}: split manifest is not a JSON object")
        return cls.from_dict(raw, source=str(path))


@dataclass(frozen=True)
class SplitChanges:
    """How the image folder differs from the manifest it was split by last time."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    relabelled: tuple[str, ...] = ()
    replaced: tuple[str, ...] = ()
    reused: bool = False

    @property
    def changed(self) -> bool:
        """True if any image came, went, or changed label or content."""
        return bool(self.added or self.removed or self.relabelled or self.replaced)

    def lines(self) -> list[str]:
        """The report, one line a kind of change (empty for a fresh or unchanged split)."""
        out = []
        for files, what in (
            (self.added, "new image(s) added to train only (val and test stay as they were)"),
            (self.removed, "image(s) gone from the folder, dropped from their split"),
            (self.relabelled, "image(s) with a changed label, kept in their split"),
            (self.replaced, "image(s) with changed content, kept in their split"),
        ):
            if files:
                shown = ", ".join(files[:5]) + (", ..." if len(files) > 5 else "")
                out.append(f"{len(files)} {what}: {shown}")
        return out


def _digest(body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def draw_split(
    labels: Mapping[str, str],
    content: Mapping[str, str],
    seed: int = DEFAULT_SEED,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> ImageSplit:
    """A fresh split of the files, stratified by label and drawn with ``seed``."""
    files = sorted(labels)
    drawn = make_split(
        range(len(files)), [labels[f] for f in files], seed, fractions, stratified_by="label"
    )
    return ImageSplit(
        seed=seed,
        fractions=fractions,
        train=tuple(files[i] for i in drawn.train),
        val=tuple(files[i] for i in drawn.val),
        test=tuple(files[i] for i in drawn.test),
        labels=dict(labels),
        content=dict(content),
    )


def reconcile(
    previous: ImageSplit, labels: Mapping[str, str], content: Mapping[str, str]
) -> tuple[ImageSplit, SplitChanges]:
    """The previous split applied to the folder as it is now, and what differs."""
    where = previous.split_of()
    added = tuple(sorted(f for f in labels if f not in where))
    removed = tuple(sorted(f for f in where if f not in labels))
    relabelled = tuple(
        sorted(f for f in labels if f in where and previous.labels.get(f) != labels[f])
    )
    replaced = tuple(
        sorted(f for f in labels if f in where and previous.content.get(f) != content[f])
    )

    def kept(split: str, extra: Sequence[str] = ()) -> tuple[str, ...]:
        return tuple(sorted([f for f in previous.files(split) if f in labels] + list(extra)))

    split = ImageSplit(
        seed=previous.seed,
        fractions=previous.fractions,
        train=kept("train", added),
        val=kept("val"),
        test=kept("test"),
        labels=dict(labels),
        content=dict(content),
    )
    return split, SplitChanges(added, removed, relabelled, replaced, reused=True)


def split_for(
    path: Path,
    labels: Mapping[str, str],
    content: Mapping[str, str],
    seed: int = DEFAULT_SEED,
) -> tuple[ImageSplit, SplitChanges]:
    """The manifest at ``path`` reconciled with the folder, or a fresh one if there is none."""
    if path.exists():
        return reconcile(ImageSplit.read(path), labels, content)
    return draw_split(labels, content, seed), SplitChanges()
