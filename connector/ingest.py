"""Ingest of QDM rows from files (CSV, JSON Lines) and from the API.

Every row is validated against its kind (see :mod:`connector.validate`); a bad row is
reported with its file, line, field and reason and never stored; good rows are
committed in atomic batches by :meth:`connector.storage.QualityStore.ingest_rows`. A
good row whose natural key is stored with other content is a correction: a new
version of that record (:mod:`connector.versions`), counted in ``corrected``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from connector.errors import IngestFileError, UnknownKind
from connector.validate import FIELDS

KINDS: tuple[str, ...] = tuple(FIELDS)
SUFFIXES = (".csv", ".jsonl", ".ndjson")


@dataclass(frozen=True)
class RowError:
    source: str
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.field}: {self.reason}"


@dataclass
class IngestReport:
    kind: str
    source: str
    accepted: int = 0
    duplicates: int = 0
    rejected: list[RowError] = field(default_factory=list)
    #: rows whose natural key was stored with other content: new versions of those records
    corrected: int = 0

    @property
    def seen(self) -> int:
        return self.accepted + self.corrected + self.duplicates + len(self.rejected)


class RowSink(Protocol):
    def ingest_rows(
        self,
        kind: str,
        rows: Any,
        *,
        source: str = ...,
        batch_size: int = ...,
        on_progress: Callable[[int], None] | None = ...,
    ) -> IngestReport: ...


def check_kind(kind: str) -> str:
    if kind not in FIELDS:
        raise UnknownKind(f"unknown kind {kind!r}; one of: {', '.join(KINDS)}")
    return kind


BadLine = tuple[str, str]  # (field, reason) for a line that is not a row at all


def read_rows(path: Path, kind: str) -> Iterator[tuple[int, Mapping[str, Any] | BadLine]]:
    """Yield ``(line, row)`` from a CSV or JSONL file.

    A line that is not a row at all yields ``(line, (field, reason))``.
    """
    check_kind(kind)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise IngestFileError(
            f"{path}: unsupported file type {suffix or '(none)'}; use .csv or .jsonl"
        )
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise IngestFileError(f"{path}: no such file") from None
    except OSError as exc:
        raise IngestFileError(f"{path}: cannot read: {exc.strerror}") from None
    with handle:
        if suffix == ".csv":
            yield from _csv_rows(path, handle, kind)
        else:
            yield from _jsonl_rows(handle)


def _csv_rows(
    path: Path, handle: Any, kind: str
) -> Iterator[tuple[int, Mapping[str, Any] | BadLine]]:
    with io.TextIOWrapper(handle, encoding="utf-8-sig", errors="replace", newline="") as text:
        yield from _csv_records(path, csv.DictReader(text), kind)


def _csv_records(
    path: Path, reader: csv.DictReader[str], kind: str
) -> Iterator[tuple[int, Mapping[str, Any] | BadLine]]:
    header = reader.fieldnames
    if not header:
        return
    unknown = [h for h in header if h not in FIELDS[kind]]
    if unknown:
        raise IngestFileError(
            f"{path}:1: column {unknown[0]!r} is not a field of {kind}; "
            f"fields: {', '.join(sorted(FIELDS[kind]))}"
        )
    try:
        for row in reader:
            if any("\ufffd" in v for v in row.values() if isinstance(v, str)):
                yield reader.line_num, ("-", "not valid UTF-8")
                continue
            yield reader.line_num, row
    except csv.Error as exc:
        raise IngestFileError(f"{path}:{reader.line_num}: malformed CSV: {exc}") from None


def _jsonl_rows(handle: Any) -> Iterator[tuple[int, Mapping[str, Any] | BadLine]]:
    for number, raw in enumerate(handle, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except UnicodeDecodeError:
            yield number, ("-", "not valid UTF-8")
            continue
        except json.JSONDecodeError as exc:
            yield number, ("-", f"invalid JSON: {exc.msg} at column {exc.colno}")
            continue
        if not isinstance(row, dict):
            yield number, ("-", f"a row must be a JSON object, got {type(row).__name__}")
            continue
        yield number, row


def count_lines(path: Path) -> int:
    """Lines in a file (for progress bars); cheap, reads in 1 MiB blocks."""
    total = 0
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            total += block.count(b"\n")
    return total


def ingest_file(
    store: RowSink,
    path: Path,
    kind: str,
    *,
    batch_size: int = 5000,
    on_progress: Callable[[int], None] | None = None,
) -> IngestReport:
    """Validate and store every row of ``path``; the report names each bad row."""
    check_kind(kind)
    rows = read_rows(Path(path), kind)
    return store.ingest_rows(
        kind, rows, source=Path(path).name, batch_size=batch_size, on_progress=on_progress
    )
