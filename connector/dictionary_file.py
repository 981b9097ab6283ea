"""The data dictionary as a file: load, validate and merge ISO/IEC 11179 element records.

Why a file and not code: the elements a plant needs (its IV flasher's fields, a new
furnace's zone temperature, the field names its MES uses) change faster than the
software, and the people who know them are process engineers, not programmers. So
the dictionary is a versioned document: the package ships the default
(``dictionary.json`` beside this module) and a node may name one more file
(``dictionary_file`` in ``node.json``) whose elements replace those with the same id
or add new ones. Nothing here imports a database or a network client.

Why JSON for the default: it is read with the standard library (no YAML parser in a
node's core install), it is already package data, and the registry export is JSON
too. An extra file may also be YAML (``.yaml``/``.yml``) when PyYAML is installed
(the ``connect`` extra brings it): hand-edited files like comments.

Every element record carries the ISO/IEC 11179 attributes: ``id`` (the registry
identifier, never reused), ``version``, ``name`` (the designation stored in QDM rows),
``definition``, ``data_type`` (``decimal`` for measured quantities, ``code`` for code
lists), a value domain (the unit of measure with its conversions, range and grade
codes; or the code list with each code's meaning and synonyms) and ``synonyms``: the
field names other systems use for the element, each optionally naming its system.
A file that breaks a rule is refused whole with an error naming the file, the element
and the attribute.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from qdspace.connector.dictionary import (
    DataDictionary,
    DataElement,
    EnumDomain,
    Grade,
    UnitDomain,
    prefix_case_clash,
)
from qdspace.connector.errors import DictionaryError

FORMAT: Literal["qdspace-data-dictionary/1"] = "qdspace-data-dictionary/1"
DEFAULT_FILE = Path(__file__).with_name("dictionary.json")
#: an extra file larger than this is not a dictionary (and is not parsed)
MAX_FILE_BYTES = 4 << 20


class DictionaryFileError(DictionaryError):
    """A dictionary file that cannot be used: where (file, element, attribute) and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConversionModel(_Strict):
    units: list[str] = Field(min_length=1)
    factor: float
    offset: float = 0.0


class UnitSetModel(_Strict):
    unit: str = Field(min_length=1, max_length=16)
    conversions: list[ConversionModel] = Field(default_factory=list)


class GradeModel(_Strict):
    code: str = Field(min_length=1, max_length=8)
    lower: float
    upper: float
    meaning: str

    @model_validator(mode="after")
    def _ordered(self) -> GradeModel:
        if self.upper < self.lower:
            raise ValueError(f"grade {self.code}: upper {self.upper} is below lower {self.lower}")
        return self


class CodeModel(_Strict):
    code: str = Field(min_length=1, max_length=32)
    meaning: str = ""
    synonyms: list[str] = Field(default_factory=list)


class ValueDomainModel(_Strict):
    """A unit of measure (measured quantities) or a code list (enumerations)."""

    unit: str | None = Field(default=None, min_length=1, max_length=16)
    unit_set: str | None = None
    conversions: list[ConversionModel] = Field(default_factory=list)
    minimum: float | None = None
    maximum: float | None = None
    grades: list[GradeModel] = Field(default_factory=list)
    code_list: list[CodeModel] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> ValueDomainModel:
        if (self.unit is None) == (self.code_list is None):
            raise ValueError("give either unit (a measured quantity) or code_list, not both")
        if self.code_list is not None and (
            self.unit_set or self.conversions or self.grades or self.minimum is not None
        ):
            raise ValueError("a code list takes no unit_set, conversions, range or grades")
        if self.code_list is not None and not self.code_list:
            raise ValueError("code_list is empty")
        if self.minimum is not None and self.maximum is not None and self.maximum < self.minimum:
            raise ValueError(f"maximum {self.maximum} is below minimum {self.minimum}")
        return self


class SynonymModel(_Strict):
    name: str = Field(min_length=1, max_length=64)
    system: str | None = None


