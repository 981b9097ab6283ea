"""What a publisher on the broker can make the MQTT connector hold, against a real
mosquitto: while the store is behind, the queue holds a bounded number of messages and
a bounded number of bytes (paho reads no more, the broker keeps the rest, nothing is
lost), and a payload far over the limit is dropped by the broker, never read (MQTT 5),
or read and refused (MQTT 3.1.1). Split from ``test_mqtt.py`` (its helpers are used)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("paho.mqtt", reason="the connect extra (paho-mqtt) is not installed")

from qdspace.connector.linein.config import MqttConfig
from qdspace.connector.linein.mqtt import MqttConnector
from qdspace.connector.linein.sink import MeasurementSink
from qdspace.connector.storage import QualityStore, open_store

from .mosquitto import Broker, Publisher
from .test_mqtt import config, count, reading, until

pytestmark = pytest.mark.integration
TOPIC = "plant/PECVD-1/pecvd/pressure"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[QualityStore]:
    s = open_store(f"sqlite:///{tmp_path}/qdm.db")
    yield s
    s.close()


def held_sink(store: QualityStore) -> tuple[MeasurementSink, threading.Event, list[int]]:
    """A sink whose store holds every call until the event is set; the readings of each
    call are noted."""
    sink = MeasurementSink(store, "slow")
    held, sizes = threading.Event(), []
    put = sink.put

    def slow_put(items: Any, more_refused: int = 0) -> Any:
        sizes.append(len(items))
        held.wait(60)
        return put(items, more_refused)

    sink.put = slow_put  # type: ignore[method-assign]
    return sink, held, sizes


async def publish_while_held(
    broker: Broker,
    store: QualityStore,
    bodies: list[dict[str, Any]],
    sink: MeasurementSink,
    held: threading.Event,
) -> None:
    """Publish ``bodies`` (QoS 1) while the store holds its first call, then release it
    and wait until every reading is stored."""
    connector = MqttConnector(MqttConfig.model_validate(config(broker.port)), sink)
    stop = asyncio.Event()
    task = asyncio.create_task(connector.run(stop))
    tool = Publisher(broker.port)
    try:
        await until(lambda: connector.sessions == 1 and connector._connected)
        await asyncio.sleep(0.2)  # the SUBACK
        for body in bodies:
            await asyncio.to_thread(tool.send, TOPIC, body)
        await asyncio.sleep(0.5)
        held.set()
        await until(lambda: count(store) == len(bodies), timeout=60)
    finally:
        held.set()
        tool.close()
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_while_the_store_is_behind_the_queue_holds_a_bounded_number_of_messages(
    broker: Broker, store: QualityStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store holds its first call until 60 readings were published: meanwhile at most
    `QUEUED` (5 here) wait in the connector, and paho reads no more (the broker keeps
    them); released, the connector stores every reading, none twice (before: all 59
    waited in memory and came as one batch)."""
    from qdspace.connector.linein import mqtt as mqtt_module

    monkeypatch.setattr(mqtt_module, "QUEUED", 5)
    sink, held, sizes = held_sink(store)
    bodies = [reading(i, 1.0 + i / 100) for i in range(60)]
    await publish_while_held(broker, store, bodies, sink, held)
    assert sum(sizes) == 60 and max(sizes) <= 6, sizes


async def test_while_the_store_is_behind_the_queue_holds_a_bounded_number_of_bytes(
    broker: Broker, store: QualityStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Readings of some 20 kB each (a note beside the value) while the store holds its
    first call: the queue is full once it holds `QUEUED_BYTES` (50 kB here, so three),
    though far fewer than `QUEUED` messages; paho waits and the broker keeps the rest.
    Before, only the count bounded it: every message the broker sent (its window of 20
    unacknowledged) waited in memory and came as one batch. Released, every reading is
    stored, none twice."""
    from qdspace.connector.linein import mqtt as mqtt_module

    # raising=False: before the fix there was no byte budget to set
    monkeypatch.setattr(mqtt_module, "QUEUED_BYTES", 50_000, raising=False)
    sink, held, sizes = held_sink(store)
    bodies = [reading(i, 1.0 + i / 100, note="x" * 20_000) for i in range(60)]
    await publish_while_held(broker, store, bodies, sink, held)
    # a batch: the three queued, and at most one more let in between the first get
    # and the rest (the put paho's thread waits on runs when the loop is free)
    assert sum(sizes) == 60 and max(sizes) <= 4, sizes


@pytest.mark.parametrize("protocol", ["mqtt5", "mqtt311"])
async def test_a_payload_far_over_the_limit_is_dropped_by_the_broker_not_read(
    broker: Broker, store: QualityStore, protocol: str
) -> None:
    """MQTT 5: the connector declares a Maximum Packet Size, so mosquitto drops a 10 MB
    payload for it instead of sending it (before: paho read all 10 MB and the connector
    then refused it for its size); one a little over the limit still arrives and is
    refused here, and the reading after them is stored. MQTT 3.1.1 (a broker without 5)
    has no such declaration: there the 10 MB arrive and are refused for their size. The
    drop under 5 is recorded in the broker's log only: the connector never hears of it."""
    from qdspace.connector.linein.mapping import MAX_PAYLOAD_BYTES

    cfg = MqttConfig.model_validate(config(broker.port, protocol=protocol))
    connector = MqttConnector(cfg, MeasurementSink(store, "big"))
    stop = asyncio.Event()
    task = asyncio.create_task(connector.run(stop))
    tool = Publisher(broker.port)
    try:
        await until(lambda: connector.sessions == 1 and connector._connected)
        await asyncio.sleep(0.2)  # the SUBACK
        await asyncio.to_thread(tool.send, TOPIC, b"x" * 10_000_000)
        await asyncio.to_thread(tool.send, TOPIC, b"y" * (MAX_PAYLOAD_BYTES + 1))
        await asyncio.to_thread(tool.send, TOPIC, reading(0, 1.5))
        await until(lambda: count(store) == 1)
    finally:
        tool.close()
        stop.set()
        await asyncio.wait_for(task, 10)
    reasons = [p.reason for p in connector.sink.rejected]
    dropped = "Dropping too large outgoing PUBLISH for qdspace-test"
    if protocol == "mqtt5":
        assert reasons == [f"payload of {MAX_PAYLOAD_BYTES + 1} bytes; at most 65536"]
        assert dropped in (broker.dir / "log").read_text()
        assert connector.sessions == 1  # no disconnect, no reason code: nothing to see
    else:
        assert reasons == [
            "payload of 10000000 bytes; at most 65536",
            f"payload of {MAX_PAYLOAD_BYTES + 1} bytes; at most 65536",
        ]
        assert dropped not in (broker.dir / "log").read_text()
