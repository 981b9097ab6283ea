"""Sparkplug B from a hostile or broken publisher: the book holds no payload's names and
a bounded number of BIRTHs, an alias given twice or a type given twice is refused, a
value is read only by its declared type, timestamps 0 and out of range are refused,
one payload's refusals are one line per reason, topic levels that are no ids and
``STATE`` are handled, and a death that is not the edge node's is ignored."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from qdspace.connector.linein import sparkplug
from qdspace.connector.linein.config import MqttConfig
from qdspace.connector.linein.sparkplug import BirthBook, parse_topic, sparkplug_rows
from qdspace.protocols.sparkplug import sparkplug_b_pb2 as sp

MS = int(datetime(2026, 5, 28, tzinfo=UTC).timestamp() * 1000)
CONFIG = MqttConfig.model_validate(
    {
        "payload_format": "sparkplug_b",
        "topics": [
            {"topic": "spBv1.0/cellex/+/line-2/+", "metric": "Chamber/Pressure",
             "element": "pecvd_chamber_vacuum", "unit": "mbar", "equipment_level": 4},
        ],
    }
)  # fmt: skip
NODE = "spBv1.0/cellex/{}/line-2"
DEVICE = "spBv1.0/cellex/{}/line-2/PECVD-1"
PRESSURE = "Chamber/Pressure"


def payload(*metrics: dict[str, Any], seq: int | None = 0, timestamp: int | None = MS) -> bytes:
    p = sp.Payload()
    if seq is not None:
        p.seq = seq
    if timestamp is not None:
        p.timestamp = timestamp
    for m in metrics:
        p.metrics.add(**m)
    return p.SerializeToString()


def born(book: BirthBook, datatype: int = sp.Double, seq: int = 0) -> None:
    rows = sparkplug_rows(
        CONFIG, book, DEVICE.format("DBIRTH"),
        payload({"name": PRESSURE, "alias": 1, "datatype": datatype}, seq=seq),
    )  # fmt: skip
    assert rows == [("metric Chamber/Pressure", "null value")], rows


def data(book: BirthBook, *metrics: dict[str, Any], **kw: Any) -> list[Any]:
    return sparkplug_rows(CONFIG, book, DEVICE.format("DDATA"), payload(*metrics, **kw))


def test_the_book_keeps_no_name_no_mapping_names() -> None:
    """2,000 BIRTHs of one 60 kB metric name each took 241 MB: the book now holds the
    names mappings name only (the configuration's own strings), and of the others that
    their alias was named, so DATA by it is skipped (no rebirth asked)."""
    book = BirthBook()
    long_name = "x" * 60_000
    birth = payload(
        {"name": long_name, "alias": 2, "datatype": sp.Double, "double_value": 1.0},
        {"name": PRESSURE, "alias": 1, "datatype": sp.Double, "double_value": 1.0},
    )
    sparkplug_rows(CONFIG, book, DEVICE.format("DBIRTH"), birth)
    names = [n for t in book.types.values() for n in t]
    names += [n for a in book.aliases.values() for n in a.values() if isinstance(n, str)]
    assert names == [PRESSURE, PRESSURE]
    assert all(n is CONFIG.topics[0].metric for n in names)  # not a copy per BIRTH
    assert data(book, {"alias": 2, "double_value": 5.0}, seq=1) == []
    assert not book.unknown


def test_births_are_bounded_in_all(monkeypatch: pytest.MonkeyPatch) -> None:
    """1,000 nodes of 1,000 devices each were a million BIRTHs held (some 670 MB of
    empty ones): `MAX_BORN` bounds nodes and devices in all."""
    monkeypatch.setattr(sparkplug, "MAX_BORN", 5, raising=False)
    book = BirthBook()
    refused = []
    for node in range(3):
        for device in range(3):
            topic = f"spBv1.0/g/DBIRTH/n{node}/d{device}"
            refused += sparkplug_rows(CONFIG, book, topic, payload())
    assert len(book.aliases) == 5
    assert (
        refused == [("-", "BIRTH refused: 5 edge nodes and devices known already; at most 5")] * 4
    )


def test_an_alias_given_to_two_metrics_is_refused_not_guessed() -> None:
    """A BIRTH that gives alias 1 to a setpoint and then to the pressure: DATA by alias
    1 was read as the pressure (the later name won), so the setpoint was stored as it."""
    book = BirthBook()
    birth = payload(
        {"name": "Chamber/Setpoint", "alias": 1, "datatype": sp.Double, "double_value": 9.9},
        {"name": PRESSURE, "alias": 1, "datatype": sp.Double, "double_value": 1.0},
    )
    first, row = sparkplug_rows(CONFIG, book, DEVICE.format("DBIRTH"), birth)
    assert first == (
        "metric",
        "alias 1 named more than one metric of this BIRTH (a mapped one among them): "
        "refused in DATA until a BIRTH gives each alias one metric",
    )
    assert isinstance(row, dict) and row["value"] == 1.0  # named: no doubt
    assert data(book, {"alias": 1, "double_value": 9.9}, seq=1) == [
        ("metric", "alias 1 names more than one metric of its BIRTH (its DATA is refused)")
    ]
    # a metric given two data types by its BIRTH is refused too
    birth = payload(
        {"name": PRESSURE, "alias": 1, "datatype": sp.Double},
        {"name": PRESSURE, "alias": 1, "datatype": sp.Int32},
        seq=2,
    )
    assert sparkplug_rows(CONFIG, book, DEVICE.format("DBIRTH"), birth)[0] == (
        "metric Chamber/Pressure",
        "its BIRTH gives it two data types (Double, Int32): refused until a BIRTH gives it one",
    )
    assert data(book, {"alias": 1, "double_value": 1.0}, seq=3) == [
        ("metric Chamber/Pressure", "its BIRTH gave it two data types: refused, not guessed")
    ]


@pytest.mark.parametrize(
    ("datatype", "value", "reason"),
    [
        (sp.Int8, {"int_value": 300}, "300 is no Int8 (two's complement in 8 or 32 bits)"),
        (sp.UInt8, {"int_value": 300}, "300 is out of the range of UInt8"),
        (sp.UInt32, {"long_value": 1 << 40}, f"{1 << 40} is out of the range of UInt32"),
        (
            sp.Int32,
            {"double_value": 2.5},
            "Int32 metric sent as double_value: refused, not guessed",
        ),
        (sp.Double, {"int_value": 7}, "Double metric sent as int_value: refused, not guessed"),
        (sp.Boolean, {"double_value": 1.0}, "a value of type Boolean is no measurement"),
        (sp.String, {"int_value": 5}, "String metric sent as int_value: refused, not guessed"),
        (sp.DateTime, {"long_value": MS}, "a value of type DateTime is no measurement"),
        (sp.Unknown, {"int_value": 5}, "a value of type Unknown is no measurement"),
        (
            99,
            {"double_value": 3.0},
            "a value of type 99 (none this connector knows) is no measurement",
        ),
        (sp.UUID, {"string_value": "12"}, "a value of type UUID is no measurement"),
        (sp.Template, {"int_value": 1}, "a value of type Template is no measurement"),
    ],
)
def test_a_value_is_read_only_by_its_declared_type(
    datatype: int, value: dict[str, Any], reason: str
) -> None:
    """Before: an Int8 of 300 was stored as 44, an Unknown or a data type 99 or a
    Boolean as the number it carried, a DateTime as its milliseconds."""
    book = BirthBook()
    born(book, datatype)
    assert data(book, {"alias": 1, **value}, seq=1) == [("metric Chamber/Pressure", reason)]


@pytest.mark.parametrize(
    ("datatype", "value", "read"),
    [
        (sp.Int32, {"long_value": (1 << 64) - 5}, -5),  # an Int32 in 64 bits (before: 2**64-5)
        (sp.Int8, {"int_value": 0xFF}, -1),
        (sp.Int8, {"int_value": 0xFFFFFF80}, -128),
        (sp.UInt32, {"long_value": 0xFFFFFFFF}, 0xFFFFFFFF),
        (sp.Float, {"double_value": 0.5}, 0.5),
    ],
)
def test_integers_in_either_field_and_width(
    datatype: int, value: dict[str, Any], read: Any
) -> None:
    book = BirthBook()
    born(book, datatype)
    (row,) = data(book, {"alias": 1, **value}, seq=1)
    assert isinstance(row, dict) and row["value"] == read


def test_a_text_that_is_not_utf8_is_refused() -> None:
    book = BirthBook()
    born(book, sp.String)
    good = payload({"alias": 1, "string_value": "A"}, seq=1)
    bad = good.replace(b"\x7a\x01A", b"\x7a\x01\xff")  # string_value (15) of one byte
    assert bad != good
    assert sparkplug_rows(CONFIG, book, DEVICE.format("DDATA"), bad) == [
        ("metric Chamber/Pressure", "String value is not UTF-8 text")
    ]


def test_timestamps_zero_and_out_of_range() -> None:
    """A timestamp of 0 was stored as 1970-01-01 (every such reading one natural key);
    a metric's 0 gives way to the payload's time, a payload's 0 is refused."""
    book = BirthBook()
    born(book)
    (row,) = data(book, {"alias": 1, "double_value": 1.0, "timestamp": 0}, seq=1)
    assert isinstance(row, dict) and row["measured_at"].timestamp() == MS / 1000
    assert data(book, {"alias": 1, "double_value": 1.0}, seq=2, timestamp=0) == [
        ("metric Chamber/Pressure", "timestamp 0 (1970-01-01) is no time a reading was taken")
    ]
    negative = (1 << 64) - 1000  # -1000 in two's complement
    assert data(book, {"alias": 1, "double_value": 1.0, "timestamp": negative}, seq=3) == [
        ("metric Chamber/Pressure", f"timestamp {negative} is not milliseconds since 1970")
    ]


def test_one_line_per_reason_not_per_metric() -> None:
    """A DDATA of 6,000 metrics by aliases no BIRTH named was 6,000 refusals (each a
    logged line); now one line per reason, naming ten aliases and counting the rest."""
    book = BirthBook()
    unknown = [{"alias": a, "float_value": 1.0} for a in range(100, 6100)]
    assert data(book, *unknown) == [
        ("metric", "aliases 100, 101, 102, 103, 104, 105, 106, 107, 108, 109 and 5990 more "
                   "were named by no BIRTH seen (6000 metrics of this message)")
    ]  # fmt: skip
    assert book.unknown == {("cellex", "line-2")}
    born(book)
    nulls = [{"alias": 1, "is_null": True}] * 3000
    assert data(book, *nulls, seq=1) == [
        ("metric Chamber/Pressure", "null value (3000 metrics of this message)")
    ]
    assert data(book, {"double_value": 1.0}, seq=2) == [
        ("metric", "a metric with neither name nor alias")
    ]


@pytest.mark.parametrize(
    ("level", "reason"),
    [
        ("g+", "topic level 'g+' is no Sparkplug id (printable text, no '+' or '#')"),
        ("g#", "topic level 'g#' is no Sparkplug id (printable text, no '+' or '#')"),
        ("g\u2028x", "topic level 'g\\u2028x' is no Sparkplug id (printable text, no '+' or '#')"),
        ("g\u202e", "topic level 'g\\u202e' is no Sparkplug id (printable text, no '+' or '#')"),
        ("g" * 65, "topic level of 65 characters; at most 64"),
    ],
)
def test_topic_levels_that_are_no_ids_are_refused(level: str, reason: str) -> None:
    """A level is a key of the book, the topic of the rebirth we publish (paho raises
    on a '+' in it, which ended the listener) and a log line."""
    topic = f"spBv1.0/{level}/NDATA/n"
    assert parse_topic(topic) is None
    assert sparkplug_rows(CONFIG, BirthBook(), topic, payload()) == [("topic", reason)]


def test_state_carries_no_readings() -> None:
    """Sparkplug 3.0's host application STATE (``spBv1.0/STATE/<host id>``, 3 levels)
    was refused as no Sparkplug topic on every message."""
    assert sparkplug_rows(CONFIG, BirthBook(), "spBv1.0/STATE/scada-1", b'{"online":true}') == []


def test_a_death_that_is_not_the_edge_nodes_is_ignored() -> None:
    """An NDEATH counts with its NBIRTH's bdSeq only; before, 3 garbage bytes on NDEATH
    from anyone made the connector forget the node, and its DATA was refused."""
    book = BirthBook()
    nbirth = payload({"name": "bdSeq", "datatype": sp.Int64, "long_value": 7}, seq=0)
    assert sparkplug_rows(CONFIG, book, NODE.format("NBIRTH"), nbirth) == []
    born(book, seq=1)
    ignored = (
        "NDEATH without the bdSeq of the edge node's NBIRTH (7): ignored (no death of its session)"
    )
    assert sparkplug_rows(CONFIG, book, NODE.format("NDEATH"), b"\xff\xff\xff") == [("-", ignored)]
    assert sparkplug_rows(CONFIG, book, NODE.format("NDEATH"), payload(seq=None)) == [
        ("-", ignored)
    ]
    stale = payload({"name": "bdSeq", "long_value": 6}, seq=None)
    assert sparkplug_rows(CONFIG, book, NODE.format("NDEATH"), stale) == []
    (row,) = data(book, {"alias": 1, "double_value": 1.5}, seq=2)
    assert isinstance(row, dict) and row["value"] == 1.5
    # a DDEATH that is no protobuf, or out of seq order, is ignored too (a rebirth asked)
    assert sparkplug_rows(CONFIG, book, DEVICE.format("DDEATH"), b"\xff") == [
        ("-", "DDEATH that is no Sparkplug B protobuf: ignored")
    ]
    assert sparkplug_rows(CONFIG, book, DEVICE.format("DDEATH"), payload(seq=9)) == [
        ("-", "DDEATH out of seq order: ignored (a rebirth is asked)")
    ]
    assert book.unknown == {("cellex", "line-2")}
    assert ("cellex", "line-2", "PECVD-1") in book.aliases
    # the edge node's own death, with its bdSeq, counts
    death = payload({"name": "bdSeq", "long_value": 7}, seq=None)
    assert sparkplug_rows(CONFIG, book, NODE.format("NDEATH"), death) == []
    assert not book.aliases and not book.devices and book.known == 0
