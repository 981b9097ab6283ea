"""The batch validator accepts exactly the rows, values and errors of the row validator.

`connector.batch_validate` decides plain columns in bulk and hands every doubtful row
back to `parse_row`; these tests hold the two against each other on hostile batches
(NaN, infinities, negatives and huge numbers, unknown codes, wrong types, NUL bytes,
over-long text, times without a zone, unknown fields, bad lines), kind by kind, and on
the clean batch where the bulk path decides everything by itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qdspace.connector.batch_validate import BatchValidator
from qdspace.connector.bulk_insert import BulkInserter, insert_columns
from qdspace.connector.column_rules import BAD
from qdspace.connector.dictionary import default_dictionary
from qdspace.connector.field_parsers import FieldError
from qdspace.connector.qdm import TABLES
from qdspace.connector.row_template import FIELDS
from qdspace.connector.validate import parse_row

D = default_dictionary()

GOOD: dict[str, dict[str, Any]] = {
    "inspection": {
        "inspection_id": "EL-000001",
        "station": "EL-1",
        "inspected_at": "2026-11-02T08:00:00+01:00",
        "verdict": "OK",
        "defect_class": "",
        "score": "0.25",
        "model_version": "el-2026.11",
        "image_hash": "AB" * 16,
        "frame_id": "17",
        "latency_ms": "4.2",
        "order_id": "PO-1",
        "batch_id": "CX-1",
    },
    "product": {
        "serial": "SN-1",
        "product_type": "module",
        "order_id": "PO-1",
        "made_at": "2026-11-02T08:00:00Z",
    },
    "batch": {
        "batch_id": "CX-1",
        "material": "mono cell",
        "kind": "cell",
        "producer": "cellex",
        "quantity": "1200",
        "made_at": "2026-11-02T08:00:00Z",
        "customer": "",
    },
    "genealogy": {"child_batch_id": "CX-2", "parent_batch_id": "CX-1", "quantity_used": "3"},
    "operator_log": {
        "operator_id": "op-17",
        "logged_at": "2026-11-02T08:00:00Z",
        "action": "rework",
        "note": "re-soldered string 3",
    },
    "calibration": {
        "certificate_id": "CAL-1",
        "equipment": "EL-1",
        "valid_from": "2026-01-01T00:00:00Z",
        "valid_until": "2027-01-01T00:00:00Z",
        "result": "",
    },
    "order": {
        "order_id": "PO-1",
        "customer": "sunarc",
        "supplier": "cellex",
        "product": "mono cell",
        "quantity": "100",
        "status": "open",
        "opened_at": "2026-10-01T06:00:00Z",
        "closed_at": "",
    },
    "measurement": {
        "equipment": "PECVD-1",
        "parameter": "chamber_pressure",
        "value": "1.2",
        "unit": "mbar",
        "measured_at": "2026-11-02T08:00:00Z",
    },
    "environment": {
        "location": "hall-1",
        "measured_at": "2026-11-02T08:00:00Z",
        "temperature": "21.5",
        "humidity": "45",
    },
}


class _Marked(str):
    """A str subclass (as numpy.str_ is), whose ``__str__`` is not its text."""

    def __str__(self) -> str:
        return "not the text"


#: what a hostile or careless plant puts in a field
HOSTILE: list[Any] = [
    _Marked(" padded "),
    _Marked("   "),
    None,
    "",
    "   ",
    " padded ",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "-1",
    "-0.0",
    "1e309",
    "1e308",
    "2",
    "0",
    "1_000",
    "0x10",
    "x" * 97,
    "y" * 501,
    "a\x00b",
    "fail",
    "pass",
    "NOK",
    "crack",
    "closed",
    "not-a-code",
    "2026-11-02T08:00:00",
    "2026-11-02T08:00:00Z",
    "2027-11-02T08:00:00+05:30",
    "2020-01-01",
    "yesterday",
    "op@example.com",
    "ABCDEF0123456789",
    "abcdef0123456789" * 5,
    float("nan"),
    float("inf"),
    -1.0,
    0.5,
    10**30,
    7,
    True,
    ["list"],
    {"nested": 1},
]


def _row_validator(
    kind: str, items: list[tuple[int, Any]]
) -> tuple[list[tuple[Any, ...]], list[int], list[tuple[int, str, str]]]:
    columns = insert_columns(TABLES[kind].__table__)
    rows, lines, errors = [], [], []
    for line, row in items:
        if isinstance(row, tuple):
            errors.append((line, row[0], row[1]))
            continue
        try:
            parsed = parse_row(kind, row, D)
        except FieldError as exc:
            errors.extend((line, p.field, p.reason) for p in exc.problems)
            continue
        rows.append(tuple(parsed.get(c) for c in columns))
        lines.append(line)
    return rows, lines, errors


def _same(kind: str, items: list[tuple[int, Any]]) -> None:
    validator = BatchValidator(kind, D, insert_columns(TABLES[kind].__table__))
    got = validator.validate(items)
    rows, lines, errors = _row_validator(kind, items)
    assert got.errors == errors
    assert got.lines == lines
    if got.column_values is not None:  # decided in bulk: the columns are what is written
        assert got.column_values == [list(c) for c in zip(*rows, strict=True)]
        assert [[type(v) for v in c] for c in got.column_values] == [
            [type(v) for v in c] for c in zip(*rows, strict=True)
        ]
    assert got.rows == rows
    for row in got.rows:
        assert BAD not in row
        # the same types too (1.0 == 1 == True would hide a float stored as an int)
    assert [[type(v) for v in r] for r in got.rows] == [[type(v) for v in r] for r in rows]


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_a_clean_batch_is_decided_alike(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    items = []
    for i in range(50):
        row = dict(GOOD[kind])
        first = next(iter(row))
        row[first] = f"{row[first]}-{i}"
        items.append((i + 2, row))
    _same(kind, items)
    assert len(_row_validator(kind, items)[0]) == 50  # the rows are good ones
    # and the column rules decided them by themselves (kinds with a column spec)
    called: list[int] = []

    def counting(*args: Any) -> Any:
        called.append(1)
        return parse_row(*args)

    monkeypatch.setattr("qdspace.connector.batch_validate.parse_row", counting)
    BatchValidator(kind, D, insert_columns(TABLES[kind].__table__)).validate(items)
    assert len(called) == (50 if kind in ("measurement", "environment") else 0)


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
@pytest.mark.parametrize("kind", sorted(GOOD))
def test_a_batch_decided_in_bulk_is_prepared_as_its_rows_are(kind: str, dialect: str) -> None:
    """The store hands the driver a bulk-decided batch's columns (no row tuples made by
    the validator): what the driver gets is what ``prepare`` makes of the row tuples."""
    items = []
    for i in range(30):
        row = dict(GOOD[kind])
        first = next(iter(row))
        row[first] = f"{row[first]}-{i}"
        items.append((i + 2, row))
    table = TABLES[kind].__table__
    got = BatchValidator(kind, D, insert_columns(table)).validate(items)
    if kind in ("measurement", "environment"):
        assert got.column_values is None  # row by row: no columns to hand over
        return
    assert got.column_values is not None and got._rows is None  # no tuples built yet
    inserter = BulkInserter(table, dialect, "qmark" if dialect == "sqlite" else "format")
    from_columns = inserter.prepare_columns(got.column_values, got.time_texts, got.number_texts)
    from_rows = inserter.prepare(_row_validator(kind, items)[0])
    assert from_columns.columns == from_rows.columns
    _same_copy(from_columns.text, from_rows.text, [i for i in got.number_texts])
    assert [[type(v) for v in r] for r in from_columns.rows()] == [
        [type(v) for v in r] for r in from_rows.rows()
    ]
    # the times delivered as plain UTC text went by their text (`utc_texts`)
    plain = [c for c in inserter.columns if str(GOOD[kind].get(c, "")).endswith("Z")]
    assert sorted(got.time_texts) == sorted(inserter.columns.index(c) for c in plain)


def _same_copy(taken: str | None, formatted: str | None, numbers: list[int]) -> None:
    """COPY texts alike, but for number columns sent as their delivered decimal text
    instead of the float's ``repr``: those must read as the same double."""
    if taken is None or formatted is None:
        assert taken == formatted
        return
    a = [line.split("\t") for line in taken.split("\n")]
    b = [line.split("\t") for line in formatted.split("\n")]
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for i, (u, v) in enumerate(zip(x, y, strict=True)):
            if i in numbers:
                assert float(u) == float(v) and str(float(u)) == v  # the same double
            else:
                assert u == v


