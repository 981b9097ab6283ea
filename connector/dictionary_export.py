"""The effective data dictionary for other tools: a registry document and a SAMM model.

Why two: a metadata registry (or a partner's data steward) reads the ISO/IEC 11179
view, one record per data element with its designation, definition, data type, value
domain and the names other systems use (:func:`registry_document`); Catena-X users
exchange SAMM aspect models in Turtle (:func:`samm_aspect`), one property per element
whose characteristic is a measurement with its unit (range as a trait) or an
enumeration of its codes. Both are built from the loaded records, so what is exported
is what the node validates with. Pure functions: the CLI writes the files.
"""

from __future__ import annotations

import re
from typing import Any

from qdspace.connector.dictionary import EnumDomain, UnitDomain, declared_units
from qdspace.connector.dictionary_file import LoadedDictionary

REGISTRY_FORMAT = "qdspace-data-dictionary-registry/1"
SAMM_VERSION = "2.1.0"
DEFAULT_SAMM_NAMESPACE = "urn:samm:io.qdspace.dictionary"

#: canonical units -> the SAMM unit catalogue's names; others are declared in the model
SAMM_UNITS = {
    "°C": "degreeCelsius",
    "W": "watt",
    "V": "volt",
    "A": "ampere",
    "Ω": "ohm",
    "Pa": "pascal",
    "kPa": "kilopascal",
    "N": "newton",
    "nm": "nanometre",
    "µm": "micrometreMicron",
    "µs": "microsecond",
    "s": "secondUnitOfTime",
}


def registry_document(loaded: LoadedDictionary) -> dict[str, Any]:
    """One ISO/IEC 11179 record per data element, with the document's provenance."""
    return {
        "format": REGISTRY_FORMAT,
        "version": loaded.version,
        "sources": [{"dictionary": s.dictionary, "version": s.version} for s in loaded.sources],
        "data_elements": [_record(loaded, e.id) for e in loaded.dictionary],
    }


def _record(loaded: LoadedDictionary, ident: str) -> dict[str, Any]:
    element = next(e for e in loaded.dictionary if e.id == ident)
    model = loaded.records[ident]
    d = element.domain
    domain: dict[str, Any]
    if isinstance(d, UnitDomain):
        domain = {
            "unit_of_measure": d.canonical_unit,
            "accepted_units": {
                unit: {"factor": d.conversions[unit][0], "offset": d.conversions[unit][1]}
                for unit in declared_units(d)
                if unit != d.canonical_unit
            },
            "minimum": d.minimum,
            "maximum": d.maximum,
            "grade_codes": [
                {"code": g.code, "lower": g.lower, "upper": g.upper, "meaning": g.meaning}
                for g in d.grades.values()
            ],
        }
    else:
        domain = {"permissible_values": _codes(d)}
    return {
        "identifier": element.id,
        "version": model.version,
        "designation": element.name,
        "definition": element.definition,
        "data_type": model.data_type,
        "value_domain": domain,
        "synonyms": [
            {"name": alias, "context": element.systems.get(alias)} for alias in element.aliases
        ],
    }


def _codes(d: EnumDomain) -> list[dict[str, Any]]:
    return [
        {
            "value": code,
            "meaning": d.meanings.get(code, ""),
            "synonyms": sorted(s for s, c in d.synonyms.items() if c == code and s != code.lower()),
        }
        for code in d.values
    ]


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _pascal(name: str) -> str:
    camel = _camel(name)
    return camel[:1].upper() + camel[1:]


