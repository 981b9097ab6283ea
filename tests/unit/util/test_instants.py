"""`in_utc`: the same instant in UTC, or `OutsideUtc` where it has none."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from qdspace.policies.canonical import parse_datetime
from qdspace.util.instants import OUTSIDE_UTC, OutsideUtc, in_utc


def test_an_instant_moves_to_utc_unchanged() -> None:
    local = datetime(2026, 12, 6, 9, 30, tzinfo=timezone(timedelta(hours=2)))
    moved = in_utc(local)
    assert moved == local and moved.tzinfo is UTC and moved.hour == 7


@pytest.mark.parametrize(
    "text", ["9999-12-31T23:00:00-05:00", "0001-01-01T00:30:00+14:00"], ids=["9999", "1"]
)
def test_an_instant_off_the_calendar_in_utc_is_a_value_error_with_one_wording(text: str) -> None:
    with pytest.raises(OutsideUtc, match=r"years 1 to 9999") as raised:
        in_utc(datetime.fromisoformat(text))
    assert isinstance(raised.value, ValueError) and str(raised.value) == OUTSIDE_UTC
    with pytest.raises(ValueError, match="out of range in UTC") as parsed:  # a policy's time
        parse_datetime(text)
    assert text in str(parsed.value)
