"""Row validation: what a plant delivers -> a canonical QDM row, or a precise error.

One parser per QDM kind. A parser takes a mapping of field -> raw value (strings from
CSV, JSON values from JSONL or REST; empty strings mean "absent") and returns the
row as the storage layer stores it, or raises :class:`RowInvalid` listing every
problem of the row, each a :class:`FieldError` naming its field.

Every problem at once, not the first one (issue 21): a plant engineer fixing an
export should not learn about the missing ``quantity`` only after fixing the
missing ``supplier``. So a parser checks each field through :class:`_Problems`,
which records a field's error and goes on with the next field; checks across
fields (``closed_at`` before ``opened_at``) run only on fields that parsed.
:func:`template` lists what each kind takes, with units and allowed values from
the data dictionary, for ``qdspace ingest --kind K --template``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from qdspace.connector.dictionary import DataDictionary, EnumDomain, Measured, UnitDomain
from qdspace.connector.errors import DictionaryError

Row = dict[str, Any]


class FieldError(Exception):
    """One field of one row is wrong; ``field`` is ``"-"`` when the row as a whole is."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    @property
    def problems(self) -> list[FieldError]:
        """Every problem this error stands for (one here; a row's all in RowInvalid)."""
        return [self]


class RowInvalid(FieldError):
    """A row with one or more problems; ``field``/``reason`` are the first one's."""

    def __init__(self, problems: list[FieldError]):
        first = problems[0]
        super().__init__(first.field, first.reason)
        self.args = ("; ".join(str(p) for p in problems),)
        self._problems = problems

    @property
    def problems(self) -> list[FieldError]:
        return list(self._problems)


class _Problems:
    """Collects a row's field errors so one bad field does not hide the next.

    The field helpers below take it first and report through :meth:`fail` instead
    of raising, so a good row (the common case) costs no exception and no wrapper.
    """

    __slots__ = ("found",)

    def __init__(self) -> None:
        self.found: list[FieldError] = []

    def fail(self, field: str, reason: str) -> None:
        """Record a problem; the helper then returns None for the field."""
        self.found.append(FieldError(field, reason))

    def done(self, row: Row) -> Row:
        """The row, or RowInvalid with everything found."""
        if self.found:
            raise RowInvalid(self.found)
        return row


def _raw(row: Mapping[str, Any], name: str) -> Any:
    value = row.get(name)
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return None
    return value


def text(
    p: _Problems, row: Mapping[str, Any], name: str, *, required: bool = True, max_len: int = 64
) -> str | None:
    value = row.get(name)
    if value.__class__ is str:  # the common case first: this runs for every field of every row
        value = value.strip()
        if value:
            if len(value) > max_len:
                p.fail(name, f"longer than {max_len} characters")
                return None
            if "\x00" in value:  # PostgreSQL refuses it, and no code or name holds one
                p.fail(name, "contains a NUL character")
                return None
            return value
        value = None
    if value is None:
        if required:
            p.fail(name, "missing")
            return None
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        p.fail(name, f"expected text, got {type(value).__name__}")
        return None
    value = str(value)
    if len(value) > max_len:
        p.fail(name, f"longer than {max_len} characters")
        return None
    return value


def req_text(p: _Problems, row: Mapping[str, Any], name: str, max_len: int = 64) -> str | None:
    return text(p, row, name, required=True, max_len=max_len)


