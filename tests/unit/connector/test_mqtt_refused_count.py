"""A Sparkplug B message's refusals are one logged line per reason, and the connector's
rejected count counts the metrics those lines stand for (before: the lines, so 7,000
refused metrics of one message counted once). A store that fails takes the count back
(the broker sends the messages again, and they are counted then)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from qdspace.connector.errors import StorageError
from qdspace.connector.linein.config import MqttConfig
from qdspace.connector.linein.mqtt import MqttConnector
from qdspace.connector.linein.mqtt_queue import Message
from qdspace.connector.linein.sink import MeasurementSink
from qdspace.connector.linein.sparkplug import BirthBook, read_sparkplug
from qdspace.connector.storage import QualityStore, open_store
from qdspace.protocols.sparkplug import sparkplug_b_pb2 as sp

MS = int((datetime.now(UTC) - timedelta(hours=1)).timestamp()) * 1000
CONFIG = MqttConfig.model_validate(
    {
        "payload_format": "sparkplug_b",
        "topics": [
            {"topic": "spBv1.0/cellex/+/line-2/+", "metric": "Chamber/Pressure",
             "element": "pecvd_chamber_vacuum", "unit": "mbar", "equipment_level": 4},
        ],
    }
)  # fmt: skip
DEVICE = "spBv1.0/cellex/{}/line-2/PECVD-1"
BORN = {"name": "Chamber/Pressure", "alias": 1, "datatype": sp.Double, "double_value": 1.0}


def payload(*metrics: dict[str, Any], seq: int = 0) -> bytes:
    p = sp.Payload(seq=seq, timestamp=MS)
    for m in metrics:
        p.metrics.add(**m)
    return p.SerializeToString()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[QualityStore]:
    s = open_store(f"sqlite:///{tmp_path}/q.db")
    yield s
    s.close()


def test_a_read_counts_the_metrics_its_refusal_lines_stand_for() -> None:
    book = BirthBook()
    unknown = read_sparkplug(
        CONFIG, book, DEVICE.format("DDATA"), payload(*[{"alias": 7, "float_value": 1.0}] * 6000)
    )
    assert len(unknown.rows) == 1 and unknown.refused == 6000
    born = read_sparkplug(CONFIG, book, DEVICE.format("DBIRTH"), payload(BORN))
    assert len(born.rows) == 1 and born.refused == 0  # the BIRTH's own value is stored
    mixed = read_sparkplug(
        CONFIG, book, DEVICE.format("DDATA"),
        payload(*[{"alias": 1, "is_null": True}] * 3000,
                *[{"alias": 1, "int_value": 5}] * 2,  # a Double sent as int_value
                {"alias": 1, "double_value": 2.0, "timestamp": MS + 1}, seq=1),
    )  # fmt: skip
    refusals = [r for r in mixed.rows if isinstance(r, tuple)]
    assert [r[1] for r in refusals] == [
        "null value (3000 metrics of this message)",
        "Double metric sent as int_value: refused, not guessed (2 metrics of this message)",
    ]
    assert len(mixed.rows) == 3 and mixed.refused == 3002
    whole = read_sparkplug(CONFIG, book, DEVICE.format("DDATA"), b"\xff\xff")
    assert len(whole.rows) == 1 and whole.refused == 1  # refused whole: one message


def test_the_connector_counts_7000_refused_metrics_as_7000_in_one_line(
    store: QualityStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "qdspace.connector.linein")
    connector = MqttConnector(CONFIG, MeasurementSink(store, "spB"))
    many = payload(*[{"alias": 7, "int_value": 1}] * 7000)  # an alias no BIRTH named
    items, more = connector._read(Message(1, DEVICE.format("DDATA"), many, 1, 0))
    assert len(items) == 1 and more == 6999
    connector.sink.put(items, more)
    assert connector.sink.totals.rejected == 7000
    rejected = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(rejected) == 1 and "(7000 metrics of this message)" in rejected[0]
    assert "0 stored, 0 duplicates, 7000 rejected so far" in caplog.text


def test_a_store_that_fails_takes_the_count_back(store: QualityStore) -> None:
    """The database refuses the batch (a trigger: a fault of the database itself); the
    sink raises StorageError and nothing is acknowledged, so the refused metrics are not
    counted now; the broker's redelivery counts them once."""
    connector = MqttConnector(CONFIG, MeasurementSink(store, "spB"))
    connector._read(Message(1, DEVICE.format("DBIRTH"), payload(BORN), 1, 0))
    nulls = [{"alias": 1, "is_null": True}] * 500
    good = {"alias": 1, "double_value": 2.0, "timestamp": MS + 1}
    message = Message(1, DEVICE.format("DDATA"), payload(*nulls, good, seq=1), 2, 0)
    items, more = connector._read(message)
    assert more == 499
    with store.engine.begin() as c:
        c.execute(
            text(
                "CREATE TRIGGER broken BEFORE INSERT ON qdm_measurement "
                "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
            )
        )
    with pytest.raises(StorageError, match="disk on fire"):
        connector.sink.put(items, more)
    assert connector.sink.totals.rejected == 0
    with store.engine.begin() as c:
        c.execute(text("DROP TRIGGER broken"))
    connector.sink.put(items, more)
    assert (connector.sink.totals.stored, connector.sink.totals.rejected) == (1, 500)
