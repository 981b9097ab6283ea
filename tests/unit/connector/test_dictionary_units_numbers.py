"""Units, number texts and conversions of the data dictionary (review D1-D3).

D1: a unit in the wrong case is not another unit's look-up key (``MW`` was read as
``mW``, 10^9 off and in range); D2: one grammar for every number delivered as text
(``1,000`` was stored as 1.0); D3: a converted value carries no float noise (300 K was
26.850000000000023 °C), and the range check's tolerance is relative.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qdspace.connector import column_rules as col
from qdspace.connector.dictionary import (
    DataDictionary,
    DataElement,
    UnitDomain,
    default_dictionary,
    prefix_case_clash,
)
from qdspace.connector.dictionary_file import DictionaryFileError, load_dictionary
from qdspace.connector.errors import DictionaryError
from qdspace.connector.field_parsers import FieldError
from qdspace.connector.numbers import NumberTextError, parse_number
from qdspace.connector.validate import parse_row

D = default_dictionary()

# -- D1: case of units ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("element", "value", "unit", "known"),
    [
        ("iv_shunt_resistance", 5, "MΩ", "mΩ"),
        ("iv_shunt_resistance", 5, "MOhm", "mOhm"),
        ("pecvd_rf_power", 0.05, "MW", "mW"),
        ("iv_voc", 0.0007, "MV", "mV"),
        ("iv_isc", 9, "MA", "mA"),
        ("iv_shunt_resistance", 5, "KΩ", "kΩ"),
        ("pecvd_chamber_vacuum", 1, "MBAR", "mbar"),
        ("pecvd_chamber_vacuum", 1, "MTORR", "mTorr"),
        ("ambient_temperature", 300, "k", "K"),
    ],
)
def test_a_prefix_in_the_wrong_case_is_an_unknown_unit(
    element: str, value: float, unit: str, known: str
) -> None:
    with pytest.raises(DictionaryError) as info:
        D.measure(element, value, unit)
    message = str(info.value)
    assert f"unit {unit!r} is not known for {element}" in message
    assert f"'{unit[0]}' is not '{known[0]}'" in message  # the prefix that differs
    assert "use one of: " in message and known in message.split("use one of: ")[1]
    assert D.element(element).domain._conversion(unit) is None  # as line-in configs ask


@pytest.mark.parametrize(
    ("element", "value", "unit", "canonical"),
    [
        ("iv_series_resistance", 1, "OHM", 1.0),  # O is no prefix
        ("pecvd_chamber_vacuum", 1, "TORR", 133.322368),  # T as declared, ORR is no prefix
        ("pecvd_chamber_vacuum", 1, "mtorr", 0.133322368),  # m as declared
        ("iv_voc", 1, "mv", 0.001),
        ("ambient_temperature", 300, "KELVIN", 26.85),  # "Kelvin" is declared
        ("ambient_temperature", 21, "Celsius", 21.0),
    ],
)
def test_a_case_that_names_no_other_prefix_is_still_read(
    element: str, value: float, unit: str, canonical: float
) -> None:
    assert D.measure(element, value, unit).value == pytest.approx(canonical)


def test_prefix_case_clash_looks_at_prefix_letters_at_the_start_of_a_symbol() -> None:
    assert prefix_case_clash("MOhm", "mOhm") == ("M", "m")
    assert prefix_case_clash("KPa", "kPa") == ("K", "k")
    assert prefix_case_clash("mΩ·CM", "mΩ·cm") == ("C", "c")  # after '·': a new symbol
    assert prefix_case_clash("°f", "°F") == ("f", "F")
    assert prefix_case_clash("OHM", "ohm") is None
    assert prefix_case_clash("TORR", "Torr") is None
    assert prefix_case_clash("mV", "mv") is None


def _node_file(tmp_path: Path, conversions: list[dict[str, Any]]) -> Path:
    path = tmp_path / "node.json"
    element = {
        "id": "QDE-9001",
        "name": "stack_resistance",
        "definition": "Resistance of a test stack.",
        "data_type": "decimal",
        "value_domain": {"unit": "Ω", "unit_set": "ohm", "conversions": conversions},
    }
    path.write_text(
        json.dumps({"dictionary": "plant-x", "version": "1", "elements": [element]}),
        encoding="utf-8",
    )
    return path


def test_a_node_file_may_declare_milli_and_mega_and_keeps_both(tmp_path: Path) -> None:
    """Before, every unit also went in lower-cased: ``MOhm`` overwrote ``mohm``, so 5 mohm
    (milli, declared by the default) became 5,000,000 Ω."""
    path = _node_file(tmp_path, [{"units": ["MOhm", "MΩ"], "factor": 1e6}])
    d = load_dictionary(path).dictionary
    assert d.measure("stack_resistance", 5, "mohm").value == pytest.approx(0.005)
    assert d.measure("stack_resistance", 5, "mOhm").value == pytest.approx(0.005)
    assert d.measure("stack_resistance", 5, "MOhm").value == 5e6
    assert d.measure("stack_resistance", 5, "MΩ").value == 5e6
    with pytest.raises(DictionaryError, match="is not known"):  # M or m? refused, not guessed
        d.measure("stack_resistance", 5, "Mohm")


def test_units_that_differ_only_in_case_and_convert_differently_are_refused(
    tmp_path: Path,
) -> None:
    path = _node_file(
        tmp_path, [{"units": ["OHMS"], "factor": 1000.0}, {"units": ["ohms"], "factor": 1.0}]
    )
    with pytest.raises(DictionaryFileError) as info:
        load_dictionary(path)
    message = str(info.value)
    assert str(path) in message and "element QDE-9001" in message
    assert "'OHMS' and 'ohms' differ only in case" in message


def test_a_hand_built_domain_resolves_case_the_same_way() -> None:
    domain = UnitDomain("W", {"W": (1.0, 0.0), "mW": (0.001, 0.0), "MW": (1e6, 0.0)})
    d = DataDictionary([DataElement("X-0001", "power", "Power.", domain)])
    assert d.measure("power", 2, "MW").value == 2e6
    assert d.measure("power", 2, "mW").value == 0.002
    assert d.measure("power", 2, "w").value == 2.0
    with pytest.raises(DictionaryError, match="differ in case and convert differently"):
        d.measure("power", 2, "mw")


# -- D2: one grammar for numbers as text ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("12", 12.0),
        (" +12 ", 12.0),
        ("-0.5", -0.5),
        ("12.", 12.0),
        (".5", 0.5),
        ("1e3", 1000.0),
        ("1,5", 1.5),
        ("-12,25e1", -122.5),
        ("1,0000", 1.0),
        ("12\u00a0", 12.0),
    ],
)
def test_numbers_the_grammar_reads(text: str, number: float) -> None:
    assert parse_number(text) == number


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("1,000", "'1,000' is ambiguous: a comma before exactly three digits may be a "
         "thousands separator; write 1000 or 1.000"),
        ("0,500", "ambiguous"),
        ("1_000", "without '_'"),
        ("\uff11\uff12", "digits other than 0-9"),
        ("\u0663", "digits other than 0-9"),
        ("1.000,5", "no thousands separators"),
        ("1,000,000", "no thousands separators"),
        ("0x10", "expected a number"),
        ("½", "expected a number"),
    ],
)  # fmt: skip
def test_number_texts_the_grammar_refuses(text: str, reason: str) -> None:
    with pytest.raises(NumberTextError, match=reason.replace("(", r"\(")):
        parse_number(text)


def test_a_comma_is_a_thousands_separator_or_a_decimal_comma_never_a_guess() -> None:
    with pytest.raises(DictionaryError, match="'1,000' is ambiguous"):
        D.measure("pecvd_chamber_vacuum", "1,000", "mbar")  # was stored as 100 Pa
    assert D.measure("pecvd_chamber_vacuum", "1,5", "mbar").value == 150.0
    for text in ("1_000", "\uff11\uff12", "\u0663"):
        with pytest.raises(DictionaryError, match=r"is not a number|digits other than 0-9"):
            D.measure("pecvd_chamber_vacuum", text, "mbar")
    assert D.measure("solder_void_rate", "B", "grade").grade == "B"  # grades as before


def _measurement(value: str, unit: str = "mbar") -> dict[str, str]:
    return {
        "equipment": "PECVD-1",
        "parameter": "pecvd_chamber_vacuum",
        "value": value,
        "unit": unit,
        "measured_at": "2026-12-01T10:00:00Z",
    }


def _batch(quantity: str) -> dict[str, str]:
    return {
        "batch_id": "B1",
        "material": "wafer",
        "kind": "wafer",
        "producer": "P",
        "quantity": quantity,
        "made_at": "2026-12-01T10:00:00Z",
    }


@pytest.mark.parametrize("text", ["1,000", "1_000", "\uff11\uff12", "\u0663"])
def test_every_number_column_refuses_the_same_texts_naming_column_and_value(text: str) -> None:
    for kind, row, field in (
        ("measurement", _measurement(text), "value"),
        ("batch", _batch(text), "quantity"),
    ):
        with pytest.raises(FieldError) as info:
            parse_row(kind, row, D)
        problem = next(p for p in info.value.problems if p.field == field)
        assert repr(text) in problem.reason, kind
    assert col.number(True, 0.0)(["2", text]) == [2.0, col.BAD]


def test_every_number_column_reads_a_decimal_comma() -> None:
    assert parse_row("measurement", _measurement("1,5"), D)["value"] == 150.0
    assert parse_row("batch", _batch("1,5"), D)["quantity"] == 1.5  # was refused
    assert col.number(True, 0.0)(["2", "1,5"]) == [2.0, 1.5]


# -- D3: conversions without float noise --------------------------------------------------


@pytest.mark.parametrize(
    ("element", "value", "unit", "canonical"),
    [
        ("ambient_temperature", 300, "K", 26.85),  # was 26.850000000000023
        ("ambient_temperature", "300", "K", 26.85),
        ("firing_peak_temperature", "1073.15", "K", 800.0),  # was 800.0000000000001
        ("firing_peak_temperature", 1472, "F", 800.0),
        ("ambient_temperature", 32, "°F", 0.0),
        ("pecvd_chamber_vacuum", 1.1, "mbar", 110.0),  # was 110.00000000000001
        ("pecvd_chamber_vacuum", "1,1", "mbar", 110.0),
        ("lamination_pressure", "1.1", "bar", 110.0),
        ("solder_void_rate", "3.5", "%", 0.035),
    ],
)
def test_a_converted_value_is_the_decimal_one(
    element: str, value: Any, unit: str, canonical: float
) -> None:
    assert D.measure(element, value, unit).value == canonical


def test_a_value_in_the_canonical_unit_is_stored_as_delivered() -> None:
    text = "0.12345678901234567"  # 17 digits: not rounded to 15, nothing is converted
    assert D.measure("pecvd_chamber_vacuum", text, "Pa").value == float(text)


def test_the_range_check_is_relative_and_a_converted_limit_is_inside() -> None:
    domain = UnitDomain("Pa", {"Pa": (1.0, 0.0), "mbar": (100.0, 0.0)}, 0.0, 110.0)
    d = DataDictionary([DataElement("X-0001", "pressure", "Pressure.", domain)])
    assert d.measure("pressure", "1.1", "mbar").value == 110.0  # was 110.00000000000001: over
    with pytest.raises(DictionaryError, match="above the range"):
        d.measure("pressure", "1.11", "mbar")
    big = UnitDomain("Pa", {"Pa": (1.0, 0.0)}, 0.0, 1e5)
    d = DataDictionary([DataElement("X-0002", "big", "Big.", big)])
    noisy = 100000.00000000001  # the next double after the limit: float noise, not a reading
    assert d.measure("big", noisy, "Pa").value == noisy
    with pytest.raises(DictionaryError, match="above the range"):
        d.measure("big", 100000.001, "Pa")


# -- through the store: what a real SQLite file holds ------------------------------------


def test_what_the_store_keeps_of_units_numbers_and_conversions(tmp_path: Path) -> None:
    from qdspace.connector.storage import open_store

    rows: list[dict[str, str]] = [
        _measurement("1,000"),  # was stored as 100 Pa
        {**_measurement("5", "MW"), "parameter": "pecvd_rf_power"},  # was 0.005 W
        {**_measurement("1,5"), "measured_at": "2026-12-01T10:00:01Z"},
        {**_measurement("1.1"), "measured_at": "2026-12-01T10:00:02Z"},
        {**_measurement("1073.15", "K"), "parameter": "firing_peak_temperature"},
    ]
    store = open_store(f"sqlite:///{tmp_path}/q.db")
    try:
        report = store.ingest_rows("measurement", list(enumerate(rows, start=2)))
        batch = store.ingest_rows("batch", [(2, _batch("1,000"))])
        with store.engine.connect() as c:
            stored = c.exec_driver_sql(
                "SELECT parameter, raw_value, raw_unit, value, unit FROM qdm_measurement "
                "ORDER BY measured_at, parameter"
            ).all()
    finally:
        store.close()
    assert [(e.line, e.field) for e in report.rejected] == [(2, "value"), (3, "unit")]
    assert "'1,000' is ambiguous" in report.rejected[0].reason
    assert "unit 'MW' is not known for pecvd_rf_power" in report.rejected[1].reason
    assert [tuple(r) for r in stored] == [
        ("firing_peak_temperature", "1073.15", "K", 800.0, "°C"),
        ("pecvd_chamber_vacuum", "1,5", "mbar", 150.0, "Pa"),
        ("pecvd_chamber_vacuum", "1.1", "mbar", 110.0, "Pa"),
    ]
    assert [(e.field, "'1,000' is ambiguous" in e.reason) for e in batch.rejected] == [
        ("quantity", True)
    ]
