"""The column-wise JSON writer of transfer pages against `orjson.dumps` of each value and
of each row dict: the same bytes for any column (strings with commas, quotes and control
characters, numbers that compare equal but print differently, missing values) and for
any stored time, fast path or not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qdspace.connector.contract_errors import ViewError
from qdspace.connector.page_json import (
    PageJson,
    json_values,
    wire_timestamp_values,
    wire_timestamps,
)

scalar = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([0, 0.0, -0.0, 1, 1.0, True, False, "0", "", ",", '","', "[1,2]"])
    | st.text(st.characters(blacklist_categories=("Cs",)) | st.sampled_from(list('",[]{}\\\n')))
)


def _expanded(column: Any, n: int) -> list[bytes]:
    return [column] * n if isinstance(column, bytes) else list(column)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(scalar, min_size=1, max_size=20), as_tuple=st.booleans())
def test_a_column_is_the_json_of_each_value(values: list[Any], as_tuple: bool) -> None:
    column = json_values(tuple(values) if as_tuple else values)
    assert _expanded(column, len(values)) == [orjson.dumps(v) for v in values]


def _stored(at: datetime, shape: str) -> str:
    text = at.strftime("%Y-%m-%d %H:%M:%S")
    if shape == "whole":
        return text + ".000000"
    if shape == "fraction":
        return text + f".{max(at.microsecond, 1):06d}"
    if shape == "zone":
        return text + ".000000+00:00"
    return text  # no fraction


stamp = st.builds(
    lambda seconds, micros: datetime(2026, 1, 1, tzinfo=UTC) + timedelta(0, seconds, micros),
    st.integers(0, 10**8),
    st.integers(0, 999_999),
)


@settings(max_examples=300, deadline=None)
@given(
    stamps=st.lists(stamp, min_size=1, max_size=15),
    shapes=st.lists(st.sampled_from(["whole", "fraction", "zone", "bare"]), min_size=1),
    uniform=st.booleans(),
    missing=st.sets(st.integers(0, 14), max_size=2),
)
def test_stored_times_leave_in_their_wire_form(
    stamps: list[datetime], shapes: list[str], uniform: bool, missing: set[int]
) -> None:
    values: list[Any] = [
        _stored(at, shapes[0] if uniform else shapes[i % len(shapes)])
        for i, at in enumerate(stamps)
    ]
    for i in missing:
        if i < len(values) and not uniform:
            values[i] = None
    expected = [orjson.dumps(v) for v in wire_timestamps(values)]
    assert _expanded(wire_timestamp_values(values), len(values)) == expected


@pytest.mark.parametrize(
    "value",
    [
        "2026-01-01 00:00:00.000000",
        "2026-01-01 00:00:00.123456",
        '2026-01-01 00:00:0".000000',  # a quote: JSON escapes it
        "2026-01-01 00:00:0\\.000000",
        "2026-01-01 00:00:0\n.000000",
        "2026-01-01 00:00:0\x7f.000000",
        "2026-01-01 00:00:00.12345\u0663",  # a digit, but not an ASCII one
        "2026-01-01 00:00:00.0000000",  # 27 characters
        "2026-01-01T00:00:00.000000",
        "abcdefghij klmnopqr.000000",  # the shape without the digits
    ],
)
def test_odd_stored_text_is_written_as_the_row_encoder_writes_it(value: str) -> None:
    for values in ([value], [value, "2026-01-01 00:00:00.000000"], [value] * 3):
        try:
            expected = [orjson.dumps(v) for v in wire_timestamps(values)]
        except ViewError:
            with pytest.raises(ViewError):
                wire_timestamp_values(values)
            continue
        assert _expanded(wire_timestamp_values(values), len(values)) == expected


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.text(max_size=3), scalar, st.none() | st.text(max_size=4)),
        min_size=1,
        max_size=12,
    )
)
def test_a_page_is_the_json_of_its_row_dicts(rows: list[tuple[Any, ...]]) -> None:
    names = ("@key", "b", "c")
    page = PageJson(names)
    columns = [json_values(column) for column in zip(*rows, strict=True)]
    expected = b"\n".join(orjson.dumps(dict(zip(names, row, strict=True))) for row in rows)
    assert page.join(columns, len(rows)) == expected
