"""Row validation: what a plant delivers -> a canonical QDM row, or a precise error.

One parser per QDM kind. A parser takes a mapping of field -> raw value (strings from
CSV, JSON values from JSONL or REST; empty strings mean "absent") and returns the
row as the storage layer stores it, or raises :class:`FieldError` naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from connector.dictionary import DataDictionary
from connector.errors import DictionaryError

Row = dict[str, Any]


class FieldError(Exception):
    """One field of one row is wrong; ``field`` is ``"-"`` when the row as a whole is."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _raw(row: Mapping[str, Any], name: str) -> Any:
    value = row.get(name)
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return None
    return value


def text(
    row: Mapping[str, Any], name: str, *, required: bool = True, max_len: int = 64
) -> str | None:
    value = row.get(name)
    if value.__class__ is str:  # the common case first: this runs for every field of every row
        value = value.strip()
        if value:
            if len(value) > max_len:
                raise FieldError(name, f"longer than {max_len} characters")
            return value
        value = None
    if value is None:
        if required:
            raise FieldError(name, "missing")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise FieldError(name, f"expected text, got {type(value).__name__}")
    value = str(value)
    if len(value) > max_len:
        raise FieldError(name, f"longer than {max_len} characters")
    return value


def req_text(row: Mapping[str, Any], name: str, max_len: int = 64) -> str:
    value = text(row, name, required=True, max_len=max_len)
    assert value is not None
    return value