#: time columns in every form a plant may write: each is taken from the delivered text
#: (the first three) or formatted from its datetime, and must come out the same either way
TIME_FORMS: list[list[Any]] = [
    ["2026-11-02T08:00:00Z", "2026-02-28T23:59:59Z", "2024-02-29T00:00:00Z"],
    ["2026-11-02T08:00:00.123456Z", "2026-11-02T08:00:00.000000Z", "1999-12-31T23:59:59.999999Z"],
    ["  2026-11-02T08:00:00Z ", "2026-11-02T08:00:01Z\t", "\n2026-11-02T08:00:02Z"],
    ["2026-11-02T08:00:00Z", "2026-11-02T08:00:00.5Z", "2026-11-02T08:00:00.123456Z"],
    ["2026-11-02T08:00:00+00:00", "2026-11-02T08:00:00Z", "2026-11-02T08:00:00Z"],
    ["2026-11-02T09:00:00+01:00", "2026-11-02T08:00:00-00:30", "2026-11-02T08:00:00Z"],
    ["2026-11-02 08:00:00Z", "2026-11-02T08:00Z", "20261102T080000Z"],
    ["2026-11-02T08:00:00z", "2026-11-02t08:00:00Z", "2026-11-02T08:00:00.123Z"],
    ["2026-W45-1T08:00:00Z", "2026-306T08:00:00Z", "2026-11-02T08:00:00Z"],
    ["\u0662026-11-02T08:00:00Z", "2026-11-02T08:00:00Z", "2026-11-02T08:00:00Z"],
]


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
@pytest.mark.parametrize("forms", TIME_FORMS)
def test_times_taken_from_their_text_are_prepared_as_formatted_ones(
    forms: list[Any], dialect: str
) -> None:
    items = [
        (i + 2, {**GOOD["calibration"], "certificate_id": f"CAL-{i}", "valid_from": t})
        for i, t in enumerate(forms)
    ]
    table = TABLES["calibration"].__table__
    got = BatchValidator("calibration", D, insert_columns(table)).validate(items)
    _same("calibration", items)
    if got.column_values is None:
        return  # some value refused: decided row by row, nothing taken from text
    inserter = BulkInserter(table, dialect, "qmark" if dialect == "sqlite" else "format")
    from_columns = inserter.prepare_columns(got.column_values, got.time_texts, got.number_texts)
    assert from_columns == inserter.prepare(_row_validator("calibration", items)[0])
    taken = inserter.columns.index("valid_from") in got.time_texts
    assert taken == (forms in TIME_FORMS[:3])


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_one_hostile_value_per_field_is_decided_alike(kind: str) -> None:
    items: list[tuple[int, Any]] = []
    line = 2
    for name in sorted(FIELDS[kind]):
        for value in HOSTILE:
            row = dict(GOOD[kind])
            row[name] = value
            items.append((line, row))
            line += 1
        row = dict(GOOD[kind])
        row.pop(name, None)  # absent altogether
        items.append((line, row))
        line += 1
    _same(kind, items)


