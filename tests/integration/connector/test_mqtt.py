"""The MQTT connector against a real mosquitto on a free loopback port: readings on
wildcard topics land converted in a real SQLite QDM; a malformed payload and an unknown
unit are reported with their topic and the connector goes on; a broker restart is
survived; and ``qdspace connect mqtt`` killed (SIGKILL) mid-stream and started again
resumes its persistent session and loses and duplicates nothing."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("paho.mqtt", reason="the connect extra (paho-mqtt) is not installed")
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import text

from qdspace.connector.linein.config import MqttConfig
from qdspace.connector.linein.mqtt import MqttConnector
from qdspace.connector.linein.sink import MeasurementSink
from qdspace.connector.storage import QualityStore, open_store

from .mosquitto import Broker, Publisher

pytestmark = pytest.mark.integration
T0 = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


def reading(i: int, value: float, unit: str = "mbar", **extra: Any) -> dict[str, Any]:
    return {"value": value, "unit": unit, "ts": (T0 + timedelta(seconds=i)).isoformat(), **extra}


def config(port: int, **extra: Any) -> dict[str, Any]:
    return {
        "port": port,
        "client_id": "qdspace-test",
        "reconnect_s": 0.5,
        "topics": [
            {"topic": "plant/+/pecvd/pressure", "element": "pecvd_chamber_vacuum",
             "equipment_level": 1},
            {"topic": "plant/PECVD-9/flow/#", "element": "silane_flow", "equipment": "PECVD-9",
             "unit": "sccm"},
        ],
        **extra,
    }  # fmt: skip


def stored(store: QualityStore) -> list[tuple[Any, ...]]:
    """(equipment, parameter, measured_at, value, unit, raw_unit, batch_id), by time."""
    sql = (
        "SELECT equipment, parameter, measured_at, value, unit, raw_unit, batch_id "
        "FROM qdm_measurement ORDER BY measured_at, equipment"
    )
    with store.engine.connect() as c:
        return [tuple(r) for r in c.execute(text(sql))]


def count(store: QualityStore) -> int:
    with store.engine.connect() as c:
        return int(c.execute(text("SELECT count(*) FROM qdm_measurement")).scalar_one())


async def until(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def wait_until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[QualityStore]:
    s = open_store(f"sqlite:///{tmp_path}/qdm.db")
    yield s
    s.close()


async def test_readings_stored_converted_bad_ones_reported_broker_restart_survived(
    broker: Broker, store: QualityStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "qdspace.connector.linein")
    connector = MqttConnector(
        MqttConfig.model_validate(config(broker.port)), MeasurementSink(store, "mqtt test")
    )
    stop = asyncio.Event()
    task = asyncio.create_task(connector.run(stop))
    await until(lambda: connector.sessions == 1 and connector._connected)
    await asyncio.sleep(0.2)  # the SUBACK
    tool = Publisher(broker.port)
    try:
        tool.send("plant/PECVD-1/pecvd/pressure", reading(0, 1.5, batch_id="B-7"))
        tool.send("plant/PECVD-2/pecvd/pressure", reading(1, 2.0, unit="Torr"))
        tool.send("plant/PECVD-1/pecvd/pressure", b"{not json")
        tool.send("plant/PECVD-1/pecvd/pressure", reading(2, 1.0, unit="furlong"))
        tool.send("plant/PECVD-1/pecvd/pressure", {"value": 1.0})  # no time: no natural key
        tool.send("plant/PECVD-9/flow/sih4", {"value": 0.25, "unit": "slm", "ts": 1.7e9})
        tool.send("plant/PECVD-1/pecvd/pressure", reading(3, 1.6))  # still running
        tool.send("plant/PECVD-1/pecvd/pressure", reading(3, 1.6))  # the tool sent it twice
        await until(lambda: count(store) == 4 and len(connector.sink.rejected) == 3)
    finally:
        tool.close()
    rows = stored(store)
    flow = rows.pop(0)  # 1.7e9 s: 2023, before T0
    assert flow[:2] == ("PECVD-9", "silane_flow")
    assert flow[3:6] == (pytest.approx(250.0), "sccm", "slm")
    assert [(r[0], r[3], r[4], r[5], r[6]) for r in rows] == [
        ("PECVD-1", pytest.approx(150.0), "Pa", "mbar", "B-7"),
        ("PECVD-2", pytest.approx(2.0 * 133.322368), "Pa", "Torr", None),
        ("PECVD-1", pytest.approx(160.0), "Pa", "mbar", None),
    ]
    problems = {(p.source, p.field): p.reason for p in connector.sink.rejected}
    assert set(problems) == {
        ("mqtt:plant/PECVD-1/pecvd/pressure", "-"),
        ("mqtt:plant/PECVD-1/pecvd/pressure", "unit"),
        ("mqtt:plant/PECVD-1/pecvd/pressure", "ts"),
    }
    assert "not JSON" in problems[("mqtt:plant/PECVD-1/pecvd/pressure", "-")]
    assert "furlong" in problems[("mqtt:plant/PECVD-1/pecvd/pressure", "unit")]
    assert "mqtt:plant/PECVD-1/pecvd/pressure:2: -: payload is not JSON" in caplog.text
    assert connector.sink.totals.duplicates == 1

    # the broker goes away and comes back (its sessions on disk): the connector
    # reconnects, resumes its session and gets what was published while it was away
    broker.stop()
    await until(lambda: not connector._connected)
    broker.start()
    await until(lambda: connector.sessions == 2, timeout=30)
    assert connector.session_present
    tool = Publisher(broker.port)
    try:
        tool.send("plant/PECVD-3/pecvd/pressure", reading(4, 3.0))
        await until(lambda: count(store) == 5)
    finally:
        tool.close()
    stop.set()
    await asyncio.wait_for(task, 10)
    assert stored(store)[-1][:1] + stored(store)[-1][3:5] == ("PECVD-3", pytest.approx(300.0), "Pa")


async def test_a_locked_store_acknowledges_nothing_and_the_connector_catches_up(
    broker: Broker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process holds the database's write lock mid-stream: the ingest fails (after
    SQLite's busy timeout), the connector says so in one log line, acknowledges nothing
    and stays up; once the lock is gone it gets the messages again (the broker resends
    what was not acknowledged) and stores each once."""
    caplog.set_level(logging.INFO, "qdspace.connector.linein")
    db = tmp_path / "locked.db"
    store = open_store(f"sqlite:///{db}")
    connector = MqttConnector(
        MqttConfig.model_validate(config(broker.port)), MeasurementSink(store, "mqtt locked")
    )
    stop = asyncio.Event()
    task = asyncio.create_task(connector.run(stop))
    tool = Publisher(broker.port)
    blocker = sqlite3.connect(db, isolation_level=None, timeout=1)
    try:
        await until(lambda: connector.sessions == 1 and connector._connected)
        await asyncio.sleep(0.2)  # the SUBACK
        for i in range(5):
            await asyncio.to_thread(tool.send, "plant/PECVD-1/pecvd/pressure", reading(i, 1.0))
        await until(lambda: count(store) == 5)
        blocker.execute("BEGIN EXCLUSIVE")  # the store is locked from here on
        for i in range(5, 10):
            await asyncio.to_thread(tool.send, "plant/PECVD-1/pecvd/pressure", reading(i, 2.0))
        await until(lambda: "store failed, nothing acknowledged" in caplog.text, timeout=60)
        assert "database is locked" in caplog.text
        assert count(store) == 5 and not task.done()
        blocker.execute("ROLLBACK")  # the store is back
        await until(lambda: count(store) == 10, timeout=60)
        await asyncio.to_thread(tool.send, "plant/PECVD-1/pecvd/pressure", reading(10, 3.0))
        await until(lambda: count(store) == 11)
    finally:
        blocker.close()
        tool.close()
        stop.set()
        await asyncio.wait_for(task, 30)
    assert connector.sessions >= 2  # the failed session ended; a new one resumed
    rows = stored(store)
    store.close()
    taken = [r[2] for r in rows]
    assert len(taken) == len(set(taken)) == 11
    assert [r[3] for r in rows] == pytest.approx([100.0] * 5 + [200.0] * 5 + [300.0])


