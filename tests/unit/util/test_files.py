"""`read_json_record`: the object a runtime record holds, or None for every way a record
can be missing or unusable; `write_atomic` writes what it reads back."""

from __future__ import annotations

from pathlib import Path

import pytest

from qdspace.util.files import read_json_record, write_atomic


def test_a_record_written_atomically_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "run" / "runtime.json"
    write_atomic(path, b'{"pid": 42, "url": "https://127.0.0.1:8443"}')
    assert read_json_record(path) == {"pid": 42, "url": "https://127.0.0.1:8443"}
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b'{"pid": 4', b"\xff\xfe{}", b"[1, 2]", b'"text"', b"null", b"42"],
    ids=["empty", "open", "cut", "not-utf8", "array", "string", "null", "number"],
)
def test_a_record_that_is_not_a_json_object_is_none(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "runtime.json"
    path.write_bytes(content)
    assert read_json_record(path) is None


def test_a_missing_record_is_none(tmp_path: Path) -> None:
    assert read_json_record(tmp_path / "absent.json") is None
    (tmp_path / "file").write_text("{}")
    assert read_json_record(tmp_path / "file" / "runtime.json") is None  # a file, not a folder
