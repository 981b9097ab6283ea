"""Field parsers: one raw value of a delivered row -> a canonical value, or a problem.

What a plant delivers is a mapping of field -> raw value (strings from CSV, JSON
values from JSONL or REST; empty strings mean "absent"). The helpers here read one
field each (`text`, `number`, `integer`, `timestamp`, `code` for a data-dictionary
code) and are what every per-kind row parser (`connector.validate`) is built from.

Every problem at once, not the first one (issue 21): a plant engineer fixing an
export should not learn about the missing ``quantity`` only after fixing the missing
``supplier``. So a helper takes the row's :class:`Problems` first and reports through
it instead of raising: the field's error is recorded, the helper returns None, and
the parser goes on with the next field; checks across fields (``closed_at`` before
``opened_at``) run only on fields that parsed. :meth:`Problems.done` then raises
:class:`RowInvalid` listing every problem of the row, each a :class:`FieldError`
naming its field. A good row (the common case) costs no exception and no wrapper.

Why separate: these rules (what counts as absent, text limits, finite numbers, times
with a zone, in UTC) hold for every kind alike; the per-kind parsers only say which
field takes which rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from qdspace.connector.dictionary import DataDictionary
from qdspace.connector.errors import DictionaryError
from qdspace.util.instants import OutsideUtc, in_utc

Row = dict[str, Any]


class FieldError(Exception):
    """One field of one row is wrong; ``field`` is ``"-"`` when the row as a whole is."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    @property
    def problems(self) -> list[FieldError]:
        """Every problem this error stands for (one here; a row's all in RowInvalid)."""
        return [self]


class RowInvalid(FieldError):
    """A row with one or more problems; ``field``/``reason`` are the first one's."""

    def __init__(self, problems: list[FieldError]):
        first = problems[0]
        super().__init__(first.field, first.reason)
        self.args = ("; ".join(str(p) for p in problems),)
        self._problems = problems

    @property
    def problems(self) -> list[FieldError]:
        return list(self._problems)


class Problems:
    """Collects a row's field errors so one bad field does not hide the next.

    The field helpers below take it first and report through :meth:`fail` instead
    of raising, so a good row (the common case) costs no exception and no wrapper.
    """

    __slots__ = ("found",)

    def __init__(self) -> None:
        self.found: list[FieldError] = []

    def fail(self, field: str, reason: str) -> None:
        """Record a problem; the helper then returns None for the field."""
        self.found.append(FieldError(field, reason))

    def done(self, row: Row) -> Row:
        """The row, or RowInvalid with everything found."""
        if self.found:
            raise RowInvalid(self.found)
        return row


#: why a text with a lone surrogate is refused (JSON's "\\ud800" decodes to one)
SURROGATE_REASON = "contains a lone surrogate (not valid Unicode; the database cannot store it)"
#: a raw value quoted in a reason is cut to this many characters
QUOTE_MAX = 80


def has_surrogate(value: str) -> bool:
    """Whether ``value`` holds a lone surrogate (U+D800..U+DFFF), which no UTF-8 database
    column takes; a JSON escape like ``"\\ud800"`` decodes to one."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def short(value: Any, limit: int = QUOTE_MAX) -> str:
    """``repr(value)`` cut to ``limit`` characters, for a reason that quotes a raw value
    (a 400-digit number or a 60 kB text would otherwise travel in every report)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 1000:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def raw(row: Mapping[str, Any], name: str) -> Any:
    value = row.get(name)
    if isinstance(value, str):
        value = str.strip(value)  # a str subclass too: its text, not its own methods
        if not value:
            return None
    return value


