"""Pure mapping: what a line source delivered -> a QDM measurement row, or why not.

No sockets, no files, no clock of its own: the connectors hand in what they decoded (an
OPC UA value with its timestamps, an MQTT topic and payload) and their clock's now, and
get back a row for
:func:`connector.validate.parse_measurement` (which converts the unit through the
dictionary) or a ``(field, reason)`` pair that the sink reports with the source.

Why the source timestamp is required: the natural key of a measurement is (equipment,
parameter, measured_at), so a reading delivered twice (a re-subscription's initial
value, an MQTT redelivery, a backfill overlapping what arrived live) is stored once
only if it carries the time it was *taken*. A reading without one cannot be told
from a new one, so it is refused rather than stamped with the time it arrived.

What a source says is checked as a peer's bytes are (anyone who can publish on the
plant's broker is a source): a reading taken more than `AHEAD` after our clock is refused
(one stamped 9999 became the newest reading of its equipment for good, and the OPC UA
backfill, which starts after the newest stored, then read no history of it again); an
equipment, batch or order id must be printable text (an escape sequence stored as a
batch id made the lot untraceable) and is never cut or made up from another type (two
76-character lot ids equal in their first 64 were stored as one lot; an object became its
Python text): what is not so is refused with its field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from qdspace.connector.ingest import TOO_MANY_DIGITS, BadLine
from qdspace.connector.linein.config import MqttConfig, MqttTopic, OpcuaNode
from qdspace.util.instants import OutsideUtc, in_utc
from qdspace.util.json_depth import json_too_deep

Row = dict[str, Any]
#: an MQTT payload larger than this is no single reading
MAX_PAYLOAD_BYTES = 64 * 1024
#: a reading may be stamped this far after our clock (a machine's clock runs ahead)
AHEAD = timedelta(minutes=5)


def refused_source(row: Row, now: datetime) -> BadLine | None:
    """Why a row a line source delivered is refused before validation (its time ahead of
    `now` by more than `AHEAD`, an id that is not printable text), else None."""
    taken = row["measured_at"]
    if taken > now + AHEAD:
        return (
            "measured_at",
            f"{taken.isoformat()} is more than {AHEAD.seconds // 60} minutes after this "
            f"node's clock ({now.isoformat(timespec='seconds')})",
        )
    for name in ("equipment", "batch_id", "order_id"):
        value = row.get(name)
        if isinstance(value, str) and not value.isprintable():
            return (name, f"{value[:64]!r} is not printable text")
    return None


def measurement(
    *,
    equipment: str,
    element: str,
    value: Any,
    unit: str,
    measured_at: datetime,
    batch_id: Any = None,
    order_id: Any = None,
) -> Row:
    """A measurement row as a delivered file would carry it."""
    row: Row = {
        "equipment": equipment,
        "parameter": element,
        "value": value,
        "unit": unit,
        "measured_at": measured_at if measured_at.tzinfo else measured_at.replace(tzinfo=UTC),
    }
    if batch_id:
        row["batch_id"] = batch_id
    if order_id:
        row["order_id"] = order_id
    return row


def opcua_row(
    node: OpcuaNode,
    value: Any,
    source_time: datetime | None,
    server_time: datetime | None,
    context: Mapping[str, Any],
    now: datetime | None = None,
) -> Row | BadLine:
    """A data change of ``node``; ``context`` holds the current values of context nodes
    (``now``: our clock, else read here)."""
    taken = source_time or (server_time if node.server_time else None)
    if taken is None:
        return (
            "measured_at",
            "no source timestamp (a re-delivery would be stored twice under a new server "
            "time; the node's server_time setting stores it under the server's)",
        )
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return ("value", f"expected a number or a grade code, got {type(value).__name__}")
    for name, context_node in (("batch_id", node.batch_id_node), ("order_id", node.order_id_node)):
        held = context.get(context_node or "")
        if isinstance(held, float) and not math.isfinite(held):
            return (name, f"context node {context_node} reads {held}: no id")
    batch = node.batch_id or _text(context.get(node.batch_id_node or ""))
    order = node.order_id or _text(context.get(node.order_id_node or ""))
    row = measurement(
        equipment=node.equipment,
        element=node.element,
        value=value,
        unit=node.unit,
        measured_at=taken,
        batch_id=batch,
        order_id=order,
    )
    return refused_source(row, now or datetime.now(UTC)) or row


def _text(value: Any) -> Any:
    """A context node's value as an id: a number as its digits, a text as it is (checked
    whole by the validation: never cut), nothing for none."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return str(value)
    return value.strip() or None if isinstance(value, str) else value


