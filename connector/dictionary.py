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

Units are case-sensitive where case carries meaning. ``mΩ`` and ``MΩ`` are a factor of
10^9 apart, ``mW`` and ``MW`` too, and ``K`` is the kelvin, not the kilo; before, a unit
in the wrong case was looked up lower-cased, so 5 ``MΩ`` was stored as 0.005 Ω, in
range, without a word. Now a unit is looked up as spelled; only where that finds none
may the case differ, and only where it cannot change a prefix (see
:func:`prefix_case_clash`): every declared unit of the element that matches the
spelling case-insensitively must convert the same way, and one of them must not differ
from it in the case of a prefix letter at the start of a symbol (``OHM`` is ``ohm``;
``TORR`` is ``Torr``; ``MOhm``, ``MW``, ``KPa`` and ``KΩ`` are refused, naming the units
that are known, and so is a spelled-out name such as ``Minutes``: the file declares the
spellings it wants, e.g. ``Celsius``). Anything else is an unknown unit.

Numbers as text are read by the one grammar of `connector.numbers` (``1,000`` is refused
as ambiguous, not read as 1.0). A value delivered in another unit is converted in
decimal arithmetic from the delivered digits and rounded to 15 significant digits, so
300 K is 26.85 °C and 1.1 mbar is 110 Pa, not 26.850000000000023 and 110.00000000000001:
a reading exactly at a limit must not compare as past it. A value in the canonical unit
is stored as delivered, with no conversion at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Context, Decimal, InvalidOperation
from functools import cache, lru_cache
from typing import Any

from qdspace.connector.errors import DictionaryError
from qdspace.connector.numbers import NumberTextError, decimal_text, parse_number