async def test_sparkplug_b_births_and_data_by_alias_are_stored(
    broker: Broker, store: QualityStore
) -> None:
    """An edge node's DBIRTH names its metrics and aliases, DDATA sends values by alias:
    the mapped metric lands converted in the QDM; a DDATA sent twice is stored once; a
    DDATA with an alias no BIRTH named is reported and the edge node is asked (NCMD
    ``Node Control/Rebirth``) to be born again."""
    from qdspace.protocols.sparkplug import sparkplug_b_pb2 as sp

    cfg = {
        **config(broker.port),
        "payload_format": "sparkplug_b",
        "topics": [
            {"topic": "spBv1.0/cellex/+/line-2/+", "metric": "Chamber/Pressure",
             "element": "pecvd_chamber_vacuum", "unit": "mbar", "equipment_level": 4},
        ],
    }  # fmt: skip
    connector = MqttConnector(MqttConfig.model_validate(cfg), MeasurementSink(store, "spB"))
    stop = asyncio.Event()
    task = asyncio.create_task(connector.run(stop))
    ms = int(T0.timestamp() * 1000)

    def message(*metrics: dict[str, Any]) -> bytes:
        p = sp.Payload(timestamp=ms, seq=0)
        for m in metrics:
            p.metrics.add(**m)
        return p.SerializeToString()

    commands: list[bytes] = []
    edge = paho.Client(CallbackAPIVersion.VERSION2, client_id="edge-node-line-2")
    edge.on_message = lambda _c, _u, msg: commands.append(bytes(msg.payload))
    edge.connect("127.0.0.1", broker.port)
    edge.subscribe("spBv1.0/cellex/NCMD/line-2", qos=1)
    edge.loop_start()
    tool = Publisher(broker.port)
    try:
        await until(lambda: connector.sessions == 1 and connector._connected)
        await asyncio.sleep(0.2)  # the SUBACKs
        early = message({"alias": 3, "float_value": 1.0, "timestamp": ms - 1000})
        await asyncio.to_thread(tool.send, "spBv1.0/cellex/DDATA/line-2/PECVD-1", early)
        await until(lambda: len(commands) == 1)
        (rebirth,) = sp.Payload.FromString(commands[0]).metrics
        assert (rebirth.name, rebirth.boolean_value) == ("Node Control/Rebirth", True)
        born = message(
            {"name": "Chamber/Pressure", "alias": 3, "datatype": sp.Float, "float_value": 1.5},
            {"name": "Chamber/Door", "alias": 4, "datatype": sp.Boolean, "boolean_value": True},
        )
        send = asyncio.to_thread
        await send(tool.send, "spBv1.0/cellex/DBIRTH/line-2/PECVD-1", born)
        data = message({"alias": 3, "float_value": 1.25, "timestamp": ms + 1000})
        await send(tool.send, "spBv1.0/cellex/DDATA/line-2/PECVD-1", data)
        await send(tool.send, "spBv1.0/cellex/DDATA/line-2/PECVD-1", data)  # sent twice
        await send(tool.send, "spBv1.0/cellex/DDATA/line-2/PECVD-1", b"not protobuf \xff")
        await until(lambda: count(store) == 2 and len(connector.sink.rejected) == 2)
    finally:
        tool.close()
        edge.disconnect()
        edge.loop_stop()
        stop.set()
        await asyncio.wait_for(task, 10)
    rows = stored(store)
    assert [(r[0], r[3], r[4], r[5]) for r in rows] == [
        ("PECVD-1", pytest.approx(150.0), "Pa", "mbar"),
        ("PECVD-1", pytest.approx(125.0), "Pa", "mbar"),
    ]
    assert connector.sink.totals.duplicates == 1
    reasons = [p.reason for p in connector.sink.rejected]
    assert reasons[0] == "alias 3 was named by no BIRTH seen"
    assert "not a Sparkplug B protobuf" in reasons[1]
    assert len(commands) == 1  # asked once, not again for the DATA after the BIRTH


