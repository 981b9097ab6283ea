"""Reading one export from its open file into the store, bounded whatever the file holds.

The exporter decides what a file holds, and a broken one writes anything: a binary dump
named ``.csv``, a gigabyte on one line, millions of lines that are no rows. The rows are
those of :func:`connector.ingest.read_rows` (the same decoding, CSV and JSON Lines
rules and reasons), read from the descriptor the folder checked (`folder_files`) rather
than opened again by name. Why the bounds:

* A line is read ``LINE_MAX`` bytes at most (`_Lines`): a file without a newline (a
  200 MB one made 400 MB of memory, and one line has no limit) is refused at its first
  longer line, and the rows before it stay stored.
* The rows go to the store ``CHUNK_ROWS`` at a time and only the first ``KEEP_PROBLEMS``
  refusals are kept, for the errors file (the rest are counted in its last line): a
  10 MB file of two-byte lines was 5 million refusals, 1.4 GB of memory and a 145 MB
  errors file. (One ingest of the whole file, as for an upload, would keep every
  refusal until its end. The price: the store's read-ahead of the next batch during a
  commit has no next batch within a call, so a large valid file takes longer, 8.4 s
  instead of 7.4 s for 200,000 rows on SQLite, measured.)
* A last line without a newline is refused, not read, where the folder asks so
  (``unended``): an exporter that stopped mid-line (died, or paused past the settle time)
  left ``...,800.5`` cut to ``...,8``, a valid row of 8 °C; the rest of the line, written
  later, would have come as a "correction" or never been read. The folder waits
  ``unended_s`` before it reads such a file at all (`folder.Settling`).
* The reasons the decoder keeps for undecodable lines are dropped once the row they
  belong to is handed on (the decoder would keep one per bad line to the file's end).
* The bytes are hashed as they are read (`FileRead.digest`): the ledger records what was
  stored, and a file rewritten while read, even one that kept its size and time (a copy
  tool that sets the time back), is seen and read again later.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import IO, Any

from qdspace.connector.errors import ConnectorError, IngestFileError
from qdspace.connector.ingest import (
    BULK_BATCH_ROWS,
    BadLine,
    DecodedLines,
    IngestReport,
    RowError,
    RowSink,
    charset_of,
    check_kind,
    csv_rows,
    jsonl_rows,
)

#: a line's bytes at most (with its newline): a QDM row is a few hundred bytes
LINE_MAX = 1 << 20
#: rows handed to the store per call (one transaction each)
CHUNK_ROWS = BULK_BATCH_ROWS
#: refusals kept per file for its errors file; the rest are counted
KEEP_PROBLEMS = 10_000
#: why a last line without a newline is refused
UNENDED = "incomplete last line (file cut off?): it does not end with a newline"


class LineTooLong(IngestFileError):
    """A line longer than any export row: not a CSV or JSON Lines export."""


@dataclass
class FileRead:
    """What came of one file: counts, the first refusals, the digest of the bytes read."""

    stored: int = 0
    corrected: int = 0
    duplicates: int = 0
    #: lines refused (a line may have several problems)
    refused: int = 0
    problems: list[RowError] = field(default_factory=list)
    #: problems past KEEP_PROBLEMS, not kept
    more: int = 0
    #: SHA-256 of the whole file as read (hex)
    digest: str = ""
    #: why the file was not read to its end (the rows before stay stored); None: it was
    stopped: str | None = None

    def add(self, report: IngestReport) -> None:
        self.stored += report.accepted
        self.corrected += report.corrected
        self.duplicates += report.duplicates
        self.refused += report.refused_lines
        self.keep(report.rejected)
        self.more += report.more

    def keep(self, problems: list[RowError]) -> None:
        room = max(0, KEEP_PROBLEMS - len(self.problems))
        self.problems.extend(problems[:room])
        self.more += max(0, len(problems) - room)


class _Lines:
    """The file's lines, ``LINE_MAX`` bytes at most each, hashed as they are read."""

    def __init__(self, handle: IO[bytes], name: str, *, unended: bool = False) -> None:
        self.handle = handle
        self.name = name
        self.digest = hashlib.sha256()
        self.number = 0
        #: ``unended``: a last line without a newline is not yielded; its number is kept
        self.unended = unended
        self.cut_at: int | None = None

    def __iter__(self) -> Iterator[bytes]:
        while line := self.handle.readline(LINE_MAX + 1):
            self.number += 1
            self.digest.update(line)
            if len(line) > LINE_MAX:
                raise LineTooLong(
                    f"{self.name}:{self.number}: a line longer than {LINE_MAX} bytes; "
                    "not a CSV or JSON Lines export (binary?)"
                )
            if self.unended and not line.endswith(b"\n"):  # only the last line can be
                self.cut_at = self.number
                return
            yield line

    def finish(self) -> str:
        """The digest of the whole file: what is left is hashed without being read."""
        while block := self.handle.read(1 << 20):
            self.digest.update(block)
        return self.digest.hexdigest()


def rows_of(
    lines: _Lines, suffix: str, kind: str, charset: str | None
) -> Iterator[tuple[int, Mapping[str, Any] | BadLine]]:
    """``read_rows`` of the open file (its name and suffix given)."""
    decoded = DecodedLines(lines, charset_of(charset))
    rows = csv_rows(lines.name, decoded, kind) if suffix == ".csv" else jsonl_rows(decoded)
    yield from rows  # (the decoder drops each line's reason once it is used)


def read_export(
    store: RowSink,
    handle: IO[bytes],
    name: str,
    suffix: str,
    kind: str,
    charset: str | None,
    *,
    unended: bool = False,
) -> FileRead:
    """Store the rows of the open file ``handle`` (named ``name``) as ``kind``.

    A file that cannot be read on (a malformed CSV, a line too long) ends with its
    reason in `FileRead.stopped` and among the problems; a store that fails raises.
    ``unended``: a last line without a newline is refused as cut off, not read.
    """
    check_kind(kind)
    lines = _Lines(handle, name, unended=unended)
    result = FileRead()
    rows = rows_of(lines, suffix.lower(), kind, charset)
    while True:
        try:
            chunk = list(islice(rows, CHUNK_ROWS))
        except ConnectorError as exc:
            if not isinstance(exc, ValueError):
                raise
            result.stopped = str(exc)
            result.keep([RowError(name, lines.number, "-", str(exc))])
            break
        if not chunk:
            break
        result.add(store.ingest_rows(kind, chunk, source=name, batch_size=CHUNK_ROWS))
    if lines.cut_at is not None and result.stopped is None:
        result.refused += 1
        result.keep([RowError(name, lines.cut_at, "-", UNENDED)])
    result.digest = lines.finish()
    return result