def number(
    p: _Problems,
    row: Mapping[str, Any],
    name: str,
    *,
    required: bool = True,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float | None:
    value = _raw(row, name)
    if value is None:
        if required:
            p.fail(name, "missing")
            return None
        return None
    if isinstance(value, bool):
        p.fail(name, f"expected a number, got {value!r}")
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        p.fail(name, f"expected a number, got {value!r}")
        return None
    if result != result or result in (float("inf"), float("-inf")):
        p.fail(name, f"expected a finite number, got {value!r}")
        return None
    if minimum is not None and result < minimum:
        p.fail(name, f"{result:g} is below the minimum {minimum:g}")
        return None
    if maximum is not None and result > maximum:
        p.fail(name, f"{result:g} is above the maximum {maximum:g}")
        return None
    return result


def integer(
    p: _Problems, row: Mapping[str, Any], name: str, *, minimum: int | None = None
) -> int | None:
    value = _raw(row, name)
    if value is None:
        p.fail(name, "missing")
        return None
    if isinstance(value, bool):
        p.fail(name, f"expected an integer, got {value!r}")
        return None
    try:
        result = int(value) if not isinstance(value, float) or value.is_integer() else None
    except (TypeError, ValueError):
        result = None
    if result is None:
        p.fail(name, f"expected an integer, got {value!r}")
        return None
    if minimum is not None and result < minimum:
        p.fail(name, f"{result} is below the minimum {minimum}")
        return None
    return result


def timestamp(
    p: _Problems, row: Mapping[str, Any], name: str, *, required: bool = True
) -> datetime | None:
    """An ISO-8601 time with a zone (``Z`` or ``+hh:mm``), returned in UTC."""
    value = _raw(row, name)
    if value is None:
        if required:
            p.fail(name, "missing")
            return None
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            p.fail(name, f"not an ISO-8601 time: {value!r}")
            return None
    if parsed.tzinfo is None:
        p.fail(name, f"time {value!r} has no zone; add Z or an offset like +01:00")
        return None
    return parsed.astimezone(UTC)


def req_timestamp(p: _Problems, row: Mapping[str, Any], name: str) -> datetime | None:
    return timestamp(p, row, name)


_PSEUDONYM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{2,63}$")
_HEX = re.compile(r"^[0-9a-f]{16,64}$")


def _code(
    p: _Problems,
    d: DataDictionary,
    element: str,
    row: Mapping[str, Any],
    name: str,
    *,
    required: bool = True,
) -> str | None:
    value = _raw(row, name)
    if value is None:
        if required:
            p.fail(name, "missing")
            return None
        return None
    try:
        return d.code(element, value)
    except DictionaryError as exc:
        p.fail(name, str(exc))
        return None


def parse_order(row: Mapping[str, Any], d: DataDictionary) -> Row:
    p = _Problems()
    status = _code(p, d, "order_status", row, "status", required=False) or "open"
    opened = req_timestamp(p, row, "opened_at")
    closed = timestamp(p, row, "closed_at", required=False)
    out = {
        "order_id": req_text(p, row, "order_id"),
        "customer": req_text(p, row, "customer"),
        "supplier": req_text(p, row, "supplier"),
        "product": req_text(p, row, "product", 128),
        "quantity": integer(p, row, "quantity", minimum=1),
        "status": status,
        "opened_at": opened,
        "closed_at": closed,
    }
    if status == "closed" and closed is None and _raw(row, "closed_at") is None:
        p.fail("closed_at", "missing (required when status is closed)")
    if closed is not None and opened is not None and closed < opened:
        p.fail("closed_at", "before opened_at")
    return p.done(out)


def parse_product(row: Mapping[str, Any], d: DataDictionary) -> Row:
    p = _Problems()
    return p.done(
        {
            "serial": req_text(p, row, "serial"),
            "product_type": req_text(p, row, "product_type"),
            "order_id": text(p, row, "order_id", required=False),
            "batch_id": text(p, row, "batch_id", required=False),
            "made_at": req_timestamp(p, row, "made_at"),
        }
    )


def parse_batch(row: Mapping[str, Any], d: DataDictionary) -> Row:
    p = _Problems()
    return p.done(
        {
            "batch_id": req_text(p, row, "batch_id"),
            "material": req_text(p, row, "material", 128),
            "kind": _code(p, d, "batch_kind", row, "kind"),
            "producer": req_text(p, row, "producer"),
            "quantity": number(p, row, "quantity", minimum=0.0),
            "made_at": req_timestamp(p, row, "made_at"),
            "customer": text(p, row, "customer", required=False),
            "order_id": text(p, row, "order_id", required=False),
        }
    )


def parse_genealogy(row: Mapping[str, Any], d: DataDictionary) -> Row:
    p = _Problems()
    child = req_text(p, row, "child_batch_id")
    parent = req_text(p, row, "parent_batch_id")
    if child is not None and child == parent:
        p.fail("parent_batch_id", "a batch cannot be made from itself")
    return p.done(
        {
            "child_batch_id": child,
            "parent_batch_id": parent,
            "quantity_used": number(p, row, "quantity_used", required=False, minimum=0.0),
        }
    )


def _image_hash(p: _Problems, row: Mapping[str, Any]) -> str | None:
    image_hash = text(p, row, "image_hash", required=False)
    if image_hash is not None:
        image_hash = image_hash.lower()
        if not _HEX.match(image_hash):
            p.fail("image_hash", "expected 16 to 64 hex digits (a SHA-256 of the image)")
            return None
    return image_hash


def parse_inspection(row: Mapping[str, Any], d: DataDictionary) -> Row:
    p = _Problems()
    verdict = _code(p, d, "verdict", row, "verdict")
    defect = _code(p, d, "defect_class", row, "defect_class", required=False)
    if defect is None and _raw(row, "defect_class") is None:
        defect = "none" if verdict == "pass" else None
    return p.done(
        {
            "inspection_id": req_text(p, row, "inspection_id", 96),
            "station": req_text(p, row, "station"),
            "inspected_at": req_timestamp(p, row, "inspected_at"),
            "verdict": verdict,
            "defect_class": defect,
            "score": number(p, row, "score", required=False, minimum=0.0, maximum=1.0),
            "model_version": text(p, row, "model_version", required=False, max_len=80),
            "image_hash": _image_hash(p, row),
            "frame_id": text(p, row, "frame_id", required=False, max_len=96),
            "latency_ms": number(p, row, "latency_ms", required=False, minimum=0.0),
            "order_id": text(p, row, "order_id", required=False),
            "serial": text(p, row, "serial", required=False),
            "batch_id": text(p, row, "batch_id", required=False),
        }
    )


def _measured(
    p: _Problems, d: DataDictionary, parameter: str, raw_value: Any, raw_unit: str
) -> Measured | None:
    try:
        return d.measure(parameter, raw_value, raw_unit)
    except DictionaryError as exc:
        field = (
            "parameter"
            if "unknown data element" in str(exc)
            else ("unit" if "unit" in str(exc) else "value")
        )
        p.fail(field, str(exc))
        return None


def parse_measurement(row: Mapping[str, Any], d: DataDictionary) -> Row:
    p = _Problems()
    parameter = req_text(p, row, "parameter")
    raw_value = _raw(row, "value")
    if raw_value is None:
        p.fail("value", "missing")
    raw_unit = text(p, row, "unit", required=False, max_len=16) or ""
    measured = None
    if parameter is not None and raw_value is not None:
        measured = _measured(p, d, parameter, raw_value, raw_unit)
    out = {
        "equipment": req_text(p, row, "equipment"),
        "measured_at": req_timestamp(p, row, "measured_at"),
        "batch_id": text(p, row, "batch_id", required=False),
        "order_id": text(p, row, "order_id", required=False),
    }
    if measured is None:
        return p.done(out)  # raises: something above was wrong
    return p.done(
        {
            "equipment": out["equipment"],
            "parameter": measured.element.name,
            "element_id": measured.element.id,
            "measured_at": out["measured_at"],
            "value": measured.value,
            "unit": measured.unit,
            "grade": measured.grade,
            "raw_value": str(raw_value)[:64],
            "raw_unit": raw_unit,
            "batch_id": out["batch_id"],
            "order_id": out["order_id"],
        }
    )


def _env_value(
    p: _Problems,
    d: DataDictionary,
    row: Mapping[str, Any],
    name: str,
    element: str,
    default_unit: str,
) -> float | None:
    value = _raw(row, name)
    if value is None:
        return None
    unit = text(p, row, f"{name}_unit", required=False, max_len=16) or default_unit
    try:
        return d.measure(element, value, unit).value
    except DictionaryError as exc:
        p.fail(name, str(exc))
        return None


def parse_environment(row: Mapping[str, Any], d: DataDictionary) -> Row:
    p = _Problems()
    temperature = _env_value(p, d, row, "temperature", "ambient_temperature", "°C")
    humidity = _env_value(p, d, row, "humidity", "relative_humidity", "%RH")
    if _raw(row, "temperature") is None and _raw(row, "humidity") is None:
        p.fail("temperature", "missing (a reading needs temperature, humidity or both)")
    return p.done(
        {
            "location": req_text(p, row, "location"),
            "measured_at": req_timestamp(p, row, "measured_at"),
            "temperature_c": temperature,
            "humidity_rh": humidity,
        }
    )


def _pseudonym(p: _Problems, row: Mapping[str, Any]) -> str | None:
    operator = req_text(p, row, "operator_id")
    if operator is not None and (not _PSEUDONYM.match(operator) or "@" in operator):
        p.fail(
            "operator_id",
            "must be a pseudonymous id (3-64 letters, digits, '_.:-'; no names or e-mails)",
        )
        return None
    return operator


def parse_operator_log(row: Mapping[str, Any], d: DataDictionary) -> Row:
    p = _Problems()
    return p.done(
        {
            "operator_id": _pseudonym(p, row),
            "logged_at": req_timestamp(p, row, "logged_at"),
            "action": req_text(p, row, "action"),
            "station": text(p, row, "station", required=False),
            "order_id": text(p, row, "order_id", required=False),
            "batch_id": text(p, row, "batch_id", required=False),
            "note": text(p, row, "note", required=False, max_len=500),
        }
    )


Parser = Callable[[Mapping[str, Any], DataDictionary], Row]

PARSERS: dict[str, Parser] = {
    "order": parse_order,
    "product": parse_product,
    "batch": parse_batch,
    "genealogy": parse_genealogy,
    "inspection": parse_inspection,
    "measurement": parse_measurement,
    "environment": parse_environment,
    "operator_log": parse_operator_log,
}


@dataclass(frozen=True)
class Column:
    """One column a delivered row of a kind may carry, for users (``--template``)."""

    name: str
    required: str  # "yes", "no" or the condition under which it is needed
    kind: str  # what a value looks like
    element: str | None = None  # data-dictionary element giving units / allowed values
    note: str = ""


_TIME = "ISO-8601 time with zone"
_ID = "text (<= 64)"

#: what each kind takes, in the order a CSV header should list it; kept next to the
#: parsers above so a new field shows up in ``--template`` and in ``FIELDS`` together
COLUMNS: dict[str, tuple[Column, ...]] = {
    "order": (
        Column("order_id", "yes", _ID),
        Column("customer", "yes", _ID, note="member name of the buyer"),
        Column("supplier", "yes", _ID, note="member name of the seller"),
        Column("product", "yes", "text (<= 128)"),
        Column("quantity", "yes", "integer >= 1"),
        Column("status", "no", "code", "order_status", "default open"),
        Column("opened_at", "yes", _TIME),
        Column("closed_at", "if status is closed", _TIME, note="not before opened_at"),
    ),
    "product": (
        Column("serial", "yes", _ID),
        Column("product_type", "yes", _ID),
        Column("order_id", "no", _ID),
        Column("batch_id", "no", _ID),
        Column("made_at", "yes", _TIME),
    ),
    "batch": (
        Column("batch_id", "yes", _ID),
        Column("material", "yes", "text (<= 128)"),
        Column("kind", "yes", "code", "batch_kind"),
        Column("producer", "yes", _ID),
        Column("quantity", "yes", "number >= 0"),
        Column("made_at", "yes", _TIME),
        Column("customer", "no", _ID),
        Column("order_id", "no", _ID),
    ),
    "genealogy": (
        Column("child_batch_id", "yes", _ID),
        Column("parent_batch_id", "yes", _ID, note="not the child itself"),
        Column("quantity_used", "no", "number >= 0"),
    ),
    "inspection": (
        Column("inspection_id", "yes", "text (<= 96)"),
        Column("station", "yes", _ID),
        Column("inspected_at", "yes", _TIME),
        Column("verdict", "yes", "code", "verdict"),
        Column("defect_class", "no", "code", "defect_class", "default none when verdict is pass"),
        Column("score", "no", "number 0..1"),
        Column("model_version", "no", "text (<= 80)"),
        Column("image_hash", "no", "16-64 hex digits", note="SHA-256 of the image"),
        Column("frame_id", "no", "text (<= 96)"),
        Column("latency_ms", "no", "number >= 0", note="ms"),
        Column("order_id", "no", _ID),
        Column("serial", "no", _ID),
        Column("batch_id", "no", _ID),
    ),
    "measurement": (
        Column("equipment", "yes", _ID),
        Column("parameter", "yes", "data element", note="a process parameter, listed below"),
        Column("value", "yes", "number or grade code", note="in `unit`"),
        Column("unit", "no", "text (<= 16)", note="default: the parameter's unit"),
        Column("measured_at", "yes", _TIME),
        Column("batch_id", "no", _ID),
        Column("order_id", "no", _ID),
    ),
    "environment": (
        Column("location", "yes", _ID),
        Column("measured_at", "yes", _TIME),
        Column("temperature", "temperature or humidity", "number", "ambient_temperature"),
        Column("temperature_unit", "no", "text (<= 16)", note="default °C"),
        Column("humidity", "temperature or humidity", "number", "relative_humidity"),
        Column("humidity_unit", "no", "text (<= 16)", note="default %RH"),
    ),
    "operator_log": (
        Column("operator_id", "yes", "pseudonym", note="3-64 of A-Z a-z 0-9 _.:-, no e-mail"),
        Column("logged_at", "yes", _TIME),
        Column("action", "yes", _ID),
        Column("station", "no", _ID),
        Column("order_id", "no", _ID),
        Column("batch_id", "no", _ID),
        Column("note", "no", "text (<= 500)"),
    ),
}

#: the fields a delivered row of each kind may carry
FIELDS: dict[str, frozenset[str]] = {
    kind: frozenset(c.name for c in columns) for kind, columns in COLUMNS.items()
}


@dataclass(frozen=True)
class TemplateRow:
    """A column of a kind, with what the data dictionary allows in it."""

    name: str
    required: str
    kind: str
    allowed: str  # units with conversions, or codes; "" when free


def _allowed(d: DataDictionary, element: str | None) -> str:
    if element is None:
        return ""
    domain = d.element(element).domain
    if isinstance(domain, EnumDomain):
        synonyms = ", ".join(f"{s}={v}" for s, v in sorted(domain.synonyms.items()) if s != v)
        return " | ".join(domain.values) + (f" (also {synonyms})" if synonyms else "")
    return _unit_text(domain)


def _unit_text(domain: UnitDomain) -> str:
    spelled: dict[str, str] = {}  # one spelling per unit: "kPa", not also "kpa"
    for unit in sorted(domain.conversions):
        spelled.setdefault(unit.lower(), unit)
    canonical = domain.canonical_unit
    others = [u for k, u in sorted(spelled.items()) if k != canonical.lower()]
    out = canonical + (f" (also {', '.join(others)})" if others else "")
    if domain.minimum is not None or domain.maximum is not None:
        low = "" if domain.minimum is None else f"{domain.minimum:g}"
        high = "" if domain.maximum is None else f"{domain.maximum:g}"
        out += f"; {low}..{high}" + ("" if canonical == "1" else f" {canonical}")
    if domain.grades:
        out += "; grades " + ", ".join(domain.grades)
    return out


def template(kind: str, d: DataDictionary) -> list[TemplateRow]:
    """The columns ``kind`` takes, with units and allowed values from the dictionary."""
    return [
        TemplateRow(
            c.name, c.required, c.kind, "; ".join(x for x in (_allowed(d, c.element), c.note) if x)
        )
        for c in COLUMNS[kind]
    ]


def parameters(d: DataDictionary) -> list[TemplateRow]:
    """The process parameters a measurement may name, with their units (and aliases)."""
    out = []
    for element in d:
        if isinstance(element.domain, UnitDomain):
            also = f"alias {', '.join(element.aliases)}; " if element.aliases else ""
            out.append(
                TemplateRow(element.name, "", element.definition, also + _unit_text(element.domain))
            )
    return out


def parse_row(kind: str, row: Mapping[str, Any], d: DataDictionary) -> Row:
    """Validate one delivered row of ``kind``; raises :class:`RowInvalid` with every problem."""
    if not isinstance(row, Mapping):
        raise FieldError("-", f"a row must be an object with fields, got {type(row).__name__}")
    allowed = FIELDS[kind]
    unknown: list[FieldError] = []
    for key in row:
        if key not in allowed:
            if key is None:
                unknown.append(FieldError("-", "more values than header columns"))
            else:
                unknown.append(
                    FieldError(
                        str(key), f"not a field of {kind} (fields: {', '.join(sorted(allowed))})"
                    )
                )
    if not unknown:
        return PARSERS[kind](row, d)
    known = {k: v for k, v in row.items() if k in allowed}
    try:
        PARSERS[kind](known, d)
    except FieldError as exc:
        unknown.extend(exc.problems)
    raise RowInvalid(unknown)