def cli(node: Path, conf: Path, log: Path) -> subprocess.Popen[bytes]:
    worktree = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(worktree)}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "qdspace", "connect", "mqtt", "--dir", str(node),
             "--config", str(conf)],
            stderr=out, stdout=subprocess.DEVNULL, env=env,
        )  # fmt: skip


def test_cli_killed_mid_stream_and_restarted_loses_and_duplicates_nothing(
    broker: Broker, tmp_path: Path
) -> None:
    node = tmp_path / "cellex"
    node.mkdir()
    (node / "node.json").write_text(
        json.dumps({"name": "cellex", "role": "supplier", "member_id": "cellex"})
    )
    conf = tmp_path / "mqtt.yaml"
    conf.write_text(json.dumps(config(broker.port)))  # JSON is YAML
    total = 600
    log1, log2 = tmp_path / "first.log", tmp_path / "second.log"
    first = cli(node, conf, log1)
    try:
        wait_until(lambda: "session new" in log1.read_text(), 60)
    except AssertionError:
        first.kill()
        raise AssertionError(f"connector did not connect: {log1.read_text()}") from None
    time.sleep(0.3)  # the SUBACK
    store = open_store(f"sqlite:///{node}/node.db")  # the node's default database
    sent = threading.Event()

    def publish() -> None:
        tool = Publisher(broker.port)
        try:
            for i in range(total):
                tool.send("plant/PECVD-1/pecvd/pressure", reading(i, 1.0 + i / 1000))
                time.sleep(0.002)
        finally:
            tool.close()
            sent.set()

    publisher = threading.Thread(target=publish)
    publisher.start()
    try:
        wait_until(lambda: count(store) >= 100)
        first.send_signal(signal.SIGKILL)  # mid-stream: no goodbye, PUBACKs pending
        first.wait(10)
        killed_at = count(store)
        time.sleep(0.5)  # the tool goes on publishing into the session meanwhile
        second = cli(node, conf, log2)
        try:
            wait_until(sent.is_set, 120)
            wait_until(lambda: count(store) >= total, 60)
            time.sleep(0.5)  # anything still to come would come now
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(30)
    finally:
        publisher.join(120)
        if first.poll() is None:
            first.kill()
    err = log2.read_text()
    assert second.returncode == 0, err
    assert "session resumed" in err
    assert killed_at < total  # it really was killed mid-stream
    rows = stored(store)
    store.close()
    assert len(rows) == total
    want = [(T0 + timedelta(seconds=i), 100.0 + i / 10) for i in range(total)]
    got = [(datetime.fromisoformat(str(r[2])).replace(tzinfo=UTC), r[3]) for r in rows]
    assert [g[0] for g in got] == [w[0] for w in want]
    assert [g[1] for g in got] == pytest.approx([w[1] for w in want])


