"""Serial / order / batch of a frame from its file name or a sidecar, and what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from qdspace.inference.errors import FrameError
from qdspace.inference.frame_context import (
    NamePatternError,
    ProductionContext,
    compile_pattern,
    context_from_name,
    context_from_sidecar,
)

PATTERN = compile_pattern(r"(?P<order>ORD\d+)_(?P<serial>SN\d+)(?:_(?P<batch>B-\d+))?")


def test_the_name_gives_serial_order_and_batch() -> None:
    assert context_from_name(PATTERN, "ORD17_SN000123_B-5") == ProductionContext(
        "SN000123", "ORD17", "B-5"
    )
    assert context_from_name(PATTERN, "ORD17_SN000124") == ProductionContext(
        "SN000124", "ORD17", None
    )


def test_a_name_that_does_not_match_is_a_frame_error() -> None:
    with pytest.raises(FrameError, match=r"cell7.*does not match"):
        context_from_name(PATTERN, "cell7")
    with pytest.raises(FrameError, match="does not match"):  # the whole stem must match
        context_from_name(PATTERN, "ORD17_SN1_B-5_extra")


@pytest.mark.parametrize(
    ("pattern", "why"),
    [("(", "missing"), (r"\d+", "named groups"), (r"(?P<lot>\d+)", "lot")],
)
def test_bad_patterns_are_refused(pattern: str, why: str) -> None:
    with pytest.raises(NamePatternError, match=why):
        compile_pattern(pattern)


def test_sidecar_wins_over_the_name(tmp_path: Path) -> None:
    side = tmp_path / "f.json"
    side.write_text('{"serial": "SN9", "batch_id": "B-9"}')
    found = context_from_sidecar(side, "f")
    assert found is not None
    assert found.over(ProductionContext("SN1", "ORD1", "B-1")) == ProductionContext(
        "SN9", "ORD1", "B-9"
    )
    assert context_from_sidecar(tmp_path / "none.json", "none") is None


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"[1]", "JSON object"),
        (b"{not json", "not UTF-8 JSON"),
        (b'{"serial": "SN1", "lot": "x"}', "unknown keys"),
        (b'{"serial": 12}', "non-empty text"),
        (b'{"serial": ""}', "non-empty text"),
        (('{"serial": "' + "S" * 65 + '"}').encode(), "at most 64"),
        (b'{"serial": "SN\\u0000"}', "printable"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"serial": "' + b"x" * 5000 + b'"}', "larger than"),
    ],
)
def test_malformed_sidecars_are_frame_errors(tmp_path: Path, body: bytes, why: str) -> None:
    side = tmp_path / "f.json"
    side.write_bytes(body)
    with pytest.raises(FrameError, match=why):
        context_from_sidecar(side, "f")