class ElementModel(_Strict):
    id: str = Field(pattern=r"^[A-Z][A-Z0-9]*-[0-9]{4,}$")
    version: int = Field(default=1, ge=1)
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{1,63}$")
    definition: str = Field(min_length=1)
    data_type: Literal["decimal", "code"]
    value_domain: ValueDomainModel
    synonyms: list[str | SynonymModel] = Field(default_factory=list)

    @model_validator(mode="after")
    def _type_matches(self) -> ElementModel:
        measured = self.value_domain.unit is not None
        if measured != (self.data_type == "decimal"):
            want = "decimal" if measured else "code"
            raise ValueError(f"data_type {self.data_type!r} does not fit the domain (use {want})")
        return self


class DictionaryModel(_Strict):
    format: Literal["qdspace-data-dictionary/1"] = FORMAT
    dictionary: str = Field(min_length=1, max_length=64)
    version: str = Field(min_length=1, max_length=32)
    title: str = ""
    unit_sets: dict[str, UnitSetModel] = Field(default_factory=dict)
    elements: list[ElementModel] = Field(default_factory=list)


@dataclass(frozen=True)
class DictionarySource:
    """Which document (name, version) an effective dictionary was built from."""

    path: str
    dictionary: str
    version: str


@dataclass(frozen=True)
class LoadedDictionary:
    dictionary: DataDictionary
    sources: tuple[DictionarySource, ...]
    #: the raw element records by id, for the registry and SAMM exports
    records: Mapping[str, ElementModel]

    @property
    def version(self) -> str:
        return " + ".join(f"{s.dictionary} {s.version}" for s in self.sources)


