"""Sparkplug B against a real mosquitto, from a hostile client on the broker: a forged
NDEATH does not make the connector forget an edge node, a topic level with a line or
text-direction separator (mosquitto passes them) is refused and logged escaped,
payloads of thousands of readings are stored in bounded batches, and thousands of
refused metrics are one logged line but counted one by one."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("paho.mqtt", reason="the connect extra (paho-mqtt) is not installed")
from sqlalchemy import text

from qdspace.connector.linein.config import MqttConfig
from qdspace.connector.linein.mqtt import MqttConnector
from qdspace.connector.linein.sink import MeasurementSink
from qdspace.connector.storage import QualityStore, open_store
from qdspace.protocols.sparkplug import sparkplug_b_pb2 as sp

from .mosquitto import Broker, Publisher

pytestmark = pytest.mark.integration
MS = int((datetime.now(UTC) - timedelta(hours=1)).timestamp()) * 1000
DEVICE = "spBv1.0/cellex/{}/line-2/{}"


@pytest.fixture
def port(tmp_path: Path) -> Iterator[int]:
    """mosquitto on a free loopback port."""
    broker = Broker(tmp_path)
    broker.start()
    yield broker.port
    broker.stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[QualityStore]:
    s = open_store(f"sqlite:///{tmp_path}/qdm.db")
    yield s
    s.close()


def message(*metrics: dict[str, Any], seq: int | None, ts: int = MS) -> bytes:
    p = sp.Payload(timestamp=ts)
    if seq is not None:
        p.seq = seq
    for m in metrics:
        p.metrics.add(**m)
    return p.SerializeToString()


def connector_for(port: int, store: QualityStore, sink: MeasurementSink | None = None) -> Any:
    cfg = {
        "port": port,
        "client_id": "qdspace-spb",
        "reconnect_s": 0.5,
        "payload_format": "sparkplug_b",
        "topics": [
            {"topic": "spBv1.0/cellex/+/+/+", "metric": "Chamber/Pressure",
             "element": "pecvd_chamber_vacuum", "unit": "mbar", "equipment_level": 4},
            # the edge nodes' own topics (NBIRTH, NDEATH, NDATA)
            {"topic": "spBv1.0/cellex/+/+", "metric": "Node/Pressure",
             "element": "pecvd_chamber_vacuum", "unit": "mbar", "equipment": "NODE"},
        ],
    }  # fmt: skip
    return MqttConnector(MqttConfig.model_validate(cfg), sink or MeasurementSink(store, "spB"))


def rows(store: QualityStore) -> list[tuple[Any, ...]]:
    sql = "SELECT equipment, value FROM qdm_measurement ORDER BY measured_at, equipment"
    with store.engine.connect() as c:
        return [tuple(r) for r in c.execute(text(sql))]


async def until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def marker(seq: int) -> bytes:
    """A reading by name and type (read whatever the book holds): once it is stored,
    everything published before it was read."""
    return message(
        {"name": "Chamber/Pressure", "datatype": sp.Float, "float_value": 9.0,
         "timestamp": MS + 60_000},
        seq=seq,
    )  # fmt: skip


async def test_a_forged_ndeath_from_another_client_is_ignored(
    port: int, store: QualityStore
) -> None:
    """The edge node was born with bdSeq 3; another client publishes garbage and an
    NDEATH without bdSeq on its NDEATH topic. Before, the connector forgot the node,
    and the edge node's next DATA by alias was refused (and acknowledged: lost)."""
    connector = connector_for(port, store)
    stop = asyncio.Event()
    task = asyncio.create_task(connector.run(stop))
    edge, hostile = Publisher(port, "edge-line-2"), Publisher(port, "hostile")
    send = asyncio.to_thread
    try:
        await until(lambda: connector.sessions == 1 and connector._connected)
        await asyncio.sleep(0.2)  # the SUBACK
        bdseq = {"name": "bdSeq", "datatype": sp.Int64, "long_value": 3}
        await send(edge.send, "spBv1.0/cellex/NBIRTH/line-2", message(bdseq, seq=0))
        born = {"name": "Chamber/Pressure", "alias": 1, "datatype": sp.Float, "float_value": 1.5}
        await send(edge.send, DEVICE.format("DBIRTH", "PECVD-1"), message(born, seq=1))
        await send(hostile.send, "spBv1.0/cellex/NDEATH/line-2", b"\x08\xff\xff")
        await send(hostile.send, "spBv1.0/cellex/NDEATH/line-2", message(seq=None))
        data = {"alias": 1, "float_value": 1.25, "timestamp": MS + 1000}
        await send(edge.send, DEVICE.format("DDATA", "PECVD-1"), message(data, seq=2))
        await send(edge.send, DEVICE.format("DDATA", "MARK"), marker(3))
        await until(lambda: ("MARK", pytest.approx(900.0)) in rows(store))
    finally:
        edge.close()
        hostile.close()
        stop.set()
        await asyncio.wait_for(task, 10)
    assert rows(store) == [
        ("PECVD-1", pytest.approx(150.0)),
        ("PECVD-1", pytest.approx(125.0)),  # read by the alias of the BIRTH not forgotten
        ("MARK", pytest.approx(900.0)),
    ]
    ignored = "NDEATH without the bdSeq of the edge node's NBIRTH (3): ignored"
    assert [p.reason for p in connector.sink.rejected] == [
        f"{ignored} (no death of its session)"
    ] * 2