async def test_poison_messages_are_refused_and_the_listener_goes_on(
    broker: Broker, store: QualityStore
) -> None:
    """Readings no rule foresaw (a time out of range in UTC, a value too long for a float
    or for Python's JSON, a lone surrogate in the batch id; QoS 1, from a real broker)
    each end as a refused reading, acknowledged: the listener stays up and stores the
    good reading after them, and a restarted connector is not sent them again."""
    cfg = MqttConfig.model_validate(config(broker.port))
    connector = MqttConnector(cfg, MeasurementSink(store, "poison"))
    stop = asyncio.Event()
    task = asyncio.create_task(connector.run(stop))
    topic = "plant/PECVD-1/pecvd/pressure"
    poison = [
        reading(0, 1.0) | {"ts": "0001-01-01T00:00:00+01:00"},
        reading(1, 1.0) | {"ts": "9999-12-31T23:59:59-01:00"},
        json.dumps(reading(2, 1.0)).replace("1.0", "1" * 400).encode(),
        json.dumps(reading(3, 1.0)).replace("1.0", "1" * 5000).encode(),
        reading(4, 1.0, batch_id="\ud800"),
    ]
    tool = Publisher(broker.port)
    try:
        await until(lambda: connector.sessions == 1 and connector._connected)
        await asyncio.sleep(0.2)  # the SUBACK
        for body in poison:
            await asyncio.to_thread(tool.send, topic, body)
        await asyncio.to_thread(tool.send, topic, reading(5, 1.5))
        await until(lambda: count(store) == 1 and len(connector.sink.rejected) == len(poison))
        assert not task.done()
    finally:
        tool.close()
        stop.set()
        await asyncio.wait_for(task, 10)
    reasons = [p.reason for p in connector.sink.rejected]
    assert sum("out of range in UTC" in r for r in reasons) == 2
    assert any("integer of 400 digits" in r for r in reasons)
    assert any("more than 4300 digits" in r for r in reasons)
    assert any("'\\ud800' is not printable text" in r for r in reasons), reasons
    # all acknowledged: the next session of the same client gets nothing again
    again = MqttConnector(cfg, MeasurementSink(store, "poison again"))
    stop = asyncio.Event()
    task = asyncio.create_task(again.run(stop))
    await until(lambda: again.sessions == 1)
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert again.session_present and not again.sink.rejected and count(store) == 1


