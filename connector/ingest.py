"""Ingest of QDM rows from files (CSV, JSON Lines) and from the API.

Every row is validated against its kind (see :mod:`connector.validate`); a bad row is
reported with its file, line, field and reason and never stored; good rows are
committed in atomic batches by :meth:`connector.storage.QualityStore.ingest_rows`. A
good row whose natural key is stored with other content is a correction: a new
version of that record (:mod:`connector.versions`), counted in ``corrected``.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from qdspace.connector.errors import IngestFileError, UnknownKind
from qdspace.connector.row_template import FIELDS
from qdspace.util.json_depth import MAX_JSON_DEPTH, json_too_deep

KINDS: tuple[str, ...] = tuple(FIELDS)
SUFFIXES = (".csv", ".jsonl", ".ndjson")

#: Rows per transaction of a bulk ingest (a file, an upload, the API's JSON rows). Line-in
#: connectors keep ``QualityStore.ingest_rows``' default (5,000), where a row's latency
#: matters more than throughput. Why larger here: inspections whose times are not in line
#: order dirty a page of the time index every few rows, and at 5,000 rows a commit wrote
#: ~16 MiB of index pages for ~1 MiB of rows; at 50,000 rows the same page takes ten times
#: the rows per write (1M rows on SQLite: 3.8 GB -> 1.0 GB written, process CPU 16.5 s ->
#: 13.5 s, 38-56k -> 78k rows/s; bench/PROFILE-ingest.md, round 3). Gains level off above it
#: (100,000: 0.7 GB, the same CPU). Memory: about 40 MB a batch of inspection rows as
#: parsed from a file, and two are held at once (the one written, the one validated ahead).
#: A failing batch still rolls back whole (up to this many rows, named by line) and the
#: batches before it stay committed; progress is reported per batch.
BULK_BATCH_ROWS = 50_000


#: why a JSON number Python will not read is refused (``sys.get_int_max_str_digits``)
TOO_MANY_DIGITS = "a number with more than 4300 digits"


class UnsupportedCharset(IngestFileError):
    """A declared charset this reader cannot decode line by line (unknown, or UTF-16/32)."""


@dataclass(frozen=True)
class RowError:
    source: str
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.field}: {self.reason}"


#: problems one report keeps (the first found); the others are counted (`IngestReport`)
KEEP_REJECTED = 10_000


@dataclass
class IngestReport:
    """What came of one ingest. Its problems are counted, but only the first
    `KEEP_REJECTED` are kept (`reject`): an upload may be 512 MiB, and one of two-byte
    lines that are no rows is some 250 million problems, which kept whole (and answered
    whole) took some 140 bytes of memory each: a node, or a managed host with every
    tenant, ran out of memory on one careless or hostile upload."""

    kind: str
    source: str
    accepted: int = 0
    duplicates: int = 0
    #: the first `KEEP_REJECTED` problems, in the order they were found
    rejected: list[RowError] = field(default_factory=list)
    #: rows whose natural key was stored with other content: new versions of those records
    corrected: int = 0
    #: every problem found, kept in `rejected` or not
    problems: int = 0
    #: lines refused (a line may have several problems)
    refused_lines: int = 0

    def reject(self, errors: Iterable[RowError]) -> None:
        """Count ``errors`` and keep them while fewer than `KEEP_REJECTED` are kept. The
        callers pass all of a line's problems in one call (a batch's, or one row's), so
        `refused_lines` counts each line once; problems of one line split over two calls
        would count it twice."""
        found = list(errors)
        room = KEEP_REJECTED - len(self.rejected)
        if room > 0:
            self.rejected.extend(found[:room])
        self.problems += len(found)
        self.refused_lines += len({e.line for e in found})

    @property
    def more(self) -> int:
        """Problems found and not kept."""
        return self.problems - len(self.rejected)

    @property
    def seen(self) -> int:
        return self.accepted + self.corrected + self.duplicates + self.problems


class RowSink(Protocol):
    def ingest_rows(
        self,
        kind: str,
        rows: Any,
        *,
        source: str = ...,
        batch_size: int = ...,
        on_progress: Callable[[int], None] | None = ...,
        corrections: bool = ...,
    ) -> IngestReport: ...


def check_kind(kind: str) -> str:
    if kind not in FIELDS:
        raise UnknownKind(f"unknown kind {kind!r}; one of: {', '.join(KINDS)}")
    return kind


BadLine = tuple[str, str]  # (field, reason) for a line that is not a row at all


#: charsets a file may declare: UTF-8 and single-byte, ASCII-compatible ones (lines split
#: on b"\n" safely); UTF-16/32 would need another reader and are refused by name
CHARSETS = ("utf-8", "ascii", "iso8859-1", "iso8859-15", "cp1252")
DEFAULT_CHARSET = "utf-8"
_BOM = b"\xef\xbb\xbf"


def charset_of(declared: str | None) -> str:
    """The codec name of a declared charset (``None``: UTF-8); unknown or multi-byte: error."""
    if not declared:
        return DEFAULT_CHARSET
    try:
        name = codecs.lookup(declared.strip().strip('"')).name
    except LookupError:
        raise UnsupportedCharset(f"charset {declared!r} is not known") from None
    if name not in CHARSETS:
        raise UnsupportedCharset(
            f"charset {declared!r} is not supported; use utf-8, us-ascii, iso-8859-1, "
            "iso-8859-15 or windows-1252"
        )
    return name


def read_rows(
    path: Path, kind: str, *, charset: str | None = None, source: str | None = None
) -> Iterator[tuple[int, Mapping[str, Any] | BadLine]]:
    """Yield ``(line, row)`` from a CSV or JSONL file decoded as ``charset`` (UTF-8).

    A line that is not a row at all yields ``(line, (field, reason))``: bytes that are not
    valid in the charset, a NUL byte, a row with more or fewer values than the header.
    Nothing is ever decoded with replacement characters. ``source`` names the file in
    messages (an upload's name instead of its temporary path).
    """
    check_kind(kind)
    encoding = charset_of(charset)
    name = source or str(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise IngestFileError(
            f"{name}: unsupported file type {suffix or '(none)'}; use .csv or .jsonl"
        )
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise IngestFileError(f"{name}: no such file") from None
    except OSError as exc:
        raise IngestFileError(f"{name}: cannot read: {exc.strerror}") from None
    with handle:
        lines = DecodedLines(handle, encoding)
        if suffix == ".csv":
            yield from csv_rows(name, lines, kind)
        else:
            yield from jsonl_rows(lines)


class DecodedLines:
    """Physical lines decoded strictly; a line that does not decode is remembered, not mended.

    The CSV reader needs text, so an undecodable line reaches it as an empty string and
    the record it belonged to is reported by line with the reason kept in `bad`.
    """

    def __init__(self, handle: Any, encoding: str) -> None:
        self.handle = handle
        self.encoding = encoding
        self.number = 0
        self.bad: dict[int, str] = {}

    def __iter__(self) -> Iterator[str]:
        for raw in self.handle:
            self.number += 1
            if self.number == 1 and raw.startswith(_BOM) and self.encoding == "utf-8":
                raw = raw[len(_BOM) :]
            text = self.decode(raw)
            yield "\n" if text is None else text

    def decode(self, raw: bytes) -> str | None:
        if b"\x00" in raw:
            self.bad[self.number] = "NUL byte in line"
            return None
        try:
            return raw.decode(self.encoding)
        except UnicodeDecodeError as exc:
            self.bad[self.number] = (
                f"not valid {self.encoding}: byte 0x{raw[exc.start]:02x} at column "
                f"{exc.start + 1}; declare the file's charset (e.g. text/csv; charset=iso-8859-1)"
            )
            return None


def csv_rows(
    name: str, lines: DecodedLines, kind: str
) -> Iterator[tuple[int, Mapping[str, Any] | BadLine]]:
    reader = csv.reader(lines)
    try:
        header = next(reader, None)
        if lines.bad:
            raise IngestFileError(f"{name}:1: header line: {lines.bad[1]}")
        if not header or header == [""]:
            raise IngestFileError(f"{name}: the file is empty; expected a header line")
        unknown = [h for h in header if h not in FIELDS[kind]]
        if unknown:
            raise IngestFileError(
                f"{name}:1: column {unknown[0]!r} is not a field of {kind}; "
                f"fields: {', '.join(sorted(FIELDS[kind]))}"
            )
        yield from _csv_records(header, reader, lines)
    except csv.Error as exc:
        raise IngestFileError(f"{name}:{reader.line_num}: malformed CSV: {exc}") from None


def _csv_records(
    header: list[str], reader: Any, lines: DecodedLines
) -> Iterator[tuple[int, Mapping[str, Any] | BadLine]]:
    first = reader.line_num + 1
    for values in reader:
        line, first = first, reader.line_num + 1
        # a reason is dropped once used: kept, one a bad line, they grew with the file
        bad = [r for n in range(line, reader.line_num + 1) if (r := lines.bad.pop(n, None))]
        if bad:
            yield line, ("-", bad[0])
        elif not values:
            continue  # a blank line is no row
        elif len(values) != len(header):
            yield line, ("-", f"expected {len(header)} values (one per column), got {len(values)}")
        else:
            yield line, dict(zip(header, values, strict=True))


def jsonl_rows(lines: DecodedLines) -> Iterator[tuple[int, Mapping[str, Any] | BadLine]]:
    for text in lines:
        number = lines.number
        reason = lines.bad.pop(number, None)  # (dropped once used, as for CSV)
        if reason is not None:
            yield number, ("-", reason)
            continue
        if not text.strip():
            continue
        if json_too_deep(text):
            yield number, ("-", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            yield number, ("-", f"invalid JSON: {exc.msg} at column {exc.colno}")
            continue
        except ValueError:  # Python refuses to read an integer of more than 4300 digits
            yield number, ("-", f"invalid JSON: {TOO_MANY_DIGITS}")
            continue
        if not isinstance(row, dict):
            yield number, ("-", f"a row must be a JSON object, got {type(row).__name__}")
            continue
        nul = [k for k, v in row.items() if "\x00" in k or (isinstance(v, str) and "\x00" in v)]
        if nul:
            yield number, (str(nul[0]), "NUL character in value")
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
    batch_size: int = BULK_BATCH_ROWS,
    on_progress: Callable[[int], None] | None = None,
    charset: str | None = None,
    source: str | None = None,
) -> IngestReport:
    """Validate and store every row of ``path``; the report names each bad row.

    ``charset`` is the file's declared encoding (UTF-8 when not given); ``source`` names
    the file in the report and in errors (an upload's name rather than a temporary path).
    """
    check_kind(kind)
    name = source or Path(path).name
    rows = read_rows(Path(path), kind, charset=charset, source=source)
    return store.ingest_rows(
        kind, rows, source=name, batch_size=batch_size, on_progress=on_progress
    )