def _given(value: Any, fallback: str | None) -> Any:
    """A payload's id field as sent (the validation refuses one that is no id), or the
    mapping's when the payload has none."""
    return fallback if value is None or value == "" else value


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT topic filter matching (``+`` one level, ``#`` the rest)."""
    want, got = pattern.split("/"), topic.split("/")
    for i, level in enumerate(want):
        if level == "#":
            return True
        if i >= len(got) or (level != "+" and level != got[i]):
            return False
    return len(want) == len(got)


def mqtt_mapping(config: MqttConfig, topic: str) -> MqttTopic | None:
    """The first configured topic filter that ``topic`` matches."""
    return next((t for t in config.topics if topic_matches(t.topic, topic)), None)


def mqtt_row(
    config: MqttConfig,
    mapping: MqttTopic,
    topic: str,
    payload: bytes,
    now: datetime | None = None,
) -> Row | BadLine:
    """One message: a JSON object with value, time and optionally unit, batch, order
    (``now``: our clock, else read here)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return ("-", f"payload of {len(payload)} bytes; at most {MAX_PAYLOAD_BYTES}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return ("-", f"payload is not UTF-8 (byte 0x{payload[exc.start]:02x} at {exc.start})")
    if json_too_deep(text):
        return ("-", "payload JSON nested too deep")
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        return ("-", f"payload is not JSON: {exc.msg} at column {exc.colno}")
    except ValueError:  # an integer of more than 4300 digits
        return ("-", f"payload is not JSON Python reads: {TOO_MANY_DIGITS}")
    if not isinstance(body, dict):
        return ("-", f"payload must be a JSON object, got {type(body).__name__}")
    if config.value_field not in body:
        return (config.value_field, "missing")
    taken = _time(body.get(config.time_field))
    if isinstance(taken, str):
        return (config.time_field, taken)
    equipment = mapping.equipment
    if mapping.equipment_level is not None:
        levels = topic.split("/")
        if mapping.equipment_level >= len(levels) or not levels[mapping.equipment_level]:
            return ("equipment", f"topic {topic!r} has no level {mapping.equipment_level}")
        equipment = levels[mapping.equipment_level]
    assert equipment is not None
    unit = body.get(config.unit_field)
    if unit is None:
        unit = mapping.unit
    if not isinstance(unit, str):
        return (config.unit_field, f"expected a unit's symbol, got {type(unit).__name__}")
    row = measurement(
        equipment=equipment,
        element=mapping.element,
        value=body[config.value_field],
        unit=unit,
        measured_at=taken,
        batch_id=_given(body.get(config.batch_field), mapping.batch_id),
        order_id=_given(body.get(config.order_field), mapping.order_id),
    )
    return refused_source(row, now or datetime.now(UTC)) or row


def _time(value: Any) -> datetime | str:
    """An ISO-8601 time with a zone, or seconds since the epoch; else why not."""
    if value is None:
        return "missing (the time the reading was taken)"
    if isinstance(value, bool):
        return f"expected a time, got {value!r}"
    if isinstance(value, int | float):
        if not 0 <= value < 1e11:
            return f"{value!r} is not seconds since 1970"
        return datetime.fromtimestamp(value, UTC)
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return f"not an ISO-8601 time: {value!r}"
    if parsed.tzinfo is None:
        return f"time {value!r} has no zone; add Z or an offset"
    try:
        return in_utc(parsed)
    except OutsideUtc as exc:
        return f"time {value!r} is {exc}"