def _literal(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _unit_name(unit: str) -> str:
    """A Turtle local name for a unit the SAMM catalogue lacks (``%RH`` -> ``percentRh``)."""
    words = {"%": "percent", "Ω": "ohm", "µ": "micro", "·": "", "/": "Per", "°": "degree"}
    text = "".join(words.get(ch, ch) for ch in unit)
    text = re.sub(r"[^A-Za-z0-9]", "", text) or "unit"
    return "unit" + text[:1].upper() + text[1:]


def samm_aspect(
    loaded: LoadedDictionary,
    namespace: str = DEFAULT_SAMM_NAMESPACE,
    version: str | None = None,
) -> str:
    """A SAMM aspect model (Turtle): one property per data element."""
    model_version = version or loaded.sources[-1].version
    if not re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", model_version):
        model_version = "1.0.0"
    prefix = f"{namespace}:{model_version}#"
    lines = [
        f"@prefix : <{prefix}> .",
        f"@prefix samm: <urn:samm:org.eclipse.esmf.samm:meta-model:{SAMM_VERSION}#> .",
        f"@prefix samm-c: <urn:samm:org.eclipse.esmf.samm:characteristic:{SAMM_VERSION}#> .",
        f"@prefix unit: <urn:samm:org.eclipse.esmf.samm:unit:{SAMM_VERSION}#> .",
        "@prefix xsd: <http://www.w3.org/2001/XMLSchema#> .",
        "",
    ]
    elements = list(loaded.dictionary)
    properties = " ".join(f":{_camel(e.name)}" for e in elements)
    lines += [
        ":QualityDataDictionary a samm:Aspect ;",
        f'   samm:preferredName "Quality data dictionary ({loaded.version})"@en ;',
        '   samm:description "The quality data elements a qdspace node stores, with '
        'their units and codes (ISO/IEC 11179 records)."@en ;',
        f"   samm:properties ( {properties} ) ;",
        "   samm:operations ( ) ;",
        "   samm:events ( ) .",
        "",
    ]
    custom: dict[str, str] = {}
    for e in elements:
        lines += _property(e, custom)
    for unit, name in sorted(custom.items()):
        lines += [
            f":{name} a unit:Unit ;",
            f"   samm:preferredName {_literal(unit)}@en ;",
            f"   unit:symbol {_literal(unit)} .",
            "",
        ]
    return "\n".join(lines)


def _property(e: Any, custom: dict[str, str]) -> list[str]:
    prop, char = _camel(e.name), _pascal(e.name)
    see = f"urn:qdspace:data-element:{e.id}"
    out = [
        f":{prop} a samm:Property ;",
        f"   samm:preferredName {_literal(e.name)}@en ;",
        f"   samm:description {_literal(e.definition)}@en ;",
        f"   samm:see <{see}> ;",
        f"   samm:characteristic :{char}{'Trait' if _ranged(e) else ''} .",
        "",
    ]
    d = e.domain
    if isinstance(d, EnumDomain):
        values = " ".join(_literal(v) for v in d.values)
        return [
            *out,
            f":{char} a samm-c:Enumeration ;",
            "   samm:dataType xsd:string ;",
            f"   samm-c:values ( {values} ) .",
            "",
        ]
    if d.canonical_unit == "1":
        out += [f":{char} a samm-c:Quantifiable ;", "   samm:dataType xsd:double ."]
    else:
        unit = SAMM_UNITS.get(d.canonical_unit)
        if unit is None:
            ref = ":" + custom.setdefault(d.canonical_unit, _unit_name(d.canonical_unit))
        else:
            ref = f"unit:{unit}"
        out += [
            f":{char} a samm-c:Measurement ;",
            "   samm:dataType xsd:double ;",
            f"   samm-c:unit {ref} .",
        ]
    out.append("")
    if _ranged(e):
        out += [
            f":{char}Trait a samm-c:Trait ;",
            f"   samm-c:baseCharacteristic :{char} ;",
            f"   samm-c:constraint :{char}Range .",
            "",
            f":{char}Range a samm-c:RangeConstraint ;",
        ]
        bounds = []
        if d.minimum is not None:
            bounds.append(f'   samm-c:minValue "{d.minimum!r}"^^xsd:double')
        if d.maximum is not None:
            bounds.append(f'   samm-c:maxValue "{d.maximum!r}"^^xsd:double')
        out += [" ;\n".join(bounds) + " .", ""]
    return out


def _ranged(e: Any) -> bool:
    d = e.domain
    return isinstance(d, UnitDomain) and (d.minimum is not None or d.maximum is not None)
