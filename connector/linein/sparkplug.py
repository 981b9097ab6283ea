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

Why a metric without a known data type is refused, not guessed: after a connector
restart the book is empty (an NBIRTH is sent once, at QoS 0), and a DATA metric sent by
name carries no type; an Int32 -5 then reads as 4294967291, stored wrong or refused
for a range it never left. So it is refused and the edge node asked for a rebirth. A
gap in an edge node's ``seq`` (0..255, one per message after its NBIRTH) means messages
were lost, BIRTHs perhaps among them: a rebirth is asked too.

Why bounded: anyone who may publish can invent edge nodes and devices. A death
(``NDEATH``, ``DDEATH``) drops what its BIRTH said; past ``MAX_NODES`` edge nodes,
``MAX_DEVICES`` devices of one node or ``MAX_KNOWN_METRICS`` metrics in all, a BIRTH
is refused with the reason.
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
    refused_source,
    topic_matches,
)

NAMESPACE = "spBv1.0"
BIRTHS = frozenset({"NBIRTH", "DBIRTH"})
DATA = frozenset({"NDATA", "DDATA"})
DEATHS = frozenset({"NDEATH", "DDEATH"})
#: Sparkplug B data types (the specification's numbers)
SIGNED_32 = {1: 8, 2: 16, 3: 32}  # Int8, Int16, Int32 -> bits
INT64, UNSIGNED = 4, frozenset({5, 6, 7, 8})
FLOAT, DOUBLE, BOOLEAN, STRING, TEXT = 9, 10, 11, 12, 14
#: metrics one payload may carry at most
MAX_METRICS = 10_000
REBIRTH_METRIC = "Node Control/Rebirth"
BDSEQ_METRIC = "bdSeq"
#: edge nodes, devices of one edge node, and metric names in all the book holds at most
MAX_NODES = 1000
MAX_DEVICES = 1000
MAX_KNOWN_METRICS = 500_000
NO_TYPE = "no data type known (no BIRTH seen since the connector started): refused, not guessed"


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
    if any(len(level) > MAX_LEVEL for level in levels):  # (the book keeps them as keys)
        return None
    return SparkplugTopic(levels[1], levels[2], levels[3], levels[4] if len(levels) == 5 else None)


Key = tuple[str, str, "str | None"]
#: a group, edge node or device name is at most this long (an equipment id is 64
#: characters at most; 10,000 BIRTHs of devices named by 16 kB each took 157 MB)
MAX_LEVEL = 64