def number(
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
            raise FieldError(name, "missing")
        return None
    if isinstance(value, bool):
        raise FieldError(name, f"expected a number, got {value!r}")
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise FieldError(name, f"expected a number, got {value!r}") from None
    if result != result or result in (float("inf"), float("-inf")):
        raise FieldError(name, f"expected a finite number, got {value!r}")
    if minimum is not None and result < minimum:
        raise FieldError(name, f"{result:g} is below the minimum {minimum:g}")
    if maximum is not None and result > maximum:
        raise FieldError(name, f"{result:g} is above the maximum {maximum:g}")
    return result


def integer(row: Mapping[str, Any], name: str, *, minimum: int | None = None) -> int:
    value = _raw(row, name)
    if value is None:
        raise FieldError(name, "missing")
    if isinstance(value, bool):
        raise FieldError(name, f"expected an integer, got {value!r}")
    try:
        result = int(value) if not isinstance(value, float) or value.is_integer() else None
    except (TypeError, ValueError):
        result = None
    if result is None:
        raise FieldError(name, f"expected an integer, got {value!r}")
    if minimum is not None and result < minimum:
        raise FieldError(name, f"{result} is below the minimum {minimum}")
    return result


def timestamp(row: Mapping[str, Any], name: str, *, required: bool = True) -> datetime | None:
    """An ISO-8601 time with a zone (``Z`` or ``+hh:mm``), returned in UTC."""
    value = _raw(row, name)
    if value is None:
        if required:
            raise FieldError(name, "missing")
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            raise FieldError(name, f"not an ISO-8601 time: {value!r}") from None
    if parsed.tzinfo is None:
        raise FieldError(name, f"time {value!r} has no zone; add Z or an offset like +01:00")
    return parsed.astimezone(UTC)


def req_timestamp(row: Mapping[str, Any], name: str) -> datetime:
    value = timestamp(row, name)
    assert value is not None
    return value


_PSEUDONYM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{2,63}$")
_HEX = re.compile(r"^[0-9a-f]{16,64}$")


def _code(
    d: DataDictionary, element: str, row: Mapping[str, Any], name: str, *, required: bool = True
) -> str | None:
    value = _raw(row, name)
    if value is None:
        if required:
            raise FieldError(name, "missing")
        return None
    try:
        return d.code(element, value)
    except DictionaryError as exc:
        raise FieldError(name, str(exc)) from None


def parse_order(row: Mapping[str, Any], d: DataDictionary) -> Row:
    status = _code(d, "order_status", row, "status", required=False) or "open"
    opened = req_timestamp(row, "opened_at")
    closed = timestamp(row, "closed_at", required=False)
    if status == "closed" and closed is None:
        raise FieldError("closed_at", "missing (required when status is closed)")
    if closed is not None and closed < opened:
        raise FieldError("closed_at", "before opened_at")
    return {
        "order_id": req_text(row, "order_id"),
        "customer": req_text(row, "customer"),
        "supplier": req_text(row, "supplier"),
        "product": req_text(row, "product", 128),
        "quantity": integer(row, "quantity", minimum=1),
        "status": status,
        "opened_at": opened,
        "closed_at": closed,
    }


def parse_product(row: Mapping[str, Any], d: DataDictionary) -> Row:
    return {
        "serial": req_text(row, "serial"),
        "product_type": req_text(row, "product_type"),
        "order_id": text(row, "order_id", required=False),
        "batch_id": text(row, "batch_id", required=False),
        "made_at": req_timestamp(row, "made_at"),
    }


def parse_batch(row: Mapping[str, Any], d: DataDictionary) -> Row:
    return {
        "batch_id": req_text(row, "batch_id"),
        "material": req_text(row, "material", 128),
        "kind": _code(d, "batch_kind", row, "kind"),
        "producer": req_text(row, "producer"),
        "quantity": number(row, "quantity", minimum=0.0),
        "made_at": req_timestamp(row, "made_at"),
        "customer": text(row, "customer", required=False),
        "order_id": text(row, "order_id", required=False),
    }


def parse_genealogy(row: Mapping[str, Any], d: DataDictionary) -> Row:
    child = req_text(row, "child_batch_id")
    parent = req_text(row, "parent_batch_id")
    if child == parent:
        raise FieldError("parent_batch_id", "a batch cannot be made from itself")
    return {
        "child_batch_id": child,
        "parent_batch_id": parent,
        "quantity_used": number(row, "quantity_used", required=False, minimum=0.0),
    }


def parse_inspection(row: Mapping[str, Any], d: DataDictionary) -> Row:
    verdict = _code(d, "verdict", row, "verdict")
    defect = _code(d, "defect_class", row, "defect_class", required=False)
    if defect is None:
        defect = "none" if verdict == "pass" else None
    image_hash = text(row, "image_hash", required=False)
    if image_hash is not None:
        image_hash = image_hash.lower()
        if not _HEX.match(image_hash):
            raise FieldError("image_hash", "expected 16 to 64 hex digits (a SHA-256 of the image)")
    return {
        "inspection_id": req_text(row, "inspection_id", 96),
        "station": req_text(row, "station"),
        "inspected_at": req_timestamp(row, "inspected_at"),
        "verdict": verdict,
        "defect_class": defect,
        "score": number(row, "score", required=False, minimum=0.0, maximum=1.0),
        "model_version": text(row, "model_version", required=False, max_len=80),
        "image_hash": image_hash,
        "frame_id": text(row, "frame_id", required=False, max_len=96),
        "latency_ms": number(row, "latency_ms", required=False, minimum=0.0),
        "order_id": text(row, "order_id", required=False),
        "serial": text(row, "serial", required=False),
        "batch_id": text(row, "batch_id", required=False),
    }


def parse_measurement(row: Mapping[str, Any], d: DataDictionary) -> Row:
    parameter = req_text(row, "parameter")
    raw_value = _raw(row, "value")
    if raw_value is None:
        raise FieldError("value", "missing")
    raw_unit = text(row, "unit", required=False, max_len=16) or ""
    try:
        measured = d.measure(parameter, raw_value, raw_unit)
    except DictionaryError as exc:
        field = (
            "parameter"
            if "unknown data element" in str(exc)
            else ("unit" if "unit" in str(exc) else "value")
        )
        raise FieldError(field, str(exc)) from None
    return {
        "equipment": req_text(row, "equipment"),
        "parameter": measured.element.name,
        "element_id": measured.element.id,
        "measured_at": req_timestamp(row, "measured_at"),
        "value": measured.value,
        "unit": measured.unit,
        "grade": measured.grade,
        "raw_value": str(raw_value)[:64],
        "raw_unit": raw_unit,
        "batch_id": text(row, "batch_id", required=False),
        "order_id": text(row, "order_id", required=False),
    }


def _env_value(
    d: DataDictionary, row: Mapping[str, Any], name: str, element: str, default_unit: str
) -> float | None:
    value = _raw(row, name)
    if value is None:
        return None
    unit = text(row, f"{name}_unit", required=False, max_len=16) or default_unit
    try:
        return d.measure(element, value, unit).value
    except DictionaryError as exc:
        raise FieldError(name, str(exc)) from None


def parse_environment(row: Mapping[str, Any], d: DataDictionary) -> Row:
    temperature = _env_value(d, row, "temperature", "ambient_temperature", "°C")
    humidity = _env_value(d, row, "humidity", "relative_humidity", "%RH")
    if temperature is None and humidity is None:
        raise FieldError("temperature", "missing (a reading needs temperature, humidity or both)")
    return {
        "location": req_text(row, "location"),
        "measured_at": req_timestamp(row, "measured_at"),
        "temperature_c": temperature,
        "humidity_rh": humidity,
    }


def parse_operator_log(row: Mapping[str, Any], d: DataDictionary) -> Row:
    operator = req_text(row, "operator_id")
    if not _PSEUDONYM.match(operator) or "@" in operator:
        raise FieldError(
            "operator_id",
            "must be a pseudonymous id (3-64 letters, digits, '_.:-'; no names or e-mails)",
        )
    return {
        "operator_id": operator,
        "logged_at": req_timestamp(row, "logged_at"),
        "action": req_text(row, "action"),
        "station": text(row, "station", required=False),
        "order_id": text(row, "order_id", required=False),
        "batch_id": text(row, "batch_id", required=False),
        "note": text(row, "note", required=False, max_len=500),
    }


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

#: the fields a delivered row of each kind may carry
FIELDS: dict[str, frozenset[str]] = {
    "order": frozenset(
        {
            "order_id",
            "customer",
            "supplier",
            "product",
            "quantity",
            "status",
            "opened_at",
            "closed_at",
        }
    ),
    "product": frozenset({"serial", "product_type", "order_id", "batch_id", "made_at"}),
    "batch": frozenset(
        {"batch_id", "material", "kind", "producer", "quantity", "made_at", "customer", "order_id"}
    ),
    "genealogy": frozenset({"child_batch_id", "parent_batch_id", "quantity_used"}),
    "inspection": frozenset(
        {
            "inspection_id",
            "station",
            "inspected_at",
            "verdict",
            "defect_class",
            "score",
            "model_version",
            "image_hash",
            "frame_id",
            "latency_ms",
            "order_id",
            "serial",
            "batch_id",
        }
    ),
    "measurement": frozenset(
        {"equipment", "parameter", "value", "unit", "measured_at", "batch_id", "order_id"}
    ),
    "environment": frozenset(
        {"location", "measured_at", "temperature", "temperature_unit", "humidity", "humidity_unit"}
    ),
    "operator_log": frozenset(
        {"operator_id", "logged_at", "action", "station", "order_id", "batch_id", "note"}
    ),
}


def parse_row(kind: str, row: Mapping[str, Any], d: DataDictionary) -> Row:
    """Validate one delivered row of ``kind``; raises :class:`FieldError`."""
    if not isinstance(row, Mapping):
        raise FieldError("-", f"a row must be an object with fields, got {type(row).__name__}")
    allowed = FIELDS[kind]
    for key in row:
        if key not in allowed:
            if key is None:
                raise FieldError("-", "more values than header columns")
            raise FieldError(
                str(key), f"not a field of {kind} (fields: {', '.join(sorted(allowed))})"
            )
    return PARSERS[kind](row, d)