#: letters that are an SI prefix in one case or the other (y z a f p n u/µ m c d h k, and
#: M G T P E Z Y R Q; K is no SI prefix but is the kelvin, and written for kilo): where
#: two spellings of a unit differ in the case of one of these at the start of a symbol,
#: they are two different units
PREFIX_LETTERS = frozenset("yzafpnuµmcdhkgterq")
#: significant digits a converted value is rounded to (a double holds 15 exactly)
SIGNIFICANT_DIGITS = 15
#: wide enough that the product and the sum are exact before the one rounding to those
_WIDE = Context(prec=80, traps=[])
_ONE = Decimal(1)
#: relative tolerance of the range check (a limit of 0 gets this absolute)
RANGE_TOLERANCE = 1e-12


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

    #: lower-cased spelling -> the declared units with that spelling (for the case fallback)
    _folded: Mapping[str, tuple[str, ...]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    #: the range with its tolerance (`RANGE_TOLERANCE`, relative): what the check compares
    _low: float = field(init=False, repr=False, compare=False, default=-math.inf)
    _high: float = field(init=False, repr=False, compare=False, default=math.inf)

    def __post_init__(self) -> None:
        folded: dict[str, tuple[str, ...]] = {}
        for unit in self.conversions:
            folded[unit.lower()] = (*folded.get(unit.lower(), ()), unit)
        object.__setattr__(self, "_folded", folded)
        low, high = self.minimum, self.maximum
        if low is not None:
            object.__setattr__(self, "_low", low - RANGE_TOLERANCE * max(1.0, abs(low)))
        if high is not None:
            object.__setattr__(self, "_high", high + RANGE_TOLERANCE * max(1.0, abs(high)))

    def _conversion(self, unit: str) -> tuple[float, float] | None:
        """``(factor, offset)`` of ``unit``: as declared, or by the case fallback (module
        docstring); None where the unit is unknown or its case is ambiguous."""
        found = self.conversions.get(unit)
        if found is not None:
            return found
        candidates = self._folded.get(unit.lower())
        if not candidates or any(len(c) != len(unit) for c in candidates):
            return None
        ways = {self.conversions[c] for c in candidates}
        if len(ways) != 1 or all(prefix_case_clash(unit, c) for c in candidates):
            return None
        return ways.pop()

    def _unknown_unit(self, unit: str, element: str) -> str:
        """Why ``unit`` is not accepted for ``element``, and the units that are."""
        hint = ""
        candidates = self._folded.get(unit.lower(), ())
        clash = next((c for c in candidates if prefix_case_clash(unit, c)), None)
        if clash is not None and len({self.conversions[c] for c in candidates}) == 1:
            a, b = prefix_case_clash(unit, clash) or ("", "")
            hint = f" ({clash!r} is known, but {a!r} is not {b!r}: case matters in a prefix)"
        elif candidates:
            hint = f" ({', '.join(map(repr, candidates))} differ in case and convert differently)"
        return (
            f"unit {unit!r} is not known for {element}{hint}; use one of: "
            f"{', '.join(declared_units(self))}"
        )


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
            return self._graded(element, domain, value, unit)
        if not unit:
            raise DictionaryError(
                f"{element.name} needs a unit (canonical: {domain.canonical_unit})"
            )
        conversion = domain._conversion(unit)
        if conversion is None:
            raise DictionaryError(domain._unknown_unit(unit, element.name))
        factor, offset = conversion
        if factor == 1.0 and offset == 0.0:
            canonical = number  # the canonical unit, or a spelling of it: stored as delivered
        else:
            canonical = _converted(value, number, factor, offset)
            if not math.isfinite(canonical):  # a finite number past a float once converted
                raise DictionaryError(
                    f"{number} {unit} is too large for {element.name} in {domain.canonical_unit}"
                )
        if not domain._low <= canonical <= domain._high:
            low, high = domain.minimum, domain.maximum
            side, limit = ("below", low) if canonical < domain._low else ("above", high)
            raise DictionaryError(
                f"{number} {unit} is {side} the range of {element.name} "
                f"({limit} {domain.canonical_unit})"
            )
        return Measured(element, canonical, domain.canonical_unit, None)

    @staticmethod
    def _graded(element: DataElement, domain: UnitDomain, value: Any, unit: str) -> Measured:
        """``value``, which is no number, as a grade code of ``element``."""
        code = str(value).strip()
        grade = domain.grades.get(code) or domain.grades.get(code.upper())
        if grade is None:
            try:
                parse_number(code)
            except NumberTextError as exc:
                if exc.specific:  # a number with a mistake in it: say which
                    raise DictionaryError(f"{exc.reason} ({element.name})") from None
            accepted = f"; grade codes: {', '.join(domain.grades)}" if domain.grades else ""
            raise DictionaryError(
                f"{_quoted(code)} is neither a number nor a grade code of {element.name}{accepted}"
            )
        if unit and unit.lower() not in ("grade", "code", "class"):
            raise DictionaryError(f"grade code {code!r} of {element.name} given with unit {unit!r}")
        return Measured(element, grade.upper, domain.canonical_unit, grade.code)

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
    """The units ``domain`` accepts, as declared."""
    return sorted(domain.conversions)


def prefix_case_clash(a: str, b: str) -> tuple[str, str] | None:
    """The first pair of letters in which ``a`` and ``b`` (the same length) differ in case
    at the start of a symbol (the first character, or one after a non-letter: ``/``,
    ``·``, a space, ``°``) where the letter is an SI prefix in one case or the other; None
    where they differ in no such letter. ``("M", "m")`` for ``MOhm``/``mOhm``; ``("K",
    "k")`` for ``KPa``/``kPa``; None for ``OHM``/``ohm`` and ``TORR``/``Torr``.

    A prefix stands at the start of a symbol, so a case difference further in (``TORR``)
    cannot turn one scale into another; at the start it can (milli/mega, pico/peta,
    kilo/kelvin), and so does, for safety, one in a spelled-out name (``Kelvin``,
    ``Celsius``, ``Percent``): declare that spelling where it is wanted."""
    start = True
    for x, y in zip(a, b, strict=False):
        if start and x != y and x.lower() in PREFIX_LETTERS:
            return (x, y)
        start = not x.isalpha()
    return None


def _number(value: Any) -> float | None:
    """``value`` as a finite float; None where it is no number (it may be a grade code)."""
    if value.__class__ is str:  # the common case first (CSV): one float, as `parse_number`
        if value.isascii() and "_" not in value and "," not in value:
            try:
                number = float(value)
            except ValueError:
                return None  # a grade code, or no number (which the grade look-up says)
        else:
            try:
                number = parse_number(value)
            except NumberTextError:
                return None
    elif isinstance(value, bool):
        return None
    elif isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an int of more than 308 digits
            big = int(value).bit_length() > 14_000  # str() of more than 4300 digits raises
            digits = "more than 4300" if big else str(len(str(abs(value))))
            raise DictionaryError(f"an integer of {digits} digits is no finite number") from None
    else:
        try:
            number = parse_number(str(value))
        except NumberTextError:
            return None
    if not math.isfinite(number):
        raise DictionaryError(f"{_quoted(value)} is not a finite number")
    return number


def _converted(value: Any, number: float, factor: float, offset: float) -> float:
    """``number * factor + offset`` in decimal arithmetic from the delivered digits (the
    text as delivered; ``repr(number)`` for a float), rounded to `SIGNIFICANT_DIGITS` of
    the larger of the two terms: 1.1 mbar is 110.0 Pa, not 110.00000000000001; 32 °F is
    0.0 °C."""
    try:
        if isinstance(value, str):
            exact = Decimal(decimal_text(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            exact = Decimal(value)
        else:
            exact = Decimal(repr(number))
    except (InvalidOperation, ValueError):  # an exponent past what decimal holds
        exact = Decimal(repr(number))
    total = size = _WIDE.multiply(exact, _decimal(factor))
    if offset:
        shift = _decimal(offset)
        total, size = _WIDE.add(total, shift), max(abs(total), abs(shift))
    if not size:
        return 0.0
    # digits counted from the larger term, not the result: 32 °F is 17.777...792 less
    # 17.77777777777778, and the -8e-16 left is noise of the factor, not a temperature
    quantum = _ONE.scaleb(size.adjusted() - (SIGNIFICANT_DIGITS - 1), _WIDE)
    return float(total.quantize(quantum, context=_WIDE)) + 0.0  # + 0.0: no -0.0


@lru_cache(maxsize=512)
def _decimal(x: float) -> Decimal:
    """A factor or offset as the decimal the dictionary file wrote (its shortest repr)."""
    return Decimal(repr(x))


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
