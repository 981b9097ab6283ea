"""Sparkplug B payloads to measurement rows: BIRTH names and types, DATA by alias,
signed integers, the reasons a metric is refused, what is skipped; a metric of no known
type refused and a rebirth asked, seq gaps, deaths, and the book's bounds."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from qdspace.connector.linein import sparkplug
from qdspace.connector.linein.config import MqttConfig
from qdspace.connector.linein.sparkplug import (
    NO_TYPE,
    BirthBook,
    parse_topic,
    rebirth_request,
    sparkplug_rows,
)
from qdspace.protocols.sparkplug import sparkplug_b_pb2 as sp

MS = 1_780_000_000_000  # 2026-05-28
CONFIG = MqttConfig.model_validate(
    {
        "payload_format": "sparkplug_b",
        "topics": [
            {"topic": "spBv1.0/cellex/+/+/PECVD-1", "metric": "Chamber/Pressure",
             "element": "pecvd_chamber_vacuum", "unit": "mbar", "equipment_level": 4},
            {"topic": "spBv1.0/cellex/+/line-2", "metric": "Firing/Offset",
             "element": "pecvd_chamber_vacuum", "unit": "Pa", "equipment": "FIRE-2"},
        ],
    }
)  # fmt: skip
DEVICE = "spBv1.0/cellex/DBIRTH/line-2/PECVD-1"


def payload(*metrics: dict[str, Any], timestamp: int | None = MS) -> bytes:
    p = sp.Payload(seq=0)
    if timestamp is not None:
        p.timestamp = timestamp
    for m in metrics:
        p.metrics.add(**m)
    return p.SerializeToString()


def birth() -> bytes:
    return payload(
        {"name": "Chamber/Pressure", "alias": 1, "datatype": sp.Double, "double_value": 1.2,
         "timestamp": MS},
        {"name": "Chamber/Setpoint", "alias": 2, "datatype": sp.Double, "double_value": 1.0},
    )  # fmt: skip


def test_birth_then_data_by_alias() -> None:
    book = BirthBook()
    rows = sparkplug_rows(CONFIG, book, DEVICE, birth())
    assert len(rows) == 1  # the setpoint is no metric this node keeps
    row = rows[0]
    assert isinstance(row, dict)
    assert row["equipment"] == "PECVD-1" and row["parameter"] == "pecvd_chamber_vacuum"
    assert row["value"] == 1.2 and row["unit"] == "mbar"
    assert row["measured_at"] == datetime.fromtimestamp(MS / 1000, UTC)
    data = payload({"alias": 1, "double_value": 1.3, "timestamp": MS + 500})
    (row,) = sparkplug_rows(CONFIG, book, "spBv1.0/cellex/DDATA/line-2/PECVD-1", data)
    assert isinstance(row, dict) and row["value"] == 1.3
    assert row["measured_at"] == datetime.fromtimestamp((MS + 500) / 1000, UTC)
    # a metric without a timestamp of its own takes the payload's
    (row,) = sparkplug_rows(
        CONFIG,
        book,
        "spBv1.0/cellex/DDATA/line-2/PECVD-1",
        payload({"alias": 1, "double_value": 1.4}),
    )
    assert isinstance(row, dict) and row["measured_at"].timestamp() == MS / 1000


@pytest.mark.parametrize(
    ("datatype", "field", "raw", "value"),
    [
        (sp.Int8, "int_value", 0xFF, -1),
        (sp.Int16, "int_value", 0xFFFE, -2),
        (sp.Int32, "int_value", 0xFFFFFFFD, -3),
        (sp.Int32, "int_value", 7, 7),
        (sp.Int64, "long_value", (1 << 64) - 4, -4),
        (sp.UInt32, "int_value", 0xFFFFFFFF, 0xFFFFFFFF),
        (sp.UInt64, "long_value", 1 << 40, 1 << 40),
        (sp.Float, "float_value", 0.5, 0.5),
        (sp.String, "string_value", "2", "2"),
    ],
)
def test_values_are_read_by_the_type_the_birth_declared(
    datatype: int, field: str, raw: Any, value: Any
) -> None:
    book = BirthBook()
    topic = "spBv1.0/cellex/NBIRTH/line-2"
    sparkplug_rows(CONFIG, book, topic, payload({"name": "Firing/Offset", "alias": 9,
                                                 "datatype": datatype, field: raw}))  # fmt: skip
    (row,) = sparkplug_rows(CONFIG, book, "spBv1.0/cellex/NDATA/line-2",
                            payload({"alias": 9, field: raw}))  # fmt: skip
    assert isinstance(row, dict) and row["value"] == value and row["equipment"] == "FIRE-2"


def test_what_cannot_be_read_is_reported_with_its_reason() -> None:
    book = BirthBook()
    data = "spBv1.0/cellex/DDATA/line-2/PECVD-1"
    assert sparkplug_rows(CONFIG, book, data, payload({"alias": 1, "double_value": 1.0})) == [
        ("metric", "alias 1 was named by no BIRTH seen")
    ]
    sparkplug_rows(CONFIG, book, DEVICE, birth())
    cases = [
        ({"alias": 1, "is_null": True}, "null value"),
        ({"alias": 1, "boolean_value": True}, "a boolean value is no measurement"),
        ({"alias": 1, "bytes_value": b"x"}, "a bytes value is no measurement"),
    ]
    for metric, reason in cases:
        assert sparkplug_rows(CONFIG, book, data, payload(metric)) == [
            ("metric Chamber/Pressure", reason)
        ]
    no_time = payload({"alias": 1, "double_value": 1.0}, timestamp=None)
    assert sparkplug_rows(CONFIG, book, data, no_time) == [
        ("metric Chamber/Pressure", "no timestamp (a redelivery would be stored twice)")
    ]
    (bad,) = sparkplug_rows(CONFIG, book, data, b"\xff\xff\xff")
    assert bad[0] == "-" and "not a Sparkplug B protobuf" in str(bad[1])
    assert sparkplug_rows(CONFIG, book, "plant/x", b"") == [
        ("topic", "not a Sparkplug B topic (spBv1.0/group/type/node[/device])")
    ]


def test_commands_deaths_and_state_carry_no_readings_and_a_rebirth_resets() -> None:
    book = BirthBook()
    sparkplug_rows(CONFIG, book, DEVICE, birth())
    for kind in ("NCMD", "DCMD", "NDEATH", "DDEATH", "STATE"):
        assert sparkplug_rows(CONFIG, book, f"spBv1.0/cellex/{kind}/line-2", b"\xff") == []
    # the edge node is born again: its devices' old aliases are gone until they are too
    sparkplug_rows(CONFIG, book, "spBv1.0/cellex/NBIRTH/line-2", payload())
    data = payload({"alias": 1, "double_value": 1.0})
    (row,) = sparkplug_rows(CONFIG, book, "spBv1.0/cellex/DDATA/line-2/PECVD-1", data)
    assert row == ("metric", "alias 1 was named by no BIRTH seen")


def test_topics_and_config() -> None:
    assert parse_topic("spBv1.0/g/NDATA/n") is not None
    assert parse_topic("spBv1.0/g/DDATA/n/d") is not None
    assert parse_topic("spBv1.0/g/NDATA") is None and parse_topic("spBv1.0//NDATA/n") is None
    with pytest.raises(ValueError, match="give the metric"):
        MqttConfig.model_validate(
            {"payload_format": "sparkplug_b",
             "topics": [{"topic": "a", "element": "x", "equipment": "e"}]}
        )  # fmt: skip
    with pytest.raises(ValueError, match="metric is for payload_format sparkplug_b"):
        MqttConfig.model_validate(
            {"topics": [{"topic": "a", "element": "x", "equipment": "e", "metric": "m"}]}
        )


def test_an_unknown_alias_notes_its_edge_node_for_a_rebirth() -> None:
    book = BirthBook()
    data = payload({"alias": 7, "double_value": 1.0})
    sparkplug_rows(CONFIG, book, "spBv1.0/cellex/DDATA/line-2/PECVD-1", data)
    assert book.unknown == {("cellex", "line-2")}
    topic, body = rebirth_request("cellex", "line-2", MS)
    assert topic == "spBv1.0/cellex/NCMD/line-2"
    (metric,) = sp.Payload.FromString(body).metrics
    assert (metric.name, metric.datatype, metric.boolean_value) == (
        "Node Control/Rebirth",
        sp.Boolean,
        True,
    )


def test_a_metric_without_a_known_type_is_refused_and_a_rebirth_asked() -> None:
    """After a connector restart the book is empty: an Int32 -5 sent by name, untyped,
    would read 4294967291. It is refused (not guessed) and the node noted for a rebirth."""
    book = BirthBook()
    data = sp.Payload(timestamp=MS, seq=3)
    data.metrics.add(name="Firing/Offset", int_value=-5 & 0xFFFFFFFF)
    (row,) = sparkplug_rows(CONFIG, book, "spBv1.0/cellex/NDATA/line-2", data.SerializeToString())
    assert row == ("metric Firing/Offset", NO_TYPE)
    assert book.unknown == {("cellex", "line-2")}


def seq_payload(seq: int, *metrics: dict[str, Any]) -> bytes:
    p = sp.Payload(timestamp=MS, seq=seq)
    for m in metrics:
        p.metrics.add(**m)
    return p.SerializeToString()


def test_a_gap_in_seq_asks_for_a_rebirth() -> None:
    book = BirthBook()
    node = "spBv1.0/cellex/NBIRTH/line-2"
    typed = {"name": "Firing/Offset", "alias": 9, "datatype": sp.Int32, "int_value": 1}
    sparkplug_rows(CONFIG, book, node, seq_payload(254, typed))
    for seq in (255, 0, 1):  # wraps at 256
        sparkplug_rows(CONFIG, book, "spBv1.0/cellex/NDATA/line-2", seq_payload(seq))
    assert not book.unknown
    sparkplug_rows(CONFIG, book, "spBv1.0/cellex/NDATA/line-2", seq_payload(3))  # 2 lost
    assert book.unknown == {("cellex", "line-2")}


def test_deaths_drop_what_the_birth_said() -> None:
    book = BirthBook()
    sparkplug_rows(CONFIG, book, "spBv1.0/cellex/NBIRTH/line-2", payload())
    sparkplug_rows(CONFIG, book, DEVICE, birth())
    sparkplug_rows(CONFIG, book, "spBv1.0/cellex/DBIRTH/line-2/PECVD-2", birth())
    assert len(book.types) == 3
    # in seq order (the births all said 0): a DDEATH out of order is ignored
    sparkplug_rows(CONFIG, book, "spBv1.0/cellex/DDEATH/line-2/PECVD-2", seq_payload(1))
    assert set(book.types) == {("cellex", "line-2", None), ("cellex", "line-2", "PECVD-1")}
    sparkplug_rows(CONFIG, book, "spBv1.0/cellex/NDEATH/line-2", payload())
    assert not book.types and not book.aliases and not book.devices and not book.seq
    assert book.known == 0


def test_the_book_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sparkplug, "MAX_NODES", 2)
    monkeypatch.setattr(sparkplug, "MAX_DEVICES", 2)
    book = BirthBook()
    for node in ("n1", "n2"):
        assert sparkplug_rows(CONFIG, book, f"spBv1.0/g/NBIRTH/{node}", payload()) == []
    (refused,) = sparkplug_rows(CONFIG, book, "spBv1.0/g/NBIRTH/n3", payload())
    assert refused[0] == "-" and "at most 2" in str(refused[1])
    sparkplug_rows(CONFIG, book, "spBv1.0/g/DBIRTH/n1/d1", birth())  # node + 1 device
    (refused,) = sparkplug_rows(CONFIG, book, "spBv1.0/g/DBIRTH/n1/d2", birth())
    assert "devices known already" in str(refused[1])
    sparkplug_rows(CONFIG, book, "spBv1.0/g/NDEATH/n2", payload())  # room again
    assert sparkplug_rows(CONFIG, book, "spBv1.0/g/NBIRTH/n3", payload()) == []
    assert len(book.devices) == 2
