"""Row validation: each bad row says which field is wrong and why."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from qdspace.connector.dictionary import default_dictionary
from qdspace.connector.field_parsers import FieldError
from qdspace.connector.validate import parse_row

D = default_dictionary()
GOOD_INSPECTION = {
    "inspection_id": "EL-1",
    "station": "EL-1",
    "inspected_at": "2026-11-02T08:00:00+02:00",
    "verdict": "NOK",
    "defect_class": "micro-crack",
    "score": "0.91",
    "image_hash": "AB" * 32,
}


def test_inspection_is_normalised() -> None:
    row = parse_row("inspection", GOOD_INSPECTION, D)
    assert row["verdict"] == "fail"
    assert row["defect_class"] == "microcrack"
    assert row["score"] == 0.91
    assert row["inspected_at"] == datetime(2026, 11, 2, 6, 0, tzinfo=UTC)
    assert row["image_hash"] == "ab" * 32


class Marked(str):
    """A str subclass, as numpy.str_ is: what a connector reading with numpy hands over."""

    def __str__(self) -> str:
        return "not the text"


def test_a_string_of_a_str_subclass_is_read_as_its_text() -> None:
    row = parse_row(
        "inspection",
        {**GOOD_INSPECTION, "station": Marked("  EL-2 "), "model_version": Marked("   ")},
        D,
    )
    assert row["station"] == "EL-2" and row["station"].__class__ is str
    assert row["model_version"] is None  # blank, as "   " is
    coded = parse_row(
        "inspection",
        {
            **GOOD_INSPECTION,
            "verdict": Marked(" NOK "),
            "inspected_at": Marked(" 2026-11-02T08:00:00Z"),
        },
        D,
    )
    assert coded["verdict"] == "fail"
    assert coded["inspected_at"] == datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
    with pytest.raises(FieldError) as refused:
        parse_row("inspection", {**GOOD_INSPECTION, "inspection_id": Marked("  ")}, D)
    assert [(p.field, p.reason) for p in refused.value.problems] == [("inspection_id", "missing")]


def test_a_passing_inspection_without_class_has_defect_class_none() -> None:
    row = parse_row("inspection", {**GOOD_INSPECTION, "verdict": "pass", "defect_class": ""}, D)
    assert row["defect_class"] == "none"


@pytest.mark.parametrize(
    ("kind", "row", "field", "reason"),
    [
        ("inspection", {**GOOD_INSPECTION, "score": "1.5"}, "score", "above the maximum"),
        ("inspection", {**GOOD_INSPECTION, "score": "high"}, "score", "expected a number"),
        ("inspection", {**GOOD_INSPECTION, "station": ""}, "station", "missing"),
        (
            "inspection",
            {**GOOD_INSPECTION, "inspected_at": "2026-11-02T08:00"},
            "inspected_at",
            "has no zone",
        ),
        (
            "inspection",
            {**GOOD_INSPECTION, "inspected_at": "yesterday"},
            "inspected_at",
            "not an ISO-8601",
        ),
        ("inspection", {**GOOD_INSPECTION, "image_hash": "xyz"}, "image_hash", "hex digits"),
        ("inspection", {**GOOD_INSPECTION, "colour": "red"}, "colour", "not a field of inspection"),
        (
            "order",
            {
                "order_id": "PO-1",
                "customer": "a",
                "supplier": "b",
                "product": "p",
                "quantity": "0",
                "opened_at": "2026-01-01T00:00:00Z",
            },
            "quantity",
            "below the minimum",
        ),
        (
            "order",
            {
                "order_id": "PO-1",
                "customer": "a",
                "supplier": "b",
                "product": "p",
                "quantity": 5,
                "status": "closed",
                "opened_at": "2026-01-01T00:00:00Z",
            },
            "closed_at",
            "required when status",
        ),
        (
            "genealogy",
            {"child_batch_id": "B1", "parent_batch_id": "B1"},
            "parent_batch_id",
            "from itself",
        ),
        (
            "measurement",
            {
                "equipment": "E",
                "parameter": "pecvd_chamber_vacuum",
                "value": 1,
                "unit": "psi",
                "measured_at": "2026-01-01T00:00:00Z",
            },
            "unit",
            "not known",
        ),
        (
            "measurement",
            {
                "equipment": "E",
                "parameter": "flux",
                "value": 1,
                "unit": "Pa",
                "measured_at": "2026-01-01T00:00:00Z",
            },
            "parameter",
            "unknown data element",
        ),
        (
            "environment",
            {"location": "hall", "measured_at": "2026-01-01T00:00:00Z"},
            "temperature",
            "missing",
        ),
        (
            "operator_log",
            {
                "operator_id": "jane.doe@plant.example",
                "logged_at": "2026-01-01T00:00:00Z",
                "action": "x",
            },
            "operator_id",
            "pseudonymous",
        ),
    ],
)
def test_bad_rows(kind: str, row: dict[str, object], field: str, reason: str) -> None:
    with pytest.raises(FieldError) as caught:
        parse_row(kind, row, D)
    assert caught.value.field == field
    assert reason in caught.value.reason


def test_measurement_keeps_what_was_delivered() -> None:
    row = parse_row(
        "measurement",
        {
            "equipment": "PECVD-2",
            "parameter": "chamber_pressure",
            "value": "1,2",
            "unit": "mbar",
            "measured_at": "2026-01-01T00:00:00Z",
        },
        D,
    )
    assert (row["parameter"], row["element_id"], row["unit"]) == (
        "pecvd_chamber_vacuum",
        "QDE-0002",
        "Pa",
    )
    assert row["value"] == pytest.approx(120.0)
    assert (row["raw_value"], row["raw_unit"]) == ("1,2", "mbar")


def test_environment_humidity_as_fraction() -> None:
    row = parse_row(
        "environment",
        {
            "location": "hall",
            "measured_at": "2026-01-01T00:00:00Z",
            "humidity": "0.45",
            "humidity_unit": "fraction",
        },
        D,
    )
    assert row["humidity_rh"] == pytest.approx(45.0)
    assert row["temperature_c"] is None
