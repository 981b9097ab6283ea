"""A member's own ``labels.csv``: which image files, which label each, and what counts as bad.

Operators bring their own labelled images (``qdspace train --images DIR --labels
labels.csv``). The labels file is the one thing they write by hand, so it is read
strictly and every mistake is named by its line: a wrong header, a row with too few or
too many fields, a file listed twice, a path that leaves the image folder (absolute,
``..``, a Windows separator), a label nobody said how to read. Reading it here is pure
(text in, rows out); the files themselves are opened by ``inference.image_folder``.

How labels become pass/fail (the documented rule):

- **binary** (the default): ``0``/``ok``/``good``/``pass`` are good,
  ``1``/``defective``/``bad``/``fail`` are defective (case does not matter);
- **grades** (``--grades``): ``0``..``3`` or ``intact``, ``possibly_defective``,
  ``likely_defective``, ``defective``, the EL experts' four grades; grades 2 and 3 fail,
  as a defect probability of 2/3 or 1 does on the bundled EL data (p >= 0.5). A 4-class
  model (``--classes 4``) learns the grades themselves;
- **your own names** (``--positive crack,burn --negative clean``): the named labels
  fail or pass; without ``--negative`` the binary good names above are the passes.
  Any label outside the chosen vocabulary is refused, so a typo never becomes a class.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass

from qdspace.inference.dataset import GRADE_CLASSES, GRADES
from qdspace.inference.errors import DatasetError

HEADER = ("file", "label")
MAX_ROWS = 200_000
MAX_PATH_CHARS = 1024
GOOD_NAMES = ("0", "ok", "good", "pass")
BAD_NAMES = ("1", "defective", "bad", "fail")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class LabelRule:
    """How the label column is read: binary names, the four grades, or the member's own."""

    grades: bool = False
    positive: tuple[str, ...] = ()
    negative: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.grades and (self.positive or self.negative):
            raise DatasetError("--positive/--negative name binary labels: not with --grades")
        if self.negative and not self.positive:
            raise DatasetError("--negative needs --positive (the labels that fail)")
        both = set(_norm(self.positive)) & set(_norm(self.negative))
        if both:
            raise DatasetError(f"labels both positive and negative: {', '.join(sorted(both))}")

    def vocabulary(self) -> dict[str, int]:
        """Every accepted label (lower case) and its class: 0/1, or the grade 0..3."""
        if self.grades:
            names = {str(g): g for g in range(len(GRADES))}
            return names | {name: g for g, name in enumerate(GRADE_CLASSES)}
        if self.positive:
            good = _norm(self.negative) if self.negative else GOOD_NAMES
            return {name: 0 for name in good} | {name: 1 for name in _norm(self.positive)}
        return {name: 0 for name in GOOD_NAMES} | {name: 1 for name in BAD_NAMES}

    @property
    def num_grades(self) -> int:
        """How many label classes the rule yields (2, or 4 with grades)."""
        return len(GRADES) if self.grades else 2

    def probability(self, label_class: int) -> float:
        """The defect probability a class stands for (a grade's, or 0/1): ``ElImages``'s
        labels are derived from it, so pass/fail follows the EL rule p >= 0.5."""
        return GRADES[label_class] if self.grades else float(label_class)

    def describe(self) -> str:
        """The rule in words, for reports and the model version's notes."""
        if self.grades:
            return "grades 0..3, grades 2 and 3 fail"
        vocab = self.vocabulary()
        bad = "|".join(n for n, c in vocab.items() if c == 1)
        good = "|".join(n for n, c in vocab.items() if c == 0)
        return f"binary: fail = {bad}; pass = {good}"


@dataclass(frozen=True)
class LabelRow:
    """One row of ``labels.csv``: its line number, relative file path and label class."""

    line: int
    file: str
    label: str
    label_class: int


def _norm(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(n.strip().lower() for n in names if n.strip())


def check_relative_path(raw: str, where: str) -> str:
    """``raw`` as a clean relative POSIX path inside the image folder, or a DatasetError."""
    path = raw.strip()
    if not path:
        raise DatasetError(f"{where}: empty file name")
    if len(path) > MAX_PATH_CHARS or "\x00" in path:
        raise DatasetError(f"{where}: file name is not a usable path")
    if "\\" in path:
        raise DatasetError(f"{where}: {path!r} uses '\\'; write paths with '/'")
    if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
        raise DatasetError(f"{where}: {path!r} is absolute; paths are relative to the folder")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DatasetError(f"{where}: {path!r} leaves the image folder ('..')")
    if not parts:
        raise DatasetError(f"{where}: {path!r} names no file")
    clean = "/".join(parts)
    if not clean.lower().endswith(IMAGE_SUFFIXES):
        raise DatasetError(
            f"{where}: {path!r} is not an image file name ({', '.join(IMAGE_SUFFIXES)})"
        )
    return clean


def parse_labels(text: str, rule: LabelRule, source: str = "labels.csv") -> list[LabelRow]:
    """The rows of a labels file; any mistake is a DatasetError naming ``source:line``."""
    text = text.removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    rows: list[LabelRow] = []
    seen: dict[str, int] = {}
    vocabulary = rule.vocabulary()
    try:
        for record in reader:
            line = reader.line_num
            if not record or all(not field.strip() for field in record):
                continue
            if header is None:
                header = [f.strip().lower() for f in record]
                if tuple(header) != HEADER:
                    raise DatasetError(
                        f"{source}:{line}: header {','.join(record)!r}; expected 'file,label'"
                    )
                continue
            rows.append(_row(record, line, source, vocabulary, seen))
            if len(rows) > MAX_ROWS:
                raise DatasetError(f"{source}: more than {MAX_ROWS:,} rows")
    except csv.Error as exc:
        raise DatasetError(f"{source}:{reader.line_num}: not CSV ({exc})") from None
    if header is None:
        raise DatasetError(f"{source}: empty; expected a 'file,label' header and one row a file")
    if not rows:
        raise DatasetError(f"{source}: a header but no rows; list one 'file,label' row a file")
    return rows


def _row(
    record: list[str], line: int, source: str, vocabulary: dict[str, int], seen: dict[str, int]
) -> LabelRow:
    where = f"{source}:{line}"
    if len(record) != len(HEADER):
        raise DatasetError(f"{where}: {len(record)} fields; expected 'file,label'")
    file = check_relative_path(record[0], where)
    label = record[1].strip()
    key = label.lower()
    if key not in vocabulary:
        known = ", ".join(vocabulary)
        raise DatasetError(
            f"{where}: label {label!r} of {file} is not one of {known} "
            "(own names: --positive/--negative; grades: --grades)"
        )
    if file in seen:
        raise DatasetError(f"{where}: {file} is listed twice (first on line {seen[file]})")
    seen[file] = line
    return LabelRow(line, file, key, vocabulary[key])