async def test_a_publisher_cannot_rewrite_or_bring_back_a_stored_reading(
    broker: Broker, store: QualityStore
) -> None:
    """Whoever may publish may add readings, not rewrite the plant's history: a reading
    sent again under a stored key with another value is refused with the field that
    differs (before: stored as a correction, the old value gone), and a retained message
    the broker delivers again to a new session after an engineer withdrew its reading
    is refused (before: the withdrawal was undone). What is stored stays as it was."""
    topic = "plant/PECVD-1/pecvd/pressure"
    first = MqttConnector(
        MqttConfig.model_validate(config(broker.port)), MeasurementSink(store, "first")
    )
    stop = asyncio.Event()
    task = asyncio.create_task(first.run(stop))
    tool = Publisher(broker.port)
    try:
        await until(lambda: first.sessions == 1 and first._connected)
        await asyncio.sleep(0.2)  # the SUBACK
        await asyncio.to_thread(tool.send, topic, reading(0, 1.5), retain=True)
        await asyncio.to_thread(tool.send, topic, reading(1, 2.0))
        await until(lambda: count(store) == 2)
        await asyncio.to_thread(tool.send, topic, reading(1, 9.9))  # the same key, rewritten
        await until(lambda: first.sink.totals.rejected == 1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    (changed,) = first.sink.rejected
    assert (changed.source, changed.field) == (f"mqtt:{topic}", "value")
    assert "differs from the stored measurement" in changed.reason

    key = {"equipment": "PECVD-1", "parameter": "pecvd_chamber_vacuum", "measured_at": T0}
    store.withdraw("measurement", key, datetime.now(UTC))
    second = MqttConnector(
        MqttConfig.model_validate(config(broker.port, client_id="qdspace-second")),
        MeasurementSink(store, "second"),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(second.run(stop))
    try:
        # a new session: the broker hands it the retained reading withdrawn meanwhile
        await until(lambda: second.sink.totals.rejected == 1)
    finally:
        tool.close()
        stop.set()
        await asyncio.wait_for(task, 10)
    (again,) = second.sink.rejected
    assert again.field == "withdrawn_at" and "is withdrawn" in again.reason
    sql = "SELECT value, version, withdrawn_at IS NULL FROM qdm_measurement ORDER BY measured_at"
    with store.engine.connect() as c:
        rows = [tuple(r) for r in c.execute(text(sql))]
    assert rows == [(pytest.approx(150.0), 2, False), (pytest.approx(200.0), 1, True)]
