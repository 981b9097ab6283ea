"""Row validation: what a plant delivers -> a canonical QDM row, or a precise error.

One parser per QDM kind. A parser takes a mapping of field -> raw value (strings from
CSV, JSON values from JSONL or REST; empty strings mean "absent") and returns the
row as the storage layer stores it, or raises :class:`RowInvalid` listing every
problem of the row, each a :class:`FieldError` naming its field.

The parsers are built from the field parsers of `connector.field_parsers`, which
collect every problem of a row instead of stopping at the first; this module adds
what is particular to a kind: which fields it takes and how, defaults (an order is
open unless it says otherwise; a passing inspection has no defect), and the checks
across its fields. `parse_row` also refuses fields the kind does not take (its
`FIELDS`, from `connector.row_template`, which lists each kind's columns for
``qdspace ingest --kind K --template``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from math import isfinite
from typing import Any

from qdspace.connector.dictionary import DataDictionary, Measured
from qdspace.connector.errors import DictionaryError
from qdspace.connector.field_parsers import (
    FieldError,
    Problems,
    Row,
    RowInvalid,
    code,
    integer,
    raw,
    req_text,
    req_timestamp,
    short,
    text,
    timestamp,
)
from qdspace.connector.field_parsers import number as _bounded_number
from qdspace.connector.numbers import NumberTextError, parse_number
from qdspace.connector.row_template import FIELDS

_PSEUDONYM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{2,63}$")
_HEX = re.compile(r"^[0-9a-f]{16,64}$")


def number(
    p: Problems,
    row: Mapping[str, Any],
    name: str,
    *,
    required: bool = True,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float | None:
    """A number field: text is read by the one grammar of `connector.numbers` (as a
    measurement value is: ``1,5`` is 1.5, ``1,000`` and ``1_000`` are refused, naming the
    field and the value); absence and JSON numbers as `field_parsers.number`, and the
    bounds with its words."""
    value = raw(row, name)
    if value.__class__ is not str:
        return _bounded_number(p, row, name, required=required, minimum=minimum, maximum=maximum)
    try:
        result = parse_number(value)
    except NumberTextError as exc:
        p.fail(name, exc.reason)
        return None
    if not isfinite(result):
        p.fail(name, f"expected a finite number, got {short(value)}")
    elif minimum is not None and result < minimum:
        p.fail(name, f"{result:g} is below the minimum {minimum:g}")
    elif maximum is not None and result > maximum:
        p.fail(name, f"{result:g} is above the maximum {maximum:g}")
    else:
        return result
    return None


def parse_order(row: Mapping[str, Any], d: DataDictionary) -> Row:
    p = Problems()
    status = code(p, d, "order_status", row, "status", required=False) or "open"
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
    if status == "closed" and closed is None and raw(row, "closed_at") is None:
        p.fail("closed_at", "missing (required when status is closed)")
    if closed is not None and opened is not None and closed < opened:
        p.fail("closed_at", "before opened_at")
    return p.done(out)


def parse_product(row: Mapping[str, Any], d: DataDictionary) -> Row:
    p = Problems()
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
    p = Problems()
    return p.done(
        {
            "batch_id": req_text(p, row, "batch_id"),
            "material": req_text(p, row, "material", 128),
            "kind": code(p, d, "batch_kind", row, "kind"),
            "producer": req_text(p, row, "producer"),
            "quantity": number(p, row, "quantity", minimum=0.0),
            "made_at": req_timestamp(p, row, "made_at"),
            "customer": text(p, row, "customer", required=False),
            "order_id": text(p, row, "order_id", required=False),
        }
    )


def parse_genealogy(row: Mapping[str, Any], d: DataDictionary) -> Row:
    p = Problems()
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


def _image_hash(p: Problems, row: Mapping[str, Any]) -> str | None:
    image_hash = text(p, row, "image_hash", required=False)
    if image_hash is not None:
        image_hash = image_hash.lower()
        if not _HEX.match(image_hash):
            p.fail("image_hash", "expected 16 to 64 hex digits (a SHA-256 of the image)")
            return None
    return image_hash


def parse_inspection(row: Mapping[str, Any], d: DataDictionary) -> Row:
    p = Problems()
    verdict = code(p, d, "verdict", row, "verdict")
    defect = code(p, d, "defect_class", row, "defect_class", required=False)
    if defect is None and raw(row, "defect_class") is None:
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
    p: Problems, d: DataDictionary, parameter: str, raw_value: Any, raw_unit: str
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
    p = Problems()
    parameter = req_text(p, row, "parameter")
    raw_value = raw(row, "value")
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
    p: Problems,
    d: DataDictionary,
    row: Mapping[str, Any],
    name: str,
    element: str,
    default_unit: str,
) -> float | None:
    value = raw(row, name)
    if value is None:
        return None
    unit = text(p, row, f"{name}_unit", required=False, max_len=16) or default_unit
    try:
        return d.measure(element, value, unit).value
    except DictionaryError as exc:
        p.fail(name, str(exc))
        return None


def parse_environment(row: Mapping[str, Any], d: DataDictionary) -> Row:
    p = Problems()
    temperature = _env_value(p, d, row, "temperature", "ambient_temperature", "°C")
    humidity = _env_value(p, d, row, "humidity", "relative_humidity", "%RH")
    if raw(row, "temperature") is None and raw(row, "humidity") is None:
        p.fail("temperature", "missing (a reading needs temperature, humidity or both)")
    return p.done(
        {
            "location": req_text(p, row, "location"),
            "measured_at": req_timestamp(p, row, "measured_at"),
            "temperature_c": temperature,
            "humidity_rh": humidity,
        }
    )


def _pseudonym(p: Problems, row: Mapping[str, Any]) -> str | None:
    operator = req_text(p, row, "operator_id")
    if operator is not None and (not _PSEUDONYM.match(operator) or "@" in operator):
        p.fail(
            "operator_id",
            "must be a pseudonymous id (3-64 letters, digits, '_.:-'; no names or e-mails)",
        )
        return None
    return operator


def parse_operator_log(row: Mapping[str, Any], d: DataDictionary) -> Row:
    p = Problems()
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


def parse_calibration(row: Mapping[str, Any], d: DataDictionary) -> Row:
    p = Problems()
    valid_from = req_timestamp(p, row, "valid_from")
    valid_until = req_timestamp(p, row, "valid_until")
    if valid_from is not None and valid_until is not None and valid_until <= valid_from:
        p.fail("valid_until", "must be after valid_from")
    return p.done(
        {
            "certificate_id": req_text(p, row, "certificate_id"),
            "equipment": req_text(p, row, "equipment"),
            "valid_from": valid_from,
            "valid_until": valid_until,
            "result": code(p, d, "calibration_result", row, "result", required=False) or "pass",
            "issuer": text(p, row, "issuer", required=False, max_len=128),
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
    "calibration": parse_calibration,
}


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
