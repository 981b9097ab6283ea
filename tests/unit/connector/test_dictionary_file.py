"""The data dictionary as a file: the default keeps every element, extra files extend it,
bad files are refused with file, element and attribute, and the exports are readable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import rdflib
from typer.testing import CliRunner

from qdspace.connector.dictionary import default_dictionary
from qdspace.connector.dictionary_export import registry_document, samm_aspect
from qdspace.connector.dictionary_file import (
    DEFAULT_FILE,
    DictionaryFileError,
    load_dictionary,
)
from qdspace.connector.errors import DictionaryError
from qdspace.node.cli import app

V1 = Path(__file__).parent / "data" / "dictionary_v1_elements.json"


def test_every_element_of_the_python_dictionary_is_kept_unchanged() -> None:
    """The elements the dictionary had as Python code (snapshot), identical to the last
    conversion factor, synonym and grade. Units as declared only: the snapshot's
    lower-cased look-up copies (``k`` for ``K``, ``kpa`` for ``kPa``) are gone, since a
    unit in another case is resolved at look-up and never where case names a prefix
    (``MW`` is not ``mW``); new spellings may be added."""
    now = {e["id"]: e for e in default_dictionary().to_json()}
    for element in json.loads(V1.read_text()):
        current = now[element["id"]]
        old, new = element["domain"].get("conversions"), current["domain"].get("conversions")
        if old is not None:
            declared = {
                u: way
                for u, way in old.items()
                if not any(other != u and other.lower() == u for other in old)
            }
            assert new is not None and declared.items() <= new.items(), element["id"]
            element = {**element, "domain": {**element["domain"], "conversions": None}}
            current = {**current, "domain": {**current["domain"], "conversions": None}}
        assert current == element, element["id"]


@pytest.mark.parametrize(
    ("name", "value", "unit", "canonical"),
    [
        ("Pmax", "5750", "mW", 5.75),
        ("iv_voc", 0.712, "V", 0.712),
        ("Isc", 10250, "mA", 10.25),
        ("FF", 81.5, "%", 0.815),
        ("Rs", 1.2, "mΩ", 0.0012),
        ("Rsh", 2.5, "kOhm", 2500.0),
        ("pecvd_rf_power", 6.5, "kW", 6500.0),
        ("firing_belt_speed", 6.0, "m/min", 100.0),
        ("lamination_pressure", 800, "mbar", 80.0),
        ("gel_content", 86, "%", 0.86),
    ],
)
def test_pv_line_elements_convert(name: str, value: Any, unit: str, canonical: float) -> None:
    assert default_dictionary().measure(name, value, unit).value == pytest.approx(canonical)


def test_el_grades_are_a_code_list_with_meanings() -> None:
    d = default_dictionary()
    assert d.code("el_grade", "2") == "B"
    assert d.code("EL_Class", "scrap") == "R"
    with pytest.raises(DictionaryError, match="not a value of el_grade"):
        d.code("el_grade", "E")
    element = d.element("el_grade")
    assert element.systems["EL_Class"] == "EL tester export"


def _doc(elements: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"dictionary": "plant-x", "version": "1.3", "elements": elements, **extra}


ZONE = {
    "id": "PLX-0001",
    "name": "firing_zone7_temperature",
    "definition": "Zone 7 of the firing furnace.",
    "data_type": "decimal",
    "value_domain": {"unit": "°C", "unit_set": "celsius", "minimum": 0, "maximum": 1000},
    "synonyms": [{"name": "Z7_TEMP", "system": "furnace PLC"}],
}


def test_an_extra_file_adds_and_replaces_without_code(tmp_path: Path) -> None:
    vacuum = {
        "id": "QDE-0002",
        "version": 2,
        "name": "pecvd_chamber_vacuum",
        "definition": "Chamber pressure (plant X measures in mTorr only).",
        "data_type": "decimal",
        "value_domain": {"unit": "Pa", "conversions": [{"units": ["mTorr"], "factor": 0.1333}]},
    }
    extra = tmp_path / "plant.json"
    extra.write_text(json.dumps(_doc([ZONE, vacuum])))
    loaded = load_dictionary(extra)
    d = loaded.dictionary
    assert d.measure("Z7_TEMP", 1400, "°F").value == pytest.approx(760.0)
    assert d.measure("pecvd_chamber_vacuum", 1000, "mTorr").value == pytest.approx(133.3)
    with pytest.raises(DictionaryError, match="unit 'mbar' is not known"):
        d.measure("pecvd_chamber_vacuum", 1, "mbar")  # replaced whole: no mbar any more
    assert loaded.version == "qdspace-pv 2.0.0 + plant-x 1.3"
    assert len(d) == len(default_dictionary()) + 1


def test_a_number_past_a_float_once_converted_is_refused(tmp_path: Path) -> None:
    """An element of the operator's with no maximum and a large factor: 1e308 mTorr was
    finite when read and infinite once converted, and stored as such."""
    vacuum = {
        "id": "PLX-0002",
        "name": "plx_vacuum",
        "definition": "Chamber pressure.",
        "data_type": "decimal",
        "value_domain": {"unit": "Pa", "conversions": [{"units": ["kPa"], "factor": 1000}]},
    }
    extra = tmp_path / "plant.json"
    extra.write_text(json.dumps(_doc([vacuum])))
    d = load_dictionary(extra).dictionary
    with pytest.raises(DictionaryError, match="1e\\+308 kPa is too large for plx_vacuum in Pa"):
        d.measure("plx_vacuum", 1e308, "kPa")
    assert d.measure("plx_vacuum", 1e300, "kPa").value == pytest.approx(1e303)


def test_an_extra_file_may_be_yaml(tmp_path: Path) -> None:
    extra = tmp_path / "plant.yaml"
    extra.write_text(
        "# plant X's furnace\ndictionary: plant-x\nversion: '1'\nelements:\n"
        "  - id: PLX-0001\n    name: firing_zone7_temperature\n"
        "    definition: Zone 7.\n    data_type: decimal\n"
        "    value_domain: {unit: °C, unit_set: celsius}\n"
    )
    assert load_dictionary(extra).dictionary.measure("firing_zone7_temperature", 300, "K")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"definition": None}, r"element PLX-0001: definition: "),
        ({"data_type": "code"}, r"element PLX-0001: -: Value error, data_type 'code'"),
        (
            {"value_domain": {"unit": "°C", "unit_set": "kelvinish"}},
            r"element PLX-0001: value_domain.unit_set: no unit set 'kelvinish'",
        ),
        (
            {"value_domain": {"unit": "K", "unit_set": "celsius"}},
            r"unit set 'celsius' converts to '°C', not to 'K'",
        ),
        ({"name": "Bad Name"}, r"element PLX-0001: name: String should match"),
        ({"colour": "red"}, r"element PLX-0001: colour: Extra inputs are not permitted"),
        (
            {"value_domain": {"unit": "°C", "minimum": 5, "maximum": 1}},
            r"value_domain: Value error, maximum 1.0 is below minimum 5.0",
        ),
        ({"synonyms": ["void_rate"]}, r"name or alias 'void_rate' defined twice"),
    ],
)
def test_a_bad_file_is_refused_naming_file_element_attribute(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    element = {**ZONE, **change}
    element = {k: v for k, v in element.items() if v is not None}
    extra = tmp_path / "plant.json"
    extra.write_text(json.dumps(_doc([element])))
    with pytest.raises(DictionaryFileError, match=message) as caught:
        load_dictionary(extra)
    assert str(extra) in str(caught.value)


def test_broken_json_names_the_line(tmp_path: Path) -> None:
    extra = tmp_path / "plant.json"
    extra.write_text('{\n "dictionary": "x",\n "version": 1,,\n}')
    with pytest.raises(DictionaryFileError, match=r"plant.json:3: not valid JSON"):
        load_dictionary(extra)


def test_an_id_twice_in_one_file_is_refused(tmp_path: Path) -> None:
    extra = tmp_path / "plant.json"
    extra.write_text(json.dumps(_doc([ZONE, ZONE])))
    with pytest.raises(DictionaryFileError, match="element PLX-0001: id: defined twice"):
        load_dictionary(extra)


def test_registry_document_has_every_element_with_iso_11179_attributes() -> None:
    doc = registry_document(load_dictionary())
    records = {r["identifier"]: r for r in doc["data_elements"]}
    assert set(records) == {e.id for e in default_dictionary()}
    pmax = records["QDE-0031"]
    assert pmax["designation"] == "iv_pmax"
    assert pmax["data_type"] == "decimal"
    assert pmax["value_domain"]["unit_of_measure"] == "W"
    assert "mW" in pmax["value_domain"]["accepted_units"]
    assert {"name": "Pmax", "context": "IV flasher export"} in pmax["synonyms"]
    grades = records["QDE-0107"]["value_domain"]["permissible_values"]
    assert [g["value"] for g in grades] == ["A", "B", "C", "R"]
    assert grades[3]["meaning"] == "reject"


def test_samm_aspect_is_turtle_with_one_property_per_element() -> None:
    samm = "urn:samm:org.eclipse.esmf.samm:meta-model:2.1.0#"
    char = "urn:samm:org.eclipse.esmf.samm:characteristic:2.1.0#"
    unit = "urn:samm:org.eclipse.esmf.samm:unit:2.1.0#"
    graph = rdflib.Graph()
    graph.parse(data=samm_aspect(load_dictionary()), format="turtle")
    props = set(graph.subjects(rdflib.RDF.type, rdflib.URIRef(samm + "Property")))
    assert len(props) == len(default_dictionary())
    ns = "urn:samm:io.qdspace.dictionary:2.0.0#"
    pmax = rdflib.URIRef(ns + "IvPmax")
    assert (pmax, rdflib.URIRef(char + "unit"), rdflib.URIRef(unit + "watt")) in graph
    aspect = rdflib.URIRef(ns + "QualityDataDictionary")
    assert (aspect, rdflib.RDF.type, rdflib.URIRef(samm + "Aspect")) in graph


def test_cli_check_and_export(tmp_path: Path) -> None:
    extra = tmp_path / "plant.json"
    extra.write_text(json.dumps(_doc([ZONE])))
    runner = CliRunner()
    result = runner.invoke(app, ["dictionary", "check", str(extra)])
    assert result.exit_code == 0, result.output
    assert "adds 1: PLX-0001" in result.output
    out = tmp_path / "registry.json"
    result = runner.invoke(app, ["dictionary", "export", "--file", str(extra), "--out", str(out)])
    assert result.exit_code == 0, result.output
    ids = [r["identifier"] for r in json.loads(out.read_text())["data_elements"]]
    assert "PLX-0001" in ids
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_doc([{**ZONE, "data_type": "text"}])))
    result = runner.invoke(app, ["dictionary", "check", str(bad)])
    assert result.exit_code != 0
    assert "element PLX-0001: data_type" in result.output


def test_the_default_file_is_package_data() -> None:
    assert DEFAULT_FILE.name == "dictionary.json"
    assert json.loads(DEFAULT_FILE.read_text())["format"] == "qdspace-data-dictionary/1"
