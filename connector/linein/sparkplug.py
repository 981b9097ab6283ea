"""Sparkplug B over MQTT: topics and payloads -> measurement rows, or why not.

A Sparkplug edge node publishes protobuf payloads on ``spBv1.0/<group>/<type>/<edge
node>[/<device>]``. A BIRTH (``NBIRTH``, ``DBIRTH``) names every metric, its data type
and the alias later messages may use instead of the name; a DATA message (``NDATA``,
``DDATA``) carries changed values, often by alias only and without the type. So the
connector keeps, per edge node and device, what the last BIRTH said (`BirthBook`),
and reads each metric's value by the type its BIRTH declared (signed integers travel
as two's complement in unsigned fields). Every metric is one reading, mapped by topic
filter and metric name (``MqttTopic.metric``) like a JSON message is by topic.

A metric needs the time it was taken (its own timestamp, else the payload's): the
natural key that makes a redelivered message a duplicate. Commands (``NCMD``,
``DCMD``), deaths and ``STATE`` carry no readings; a metric no mapping names is
skipped (an edge node publishes far more than a quality node keeps). What cannot be
read (not protobuf, an alias no BIRTH named, a null, a type that is no measurement)
is reported with its topic and metric; an edge node that used an alias no BIRTH seen
named is noted (`BirthBook.unknown`) and the connector asks it for a rebirth
(`rebirth_request`: NCMD ``Node Control/Rebirth``). Pure: no sockets, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from qdspace.connector.ingest import BadLine
from qdspace.connector.linein.config import MqttConfig, MqttTopic
from qdspace.connector.linein.mapping import (
    MAX_PAYLOAD_BYTES,
    Row,
    measurement,
    topic_matches,
)

NAMESPACE = "spBv1.0"
BIRTHS = frozenset({"NBIRTH", "DBIRTH"})
DATA = frozenset({"NDATA", "DDATA"})
#: Sparkplug B data types (the specification's numbers)
SIGNED_32 = {1: 8, 2: 16, 3: 32}  # Int8, Int16, Int32 -> bits
INT64, UNSIGNED = 4, frozenset({5, 6, 7, 8})
FLOAT, DOUBLE, BOOLEAN, STRING, TEXT = 9, 10, 11, 12, 14
#: metrics one payload may carry at most
MAX_METRICS = 10_000
REBIRTH_METRIC = "Node Control/Rebirth"


@dataclass(frozen=True)
class SparkplugTopic:
    group: str
    kind: str
    edge_node: str
    device: str | None

    @property
    def node_key(self) -> tuple[str, str]:
        return (self.group, self.edge_node)


def parse_topic(topic: str) -> SparkplugTopic | None:
    """The parts of a Sparkplug B topic, or None when it is none."""
    levels = topic.split("/")
    if len(levels) not in (4, 5) or levels[0] != NAMESPACE or not all(levels[1:]):
        return None
    return SparkplugTopic(levels[1], levels[2], levels[3], levels[4] if len(levels) == 5 else None)


@dataclass
class BirthBook:
    """What the last BIRTH of each edge node / device said: alias -> name, name -> type."""

    aliases: dict[tuple[str, str, str | None], dict[int, str]] = field(default_factory=dict)
    types: dict[tuple[str, str, str | None], dict[str, int]] = field(default_factory=dict)
    #: edge nodes (group, node) whose DATA named an alias no BIRTH seen named: they
    #: should be asked to be born again (the connector sends the rebirth command)
    unknown: set[tuple[str, str]] = field(default_factory=set)

    def birth(self, where: SparkplugTopic, metrics: list[Any]) -> None:
        key = (where.group, where.edge_node, where.device)
        if where.device is None:  # a node's rebirth restarts its devices too
            for k in [k for k in self.aliases if k[:2] == key[:2]]:
                self.aliases.pop(k, None)
                self.types.pop(k, None)
        aliases: dict[int, str] = {}
        types: dict[str, int] = {}
        for m in metrics:
            if m.HasField("name"):
                if m.HasField("alias"):
                    aliases[m.alias] = m.name
                if m.HasField("datatype"):
                    types[m.name] = m.datatype
        self.aliases[key] = aliases
        self.types[key] = types

    def name_and_type(self, where: SparkplugTopic, metric: Any) -> tuple[str | None, int | None]:
        key = (where.group, where.edge_node, where.device)
        name = metric.name if metric.HasField("name") else None
        if name is None and metric.HasField("alias"):
            name = self.aliases.get(key, {}).get(metric.alias)
        datatype = metric.datatype if metric.HasField("datatype") else None
        if datatype is None and name is not None:
            datatype = self.types.get(key, {}).get(name)
        return name, datatype


def rebirth_request(group: str, edge_node: str, now_ms: int) -> tuple[str, bytes]:
    """The topic and payload that ask an edge node to publish its BIRTH again (the
    specification's NCMD metric ``Node Control/Rebirth`` = true)."""
    from qdspace.protocols.sparkplug.sparkplug_b_pb2 import Payload

    payload = Payload(timestamp=now_ms)
    payload.metrics.add(name=REBIRTH_METRIC, timestamp=now_ms, datatype=BOOLEAN, boolean_value=True)
    return f"{NAMESPACE}/{group}/NCMD/{edge_node}", payload.SerializeToString()


def _value(metric: Any, datatype: int | None) -> Any | str:
    """The metric's value as a number or text, else why not (a text starting with '!')."""
    which = metric.WhichOneof("value")
    if metric.is_null or which is None:
        return "!null value"
    raw = getattr(metric, which)
    if datatype in SIGNED_32 and which == "int_value":
        bits = SIGNED_32[datatype]
        raw &= (1 << bits) - 1
        return raw - (1 << bits) if raw >= 1 << (bits - 1) else raw
    if datatype == INT64 and which == "long_value":
        return raw - (1 << 64) if raw >= 1 << 63 else raw
    if which in ("int_value", "long_value", "float_value", "double_value"):
        return raw
    if which == "string_value" and datatype in (None, STRING, TEXT):
        return raw
    return f"!a {which.removesuffix('_value')} value is no measurement"


def _taken(metric: Any, payload: Any) -> datetime | None:
    ms = metric.timestamp if metric.HasField("timestamp") else None
    if ms is None and payload.HasField("timestamp"):
        ms = payload.timestamp
    if ms is None or ms >= 1e14:
        return None
    return datetime.fromtimestamp(ms / 1000.0, UTC)


def _mapping(config: MqttConfig, topic: str, name: str) -> MqttTopic | None:
    return next(
        (t for t in config.topics if t.metric == name and topic_matches(t.topic, topic)), None
    )


def sparkplug_rows(
    config: MqttConfig, book: BirthBook, topic: str, payload: bytes
) -> list[Row | BadLine]:
    """The readings of one Sparkplug B message (none for a command, death or state)."""
    from google.protobuf.message import DecodeError

    from qdspace.protocols.sparkplug.sparkplug_b_pb2 import Payload

    where = parse_topic(topic)
    if where is None:
        return [("topic", f"not a Sparkplug B topic ({NAMESPACE}/group/type/node[/device])")]
    if where.kind not in BIRTHS | DATA:
        return []
    if len(payload) > MAX_PAYLOAD_BYTES:
        return [("-", f"payload of {len(payload)} bytes; at most {MAX_PAYLOAD_BYTES}")]
    decoded = Payload()
    try:
        decoded.ParseFromString(payload)
    except DecodeError as exc:
        return [("-", f"payload is not a Sparkplug B protobuf: {exc}")]
    metrics = list(decoded.metrics)
    if len(metrics) > MAX_METRICS:
        return [("-", f"{len(metrics)} metrics in one payload; at most {MAX_METRICS}")]
    if where.kind in BIRTHS:
        book.birth(where, metrics)
    out: list[Row | BadLine] = []
    for metric in metrics:
        name, datatype = book.name_and_type(where, metric)
        if name is None:
            out.append(("metric", f"alias {metric.alias} was named by no BIRTH seen"))
            book.unknown.add(where.node_key)
            continue
        mapping = _mapping(config, topic, name)
        if mapping is None:
            continue  # a metric this node does not keep
        out.append(_row(mapping, topic, name, _value(metric, datatype), metric, decoded))
    return out


def _row(
    mapping: MqttTopic,
    topic: str,
    name: str,
    value: Any,
    metric: Any,
    payload: Any,
) -> Row | BadLine:
    if isinstance(value, str) and value.startswith("!"):
        return (f"metric {name}", value[1:])
    taken = _taken(metric, payload)
    if taken is None:
        return (f"metric {name}", "no timestamp (a redelivery would be stored twice)")
    equipment = mapping.equipment
    if mapping.equipment_level is not None:
        levels = topic.split("/")
        if mapping.equipment_level >= len(levels):
            return ("equipment", f"topic {topic!r} has no level {mapping.equipment_level}")
        equipment = levels[mapping.equipment_level]
    assert equipment is not None
    return measurement(
        equipment=equipment,
        element=mapping.element,
        value=value,
        unit=mapping.unit,
        measured_at=taken,
        batch_id=mapping.batch_id,
        order_id=mapping.order_id,
    )
