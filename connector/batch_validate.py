"""Batch validation: a batch of delivered rows -> canonical column values, column by column.

Why: `connector.validate.parse_row` checks one row at a time, calling one field helper
per field with a `Problems` collector and building a dict per row. At ingest rates of
100k rows/s that bookkeeping is most of the cost (see bench/PROFILE-ingest.md). Here
a batch is taken apart into columns and each column is checked by one tight loop:
text trimmed and measured, numbers parsed and bounded, times parsed into UTC, codes
looked up in the data dictionary once per distinct spelling (a memo per column), not
once per row.

Exactness before speed: the column loops only decide the plain case (a ``str`` or an
absent value that the rule accepts). Any value they do not accept, and any row that is
not a plain mapping of known fields, sends that whole row back to `parse_row`, which
decides it as it always did: the same canonical row, or the same errors, each with its
field (and the caller adds the file and line). So no value is accepted here that
`parse_row` would refuse, and every refusal reads as before; the unit tests hold the
two against each other on hostile inputs. Kinds without a column spec (measurement and
environment, whose values go through unit conversion across columns) are validated
row by row through `parse_row` in the same batch structure.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import repeat
from math import isfinite
from operator import attrgetter, methodcaller
from typing import Any

from qdspace.connector.bulk_insert_texts import decimal_texts, utc_texts
from qdspace.connector.dictionary import DataDictionary
from qdspace.connector.errors import DictionaryError
from qdspace.connector.field_parsers import FieldError
from qdspace.connector.row_template import FIELDS
from qdspace.connector.validate import parse_row

#: a column loop's verdict on one value: "this row needs the row validator"
BAD: Any = object()

#: distinct code spellings remembered per column (a hostile file cannot grow it further)
MEMO_LIMIT = 4096

_INF = float("inf")
#: not (yet) in a code column's memo
_UNSEEN: Any = object()
_NINF = float("-inf")


# -- the column rules: list of raw values -> list of canonical values (or BAD) ------------
#
# Each rule first tries the whole column at once with C-level passes (``map``, ``all``,
# ``max``, one ``join``); a column with anything unusual in it (a non-string, an empty
# value where one is required, a value out of bounds) takes the per-value loop, which
# marks exactly the values it cannot accept.


def _all_str(values: list[Any]) -> bool:
    return set(map(type, values)) == {str}


def _per_value(values: list[Any], required: bool, accept: Callable[[str], Any]) -> list[Any]:
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


def _text(required: bool, max_len: int) -> Callable[[list[Any]], list[Any]]:
    def rule(values: list[Any]) -> list[Any]:
        if values and _all_str(values):
            stripped = list(map(str.strip, values))
            if max(map(len, stripped)) <= max_len and "\x00" not in "".join(stripped):
                if all(stripped):
                    return stripped
                if not required:
                    return [s or None for s in stripped]
        elif not required and values.count(None) == len(values):
            return list(values)
        return slow(values)

    def accept(s: str) -> Any:
        return s if len(s) <= max_len and "\x00" not in s else BAD

    def slow(values: list[Any]) -> list[Any]:
        return _per_value(values, required, accept)

    return rule


class _Number:
    """A finite decimal number within bounds -> float. A class rather than a closure so
    that the batch can tell its number columns (see `decimal_texts`)."""

    def __init__(self, required: bool, minimum: float | None = None, maximum: float | None = None):
        self.required = required
        self.low = _NINF if minimum is None else minimum
        self.high = _INF if maximum is None else maximum

    def __call__(self, values: list[Any]) -> list[Any]:
        if values and _all_str(values):
            try:
                floats = list(map(float, map(str.strip, values)))
            except ValueError:
                return self.slow(values)
            if all(map(isfinite, floats)) and self.low <= min(floats) and max(floats) <= self.high:
                return floats
        elif not self.required and values.count(None) == len(values):
            return list(values)
        return self.slow(values)

    def accept(self, s: str) -> Any:
        try:
            f = float(s)
        except ValueError:
            return BAD
        # NaN fails both comparisons; inf and -inf fail one of them
        return f if self.low <= f <= self.high and _NINF < f < _INF else BAD

    def slow(self, values: list[Any]) -> list[Any]:
        return _per_value(values, self.required, self.accept)


def _number(
    required: bool, minimum: float | None = None, maximum: float | None = None
) -> Callable[[list[Any]], list[Any]]:
    return _Number(required, minimum, maximum)


_IN_UTC = methodcaller("astimezone", UTC)
_ZONE = attrgetter("tzinfo")


class _Timestamp:
    """An aware ISO 8601 time -> the same instant in UTC. A class rather than a closure so
    that the batch can tell its time columns (see `utc_texts`)."""

    def __init__(self, required: bool):
        self.required = required

    def __call__(self, values: list[Any]) -> list[Any]:
        if values and _all_str(values):
            try:
                times = list(map(datetime.fromisoformat, map(str.strip, values)))
            except ValueError:
                return self.slow(values)
            zones = set(map(_ZONE, times))
            if len(zones) == 1 and next(iter(zones)) is UTC:
                return times  # already in UTC (``Z`` or ``+00:00``): no copy per value
            if None not in zones:
                return list(map(_IN_UTC, times))
        return self.slow(values)

    def slow(self, values: list[Any]) -> list[Any]:
        return _per_value(values, self.required, _one_time)


def _one_time(s: str) -> Any:
    try:
        t = datetime.fromisoformat(s)
    except ValueError:
        return BAD
    return BAD if t.tzinfo is None else t.astimezone(UTC)


def _timestamp(required: bool) -> Callable[[list[Any]], list[Any]]:
    return _Timestamp(required)


def _code(d: DataDictionary, element: str, required: bool) -> Callable[[list[Any]], list[Any]]:
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
        if values and _all_str(values):
            stripped = list(map(str.strip, values))
            if all(stripped) or not required:
                # every spelling met before (the common case): one C-level pass
                found = list(map(memo.get, stripped, repeat(_UNSEEN)))
                if _UNSEEN not in found:
                    return found
                return [lookup(s) if s else None for s in stripped]
        elif not required and values.count(None) == len(values):
            return list(values)
        return _per_value(values, required, lookup)

    return rule


def _matching(
    pattern: re.Pattern[str], max_len: int, *, lower: bool = False, no_at: bool = False
) -> Callable[[list[Any]], list[Any]]:
    """Text that must match ``pattern`` (optional when ``required`` is False)."""
    plain = _text(False, max_len)

    def rule(values: list[Any]) -> list[Any]:
        out = plain(values)
        if out and _all_str(out):  # no value absent, none refused
            if lower:
                out = list(map(str.lower, out))
            if all(map(pattern.match, out)) and not (no_at and "@" in "".join(out)):
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


# -- per-kind specs ------------------------------------------------------------------------

Rule = Callable[[list[Any]], list[Any]]
#: after the columns: fill defaults and check across columns for the whole batch; a row
#: whose check fails is marked not ok (it goes back to the row validator)
Finish = Callable[[dict[str, list[Any]], list[bool]], None]

_HEX = re.compile(r"^[0-9a-f]{16,64}$")
_PSEUDONYM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{2,63}$")


@dataclass(frozen=True)
class KindSpec:
    rules: dict[str, Rule]
    finish: Finish | None = None


def _inspection_finish(columns: dict[str, list[Any]], ok: list[bool]) -> None:
    defect, verdict = columns["defect_class"], columns["verdict"]
    if None in defect:  # absent (a present value is a code or BAD): the default
        for j, v in enumerate(defect):
            if v is None:
                defect[j] = "none" if verdict[j] == "pass" else None


def _genealogy_finish(columns: dict[str, list[Any]], ok: list[bool]) -> None:
    child, parent = columns["child_batch_id"], columns["parent_batch_id"]
    for j in range(len(ok)):
        if ok[j] and child[j] == parent[j]:
            ok[j] = False


def _calibration_finish(columns: dict[str, list[Any]], ok: list[bool]) -> None:
    result, since, until = columns["result"], columns["valid_from"], columns["valid_until"]
    for j in range(len(ok)):
        if result[j] is None:
            result[j] = "pass"
        if ok[j] and not until[j] > since[j]:
            ok[j] = False


def _order_finish(columns: dict[str, list[Any]], ok: list[bool]) -> None:
    status, opened, closed = columns["status"], columns["opened_at"], columns["closed_at"]
    for j in range(len(ok)):
        if status[j] is None:
            status[j] = "open"
        if not ok[j]:
            continue
        if closed[j] is None:
            if status[j] == "closed":  # closed needs closed_at: the row validator says so
                ok[j] = False
        elif closed[j] < opened[j]:
            ok[j] = False


def _specs(d: DataDictionary) -> dict[str, KindSpec]:
    return {
        "inspection": KindSpec(
            {
                "inspection_id": _text(True, 96),
                "station": _text(True, 64),
                "inspected_at": _timestamp(True),
                "verdict": _code(d, "verdict", True),
                "defect_class": _code(d, "defect_class", False),
                "score": _number(False, 0.0, 1.0),
                "model_version": _text(False, 80),
                "image_hash": _matching(_HEX, 64, lower=True),
                "frame_id": _text(False, 96),
                "latency_ms": _number(False, 0.0),
                "order_id": _text(False, 64),
                "serial": _text(False, 64),
                "batch_id": _text(False, 64),
            },
            _inspection_finish,
        ),
        "product": KindSpec(
            {
                "serial": _text(True, 64),
                "product_type": _text(True, 64),
                "order_id": _text(False, 64),
                "batch_id": _text(False, 64),
                "made_at": _timestamp(True),
            }
        ),
        "batch": KindSpec(
            {
                "batch_id": _text(True, 64),
                "material": _text(True, 128),
                "kind": _code(d, "batch_kind", True),
                "producer": _text(True, 64),
                "quantity": _number(True, 0.0),
                "made_at": _timestamp(True),
                "customer": _text(False, 64),
                "order_id": _text(False, 64),
            }
        ),
        "genealogy": KindSpec(
            {
                "child_batch_id": _text(True, 64),
                "parent_batch_id": _text(True, 64),
                "quantity_used": _number(False, 0.0),
            },
            _genealogy_finish,
        ),
        "operator_log": KindSpec(
            {
                "operator_id": _required(_matching(_PSEUDONYM, 64, no_at=True)),
                "logged_at": _timestamp(True),
                "action": _text(True, 64),
                "station": _text(False, 64),
                "order_id": _text(False, 64),
                "batch_id": _text(False, 64),
                "note": _text(False, 500),
            }
        ),
        "calibration": KindSpec(
            {
                "certificate_id": _text(True, 64),
                "equipment": _text(True, 64),
                "valid_from": _timestamp(True),
                "valid_until": _timestamp(True),
                "result": _code(d, "calibration_result", False),
                "issuer": _text(False, 128),
            },
            _calibration_finish,
        ),
        "order": KindSpec(
            {
                "order_id": _text(True, 64),
                "customer": _text(True, 64),
                "supplier": _text(True, 64),
                "product": _text(True, 128),
                "quantity": _integer_min1,
                "status": _code(d, "order_status", False),
                "opened_at": _timestamp(True),
                "closed_at": _timestamp(False),
            },
            _order_finish,
        ),
    }


def _required(rule: Rule) -> Rule:
    def required(values: list[Any]) -> list[Any]:
        return [BAD if v is None else v for v in rule(values)]

    return required


def _positive_integer(s: str) -> Any:
    try:
        n = int(s)
    except ValueError:
        return BAD
    return n if n >= 1 else BAD


def _integer_min1(values: list[Any]) -> list[Any]:
    return _per_value(values, True, _positive_integer)


# -- the batch -----------------------------------------------------------------------------


@dataclass
class BatchResult:
    """A validated batch: good rows as tuples in ``columns`` order, and every problem."""

    columns: tuple[str, ...]
    #: each good row's line, in the order of the rows
    lines: list[int] = field(default_factory=list)
    #: (line, field, reason) in the order of the rows, like the row validator's
    errors: list[tuple[int, str, str]] = field(default_factory=list)
    #: the good rows column by column, when every row of the batch was decided in bulk
    #: (the drivers' encoders work a column at a time and need no row tuples)
    column_values: list[list[Any]] | None = None
    #: with ``column_values``: for a time column delivered in plain UTC text, its values
    #: as UTC text ``YYYY-MM-DD HH:MM:SS.ffffff`` (by index in ``columns``; `utc_texts`)
    time_texts: dict[int, list[str]] = field(default_factory=dict)
    #: with ``column_values``: for a number column delivered as plain decimals, those
    #: texts (by index in ``columns``; `decimal_texts`)
    number_texts: dict[int, list[str]] = field(default_factory=dict)
    _rows: list[tuple[Any, ...]] | None = field(default=None, repr=False)

    @property
    def rows(self) -> list[tuple[Any, ...]]:
        """The good rows' values in ``columns`` order. When the batch was decided in bulk
        they are made from ``column_values`` on first use only: the bulk insert builds its
        own tuples (SQLite's times as text), so building these too cost a tenth of a
        10,000-row ingest (bench/PROFILE-ingest.md, round 3)."""
        if self._rows is None:
            values = self.column_values
            self._rows = list(zip(*values, strict=True)) if values else []
        return self._rows


class BatchValidator:
    """Validates batches of one kind; keeps its code memos across the batches of an ingest."""

    def __init__(
        self,
        kind: str,
        d: DataDictionary,
        columns: Sequence[str],
        *,
        number_texts: bool = True,
    ):
        """``number_texts``: whether a batch hands over its number columns' delivered
        decimal texts (`decimal_texts`; only PostgreSQL's COPY uses them)."""
        self.number_texts = number_texts
        self.kind = kind
        self.dictionary = d
        self.columns = tuple(columns)
        self.allowed = FIELDS[kind]
        self.spec = _specs(d).get(kind)
        if self.spec is not None and set(self.spec.rules) != set(self.columns):
            raise ValueError(f"batch spec of {kind} does not name the table's columns")

    def validate(
        self, items: Sequence[tuple[int, Mapping[str, Any] | tuple[str, str]]]
    ) -> BatchResult:
        """Validate ``(line, row)`` pairs; a ``(field, reason)`` pair is a bad line as given."""
        result = BatchResult(self.columns)
        spec = self.spec
        n = len(items)
        plain = [False] * n
        if spec is not None:
            allowed = self.allowed
            rows: list[Any] = []  # plain dicts only (checked below)
            index: list[int] = []
            for i, (_, row) in enumerate(items):
                if row.__class__ is dict and allowed.issuperset(row):
                    rows.append(row)
                    index.append(i)
            delivered = {name: list(map(dict.get, rows, repeat(name))) for name in spec.rules}
            computed = {name: rule(delivered[name]) for name, rule in spec.rules.items()}
            finish = spec.finish
            ok = [True] * len(rows)
            for values in computed.values():
                if BAD in values:  # one C-level scan; the loop only for a column with one
                    for j, v in enumerate(values):
                        if v is BAD:
                            ok[j] = False
            if finish is not None:
                finish(computed, ok)
            if len(rows) == n and all(ok):  # the common case: every row decided in bulk
                result.column_values = [computed[c] for c in self.columns]
                for i, c in enumerate(self.columns):
                    rule = spec.rules[c]
                    if isinstance(rule, _Timestamp):
                        texts = utc_texts(delivered[c])
                        if texts is not None:
                            result.time_texts[i] = texts
                    elif self.number_texts and isinstance(rule, _Number):
                        texts = decimal_texts(delivered[c])
                        if texts is not None:
                            result.number_texts[i] = texts
                result.lines = [line for line, _ in items]
                return result  # row tuples only when asked for (BatchResult.rows)
            good = list(zip(*(computed[c] for c in self.columns), strict=True)) if rows else []
            fast: dict[int, tuple[Any, ...]] = {}
            for j, i in enumerate(index):
                if ok[j]:
                    plain[i] = True
                    fast[i] = good[j]
        else:
            fast = {}
        kind, d, columns = self.kind, self.dictionary, self.columns
        for i, (line, row) in enumerate(items):
            if plain[i]:
                result.rows.append(fast[i])
                result.lines.append(line)
            elif isinstance(row, tuple):
                result.errors.append((line, row[0], row[1]))
            else:
                try:
                    parsed = parse_row(kind, row, d)
                except FieldError as exc:
                    result.errors.extend((line, p.field, p.reason) for p in exc.problems)
                    continue
                result.rows.append(tuple(parsed.get(c) for c in columns))
                result.lines.append(line)
        return result