@pytest.mark.parametrize("kind", ["inspection", "order", "measurement"])
def test_rows_that_are_not_plain_rows_are_decided_alike(kind: str) -> None:
    class Other(Mapping[str, Any]):
        def __init__(self, data: dict[str, Any]):
            self.data = data

        def __getitem__(self, key: str) -> Any:
            return self.data[key]

        def __iter__(self) -> Any:
            return iter(self.data)

        def __len__(self) -> int:
            return len(self.data)

    items: list[tuple[int, Any]] = [
        (2, dict(GOOD[kind])),
        (3, ("-", "expected 13 values (one per column), got 2")),
        (4, {**GOOD[kind], "unknown_field": "x"}),
        (5, {**GOOD[kind], None: "extra"}),
        (6, Other(dict(GOOD[kind]))),
        (7, {}),
        (8, dict(GOOD[kind])),
    ]
    _same(kind, items)


def test_cross_field_rules_are_decided_alike() -> None:
    calibration = [
        (2, {**GOOD["calibration"], "valid_until": GOOD["calibration"]["valid_from"]}),
        (3, {**GOOD["calibration"], "valid_until": "2025-01-01T00:00:00Z"}),
        (4, {**GOOD["calibration"], "result": "fail"}),
    ]
    _same("calibration", calibration)
    genealogy = [(2, {**GOOD["genealogy"], "parent_batch_id": "CX-2"})]
    _same("genealogy", genealogy)
    order = [
        (2, {**GOOD["order"], "status": "closed"}),
        (3, {**GOOD["order"], "status": "closed", "closed_at": "2026-10-02T00:00:00Z"}),
        (4, {**GOOD["order"], "closed_at": "2026-09-01T00:00:00Z"}),
        (5, {**GOOD["order"], "closed_at": "2026-10-01T06:00:00Z"}),
    ]
    _same("order", order)
    inspection = [
        (2, {**GOOD["inspection"], "verdict": "pass", "defect_class": ""}),
        (3, {**GOOD["inspection"], "verdict": "fail", "defect_class": ""}),
        (4, {**GOOD["inspection"], "verdict": "fail", "defect_class": "crack"}),
    ]
    _same("inspection", inspection)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(sorted(GOOD)),
    changes=st.lists(
        st.tuples(st.integers(0, 40), st.integers(0, 30), st.sampled_from(range(len(HOSTILE)))),
        max_size=30,
    ),
)
def test_random_hostile_batches_are_decided_alike(
    kind: str, changes: list[tuple[int, int, int]]
) -> None:
    names = sorted(FIELDS[kind])
    rows = [dict(GOOD[kind]) for _ in range(41)]
    for r, f, v in changes:
        rows[r][names[f % len(names)]] = HOSTILE[v]
    _same(kind, [(i + 2, row) for i, row in enumerate(rows)])


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_a_whole_column_of_one_hostile_value_is_decided_alike(kind: str) -> None:
    # the column rules' bulk pass sees the column alone: every row carries the value
    for name in sorted(FIELDS[kind]):
        for value in HOSTILE:
            items = []
            for i in range(3):
                row = dict(GOOD[kind])
                first = next(iter(row))
                row[first] = f"{row[first]}-{i}" if first != name else row[first]
                row[name] = value
                items.append((i + 2, row))
            _same(kind, items)


