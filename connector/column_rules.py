"""Column rules: a column of delivered values -> canonical values, or `BAD` for each one
the rule cannot accept, in one pass where the column is plain.

Why a module of their own: `connector.batch_validate` decides which rule each column of
each kind gets and what a batch does with a `BAD`; the rules themselves are small pure
functions with one contract (the same length out as in; a value is its canonical form,
None for absent, or `BAD`) and their own speed tricks (C-level ``map``/``all``/``max``
passes first, a per-value loop only for a column with something unusual in it), and
the unit tests hold them against the row validator, `connector.validate.parse_row`,
which stays the judge of every value they refuse.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import repeat
from math import isfinite
from operator import attrgetter, methodcaller
from typing import Any

from qdspace.connector.dictionary import DataDictionary
from qdspace.connector.errors import DictionaryError
from qdspace.connector.field_parsers import INT_MAX, has_surrogate
from qdspace.connector.numbers import NumberTextError, parse_number
from qdspace.util.instants import OutsideUtc, in_utc

#: a column loop's verdict on one value: "this row needs the row validator"
BAD: Any = object()

#: distinct code spellings remembered per column (a hostile file cannot grow it further)
MEMO_LIMIT = 4096

_INF = float("inf")
#: not (yet) in a code column's memo
_UNSEEN: Any = object()
_NINF = float("-inf")

Rule = Callable[[list[Any]], list[Any]]


# -- the column rules: list of raw values -> list of canonical values (or BAD) ------------
#
# Each rule first tries the whole column at once with C-level passes (``map``, ``all``,
# ``max``, one ``join``); a column with anything unusual in it (a non-string, an empty
# value where one is required, a value out of bounds) takes the per-value loop, which
# marks exactly the values it cannot accept.


def _stripped(values: list[Any]) -> list[str] | None:
    """Every value stripped, or None when one is not a string. ``str.strip`` refuses
    anything else itself (None, a number, a list from JSON), so the strip every rule needs
    is also its type check, without a pass over the types. A ``str`` subclass (numpy.str_)
    is stripped to its plain text, as the row validator reads it (`field_parsers`)."""
    try:
        return list(map(str.strip, values))
    except TypeError:
        return None


def per_value(values: list[Any], required: bool, accept: Callable[[str], Any]) -> list[Any]:
    """The per-value loop every rule falls back to: a string is stripped and, when
    something is left, judged by ``accept`` (its canonical value, or BAD); an empty or
    absent value is None, or BAD where the field is required; any other type is BAD."""
    out: list[Any] = []
    append = out.append
    for v in values:
        if v.__class__ is str:
            s = v.strip()
            if s:
                append(accept(s))
                continue
        elif v is not None:
            append(BAD)
            continue
        append(BAD if required else None)
    return out


def _unicode(s: str) -> bool:
    """No lone surrogate in ``s`` (the database cannot store one); ASCII is checked in C."""
    return s.isascii() or not has_surrogate(s)


def text(required: bool, max_len: int) -> Callable[[list[Any]], list[Any]]:
    def rule(values: list[Any]) -> list[Any]:
        stripped = _stripped(values) if values else None
        if stripped is not None:
            joined = "".join(stripped)
            if max(map(len, stripped)) <= max_len and "\x00" not in joined and _unicode(joined):
                if all(stripped):
                    return stripped
                if not required:
                    return [s or None for s in stripped]
        elif not required and values.count(None) == len(values):
            return list(values)
        return slow(values)

    def accept(s: str) -> Any:
        return s if len(s) <= max_len and "\x00" not in s and _unicode(s) else BAD

    def slow(values: list[Any]) -> list[Any]:
        return per_value(values, required, accept)

    return rule


class Number:
    """A finite decimal number within bounds -> float, read by the one grammar of
    `connector.numbers` (as the row validator reads it). A class rather than a closure so
    that the batch can tell its number columns (see `decimal_texts`).

    The column pass stays one ``float`` a value: on ASCII text without ``_`` or ``,``
    (one C-level check of the joined column), ``float`` reads exactly that grammar; a
    column with anything else in it (``1,5``, ``1_000``, ``١٢``) goes value by value."""

    def __init__(self, required: bool, minimum: float | None = None, maximum: float | None = None):
        self.required = required
        self.low = _NINF if minimum is None else minimum
        self.high = _INF if maximum is None else maximum

    def __call__(self, values: list[Any]) -> list[Any]:
        stripped = _stripped(values) if values else None
        if stripped is not None:
            joined = "".join(stripped)
            if not joined.isascii() or "_" in joined or "," in joined:
                return self.slow(values)
            try:
                floats = list(map(float, stripped))
            except ValueError:
                return self.slow(values)
            if all(map(isfinite, floats)) and self.low <= min(floats) and max(floats) <= self.high:
                return floats
        elif not self.required and values.count(None) == len(values):
            return list(values)
        return self.slow(values)

    def accept(self, s: str) -> Any:
        try:
            f = parse_number(s)
        except NumberTextError:
            return BAD
        # NaN fails both comparisons; inf and -inf fail one of them
        return f if self.low <= f <= self.high and _NINF < f < _INF else BAD

    def slow(self, values: list[Any]) -> list[Any]:
        return per_value(values, self.required, self.accept)


def number(
    required: bool, minimum: float | None = None, maximum: float | None = None
) -> Callable[[list[Any]], list[Any]]:
    return Number(required, minimum, maximum)


_IN_UTC = methodcaller("astimezone", UTC)
_ZONE = attrgetter("tzinfo")


class Timestamp:
    """An aware ISO 8601 time -> the same instant in UTC. A class rather than a closure so
    that the batch can tell its time columns (see `utc_texts`)."""

    def __init__(self, required: bool):
        self.required = required

    def __call__(self, values: list[Any]) -> list[Any]:
        stripped = _stripped(values) if values else None
        if stripped is not None:
            try:
                times = list(map(datetime.fromisoformat, stripped))
            except ValueError:
                return self.slow(values)
            zones = set(map(_ZONE, times))
            if len(zones) == 1 and next(iter(zones)) is UTC:
                return times  # already in UTC (``Z`` or ``+00:00``): no copy per value
            if None not in zones:
                try:
                    return list(map(_IN_UTC, times))
                except OverflowError:  # a time near year 1 or 9999 leaves the range in UTC
                    pass
        return self.slow(values)

    def slow(self, values: list[Any]) -> list[Any]:
        return per_value(values, self.required, _one_time)


def _one_time(s: str) -> Any:
    try:
        t = datetime.fromisoformat(s)
    except ValueError:
        return BAD
    if t.tzinfo is None:
        return BAD
    try:
        return in_utc(t)
    except OutsideUtc:
        return BAD


def timestamp(required: bool) -> Callable[[list[Any]], list[Any]]:
    return Timestamp(required)


def code(d: DataDictionary, element: str, required: bool) -> Callable[[list[Any]], list[Any]]:
    memo: dict[str, Any] = {}

    def lookup(s: str) -> Any:
        found = memo.get(s)
        if found is None:
            try:
                found = d.code(element, s)
            except DictionaryError:
                found = BAD
            if len(memo) < MEMO_LIMIT:
                memo[s] = found
        return found

    if not required:
        memo[""] = None  # empty: absent

    def rule(values: list[Any]) -> list[Any]:
        stripped = _stripped(values) if values else None
        if stripped is not None:
            if all(stripped) or not required:
                # every spelling met before (the common case): one C-level pass
                found = list(map(memo.get, stripped, repeat(_UNSEEN)))
                if _UNSEEN not in found:
                    return found
                return [lookup(s) if s else None for s in stripped]
        elif not required and values.count(None) == len(values):
            return list(values)
        return per_value(values, required, lookup)

    return rule


def matching(
    pattern: re.Pattern[str], max_len: int, *, lower: bool = False, no_at: bool = False
) -> Callable[[list[Any]], list[Any]]:
    """Text that must match ``pattern`` (optional when ``required`` is False)."""
    plain = text(False, max_len)

    def rule(values: list[Any]) -> list[Any]:
        out = plain(values)
        try:  # join refuses None (absent) and BAD (refused): those go value by value below
            joined = "".join(out) if out else None
        except TypeError:
            joined = None
        if joined is not None:
            if lower:
                out = list(map(str.lower, out))
            if all(map(pattern.match, out)) and not (no_at and "@" in joined):
                return out
        for i, s in enumerate(out):
            if s is None or s is BAD:
                continue
            if lower:
                s = out[i] = s.lower()
            if not pattern.match(s) or (no_at and "@" in s):
                out[i] = BAD
        return out

    return rule


def not_absent(rule: Rule) -> Rule:
    """The rule, with an absent value refused as well."""

    def required(values: list[Any]) -> list[Any]:
        return [BAD if v is None else v for v in rule(values)]

    return required


def _positive_integer(s: str) -> Any:
    try:
        n = int(s)
    except ValueError:
        return BAD
    return n if 1 <= n <= INT_MAX else BAD


def integer_min1(values: list[Any]) -> list[Any]:
    return per_value(values, True, _positive_integer)
