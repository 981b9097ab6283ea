"""An instant with a zone, moved to UTC: the one place that knows it can fall off the calendar.

``datetime`` holds years 1 to 9999 in any zone, so a time the sender wrote validly
(``9999-12-31T23:00-05:00``, ``0001-01-01T00:30+14:00``) can have no UTC value at all:
``astimezone`` raises ``OverflowError``, an exception no caller of a parser expects (it
became 500s, a stopped line connector and a refused policy at different times). Every
parse of outside times (policies, API bodies and queries, QDM rows, line readings)
moves its instant to UTC through `in_utc`, which raises `OutsideUtc` (a ``ValueError``)
with one wording; each caller answers in its own error form (a 422, a row error naming
the field, a refused reading).
"""

from __future__ import annotations

from datetime import UTC, datetime

#: how `OutsideUtc` says what is wrong (callers add where)
OUTSIDE_UTC = "out of range in UTC (years 1 to 9999)"


class OutsideUtc(ValueError):
    """The instant has no UTC value between years 1 and 9999."""


def in_utc(value: datetime) -> datetime:
    """``value`` (which carries a zone) as the same instant in UTC."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise OutsideUtc(OUTSIDE_UTC) from None