#: number columns as a plant may write them: sent by their delivered text only when it
#: is a plain decimal (the first two), else by the float's ``repr``
NUMBER_FORMS: list[list[str]] = [
    ["4.2", "0", "-0", "+17", "007.50", "5.", "123456789012345678901234567890"],
    ["0.1000000000000000055511151231257827", "2.2250738585072014", " 3.5 "],
    ["4.2", "1e3", "1"],
    ["4.2", "1e-400", "1"],
    ["4.2", "1,5", "1"],
    ["4.2", ".5", "1"],
    ["4.2", "12,25e1", "1"],
    ["4.2", "", "1"],
]
#: number texts outside the one grammar (`connector.numbers`): refused by the column rule
#: and the row validator alike (``float`` took the first two, ``1,000`` was 1.0 elsewhere)
NOT_NUMBERS: list[str] = ["1_000", "\u0663", "\uff11\uff12", "1,000", "1.000,5", "1,000,000"]


@pytest.mark.parametrize("text", NOT_NUMBERS)
def test_number_texts_outside_the_grammar_are_refused_alike(text: str) -> None:
    items = [
        (i + 2, {**GOOD["inspection"], "inspection_id": f"EL-{i}", "latency_ms": v})
        for i, v in enumerate(["4.2", text, "1"])
    ]
    _same("inspection", items)
    got = BatchValidator("inspection", D, insert_columns(TABLES["inspection"].__table__))
    errors = got.validate(items).errors
    assert [(line, field) for line, field, _ in errors] == [(3, "latency_ms")]
    assert repr(text) in errors[0][2]


@pytest.mark.parametrize("forms", NUMBER_FORMS)
def test_numbers_taken_from_their_text_are_the_same_doubles(forms: list[str]) -> None:
    items = [
        (i + 2, {**GOOD["inspection"], "inspection_id": f"EL-{i}", "latency_ms": v})
        for i, v in enumerate(forms)
    ]
    table = TABLES["inspection"].__table__
    got = BatchValidator("inspection", D, insert_columns(table)).validate(items)
    _same("inspection", items)
    assert got.column_values is not None
    inserter = BulkInserter(table, "postgresql", "format")
    at = inserter.columns.index("latency_ms")
    assert (at in got.number_texts) == (forms in NUMBER_FORMS[:2])
    taken = inserter.prepare_columns(got.column_values, got.time_texts, got.number_texts)
    formatted = inserter.prepare(_row_validator("inspection", items)[0])
    _same_copy(taken.text, formatted.text, [at] if at in got.number_texts else [])