def read_document(path: Path) -> DictionaryModel:
    """Parse and validate one dictionary file; errors name the file, element, attribute."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DictionaryFileError(f"{path}: cannot read: {exc.strerror}") from None
    if size > MAX_FILE_BYTES:
        raise DictionaryFileError(f"{path}: {size} bytes; a dictionary file is at most 4 MiB")
    data = _parse(path)
    try:
        return DictionaryModel.model_validate(data)
    except ValidationError as exc:
        raise DictionaryFileError(_where(path, data, exc)) from None


def _parse(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise DictionaryFileError(
                f"{path}: YAML needs PyYAML (pip install 'qdspace[connect]'), or use JSON"
            ) from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise DictionaryFileError(f"{path}: not valid YAML: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DictionaryFileError(
            f"{path}:{exc.lineno}: not valid JSON: {exc.msg} at column {exc.colno}"
        ) from None


def _where(path: Path, data: Any, exc: ValidationError) -> str:
    problems = []
    for error in exc.errors()[:5]:
        loc = list(error["loc"])
        where = "document"
        if len(loc) >= 2 and loc[0] == "elements" and isinstance(loc[1], int):
            index = loc[1]
            ident = None
            if isinstance(data, dict) and isinstance(data.get("elements"), list):
                entry = data["elements"][index] if index < len(data["elements"]) else None
                ident = entry.get("id") if isinstance(entry, dict) else None
            where = f"element {ident or '#' + str(index + 1)}"
            loc = loc[2:]
        elif len(loc) >= 2 and loc[0] == "unit_sets":
            where = f"unit set {loc[1]}"
            loc = loc[2:]
        attribute = ".".join(str(p) for p in loc if not str(p).startswith("function-")) or "-"
        problems.append(f"{where}: {attribute}: {error['msg']}")
    return f"{path}: " + "; ".join(problems)


def _conversion_table(
    path: Path, ident: str, unit: str, conversions: Iterable[ConversionModel]
) -> dict[str, tuple[float, float]]:
    """Each unit as declared (no lower-cased copies: case is resolved at look-up, see
    `connector.dictionary`). Two units that differ only in case and convert differently
    are refused, except where the case they differ in is a prefix letter's (``mOhm`` and
    ``MOhm`` are two units; ``Torr`` and ``TORR`` at two factors are a mistake)."""
    table: dict[str, tuple[float, float]] = {unit: (1.0, 0.0)}
    for c in conversions:
        for name in c.units:
            table[name] = (c.factor, c.offset)
    folded: dict[str, str] = {}
    for name, way in table.items():
        other = folded.setdefault(name.lower(), name)
        if other != name and table[other] != way and prefix_case_clash(name, other) is None:
            raise DictionaryFileError(
                f"{path}: element {ident}: value_domain: units {other!r} and {name!r} differ "
                f"only in case but convert differently ({table[other]} and {way} as "
                "(factor, offset)); case tells units apart only in a prefix letter"
            )
    return table


def _element(path: Path, model: ElementModel, unit_sets: Mapping[str, UnitSetModel]) -> DataElement:
    d = model.value_domain
    aliases = tuple(s if isinstance(s, str) else s.name for s in model.synonyms)
    systems = {s.name: s.system for s in model.synonyms if isinstance(s, SynonymModel) and s.system}
    if d.code_list is not None:
        table = {c.code.lower(): c.code for c in d.code_list}
        for c in d.code_list:
            for name in c.synonyms:
                table[name.lower()] = c.code
        domain: UnitDomain | EnumDomain = EnumDomain(
            tuple(c.code for c in d.code_list),
            table,
            {c.code: c.meaning for c in d.code_list if c.meaning},
        )
    else:
        assert d.unit is not None
        conversions = list(d.conversions)
        if d.unit_set is not None:
            found = unit_sets.get(d.unit_set)
            if found is None:
                raise DictionaryFileError(
                    f"{path}: element {model.id}: value_domain.unit_set: no unit set "
                    f"{d.unit_set!r} (known: {', '.join(sorted(unit_sets)) or 'none'})"
                )
            if found.unit != d.unit:
                raise DictionaryFileError(
                    f"{path}: element {model.id}: value_domain.unit_set: unit set "
                    f"{d.unit_set!r} converts to {found.unit!r}, not to {d.unit!r}"
                )
            conversions = [*found.conversions, *conversions]
        grades = {g.code: Grade(g.code, g.lower, g.upper, g.meaning) for g in d.grades}
        domain = UnitDomain(
            d.unit,
            _conversion_table(path, model.id, d.unit, conversions),
            d.minimum,
            d.maximum,
            grades,
        )
    return DataElement(model.id, model.name, model.definition, domain, aliases, systems)


def load(paths: Iterable[Path]) -> LoadedDictionary:
    """The effective dictionary of ``paths`` in order: later elements replace earlier ones
    with the same id and add the rest; unit sets merge the same way."""
    sources: list[DictionarySource] = []
    unit_sets: dict[str, UnitSetModel] = {}
    records: dict[str, ElementModel] = {}
    origin: dict[str, Path] = {}
    for path in paths:
        document = read_document(path)
        sources.append(DictionarySource(str(path), document.dictionary, document.version))
        unit_sets.update(document.unit_sets)
        seen: set[str] = set()
        for element in document.elements:
            if element.id in seen:
                raise DictionaryFileError(f"{path}: element {element.id}: id: defined twice")
            seen.add(element.id)
            records[element.id] = element
            origin[element.id] = path
    elements = [_element(origin[i], records[i], unit_sets) for i in records]
    try:
        dictionary = DataDictionary(elements)
    except DictionaryFileError:
        raise
    except DictionaryError as exc:
        names = ", ".join(str(p) for p in dict.fromkeys(origin.values()))
        raise DictionaryFileError(f"{names}: {exc}") from None
    return LoadedDictionary(dictionary, tuple(sources), records)


def load_dictionary(extra: Path | None = None) -> LoadedDictionary:
    """The package's default dictionary, with ``extra`` (a node's own file) over it."""
    return load([DEFAULT_FILE] if extra is None else [DEFAULT_FILE, extra])
