"""`qdspace.util.numbers.decimal`: ASCII digits only, bounded."""

from __future__ import annotations

import pytest

from qdspace.util.numbers import decimal


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("007", 7),
        ("9223372036854775807", 2**63 - 1),
        ("", None),
        ("²", None),  # str.isdigit says yes; int() raises
        ("١٢", None),  # int() reads 12 from Arabic-Indic digits
        ("\uff11\uff12", None),  # fullwidth digits, likewise
        ("-1", None),
        ("+1", None),
        (" 1", None),
        ("1_000", None),  # int() takes underscores
        ("12a", None),
        ("9" * 20, None),  # more digits than the bound
    ],
)
def test_only_ascii_digits_within_the_bound_are_a_number(text: str, expected: int | None) -> None:
    assert decimal(text) == expected


def test_the_bound_is_the_callers() -> None:
    assert decimal("9" * 40, 40) == int("9" * 40)
    assert decimal("65536", 5) == 65536 and decimal("123456", 5) is None
