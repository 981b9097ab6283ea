"""Sparkplug B over MQTT: topics and payloads -> measurement rows, or why not.

A Sparkplug edge node publishes protobuf payloads on ``spBv1.0/<group>/<type>/<edge
node>[/<device>]``. A BIRTH (``NBIRTH``, ``DBIRTH``) names every metric, its data type
and the alias later messages may use instead of the name; a DATA message (``NDATA``,
``DDATA``) carries changed values, often by alias only and without the type. So the
connector keeps, per edge node and device, what the last BIRTH said (`BirthBook`),
and reads each metric's value by the type its BIRTH declared
(:mod:`connector.linein.sparkplug_values`). Every metric is one reading, mapped by
topic filter and metric name (``MqttTopic.metric``) like a JSON message is by topic.

A metric needs the time it was taken (its own timestamp, else the payload's): the
natural key that makes a redelivered message a duplicate. Commands (``NCMD``,
``DCMD``), deaths and the host applications' ``STATE`` carry no readings; a metric no
mapping names is skipped (an edge node publishes far more than a quality node keeps).
What cannot be read (not protobuf, an alias no BIRTH named, a null, a type that is no
measurement) is reported with its topic and metric; an edge node that used an alias no
BIRTH seen named is noted (`BirthBook.unknown`) and the connector asks it for a rebirth
(`rebirth_request`: NCMD ``Node Control/Rebirth``). Pure: no sockets, no clock.

Why a metric without a known data type is refused, not guessed: after a connector
restart the book is empty (an NBIRTH is sent once, at QoS 0), and a DATA metric sent by
name carries no type; an Int32 -5 then reads as 4294967291, stored wrong or refused
for a range it never left. So it is refused and the edge node asked for a rebirth. A
gap in an edge node's ``seq`` (0..255, one per message after its NBIRTH) means messages
were lost, BIRTHs perhaps among them: a rebirth is asked too. An alias a BIRTH gives to
two metrics is refused in DATA (before, the later one won, and a setpoint sent by it was
stored as the pressure it shared the alias with); so is a metric it gives two types.

Why bounded: anyone who may publish can invent edge nodes and devices, and metric
names as long as a payload. The book keeps names only of metrics a mapping names (the
configuration's own strings: 2,000 BIRTHs of one 60 kB metric name each took 241 MB)
and of the others only that their alias was named. Past ``MAX_NODES`` edge nodes,
``MAX_DEVICES`` devices of one node, ``MAX_BORN`` nodes and devices in all (1,000
nodes of 1,000 devices each held a million empty BIRTHs, some 670 MB) or
``MAX_KNOWN_METRICS`` aliases and types in all, a BIRTH is refused with the reason. A
topic level is at most ``MAX_LEVEL`` characters of printable text without ``+`` or
``#`` (it is a key here, the topic of the rebirth we publish, and a log line). One
payload's refusals are one line per reason (7,000 metrics of an alias no BIRTH named
were 7,000 logged lines), with the number of metrics it stands for in the line and in
`SparkplugRead.refused`: the connector counts that many refused readings, not one
(before, a message whose 7,000 metrics were refused counted as one).

Why a death is checked: a death makes the connector forget a BIRTH, and the DATA after
it is then refused (and acknowledged: lost) until the edge node is born again. So an
NDEATH counts only with the ``bdSeq`` of the node's NBIRTH (the specification's will
carries it; one that does not, or is no protobuf, is no death of that session: before,
any publisher's 3 garbage bytes on ``NDEATH`` did it), and a DDEATH only when it is
readable and in ``seq`` order (one out of order asks for a rebirth, which settles what
is alive).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
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
from qdspace.connector.linein.sparkplug_values import BOOLEAN, metric_value, taken_at, type_name

NAMESPACE = "spBv1.0"
BIRTHS = frozenset({"NBIRTH", "DBIRTH"})
DATA = frozenset({"NDATA", "DDATA"})
DEATHS = frozenset({"NDEATH", "DDEATH"})
#: metrics one payload may carry at most
MAX_METRICS = 10_000
REBIRTH_METRIC = "Node Control/Rebirth"
BDSEQ_METRIC = "bdSeq"
#: edge nodes, devices of one edge node, nodes and devices in all, and aliases and
#: metric types in all the book holds at most
MAX_NODES = 1000
MAX_DEVICES = 1000
MAX_BORN = 20_000
MAX_KNOWN_METRICS = 500_000
#: a group, edge node or device name is at most this long (an equipment id is 64
#: characters at most; 10,000 BIRTHs of devices named by 16 kB each took 157 MB)
MAX_LEVEL = 64
#: aliases one refusal names at most (the others are counted)
MAX_SHOWN = 10
NO_TYPE = "no data type known (no BIRTH seen since the connector started): refused, not guessed"
NOT_TOPIC = f"not a Sparkplug B topic ({NAMESPACE}/group/type/node[/device])"


class Mark(Enum):
    """What a BIRTH's alias stands for when it is not a mapped metric's name."""

    UNMAPPED = "a metric no mapping names (its DATA is skipped)"
    AMBIGUOUS = "more than one metric of its BIRTH (its DATA is refused)"


#: the data type of a mapped metric its BIRTH gave two
CONFLICTING = -1
Key = tuple[str, str, "str | None"]
Aliases = dict[int, "str | Mark"]


@dataclass(frozen=True)
class SparkplugTopic:
    group: str
    kind: str
    edge_node: str
    device: str | None

    @property
    def node_key(self) -> tuple[str, str]:
        return (self.group, self.edge_node)


def read_topic(topic: str) -> SparkplugTopic | str:
    """The parts of a Sparkplug B topic, or why it is none."""
    levels = topic.split("/")
    if len(levels) not in (4, 5) or levels[0] != NAMESPACE or not all(levels[1:]):
        return NOT_TOPIC
    for level in levels[1:]:
        if len(level) > MAX_LEVEL:  # (the book keeps them as keys)
            return f"topic level of {len(level)} characters; at most {MAX_LEVEL}"
        if not level.isprintable() or "+" in level or "#" in level:
            return f"topic level {level!r} is no Sparkplug id (printable text, no '+' or '#')"
    return SparkplugTopic(levels[1], levels[2], levels[3], levels[4] if len(levels) == 5 else None)


def parse_topic(topic: str) -> SparkplugTopic | None:
    """The parts of a Sparkplug B topic, or None when it is none."""
    where = read_topic(topic)
    return where if isinstance(where, SparkplugTopic) else None


@dataclass
class BirthBook:
    """What the last BIRTH of each edge node / device said: alias -> name, name -> type."""

    aliases: dict[Key, Aliases] = field(default_factory=dict)
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
    known: int = 0  # aliases and types held, in all

    def birth(
        self, where: SparkplugTopic, aliases: Aliases, types: dict[str, int], bdseq: int | None
    ) -> str | None:
        """Note a BIRTH (its tables: `birth_tables`); returns why it is refused (the
        book full), else None."""
        node = where.node_key
        key = (*node, where.device)
        if where.device is None:  # a node's rebirth restarts its devices too
            self.forget_node(node)
        else:
            self._drop(key)
        devices = self.devices.get(node, set())
        if node not in self.devices and len(self.devices) >= MAX_NODES:
            return f"{len(self.devices)} edge nodes known already; at most {MAX_NODES}"
        if where.device is not None and len(devices) >= MAX_DEVICES:
            return f"edge node has {len(devices)} devices known already; at most {MAX_DEVICES}"
        if len(self.aliases) >= MAX_BORN:
            return f"{len(self.aliases)} edge nodes and devices known already; at most {MAX_BORN}"
        if self.known + len(types) + len(aliases) > MAX_KNOWN_METRICS:
            return f"{self.known} metrics known already; at most {MAX_KNOWN_METRICS}"
        self.aliases[key] = aliases
        self.types[key] = types
        self.known += len(types) + len(aliases)
        self.devices.setdefault(node, set()).add(where.device)
        if where.device is None and bdseq is not None:
            self.bdseq[node] = bdseq
        return None

    def death(self, where: SparkplugTopic, metrics: list[Any] | None) -> str | None:
        """An NDEATH forgets the node and its devices, a DDEATH the device (``metrics``
        None: the payload was no protobuf); returns why a death is not taken as one
        worth saying (a stale NDEATH, its session's will come late, is not)."""
        node = where.node_key
        if where.device is not None:
            if metrics is None:
                return "DDEATH that is no Sparkplug B protobuf: ignored"
            self._drop((*node, where.device))
            return None
        if node in self.bdseq:
            bdseq = _bdseq(metrics or [])
            if bdseq is None:
                return (
                    f"NDEATH without the bdSeq of the edge node's NBIRTH ({self.bdseq[node]}):"
                    " ignored (no death of its session)"
                )
            if bdseq != self.bdseq[node]:
                return None  # a stale death (its session's will, delivered after the NBIRTH)
        self.forget_node(node)
        return None

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

    def sequence(self, where: SparkplugTopic, payload: Any) -> bool:
        """Track the edge node's seq (0..255 after its NBIRTH); a gap asks for a rebirth.
        Returns whether the message came in order (or nothing is counted)."""
        node = where.node_key
        if not payload.HasField("seq"):
            return True
        if where.kind == "NBIRTH":
            self.seq[node] = payload.seq
            return True
        last = self.seq.get(node)
        if last is None:  # no NBIRTH seen: nothing to count from
            return True
        self.seq[node] = payload.seq
        if payload.seq != (last + 1) % 256:
            self.unknown.add(node)
            return False
        return True

    def resolve(
        self, where: SparkplugTopic, metric: Any
    ) -> tuple[Any, int | None] | int | str | None:
        """A DATA metric's name and data type; None for a metric no mapping names (its
        BIRTH said so); an alias (int) no BIRTH seen named; or why it is refused."""
        key = (where.group, where.edge_node, where.device)
        if metric.HasField("name"):
            name: str | Mark = metric.name
        elif metric.HasField("alias"):
            found = self.aliases.get(key, {}).get(metric.alias)
            if found is None:
                return int(metric.alias)
            name = found
        else:
            return "a metric with neither name nor alias"
        if name is Mark.UNMAPPED:
            return None
        if name is Mark.AMBIGUOUS:
            return f"alias {metric.alias} names {Mark.AMBIGUOUS.value}"
        if metric.HasField("datatype"):
            return name, metric.datatype
        return name, self.types.get(key, {}).get(name)


def birth_tables(
    metrics: list[Any], keep: Mapping[str, str]
) -> tuple[Aliases, dict[str, int], list[BadLine]]:
    """A BIRTH's aliases and the data types of its mapped metrics (``keep``: the names
    mappings name, each the configuration's own string), and what is wrong with them."""
    aliases: Aliases = {}
    types: dict[str, int] = {}
    clashes: list[int] = []
    problems: list[BadLine] = []
    for m in metrics:
        if not m.HasField("name"):
            continue
        name = keep.get(m.name) if isinstance(m.name, str) else None
        if m.HasField("alias"):
            mark: str | Mark = Mark.UNMAPPED if name is None else name
            had = aliases.setdefault(m.alias, mark)
            if had != mark:
                if had is not Mark.AMBIGUOUS:
                    clashes.append(m.alias)
                aliases[m.alias] = Mark.AMBIGUOUS
        if name is not None and m.HasField("datatype"):
            typed = types.setdefault(name, m.datatype)
            if typed != m.datatype:
                if typed != CONFLICTING:
                    problems.append(
                        (
                            f"metric {name}",
                            f"its BIRTH gives it two data types ({type_name(typed)}, "
                            f"{type_name(m.datatype)}): refused until a BIRTH gives it one",
                        )
                    )
                types[name] = CONFLICTING
    if clashes:
        problems.insert(
            0,
            (
                "metric",
                f"{_aliases(clashes)} named more than one metric of this BIRTH (a mapped "
                "one among them): refused in DATA until a BIRTH gives each alias one metric",
            ),
        )
    return aliases, types, problems


def _aliases(aliases: list[int]) -> str:
    shown = ", ".join(str(a) for a in aliases[:MAX_SHOWN])
    more = f" and {len(aliases) - MAX_SHOWN} more" if len(aliases) > MAX_SHOWN else ""
    return f"{'alias' if len(aliases) == 1 else 'aliases'} {shown}{more}"


def _bdseq(metrics: list[Any]) -> int | None:
    """The integer value of a payload's bdSeq metric (an Int64, sometimes an int), if any."""
    metric = next((m for m in metrics if m.HasField("name") and m.name == BDSEQ_METRIC), None)
    if metric is None:
        return None
    which = metric.WhichOneof("value")
    return int(getattr(metric, which)) if which in ("int_value", "long_value") else None


def rebirth_request(group: str, edge_node: str, now_ms: int) -> tuple[str, bytes]:
    """The topic and payload that ask an edge node to publish its BIRTH again (the
    specification's NCMD metric ``Node Control/Rebirth`` = true)."""
    from qdspace.protocols.sparkplug.sparkplug_b_pb2 import Payload

    payload = Payload(timestamp=now_ms)
    payload.metrics.add(name=REBIRTH_METRIC, timestamp=now_ms, datatype=BOOLEAN, boolean_value=True)
    return f"{NAMESPACE}/{group}/NCMD/{edge_node}", payload.SerializeToString()


@dataclass(frozen=True)
class SparkplugRead:
    """One message's readings and refusals (one line per reason), and how many metrics
    the refusals stand for in all: the count of refused readings the connector reports."""

    rows: list[Row | BadLine]
    refused: int


def _refusal(line: BadLine) -> SparkplugRead:
    return SparkplugRead([line], 1)


def _nothing() -> SparkplugRead:
    return SparkplugRead([], 0)


def _mapping(config: MqttConfig, topic: str, name: str) -> MqttTopic | None:
    return next(
        (t for t in config.topics if t.metric == name and topic_matches(t.topic, topic)), None
    )


def sparkplug_rows(
    config: MqttConfig, book: BirthBook, topic: str, payload: bytes
) -> list[Row | BadLine]:
    """The readings of one Sparkplug B message (none for a command, death or state)."""
    return read_sparkplug(config, book, topic, payload).rows


def read_sparkplug(
    config: MqttConfig, book: BirthBook, topic: str, payload: bytes
) -> SparkplugRead:
    """The readings of one Sparkplug B message, with the number of metrics refused. A
    message refused whole (not protobuf, too many metrics, its BIRTH refused) counts as
    one: which of its metrics were readings is unknown."""
    from google.protobuf.message import DecodeError

    from qdspace.protocols.sparkplug.sparkplug_b_pb2 import Payload

    if topic.startswith(f"{NAMESPACE}/STATE/"):  # a host application's birth or death
        return _nothing()
    where = read_topic(topic)
    if isinstance(where, str):
        return _refusal(("topic", where))
    if where.kind not in BIRTHS | DATA | DEATHS:
        return _nothing()
    if len(payload) > MAX_PAYLOAD_BYTES:
        return _refusal(("-", f"payload of {len(payload)} bytes; at most {MAX_PAYLOAD_BYTES}"))
    decoded = Payload()
    try:
        decoded.ParseFromString(payload)
    except DecodeError as exc:
        if where.kind in DEATHS:  # a death all the same, if the book takes it as one
            ignored = book.death(where, None)
            return _refusal(("-", ignored)) if ignored else _nothing()
        return _refusal(("-", f"payload is not a Sparkplug B protobuf: {exc}"))
    metrics = list(decoded.metrics)
    if len(metrics) > MAX_METRICS:
        return _refusal(("-", f"{len(metrics)} metrics in one payload; at most {MAX_METRICS}"))
    in_order = True
    if where.kind not in ("NDEATH", "NBIRTH"):  # an NDEATH is the broker's will: no seq
        in_order = book.sequence(where, decoded)
    if where.kind in DEATHS:
        if not in_order:
            return _refusal(("-", "DDEATH out of seq order: ignored (a rebirth is asked)"))
        ignored = book.death(where, metrics)
        return _refusal(("-", ignored)) if ignored else _nothing()
    problems: list[BadLine] = []
    if where.kind in BIRTHS:
        keep = {t.metric: t.metric for t in config.topics if t.metric is not None}
        aliases, types, problems = birth_tables(metrics, keep)
        refused = book.birth(where, aliases, types, _bdseq(metrics))
        if refused is not None:
            return _refusal(("-", f"BIRTH refused: {refused}"))
        if where.kind == "NBIRTH":
            book.sequence(where, decoded)  # starts the node's seq
    read = _readings(config, book, where, topic, decoded, metrics)
    return SparkplugRead([*problems, *read.rows], len(problems) + read.refused)


def _readings(
    config: MqttConfig,
    book: BirthBook,
    where: SparkplugTopic,
    topic: str,
    decoded: Any,
    metrics: list[Any],
) -> SparkplugRead:
    """One row per mapped metric; the refusals one line per reason, with their count."""
    rows: list[Row | BadLine] = []
    refused: dict[BadLine, int] = {}
    unknown: dict[int, int] = {}  # aliases no BIRTH seen named -> metrics that used them
    for metric in metrics:
        found = book.resolve(where, metric)
        if found is None:
            continue  # a metric this node does not keep
        if isinstance(found, int):
            unknown[found] = unknown.get(found, 0) + 1
            continue
        if isinstance(found, str):
            refused[("metric", found)] = refused.get(("metric", found), 0) + 1
            continue
        name, datatype = found
        mapping = _mapping(config, topic, name)
        if mapping is None:
            continue  # a metric this node does not keep
        if datatype is None:
            book.unknown.add(where.node_key)
        row = _row(mapping, topic, name, datatype, metric, decoded)
        if isinstance(row, dict):
            rows.append(row)
        else:
            refused[row] = refused.get(row, 0) + 1
    if unknown:
        book.unknown.add(where.node_key)
        verb = "was" if len(unknown) == 1 else "were"
        refused[("metric", f"{_aliases(list(unknown))} {verb} named by no BIRTH seen")] = sum(
            unknown.values()
        )
    rows.extend(
        (what, why if n == 1 else f"{why} ({n} metrics of this message)")
        for (what, why), n in refused.items()
    )
    return SparkplugRead(rows, sum(refused.values()))


def _row(
    mapping: MqttTopic, topic: str, name: str, datatype: int | None, metric: Any, payload: Any
) -> Row | BadLine:
    if datatype is None:
        return (f"metric {name}", NO_TYPE)
    if datatype == CONFLICTING:
        return (f"metric {name}", "its BIRTH gave it two data types: refused, not guessed")
    value = metric_value(metric, datatype)
    if isinstance(value, str) and value.startswith("!"):
        return (f"metric {name}", value[1:])
    taken = taken_at(metric, payload)
    if isinstance(taken, str):
        return (f"metric {name}", taken)
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
