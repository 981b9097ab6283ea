"""The data dictionary: data elements with value domains, in the ISO/IEC 11179 spirit.

The elements themselves are data, not code: :mod:`connector.dictionary_file` reads them
from the package's ``dictionary.json`` (and a node's own file over it). This module is
the plain domain: the element and value-domain types and the conversions.

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
    """Permissible values (a code list); ``synonyms`` maps what plants send (lower-cased) to
    one of them; ``meanings`` says what a code stands for, where the dictionary says so."""

    values: tuple[str, ...]
    synonyms: Mapping[str, str] = field(default_factory=dict)
    meanings: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DataElement:
    id: str
    name: str
    definition: str
    domain: UnitDomain | EnumDomain
    #: other names of the element (other systems' field names): looked up like the name
    aliases: tuple[str, ...] = ()
    #: alias -> the system that uses it, where the dictionary names one
    systems: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Measured:
    """A canonical value and how it was delivered."""

    element: DataElement
    value: float
    unit: str
    grade: str | None


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
                    f"{_quoted(code)} is neither a number nor a grade code of "
                    f"{element.name}{accepted}"
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
                f"{', '.join(declared_units(domain))}"
            )
        factor, offset = conversion
        canonical = number * factor + offset
        if not math.isfinite(canonical):  # a finite number past a float once converted
            raise DictionaryError(
                f"{number} {unit} is too large for {element.name} in {domain.canonical_unit}"
            )
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


def declared_units(domain: UnitDomain) -> list[str]:
    """The units ``domain`` accepts as declared (without the lower-cased look-up copies)."""
    seen: dict[str, str] = {}
    for unit in domain.conversions:
        seen.setdefault(unit.lower(), unit)
    return sorted(seen.values())


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an int of more than 308 digits
            big = int(value).bit_length() > 14_000  # str() of more than 4300 digits raises
            digits = "more than 4300" if big else str(len(str(abs(value))))
            raise DictionaryError(f"an integer of {digits} digits is no finite number") from None
    else:
        text = str(value).strip().replace(",", ".") if value is not None else ""
        try:
            number = float(text)
        except ValueError:
            return None
    if not math.isfinite(number):
        raise DictionaryError(f"{_quoted(value)} is not a finite number")
    return number


def _quoted(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut short: a reason should not carry a 60 kB value whole."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@cache
def default_dictionary() -> DataDictionary:
    """The dictionary every node starts with: the package's ``dictionary.json`` (PV wafer,
    cell and module manufacturing). A node's own file goes over it through
    :func:`connector.dictionary_file.load_dictionary`."""
    from qdspace.connector.dictionary_file import load_dictionary

    return load_dictionary().dictionary
