"""The data dictionary: one canonical value, whichever representation arrived."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qdspace.connector.dictionary import default_dictionary
from qdspace.connector.errors import DictionaryError

D = default_dictionary()


def test_void_rate_as_percent_fraction_and_grade_is_one_element() -> None:
    percent = D.measure("solder_void_rate", "3.5", "%")
    fraction = D.measure("void_rate", 0.035, "fraction")
    grade = D.measure("solder_void_rate", "b", "grade")
    assert percent.element is fraction.element is grade.element
    assert percent.unit == fraction.unit == grade.unit == "1"
    assert percent.value == pytest.approx(0.035)
    assert fraction.value == pytest.approx(0.035)
    assert (grade.value, grade.grade) == (0.15, "B")  # the conservative end of grade B


@given(st.floats(min_value=0.0, max_value=100.0, allow_nan=False))
def test_percent_and_fraction_agree(percent: float) -> None:
    a = D.measure("solder_void_rate", percent, "%").value
    b = D.measure("solder_void_rate", percent / 100.0, "fraction").value
    assert a == pytest.approx(b, abs=1e-12)


@pytest.mark.parametrize(
    ("value", "unit", "pascal"),
    [(1.2, "mbar", 120.0), (120, "Pa", 120.0), (0.9, "Torr", 119.99), (1.2, "hPa", 120.0)],
)
def test_vacuum_units(value: float, unit: str, pascal: float) -> None:
    assert D.measure("pecvd_chamber_vacuum", value, unit).value == pytest.approx(pascal, rel=1e-3)


def test_temperatures_convert_with_offset() -> None:
    assert D.measure("lamination_temperature", 421.15, "K").value == pytest.approx(148.0)
    assert D.measure("firing_peak_temperature", 1409, "°F").value == pytest.approx(765.0)


@pytest.mark.parametrize(
    ("name", "value", "unit", "message"),
    [
        ("no_such_thing", 1, "Pa", "unknown data element 'no_such_thing'"),
        ("pecvd_chamber_vacuum", 1, "psi", "unit 'psi' is not known for pecvd_chamber_vacuum"),
        ("pecvd_chamber_vacuum", 1, "", "needs a unit"),
        ("solder_void_rate", 150, "%", "above the range"),
        ("solder_void_rate", "Z", "grade", "neither a number nor a grade code"),
        ("pecvd_chamber_vacuum", "B", "", "neither a number nor a grade code"),
        ("solder_void_rate", "nan", "%", "not a finite number"),
        ("verdict", 1, "1", "is an enumeration"),
    ],
)
def test_bad_values_say_what_is_wrong(name: str, value: object, unit: str, message: str) -> None:
    with pytest.raises(DictionaryError, match=message.replace("(", r"\(")):
        D.measure(name, value, unit)


def test_enumeration_synonyms() -> None:
    assert D.code("verdict", "NOK") == "fail"
    assert D.code("verdict", "ok") == "pass"
    assert D.code("cell_type", "Monocrystalline") == "mono"
    with pytest.raises(DictionaryError, match="'maybe' is not a value of verdict"):
        D.code("verdict", "maybe")


def test_dictionary_exports_every_element_as_json() -> None:
    exported = json.loads(json.dumps(D.to_json()))
    assert len(exported) == len(D)
    by_name = {e["name"]: e for e in exported}
    void = by_name["solder_void_rate"]
    assert void["id"] == "QDE-0001"
    assert void["domain"]["canonical_unit"] == "1"
    assert [g["code"] for g in void["domain"]["grades"]] == ["A", "B", "C", "D"]
    assert by_name["verdict"]["domain"]["values"] == ["pass", "fail"]
