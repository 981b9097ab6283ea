"""A page of released rows as JSON lines, written column by column without a dict per row.

The rows of a transfer page all have the same keys (the record envelope, then the
granted fields, sorted), so a row's bytes are a fixed template with one JSON value per
column in its holes: ``{"@key":"rec_`` key ``","@v":`` version ``,"batch_id":`` ...
``}``. `PageJson` holds that template; `PageJson.join` fills it for a whole page in C
(the columns laid out by strided slice assignment, one `bytes.join`), from columns of
ready JSON values:

* `json_values` writes a column with one `orjson.dumps` of the column: the array's
  items are split at its commas when it holds exactly one comma per gap (no value has
  a comma inside), else each value is written on its own; a column whose values are all
  the same JSON (a missing field, the order) is one value, which the template then
  absorbs;
* `wire_timestamp_values` writes a column of SQLite's stored times in their wire form
  (`wire_timestamp`) with numpy over the whole column, when every value has one of the
  two shapes the store writes; anything else is converted one by one.

The bytes are those `orjson.dumps` gives for the row dicts (the encoder before this one,
kept as the reference in tests/unit/connector/test_page_encoding.py): a value's JSON does
not depend on where it stands, and the template's keys are written by `orjson.dumps` too.

Why separate: this is byte-level work the page encoder (`connector.encoding`) needs and
the gate does not; what may leave is decided before a column gets here.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from qdspace.connector.contract_errors import ViewError
from qdspace.policies.canonical import format_datetime

#: a column of JSON values: one per row, or one for every row
JsonColumn = list[bytes] | bytes


def _slow_timestamp(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise ViewError(f"{value!r} is not a timestamp")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # stored as UTC without a zone (SQLite)
    return format_datetime(value)


def wire_timestamp(value: Any) -> str | None:
    """A stored timestamp as it goes on the wire (``format_datetime``'s form).

    SQLite keeps UTC text, ``YYYY-MM-DD HH:MM:SS[.ffffff][+00:00]`` (written by
    SQLAlchemy or by the ingest's driver): that is rewritten without parsing;
    anything else (a PostgreSQL datetime, another offset) is parsed.
    """
    if type(value) is str and len(value) >= 19 and value[10] == " ":
        tail = value[19:]
        if tail[-6:] == "+00:00":
            tail = tail[:-6]
        if not tail or tail == ".000000":
            return f"{value[:10]}T{value[11:19]}Z"
        if len(tail) == 7 and tail[0] == "." and tail[1:].isdigit():
            return f"{value[:10]}T{value[11:19]}{tail}Z"
    return _slow_timestamp(value)


def wire_timestamps(values: Sequence[Any]) -> list[str | None]:
    """`wire_timestamp` of a column; SQLite's whole-second ``...HH:MM:SS.000000`` (most
    rows; see 0010_sqlite_time_text) inline."""
    return [
        f"{v[:10]}T{v[11:19]}Z"
        if type(v) is str and len(v) == 26 and v[10] == " " and v[19:] == ".000000"
        else wire_timestamp(v)
        for v in values
    ]


def json_values(values: Sequence[Any]) -> JsonColumn:
    """The JSON of each value of a column (see the module docstring); `values` is not
    empty. Raises `orjson.JSONEncodeError` for a value without a JSON form."""
    n = len(values)
    first = values[0]
    # equal str or None values have equal JSON (a number would not: 0 == 0.0 == -0.0),
    # and values that differ from a str or None have other JSON
    text = first is None or type(first) is str
    if text and values.count(first) == n:
        return orjson.dumps(first)
    inner = orjson.dumps(values)[1:-1]  # a list or a tuple: [v,v,...]
    parts = inner.split(b",") if inner.count(b",") == n - 1 else list(map(orjson.dumps, values))
    return parts[0] if not text and parts.count(parts[0]) == n else parts


_DIGITS = (48, 57)  # "0", "9"


def wire_timestamp_values(values: Sequence[Any]) -> JsonColumn:
    """`json_values` of `wire_timestamps(values)`, vectorised for the column where every
    value is SQLite's text ``YYYY-MM-DD HH:MM:SS.ffffff`` in printable ASCII with one
    fraction for all (``000000``: whole seconds, or six digits none of them zero-only)."""
    fast = _fast_stamps(values)
    return fast if fast is not None else json_values(wire_timestamps(values))


def _fast_stamps(values: Sequence[Any]) -> list[bytes] | None:
    n = len(values)
    try:
        text = "".join(values)  # a TypeError for None or a datetime (PostgreSQL)
    except TypeError:
        return None
    raw = text.encode()
    if len(raw) != 26 * n or set(map(len, values)) != {26}:  # 26 characters, ASCII only
        return None
    import numpy as np  # on the first page only; a node that never sends does not load it

    cells = np.frombuffer(raw, np.uint8).reshape(n, 26)
    head = cells[:, :19]
    if (
        not (cells[:, 10] == 32).all()  # " "
        or not (cells[:, 19] == 46).all()  # "."
        or ((head < 32) | (head > 126) | (head == 34) | (head == 92)).any()  # JSON as it is
    ):
        return None
    fraction = cells[:, 20:]
    zero = (fraction == _DIGITS[0]).all(axis=1)
    if zero.all():
        width = 20  # YYYY-MM-DDTHH:MM:SSZ
    elif not zero.any() and ((fraction >= _DIGITS[0]) & (fraction <= _DIGITS[1])).all():
        width = 27  # YYYY-MM-DDTHH:MM:SS.ffffffZ
    else:
        return None
    out = np.empty((n, width + 3), np.uint8)
    out[:, 0] = 34  # '"'
    out[:, 1:20] = head
    out[:, 11] = 84  # "T"
    if width == 27:
        out[:, 20:27] = cells[:, 19:]
    out[:, width] = 90  # "Z"
    out[:, width + 1] = 34
    out[:, width + 2] = 10  # a separator no value holds
    return bytes(out.data)[:-1].split(b"\n")


class PageJson:
    """The JSON lines of pages whose rows have the keys `names` (in this order), each
    row from one value per column (see the module docstring)."""

    def __init__(self, names: Sequence[str]) -> None:
        self._holes = [
            (b"," if i else b"{") + orjson.dumps(name) + b":" for i, name in enumerate(names)
        ]

    def join(self, columns: Sequence[JsonColumn], n: int) -> bytes:
        """The rows' bytes joined by newlines, from one `JsonColumn` per name; a column
        of values holds `n` of them."""
        literal = b""
        pieces: list[bytes | list[bytes]] = []  # per row: hole, value, hole, value, ..., end
        for hole, column in zip(self._holes, columns, strict=True):
            if isinstance(column, bytes):  # the same in every row: part of the template
                literal += hole + column
                continue
            if len(column) != n:
                raise ViewError(f"a page column holds {len(column)} values for {n} rows")
            pieces += (literal + hole, column)
            literal = b""
        pieces.append(literal + b"}\n")
        if not n:
            return b""
        # the page's pieces in row order, laid out by strided slices (in C), one join
        k = len(pieces)
        out: list[bytes] = [b""] * (k * n)
        for at, piece in enumerate(pieces):
            out[at::k] = [piece] * n if isinstance(piece, bytes) else piece
        out[-1] = literal + b"}"  # the last row without the newline: no copy of the page
        return b"".join(out)