async def test_a_topic_level_with_a_line_separator_is_refused_and_logged_escaped(
    port: int, store: QualityStore, caplog: pytest.LogCaptureFixture
) -> None:
    """mosquitto passes U+2028 (a line separator) and U+202E (right-to-left override)
    in a topic. Before, the message was read (a level is a book key, equipment, the
    topic of a rebirth command) and the topic logged as it came."""
    caplog.set_level(logging.INFO, "qdspace.connector.linein")
    connector = connector_for(port, store)
    stop = asyncio.Event()
    task = asyncio.create_task(connector.run(stop))
    hostile = Publisher(port, "hostile")
    forged = "spBv1.0/cellex/DDATA/line-2\u2028INFO fake line/PECVD-\u202e1"
    try:
        await until(lambda: connector.sessions == 1 and connector._connected)
        await asyncio.sleep(0.2)  # the SUBACK
        await asyncio.to_thread(
            hostile.send, forged, message({"alias": 1, "float_value": 1.0}, seq=0)
        )
        await asyncio.to_thread(hostile.send, DEVICE.format("DDATA", "MARK"), marker(1))
        await until(lambda: ("MARK", pytest.approx(900.0)) in rows(store))
    finally:
        hostile.close()
        stop.set()
        await asyncio.wait_for(task, 10)
    (refused,) = connector.sink.rejected
    assert refused.source == f"mqtt:{forged!a}"
    assert refused.reason == (
        "topic level 'line-2\\u2028INFO fake line' is no Sparkplug id "
        "(printable text, no '+' or '#')"
    )
    assert "\u2028" not in caplog.text and "\u202e" not in caplog.text
    assert "rebirth asked" not in caplog.text


async def test_thousands_of_readings_per_message_are_stored_in_bounded_batches(
    port: int, store: QualityStore
) -> None:
    """Six DDATA of 7,000 readings each wait while the store is held: before, the next
    batch read them all (42,000 readings; 500 such messages were 3.5 million, some
    900 MB) before storing any; now a batch ends at `BATCH_READINGS` readings."""
    from qdspace.connector.linein import mqtt as mqtt_module

    sink = MeasurementSink(store, "big")
    held, sizes = threading.Event(), []
    put = sink.put

    def slow_put(items: Any, more_refused: int = 0) -> Any:
        sizes.append(len(items))
        held.wait(60)
        return put(items, more_refused)

    sink.put = slow_put  # type: ignore[method-assign]
    connector = connector_for(port, store, sink)
    stop = asyncio.Event()
    task = asyncio.create_task(connector.run(stop))
    edge = Publisher(port, "edge-line-2")
    send = asyncio.to_thread
    try:
        await until(lambda: connector.sessions == 1 and connector._connected)
        await asyncio.sleep(0.2)  # the SUBACK
        born = {"name": "Chamber/Pressure", "alias": 1, "datatype": sp.Float, "float_value": 1.5}
        await send(edge.send, DEVICE.format("DBIRTH", "PECVD-1"), message(born, seq=0))
        for seq in range(1, 7):
            # one time per message: 1 stored, 6,999 duplicates
            many = message(*[{"alias": 1, "float_value": 1.0}] * 7000, seq=seq, ts=MS + seq)
            await send(edge.send, DEVICE.format("DDATA", "PECVD-1"), many)
        await asyncio.sleep(0.5)  # all six wait in the connector's queue
        held.set()
        await until(lambda: sum(sizes) == 1 + 6 * 7000, timeout=120)
    finally:
        held.set()
        edge.close()
        stop.set()
        await asyncio.wait_for(task, 30)
    bound = getattr(mqtt_module, "BATCH_READINGS", 20_000) + 7000
    assert max(sizes) <= bound, sizes
    assert (
        rows(store) == [("PECVD-1", pytest.approx(150.0))] + [("PECVD-1", pytest.approx(100.0))] * 6
    )
    assert not sink.rejected


async def test_refused_metrics_are_counted_one_by_one_and_logged_once(
    port: int, store: QualityStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A hostile client publishes a DDATA of 7,000 metrics by an alias no BIRTH named:
    one logged line says so with the count, and the connector's rejected count (its log
    and the status the CLI prints, `sink.totals`) says 7,000. Before, 1: the sink
    counted the line, not the metrics it stood for."""
    caplog.set_level(logging.INFO, "qdspace.connector.linein")
    connector = connector_for(port, store)
    stop = asyncio.Event()
    task = asyncio.create_task(connector.run(stop))
    hostile = Publisher(port, "hostile")
    try:
        await until(lambda: connector.sessions == 1 and connector._connected)
        await asyncio.sleep(0.2)  # the SUBACK
        many = message(*[{"alias": 7, "int_value": 1}] * 7000, seq=0)
        await asyncio.to_thread(hostile.send, DEVICE.format("DDATA", "PECVD-1"), many)
        await asyncio.to_thread(hostile.send, DEVICE.format("DDATA", "MARK"), marker(1))
        await until(lambda: ("MARK", pytest.approx(900.0)) in rows(store))
    finally:
        hostile.close()
        stop.set()
        await asyncio.wait_for(task, 10)
    assert str(connector.sink.totals) == "1 stored, 0 duplicates, 7000 rejected"
    (line,) = [r.message for r in caplog.records if "rejected mqtt:" in r.message]
    assert line.endswith("alias 7 was named by no BIRTH seen (7000 metrics of this message)")
    assert "7000 rejected so far" in caplog.text
