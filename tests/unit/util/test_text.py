"""One rule for texts people write: printable but for line breaks."""

from __future__ import annotations

import pytest

from qdspace.util.text import printable_lines, to_printable_lines


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("a note\nover two lines", True),
        ("Zelle 7: \u00d8 156 mm, 23 \u00b0C", True),
        ("", True),
        ("forged\r\n2026-12-06 INFO node: all fine", False),
        ("\x1b[2Jcleared", False),
        ("tab\there", False),
        ("nul\x00", False),
        ("line\u2028separator", False),
    ],
)
def test_printable_lines(text: str, ok: bool) -> None:
    assert printable_lines(text) is ok
    cleaned = to_printable_lines(text)
    assert printable_lines(cleaned) and len(cleaned) == len(text)
    assert (cleaned == text) is ok