@dataclass
class BirthBook:
    """What the last BIRTH of each edge node / device said: alias -> name, name -> type."""

    aliases: dict[Key, dict[int, str]] = field(default_factory=dict)
    types: dict[Key, dict[str, int]] = field(default_factory=dict)
    #: edge nodes (group, node) to be asked to be born again (the connector sends the
    #: rebirth command): their DATA named an alias or a metric no BIRTH seen typed, or
    #: their seq skipped
    unknown: set[tuple[str, str]] = field(default_factory=set)
    #: per edge node with a BIRTH seen: its devices (None: the node itself), its last
    #: seq, and the bdSeq of its NBIRTH (an NDEATH with another is a stale one)
    devices: dict[tuple[str, str], set[str | None]] = field(default_factory=dict)
    seq: dict[tuple[str, str], int] = field(default_factory=dict)
    bdseq: dict[tuple[str, str], int] = field(default_factory=dict)
    known: int = 0  # metric names held, in all

    def birth(self, where: SparkplugTopic, metrics: list[Any]) -> str | None:
        """Note a BIRTH; returns why it is refused (the book full), else None."""
        node = where.node_key
        if where.device is None:  # a node's rebirth restarts its devices too
            self.forget_node(node)
        else:
            self._drop((*node, where.device))
        aliases: dict[int, str] = {}
        types: dict[str, int] = {}
        for m in metrics:
            if m.HasField("name"):
                if m.HasField("alias"):
                    aliases[m.alias] = m.name
                if m.HasField("datatype"):
                    types[m.name] = m.datatype
        devices = self.devices.get(node, set())
        if node not in self.devices and len(self.devices) >= MAX_NODES:
            return f"{len(self.devices)} edge nodes known already; at most {MAX_NODES}"
        if where.device is not None and len(devices) >= MAX_DEVICES:
            return f"edge node has {len(devices)} devices known already; at most {MAX_DEVICES}"
        if self.known + len(types) + len(aliases) > MAX_KNOWN_METRICS:
            return f"{self.known} metrics known already; at most {MAX_KNOWN_METRICS}"
        key = (*node, where.device)
        self.aliases[key] = aliases
        self.types[key] = types
        self.known += len(types) + len(aliases)
        self.devices.setdefault(node, set()).add(where.device)
        if where.device is None:
            bdseq = next((m for m in metrics if m.name == BDSEQ_METRIC), None)
            if bdseq is not None:
                self.bdseq[node] = _whole(bdseq)
        return None

    def death(self, where: SparkplugTopic, metrics: list[Any]) -> None:
        """An NDEATH forgets the node and its devices (unless its bdSeq says it is the
        death of an earlier session); a DDEATH forgets the device."""
        node = where.node_key
        if where.device is not None:
            self._drop((*node, where.device))
            return
        bdseq = next((m for m in metrics if m.name == BDSEQ_METRIC), None)
        if bdseq is not None and node in self.bdseq and _whole(bdseq) != self.bdseq[node]:
            return  # a stale death (its session's will, delivered after the new NBIRTH)
        self.forget_node(node)

    def forget_node(self, node: tuple[str, str]) -> None:
        for device in list(self.devices.get(node, ())):
            self._drop((*node, device))
        self.devices.pop(node, None)
        self.seq.pop(node, None)
        self.bdseq.pop(node, None)

    def _drop(self, key: Key) -> None:
        self.known -= len(self.aliases.pop(key, {})) + len(self.types.pop(key, {}))
        devices = self.devices.get(key[:2])
        if devices is not None:
            devices.discard(key[2])
            if not devices and key[2] is not None:
                del self.devices[key[:2]]

    def sequence(self, where: SparkplugTopic, payload: Any) -> None:
        """Track the edge node's seq (0..255 after its NBIRTH); a gap asks for a rebirth."""
        node = where.node_key
        if not payload.HasField("seq"):
            return
        if where.kind == "NBIRTH":
            self.seq[node] = payload.seq
            return
        last = self.seq.get(node)
        if last is None:  # no NBIRTH seen: nothing to count from
            return
        if payload.seq != (last + 1) % 256:
            self.unknown.add(node)
        self.seq[node] = payload.seq

    def name_and_type(self, where: SparkplugTopic, metric: Any) -> tuple[str | None, int | None]:
        key = (where.group, where.edge_node, where.device)
        name = metric.name if metric.HasField("name") else None
        if name is None and metric.HasField("alias"):
            name = self.aliases.get(key, {}).get(metric.alias)
        datatype = metric.datatype if metric.HasField("datatype") else None
        if datatype is None and name is not None:
            datatype = self.types.get(key, {}).get(name)
        return name, datatype


def _whole(metric: Any) -> int:
    """A metric's integer value (bdSeq is an Int64, sometimes sent as an int)."""
    which = metric.WhichOneof("value")
    return int(getattr(metric, which)) if which in ("int_value", "long_value") else -1


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
    if where.kind not in BIRTHS | DATA | DEATHS:
        return []
    if len(payload) > MAX_PAYLOAD_BYTES:
        return [("-", f"payload of {len(payload)} bytes; at most {MAX_PAYLOAD_BYTES}")]
    decoded = Payload()
    try:
        decoded.ParseFromString(payload)
    except DecodeError as exc:
        if where.kind in DEATHS:  # a death all the same: forget what its BIRTH said
            book.death(where, [])
            return []
        return [("-", f"payload is not a Sparkplug B protobuf: {exc}")]
    metrics = list(decoded.metrics)
    if len(metrics) > MAX_METRICS:
        return [("-", f"{len(metrics)} metrics in one payload; at most {MAX_METRICS}")]
    if where.kind not in ("NDEATH", "NBIRTH"):  # an NDEATH is the broker's will: no seq
        book.sequence(where, decoded)
    if where.kind in DEATHS:
        book.death(where, metrics)
        return []
    if where.kind in BIRTHS:
        refused = book.birth(where, metrics)
        if refused is not None:
            return [("-", f"BIRTH refused: {refused}")]
        if where.kind == "NBIRTH":
            book.sequence(where, decoded)  # starts the node's seq
    return _readings(config, book, where, topic, decoded, metrics)


def _readings(
    config: MqttConfig,
    book: BirthBook,
    where: SparkplugTopic,
    topic: str,
    decoded: Any,
    metrics: list[Any],
) -> list[Row | BadLine]:
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
        if datatype is None:
            out.append((f"metric {name}", NO_TYPE))
            book.unknown.add(where.node_key)
            continue
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
    row = measurement(
        equipment=equipment,
        element=mapping.element,
        value=value,
        unit=mapping.unit,
        measured_at=taken,
        batch_id=mapping.batch_id,
        order_id=mapping.order_id,
    )
    return refused_source(row, datetime.now(UTC)) or row
