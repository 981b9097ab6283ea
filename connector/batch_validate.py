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
row by row through `parse_row` in the same batch structure. The rules a column is checked
by are in `connector.column_rules`; here each kind names its columns' rules, checks
across columns, and turns a batch into rows and errors.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

from qdspace.connector import column_rules as col
from qdspace.connector.bulk_insert_texts import decimal_texts, utc_texts
from qdspace.connector.dictionary import DataDictionary
from qdspace.connector.field_parsers import FieldError
from qdspace.connector.row_template import FIELDS
from qdspace.connector.validate import parse_row

# -- per-kind specs ------------------------------------------------------------------------

#: after the columns: fill defaults and check across columns for the whole batch; a row
#: whose check fails is marked not ok (it goes back to the row validator)
Finish = Callable[[dict[str, list[Any]], list[bool]], None]

_HEX = re.compile(r"^[0-9a-f]{16,64}$")
_PSEUDONYM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{2,63}$")


@dataclass(frozen=True)
class KindSpec:
    rules: dict[str, col.Rule]
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
                "inspection_id": col.text(True, 96),
                "station": col.text(True, 64),
                "inspected_at": col.timestamp(True),
                "verdict": col.code(d, "verdict", True),
                "defect_class": col.code(d, "defect_class", False),
                "score": col.number(False, 0.0, 1.0),
                "model_version": col.text(False, 80),
                "image_hash": col.matching(_HEX, 64, lower=True),
                "frame_id": col.text(False, 96),
                "latency_ms": col.number(False, 0.0),
                "order_id": col.text(False, 64),
                "serial": col.text(False, 64),
                "batch_id": col.text(False, 64),
            },
            _inspection_finish,
        ),
        "product": KindSpec(
            {
                "serial": col.text(True, 64),
                "product_type": col.text(True, 64),
                "order_id": col.text(False, 64),
                "batch_id": col.text(False, 64),
                "made_at": col.timestamp(True),
            }
        ),
        "batch": KindSpec(
            {
                "batch_id": col.text(True, 64),
                "material": col.text(True, 128),
                "kind": col.code(d, "batch_kind", True),
                "producer": col.text(True, 64),
                "quantity": col.number(True, 0.0),
                "made_at": col.timestamp(True),
                "customer": col.text(False, 64),
                "order_id": col.text(False, 64),
            }
        ),
        "genealogy": KindSpec(
            {
                "child_batch_id": col.text(True, 64),
                "parent_batch_id": col.text(True, 64),
                "quantity_used": col.number(False, 0.0),
            },
            _genealogy_finish,
        ),
        "operator_log": KindSpec(
            {
                "operator_id": col.not_absent(col.matching(_PSEUDONYM, 64, no_at=True)),
                "logged_at": col.timestamp(True),
                "action": col.text(True, 64),
                "station": col.text(False, 64),
                "order_id": col.text(False, 64),
                "batch_id": col.text(False, 64),
                "note": col.text(False, 500),
            }
        ),
        "calibration": KindSpec(
            {
                "certificate_id": col.text(True, 64),
                "equipment": col.text(True, 64),
                "valid_from": col.timestamp(True),
                "valid_until": col.timestamp(True),
                "result": col.code(d, "calibration_result", False),
                "issuer": col.text(False, 128),
            },
            _calibration_finish,
        ),
        "order": KindSpec(
            {
                "order_id": col.text(True, 64),
                "customer": col.text(True, 64),
                "supplier": col.text(True, 64),
                "product": col.text(True, 128),
                "quantity": col.integer_min1,
                "status": col.code(d, "order_status", False),
                "opened_at": col.timestamp(True),
                "closed_at": col.timestamp(False),
            },
            _order_finish,
        ),
    }


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
                if col.BAD in values:  # one C-level scan; the loop only for a column with one
                    for j, v in enumerate(values):
                        if v is col.BAD:
                            ok[j] = False
            if finish is not None:
                finish(computed, ok)
            if len(rows) == n and all(ok):  # the common case: every row decided in bulk
                result.column_values = [computed[c] for c in self.columns]
                for i, c in enumerate(self.columns):
                    rule = spec.rules[c]
                    if isinstance(rule, col.Timestamp):
                        texts = utc_texts(delivered[c])
                        if texts is not None:
                            result.time_texts[i] = texts
                    elif self.number_texts and isinstance(rule, col.Number):
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
