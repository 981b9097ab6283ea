"""Delivered text the drivers can be sent as it is: a batch's time and number columns.

Why: the drivers want text (SQLite stores times as ``YYYY-MM-DD HH:MM:SS.ffffff`` in
UTC; PostgreSQL's COPY reads text), and making it from the validated values
(``datetime.isoformat`` ~0.9 us, ``float.__repr__`` ~0.2 us a value) was the largest
single cost of preparing a batch (bench/PROFILE-ingest.md, round 4). A plant almost
always delivers its times in UTC in one plain form and its numbers as plain decimals:
then the text is the delivered text itself (times: with ``T`` and ``Z`` replaced),
checked and made for the whole column at once. These helpers only read text; the
batch validator decides what is valid (each value is still parsed, ranges checked), and
they are called only for a column it accepted as a whole.
"""

from __future__ import annotations

import re
from typing import Any


def _all_str(values: list[Any]) -> bool:
    return set(map(type, values)) == {str}


# -- times -----------------------------------------------------------------------------------
#
# The drivers want times as text (SQLite stores ``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC,
# PostgreSQL's COPY reads text), and making that text from a datetime
# (``isoformat``, ~0.9 us a value) was the largest single cost of preparing a batch.
# A plant almost always delivers its times already in UTC in one plain form
# (``2026-11-01T08:00:00Z``, or with six fraction digits): then the text is the
# delivered text with ``T`` and ``Z`` replaced, done on the whole column at once.

_DIGITS_AS_ZERO = str.maketrans("123456789", "000000000")
_PLAIN_UTC = "0000-00-00T00:00:00Z\n"
_PLAIN_UTC_MICROSECONDS = "0000-00-00T00:00:00.000000Z\n"


def utc_texts(values: list[Any]) -> list[str] | None:
    """A column of delivered times as UTC text ``YYYY-MM-DD HH:MM:SS.ffffff`` when every
    value is written ``YYYY-MM-DDTHH:MM:SSZ`` (or with ``.ffffff`` before the ``Z``,
    the same form throughout) in ASCII digits, after stripping; else None.

    Only for a column the timestamp rule accepted as a whole: ``fromisoformat`` has
    checked each value (month, day, hour ranges), and a value of exactly this shape reads
    as exactly these fields in UTC, so the text is the instant's text. The shape is
    checked on the whole column at once: every digit mapped to ``0`` must give the
    template repeated once per value (a value with a line break, a letter, a sign or a
    non-ASCII digit anywhere cannot)."""
    if not values or not _all_str(values):
        return None
    joined = "\n".join(map(str.strip, values)) + "\n"
    shape = joined.translate(_DIGITS_AS_ZERO)
    n = len(values)
    if shape == _PLAIN_UTC * n:
        text = joined.replace("T", " ").replace("Z", ".000000")
    elif shape == _PLAIN_UTC_MICROSECONDS * n:
        text = joined.replace("T", " ").replace("Z", "")
    else:
        return None
    out = text.split("\n")
    out.pop()  # after the last value's line break
    return out


# -- numbers -----------------------------------------------------------------------------------

#: a plain decimal, ASCII digits, no exponent: one value per line (see `decimal_texts`)
_PLAIN_DECIMALS = re.compile(r"(?:[+-]?[0-9]+(?:\.[0-9]*)?\n)*")


def decimal_texts(values: list[Any]) -> list[str] | None:
    """A number column's delivered values, stripped, when each is a plain decimal
    (``-12.50``: ASCII digits, an optional sign and point, no exponent); else None.

    Only for a column the number rule accepted as a whole. PostgreSQL reads such a text
    as the correctly rounded double, the one ``float`` made of it, so COPY can be sent
    the text instead of ``repr`` of the float (~0.2 us a value). Not with an exponent:
    ``1e-400`` is 0.0 to Python and out of range to PostgreSQL; not with ``_``, which
    ``float`` allows and PostgreSQL does not."""
    if not values or not _all_str(values):
        return None
    stripped = list(map(str.strip, values))
    if _PLAIN_DECIMALS.fullmatch("\n".join(stripped) + "\n") is None:
        return None
    return stripped