def text(
    p: Problems, row: Mapping[str, Any], name: str, *, required: bool = True, max_len: int = 64
) -> str | None:
    value = row.get(name)
    if value.__class__ is not str and isinstance(value, str):
        # a str subclass (numpy.str_ from a connector reading with numpy or pandas): its
        # plain text, then as any string (before: str(value) unstripped, "  " stored as is)
        value = str.__str__(value)
    if value.__class__ is str:  # the common case first: this runs for every field of every row
        value = value.strip()
        if value:
            if len(value) > max_len:
                p.fail(name, f"longer than {max_len} characters")
                return None
            if "\x00" in value:  # PostgreSQL refuses it, and no code or name holds one
                p.fail(name, "contains a NUL character")
                return None
            if not value.isascii() and has_surrogate(value):
                p.fail(name, SURROGATE_REASON)
                return None
            return value
        value = None
    if value is None:
        if required:
            p.fail(name, "missing")
            return None
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        p.fail(name, f"expected text, got {type(value).__name__}")
        return None
    if isinstance(value, int) and value.bit_length() > 1000:  # str() of 4301 digits raises
        p.fail(name, f"longer than {max_len} characters")
        return None
    value = str(value)
    if len(value) > max_len:
        p.fail(name, f"longer than {max_len} characters")
        return None
    return value


def req_text(p: Problems, row: Mapping[str, Any], name: str, max_len: int = 64) -> str | None:
    return text(p, row, name, required=True, max_len=max_len)


def number(
    p: Problems,
    row: Mapping[str, Any],
    name: str,
    *,
    required: bool = True,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float | None:
    value = raw(row, name)
    if value is None:
        if required:
            p.fail(name, "missing")
            return None
        return None
    if isinstance(value, bool):
        p.fail(name, f"expected a number, got {short(value)}")
        return None
    try:
        result = float(value)
    except OverflowError:  # an int of more than 308 digits
        p.fail(name, f"expected a finite number, got {short(value)}")
        return None
    except (TypeError, ValueError):
        p.fail(name, f"expected a number, got {short(value)}")
        return None
    if result != result or result in (float("inf"), float("-inf")):
        p.fail(name, f"expected a finite number, got {short(value)}")
        return None
    if minimum is not None and result < minimum:
        p.fail(name, f"{result:g} is below the minimum {minimum:g}")
        return None
    if maximum is not None and result > maximum:
        p.fail(name, f"{result:g} is above the maximum {maximum:g}")
        return None
    return result


#: the largest value an SQL INTEGER column holds (PostgreSQL's are 32-bit; SQLite would
#: take more, and the same row must be good or bad on both)
INT_MAX = 2_147_483_647


def integer(
    p: Problems,
    row: Mapping[str, Any],
    name: str,
    *,
    minimum: int | None = None,
    maximum: int = INT_MAX,
) -> int | None:
    value = raw(row, name)
    if value is None:
        p.fail(name, "missing")
        return None
    if isinstance(value, bool):
        p.fail(name, f"expected an integer, got {short(value)}")
        return None
    try:
        result = int(value) if not isinstance(value, float) or value.is_integer() else None
    except (TypeError, ValueError):
        result = None
    if result is None:
        p.fail(name, f"expected an integer, got {short(value)}")
        return None
    if minimum is not None and result < minimum:
        p.fail(name, f"{short(result)} is below the minimum {minimum}")
        return None
    if result > maximum:
        p.fail(name, f"{short(result)} is above the maximum {maximum}")
        return None
    return result


def timestamp(
    p: Problems, row: Mapping[str, Any], name: str, *, required: bool = True
) -> datetime | None:
    """An ISO-8601 time with a zone (``Z`` or ``+hh:mm``), returned in UTC."""
    value = raw(row, name)
    if value is None:
        if required:
            p.fail(name, "missing")
            return None
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            p.fail(name, f"not an ISO-8601 time: {short(value)}")
            return None
    if parsed.tzinfo is None:
        p.fail(name, f"time {short(value)} has no zone; add Z or an offset like +01:00")
        return None
    try:
        return in_utc(parsed)
    except OutsideUtc as exc:
        p.fail(name, f"time {short(value)} is {exc}")
        return None


def req_timestamp(p: Problems, row: Mapping[str, Any], name: str) -> datetime | None:
    return timestamp(p, row, name)


def code(
    p: Problems,
    d: DataDictionary,
    element: str,
    row: Mapping[str, Any],
    name: str,
    *,
    required: bool = True,
) -> str | None:
    value = raw(row, name)
    if value is None:
        if required:
            p.fail(name, "missing")
            return None
        return None
    try:
        return d.code(element, value)
    except DictionaryError as exc:
        p.fail(name, str(exc))
        return None
