"""The data dictionary: data elements with value domains, in the ISO/IEC 11179 spirit.

Every data element has an identifier, a name, a definition and one value domain:

* a :class:`UnitDomain` (a canonical unit, the units it converts from, a range), which
  may also accept *grade codes* that stand for an interval of the canonical value;
* an :class:`EnumDomain` (permissible values and the synonyms plants actually send).

:meth:`DataDictionary.measure` turns what a plant delivered (``"3.5" %``, ``0.035``,
grade ``"B"``) into one canonical value, so the same solder void rate is stored once,
the same way, whichever representation arrived. A grade code is stored as the upper
bound of its interval: the conservative reading for a quality limit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from qdspace.connector.errors import DictionaryError


@dataclass(frozen=True)
class Grade:
    """A grade code: the canonical value lies in ``[lower, upper]``."""

    code: str
    lower: float
    upper: float
    meaning: str


@dataclass(frozen=True)
class UnitDomain:
    """Numbers in a canonical unit; other units convert as ``value * factor + offset``."""

    canonical_unit: str
    conversions: Mapping[str, tuple[float, float]]
    minimum: float | None = None
    maximum: float | None = None
    grades: Mapping[str, Grade] = field(default_factory=dict)

    def _conversion(self, unit: str) -> tuple[float, float] | None:
        return self.conversions.get(unit) or self.conversions.get(unit.lower())


@dataclass(frozen=True)
class EnumDomain:
    """Permissible values; ``synonyms`` maps what plants send (lower-cased) to one of them."""

    values: tuple[str, ...]
    synonyms: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DataElement:
    id: str
    name: str
    definition: str
    domain: UnitDomain | EnumDomain
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Measured:
    """A canonical value and how it was delivered."""

    element: DataElement
    value: float
    unit: str
    grade: str | None


def _units(
    canonical: str, *pairs: tuple[Iterable[str], float, float]
) -> dict[str, tuple[float, float]]:
    table: dict[str, tuple[float, float]] = {canonical: (1.0, 0.0), canonical.lower(): (1.0, 0.0)}
    for names, factor, offset in pairs:
        for name in names:
            table[name] = (factor, offset)
            table[name.lower()] = (factor, offset)
    return table


_CELSIUS = _units(
    "°C",
    (("degC", "C", "celsius", "℃"), 1.0, 0.0),
    (("K", "kelvin"), 1.0, -273.15),
    (("°F", "degF", "F", "fahrenheit"), 5.0 / 9.0, -32.0 * 5.0 / 9.0),
)
_FRACTION = _units(
    "1",
    (("fraction", "ratio"), 1.0, 0.0),
    (("%", "percent", "pct"), 0.01, 0.0),
    (("ppm",), 1e-6, 0.0),
)


class DataDictionary:
    """Look-up by name or alias; conversion of delivered values to canonical ones."""

    def __init__(self, elements: Iterable[DataElement]):
        self._elements: dict[str, DataElement] = {}
        self._by_key: dict[str, DataElement] = {}
        for element in elements:
            if element.id in self._elements:
                raise DictionaryError(f"data element id {element.id} defined twice")
            self._elements[element.id] = element
            for key in (element.name, *element.aliases):
                if key.lower() in self._by_key:
                    raise DictionaryError(f"data element name or alias {key!r} defined twice")
                self._by_key[key.lower()] = element

    def __iter__(self) -> Any:
        return iter(self._elements.values())

    def __len__(self) -> int:
        return len(self._elements)

    def element(self, name: str) -> DataElement:
        found = self._by_key.get(name.strip().lower())
        if found is None:
            raise DictionaryError(
                f"unknown data element {name!r}; known: {', '.join(sorted(e.name for e in self))}"
            )
        return found

    def measure(self, name: str, value: Any, unit: str | None) -> Measured:
        """Canonical value of ``value`` (a number, a numeric string or a grade code) in ``unit``."""
        element = self.element(name)
        domain = element.domain
        if not isinstance(domain, UnitDomain):
            raise DictionaryError(f"{element.name} is an enumeration, not a measured quantity")
        unit = (unit or "").strip()
        number = _number(value)
        if number is None:
            code = str(value).strip()
            grade = domain.grades.get(code) or domain.grades.get(code.upper())
            if grade is None:
                accepted = f"; grade codes: {', '.join(domain.grades)}" if domain.grades else ""
                raise DictionaryError(
                    f"{code!r} is neither a number nor a grade code of {element.name}{accepted}"
                )
            if unit and unit.lower() not in ("grade", "code", "class"):
                raise DictionaryError(
                    f"grade code {code!r} of {element.name} given with unit {unit!r}"
                )
            return Measured(element, grade.upper, domain.canonical_unit, grade.code)
        if not unit:
            raise DictionaryError(
                f"{element.name} needs a unit (canonical: {domain.canonical_unit})"
            )
        conversion = domain._conversion(unit)
        if conversion is None:
            raise DictionaryError(
                f"unit {unit!r} is not known for {element.name}; use one of: "
                f"{', '.join(_declared_units(domain))}"
            )
        factor, offset = conversion
        canonical = number * factor + offset
        if domain.minimum is not None and canonical < domain.minimum - 1e-12:
            raise DictionaryError(
                f"{number} {unit} is below the range of {element.name} "
                f"({domain.minimum} {domain.canonical_unit})"
            )
        if domain.maximum is not None and canonical > domain.maximum + 1e-12:
            raise DictionaryError(
                f"{number} {unit} is above the range of {element.name} "
                f"({domain.maximum} {domain.canonical_unit})"
            )
        return Measured(element, canonical, domain.canonical_unit, None)

    def code(self, name: str, value: Any) -> str:
        """The permissible value of enumeration ``name`` that ``value`` stands for."""
        element = self.element(name)
        domain = element.domain
        if not isinstance(domain, EnumDomain):
            raise DictionaryError(f"{element.name} is a measured quantity, not an enumeration")
        text = str(value).strip()
        if text in domain.values:
            return text
        found = domain.synonyms.get(text.lower())
        if found is None:
            raise DictionaryError(
                f"{text!r} is not a value of {element.name}; one of: {', '.join(domain.values)}"
            )
        return found

    def to_json(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for e in self:
            entry: dict[str, Any] = {
                "id": e.id,
                "name": e.name,
                "definition": e.definition,
                "aliases": list(e.aliases),
            }
            d = e.domain
            if isinstance(d, UnitDomain):
                entry["domain"] = {
                    "type": "unit",
                    "canonical_unit": d.canonical_unit,
                    "conversions": {
                        u: {"factor": f, "offset": o} for u, (f, o) in sorted(d.conversions.items())
                    },
                    "minimum": d.minimum,
                    "maximum": d.maximum,
                    "grades": [
                        {"code": g.code, "lower": g.lower, "upper": g.upper, "meaning": g.meaning}
                        for g in d.grades.values()
                    ],
                }
            else:
                entry["domain"] = {
                    "type": "enumeration",
                    "values": list(d.values),
                    "synonyms": dict(d.synonyms),
                }
            out.append(entry)
        return out


def _declared_units(domain: UnitDomain) -> list[str]:
    seen: dict[str, str] = {}
    for unit in domain.conversions:
        seen.setdefault(unit.lower(), unit)
    return sorted(seen.values())


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    else:
        text = str(value).strip().replace(",", ".") if value is not None else ""
        try:
            number = float(text)
        except ValueError:
            return None
    if not math.isfinite(number):
        raise DictionaryError(f"{value!r} is not a finite number")
    return number


def _enum(values: Iterable[str], synonyms: Mapping[str, Iterable[str]]) -> EnumDomain:
    table = {v.lower(): v for v in values}
    for canonical, names in synonyms.items():
        for name in names:
            table[name.lower()] = canonical
    return EnumDomain(tuple(values), table)


@cache
def default_dictionary() -> DataDictionary:
    """The dictionary every node starts with (PV cell and module manufacturing)."""
    void_grades = {
        g.code: g
        for g in (
            Grade("A", 0.0, 0.05, "void area up to 5 %"),
            Grade("B", 0.05, 0.15, "void area over 5 % up to 15 %"),
            Grade("C", 0.15, 0.25, "void area over 15 % up to 25 %"),
            Grade("D", 0.25, 1.0, "void area over 25 % (reject)"),
        )
    }
    return DataDictionary(
        [
            DataElement(
                "QDE-0001",
                "solder_void_rate",
                "Share of the solder joint area of a cell interconnection that is void (X-ray).",
                UnitDomain("1", _FRACTION, 0.0, 1.0, void_grades),
                ("void_rate",),
            ),
            DataElement(
                "QDE-0002",
                "pecvd_chamber_vacuum",
                "Absolute pressure in the PECVD anti-reflective coating chamber during deposition.",
                UnitDomain(
                    "Pa",
                    _units(
                        "Pa",
                        (("mbar", "hPa"), 100.0, 0.0),
                        (("kPa",), 1000.0, 0.0),
                        (("Torr",), 133.322368, 0.0),
                        (("mTorr",), 0.133322368, 0.0),
                        (("bar",), 1e5, 0.0),
                    ),
                    0.0,
                    1.2e5,
                ),
                ("chamber_pressure", "pecvd_pressure"),
            ),
            DataElement(
                "QDE-0003",
                "firing_peak_temperature",
                "Peak belt temperature of the contact firing furnace.",
                UnitDomain("°C", _CELSIUS, -50.0, 1200.0),
            ),
            DataElement(
                "QDE-0004",
                "lamination_temperature",
                "Plate temperature of the module laminator during the curing phase.",
                UnitDomain("°C", _CELSIUS, -50.0, 400.0),
            ),
            DataElement(
                "QDE-0005",
                "wafer_thickness",
                "Mean thickness of an as-cut silicon wafer.",
                UnitDomain(
                    "µm",
                    _units(
                        "µm", (("um", "micron", "micrometre"), 1.0, 0.0), (("mm",), 1000.0, 0.0)
                    ),
                    0.0,
                    2000.0,
                ),
            ),
            DataElement(
                "QDE-0006",
                "arc_thickness",
                "Thickness of the silicon nitride anti-reflective coating.",
                UnitDomain(
                    "nm",
                    _units("nm", (("µm", "um"), 1000.0, 0.0), (("Å", "angstrom"), 0.1, 0.0)),
                    0.0,
                    1000.0,
                ),
            ),
            DataElement(
                "QDE-0007",
                "cell_efficiency",
                "Conversion efficiency of a finished cell under standard test conditions.",
                UnitDomain("1", _FRACTION, 0.0, 1.0),
            ),
            DataElement(
                "QDE-0008",
                "ambient_temperature",
                "Air temperature at a line location.",
                UnitDomain("°C", _CELSIUS, -50.0, 80.0),
                ("temperature",),
            ),
            DataElement(
                "QDE-0009",
                "relative_humidity",
                "Relative humidity of the air at a line location.",
                UnitDomain(
                    "%RH",
                    _units(
                        "%RH", (("%", "percent", "rh"), 1.0, 0.0), (("fraction", "1"), 100.0, 0.0)
                    ),
                    0.0,
                    100.0,
                ),
                ("humidity",),
            ),
            DataElement(
                "QDE-0010",
                "ribbon_peel_force",
                "Force needed to peel an interconnection ribbon off the busbar.",
                UnitDomain(
                    "N", _units("N", (("cN",), 0.01, 0.0), (("kgf",), 9.80665, 0.0)), 0.0, 100.0
                ),
            ),
            DataElement(
                "QDE-0011",
                "silane_flow",
                "SiH4 gas flow into the PECVD chamber.",
                UnitDomain("sccm", _units("sccm", (("slm",), 1000.0, 0.0)), 0.0, 1e5),
            ),
            # the wafer maker's (issue 14): crystal growth, ingot and wafer metrology
            DataElement(
                "QDE-0021",
                "ingot_resistivity",
                "Bulk resistivity of a silicon ingot at one position (four-point probe).",
                UnitDomain(
                    "Ω·cm",
                    _units(
                        "Ω·cm",
                        (("ohm·cm", "ohm cm", "ohm*cm", "ohm-cm", "ohmcm", "Ω cm"), 1.0, 0.0),
                        (("mΩ·cm", "mohm cm", "mohm·cm"), 0.001, 0.0),
                        (("Ω·m", "ohm m", "ohm·m"), 100.0, 0.0),
                    ),
                    0.0,
                    1e4,
                ),
                ("resistivity",),
            ),
            DataElement(
                "QDE-0022",
                "minority_carrier_lifetime",
                "Effective minority-carrier lifetime of a silicon sample (QSSPC).",
                UnitDomain(
                    "µs",
                    _units(
                        "µs",
                        (("us", "microsecond", "microseconds"), 1.0, 0.0),
                        (("ms",), 1000.0, 0.0),
                        (("ns",), 0.001, 0.0),
                    ),
                    0.0,
                    1e5,
                ),
                ("carrier_lifetime",),
            ),
            DataElement(
                "QDE-0023",
                "total_thickness_variation",
                "Difference between the thickest and thinnest point of an as-cut wafer.",
                UnitDomain(
                    "µm",
                    _units(
                        "µm", (("um", "micron", "micrometre"), 1.0, 0.0), (("mm",), 1000.0, 0.0)
                    ),
                    0.0,
                    500.0,
                ),
                ("ttv",),
            ),
            DataElement(
                "QDE-0024",
                "crystal_pull_rate",
                "Pull rate of the crystal in a Czochralski puller during body growth.",
                UnitDomain(
                    "mm/min",
                    _units("mm/min", (("mm/h",), 1.0 / 60.0, 0.0), (("µm/s", "um/s"), 0.06, 0.0)),
                    0.0,
                    20.0,
                ),
                ("pull_rate",),
            ),
            DataElement(
                "QDE-0025",
                "wire_saw_tension",
                "Tension of the diamond wire in a multi-wire saw.",
                UnitDomain(
                    "N", _units("N", (("cN",), 0.01, 0.0), (("kgf",), 9.80665, 0.0)), 0.0, 200.0
                ),
                ("wire_tension",),
            ),
            DataElement(
                "QDE-0101",
                "verdict",
                "Outcome of an inspection.",
                _enum(
                    ("pass", "fail"),
                    {
                        "pass": ("ok", "passed", "good", "g", "io", "accept"),
                        "fail": ("nok", "failed", "bad", "ng", "nio", "reject"),
                    },
                ),
            ),
            DataElement(
                "QDE-0102",
                "defect_class",
                "Class of the defect an inspection found ('none' when it passed).",
                _enum(
                    (
                        "none",
                        "crack",
                        "microcrack",
                        "finger_interruption",
                        "dark_area",
                        "short_circuit",
                        "contamination",
                        "void",
                        "other",
                    ),
                    {
                        "none": ("", "-", "no_defect"),
                        "microcrack": ("micro-crack", "micro_crack"),
                        "finger_interruption": ("finger", "broken_finger"),
                        "dark_area": ("dark", "inactive_area"),
                    },
                ),
            ),
            DataElement(
                "QDE-0103",
                "order_status",
                "Life-cycle state of a purchase order.",
                _enum(("open", "closed"), {"closed": ("done", "completed", "finished")}),
            ),
            DataElement(
                "QDE-0104",
                "batch_kind",
                "What a material batch is.",
                _enum(
                    ("ingot", "wafer", "cell", "string", "module", "material"),
                    {"cell": ("cells",), "wafer": ("wafers",), "ingot": ("ingots",)},
                ),
            ),
            DataElement(
                "QDE-0106",
                "calibration_result",
                "Outcome of calibrating a piece of measuring equipment (a certificate whose "
                "result is fail does not make the equipment's readings calibrated).",
                _enum(
                    ("pass", "adjusted", "fail"),
                    {
                        "pass": ("ok", "conforming", "in_tolerance", "passed"),
                        "adjusted": ("adjusted_pass", "limited"),
                        "fail": ("nok", "non_conforming", "out_of_tolerance", "failed"),
                    },
                ),
            ),
            DataElement(
                "QDE-0105",
                "cell_type",
                "Crystal structure of a silicon cell.",
                _enum(
                    ("mono", "poly"),
                    {
                        "mono": ("monocrystalline", "mono-si"),
                        "poly": ("polycrystalline", "multi", "mc-si"),
                    },
                ),
            ),
        ]
    )
