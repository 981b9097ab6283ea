"""A bad row's problems come back together, and ``template`` says what a kind takes.

Issue 21: an order row missing ``supplier`` and ``quantity`` was reported as
"supplier: missing"; only after fixing that did the user learn "quantity: missing".
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qdspace.connector.dictionary import default_dictionary
from qdspace.connector.field_parsers import RowInvalid
from qdspace.connector.ingest import ingest_file
from qdspace.connector.row_template import FIELDS, template
from qdspace.connector.storage import open_store
from qdspace.connector.validate import parse_row

D = default_dictionary()

ORDER = {
    "order_id": "PO-1",
    "customer": "sunarc",
    "supplier": "cellex",
    "product": "mono cell",
    "quantity": "100",
    "status": "open",
    "opened_at": "2026-10-01T06:00:00Z",
    "closed_at": "",
}


def _problems(kind: str, row: dict[str, object]) -> list[tuple[str, str]]:
    with pytest.raises(RowInvalid) as caught:
        parse_row(kind, row, D)
    return [(p.field, p.reason) for p in caught.value.problems]


def test_an_order_row_reports_every_missing_field_at_once() -> None:
    found = _problems("order", {**ORDER, "supplier": "", "quantity": ""})
    assert found == [("supplier", "missing"), ("quantity", "missing")]


def test_problems_of_different_sorts_and_unknown_columns_come_together() -> None:
    found = _problems(
        "order",
        {
            **ORDER,
            "quantity": "0",
            "status": "shipped",
            "opened_at": "2026-10-01 06:00",
            "colour": "blue",
        },
    )
    fields = [f for f, _ in found]
    assert fields == ["colour", "status", "opened_at", "quantity"]
    assert "not a field of order" in found[0][1]
    assert "no zone" in found[2][1] and "below the minimum 1" in found[3][1]


def test_cross_field_checks_still_apply_when_the_fields_parse() -> None:
    found = _problems("order", {**ORDER, "status": "closed", "customer": ""})
    assert found == [
        ("customer", "missing"),
        ("closed_at", "missing (required when status is closed)"),
    ]
    late = {**ORDER, "closed_at": "2026-09-01T00:00:00Z"}
    assert _problems("order", late) == [("closed_at", "before opened_at")]


def test_a_measurement_with_a_bad_parameter_and_no_time_reports_both() -> None:
    found = _problems(
        "measurement",
        {"equipment": "PECVD-2", "parameter": "vacum", "value": "3", "unit": "Pa"},
    )
    assert [f for f, _ in found] == ["parameter", "measured_at"]


def test_ingest_reports_all_problems_of_a_row_on_its_line(tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    header = ",".join(ORDER)
    good = ",".join(str(v) for v in ORDER.values())
    bad = good.replace(",cellex,", ",,").replace(",100,", ",,")
    path.write_text(f"{header}\n{good}\n{bad}\n")
    store = open_store(f"sqlite:///{tmp_path / 'node.db'}")
    try:
        report = ingest_file(store, path, "order")
    finally:
        store.close()
    assert report.accepted == 1
    assert [(e.line, e.field, e.reason) for e in report.rejected] == [
        (3, "supplier", "missing"),
        (3, "quantity", "missing"),
    ]


@pytest.mark.parametrize("kind", sorted(FIELDS))
def test_template_lists_every_field_a_kind_takes(kind: str) -> None:
    assert {r.name for r in template(kind, D)} == FIELDS[kind]


def test_template_gives_allowed_values_and_units_from_the_dictionary() -> None:
    inspection = {r.name: r for r in template("inspection", D)}
    assert inspection["verdict"].allowed.startswith("pass | fail")
    assert "microcrack" in inspection["defect_class"].allowed
    environment = {r.name: r for r in template("environment", D)}
    assert environment["temperature"].allowed.startswith("°C")
    assert "°F" in environment["temperature"].allowed


def test_a_nul_character_inside_a_value_is_a_problem_not_a_stored_row() -> None:
    """JSON can carry ``\\u0000`` inside a string; PostgreSQL would refuse the insert."""
    found = _problems("order", {**ORDER, "customer": "sun\x00arc", "product": "cell\x00"})
    assert found == [
        ("customer", "contains a NUL character"),
        ("product", "contains a NUL character"),
    ]
