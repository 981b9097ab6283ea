"""An ingest keeps the first problems it finds and counts the rest: a file of lines that are
no rows (a careless or hostile upload may be 512 MiB of them) made a report, and an API
answer, of every one of its problems, and kept a reason for every undecodable line to
the file's end."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from qdspace.connector import ingest
from qdspace.connector.ingest import KEEP_REJECTED, DecodedLines, ingest_file, jsonl_rows
from qdspace.connector.storage import open_store

LINES = 3 * KEEP_REJECTED


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_file_of_junk_lines_keeps_the_first_problems_and_counts_all(
    tmp_path: Path, suffix: str
) -> None:
    junk = tmp_path / f"junk{suffix}"
    header = b"inspection_id,batch_id,inspected_at,verdict\n" if suffix == ".csv" else b""
    junk.write_bytes(header + b"\xff\n" * LINES)  # not UTF-8: a reason each
    store = open_store(f"sqlite:///{tmp_path}/q.db")
    try:
        tracemalloc.start()
        report = ingest_file(store, junk, "inspection")
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    finally:
        store.close()
    assert len(report.rejected) == KEEP_REJECTED
    assert (report.problems, report.refused_lines, report.more) == (
        LINES,
        LINES,
        LINES - KEEP_REJECTED,
    )
    first = 2 if suffix == ".csv" else 1
    assert [e.line for e in report.rejected[:2]] == [first, first + 1]
    assert "not valid utf-8" in report.rejected[0].reason
    assert report.accepted == 0 and report.seen == LINES
    assert peak < 32 << 20  # (all 30,000 problems kept took more than this: ~40 MiB)


def test_the_decoder_forgets_a_bad_line_s_reason_once_it_is_used() -> None:
    lines = DecodedLines(iter([b"\xff\n"] * 1000 + [b'{"inspection_id": "x"}\n']), "utf-8")
    rows = list(jsonl_rows(lines))
    assert len(rows) == 1001 and lines.bad == {}


def test_a_report_counts_lines_once_whatever_their_problems(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ingest, "KEEP_REJECTED", 3)
    report = ingest.IngestReport("inspection", "f")
    report.reject([ingest.RowError("f", 1, "a", "x"), ingest.RowError("f", 1, "b", "y")])
    report.reject([ingest.RowError("f", 2, "a", "x"), ingest.RowError("f", 3, "a", "x")])
    assert [e.line for e in report.rejected] == [1, 1, 2]
    assert (report.problems, report.refused_lines, report.more) == (4, 3, 1)
