"""Ingest reads bytes exactly as declared: never a replacement character, every bad line named."""

from __future__ import annotations

from pathlib import Path

import pytest

from qdspace.connector.errors import IngestFileError
from qdspace.connector.ingest import UnsupportedCharset, charset_of, read_rows
from qdspace.util.json_depth import json_too_deep

HEADER = b"location,measured_at,temperature\r\n"


def rows(tmp_path: Path, data: bytes, suffix: str = ".csv", **kw: str) -> list[object]:
    path = tmp_path / f"up{suffix}"
    path.write_bytes(data)
    return list(read_rows(path, "environment", **kw))


def test_undeclared_latin1_is_reported_and_declared_latin1_decoded(tmp_path: Path) -> None:
    data = HEADER + "Süd,2026-11-02T08:00:00Z,1\r\n".encode("latin-1")
    [(line, bad)] = rows(tmp_path, data)
    assert line == 2 and bad[0] == "-" and "not valid utf-8: byte 0xfc at column 2" in bad[1]
    assert rows(tmp_path, data, charset="ISO-8859-1") == [
        (2, {"location": "Süd", "measured_at": "2026-11-02T08:00:00Z", "temperature": "1"})
    ]


def test_a_bom_is_dropped_and_a_real_replacement_character_kept(tmp_path: Path) -> None:
    data = b"\xef\xbb\xbf" + HEADER + "a\ufffd,2026-11-02T08:00:00Z,1\r\n".encode()
    assert rows(tmp_path, data) == [
        (2, {"location": "a\ufffd", "measured_at": "2026-11-02T08:00:00Z", "temperature": "1"})
    ]


def test_ragged_rows_nul_bytes_and_blank_lines(tmp_path: Path) -> None:
    data = HEADER + b"a,t,1,extra\r\nb,t\r\n\r\nc\x00,t,1\r\nd,t,1\r\n"
    assert rows(tmp_path, data) == [
        (2, ("-", "expected 3 values (one per column), got 4")),
        (3, ("-", "expected 3 values (one per column), got 2")),
        (5, ("-", "NUL byte in line")),
        (6, {"location": "d", "measured_at": "t", "temperature": "1"}),
    ]


def test_empty_and_header_only_files(tmp_path: Path) -> None:
    with pytest.raises(IngestFileError, match=r"up\.csv: the file is empty"):
        rows(tmp_path, b"", source="up.csv")
    with pytest.raises(IngestFileError, match="header line: NUL byte"):
        rows(tmp_path, b"location\x00\n")
    assert rows(tmp_path, HEADER) == []
    assert rows(tmp_path, b"", suffix=".jsonl") == []


def test_jsonl_lines_are_decoded_strictly(tmp_path: Path) -> None:
    data = b'{"location": "a\\u0000"}\r\n\xff\n[1]\n{"location": "b"}\r\n'
    assert rows(tmp_path, data, suffix=".jsonl") == [
        (1, ("location", "NUL character in value")),
        (2, ("-", undecodable(0xFF))),
        (3, ("-", "a row must be a JSON object, got list")),
        (4, {"location": "b"}),
    ]


def undecodable(byte: int) -> str:
    return (
        f"not valid utf-8: byte 0x{byte:02x} at column 1; declare the file's charset "
        "(e.g. text/csv; charset=iso-8859-1)"
    )


@pytest.mark.parametrize("declared", ["utf-16", "utf-32", "klingon"])
def test_charsets_that_cannot_be_read_line_by_line_are_refused(declared: str) -> None:
    with pytest.raises(UnsupportedCharset):
        charset_of(declared)
    assert charset_of(None) == "utf-8" and charset_of("Windows-1252") == "cp1252"


def test_json_nesting_is_measured_without_parsing() -> None:
    assert not json_too_deep("[" * 32 + "]" * 32)
    assert json_too_deep("[" * 33 + "]" * 33)
    assert json_too_deep("[" * 200_000)
    assert not json_too_deep('{"a": "' + "[{" * 100 + '\\"' + "[" * 50 + '"}')
