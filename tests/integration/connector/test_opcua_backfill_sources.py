"""The OPC UA backfill starts after what the connector itself stored, and a reading
without a source time is not stored again at every reconnect. Real asyncua servers on
loopback, a real SQLite QDM.

- The backfill after an outage started after the newest stored reading of the node's
  parameter from *any* source: an MES export stored a newer one, and the tool's history
  of the outage before it was never read. It starts after the connector's own mark now
  (kept in the sink while the process runs, in ``state_file`` across restarts).
- A reading without a source time was stored under the server's time, which every
  (re)subscription's first value carries anew: one reading, stored once per reconnect.
  It is refused now (counted and logged once per node), unless the node's
  ``server_time`` allows the server's time; then a first value equal to the last one
  stored is skipped.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("asyncua", reason="the connect extra is not installed")
from asyncua import Server, ua
from sqlalchemy import text

from qdspace.connector.linein.config import OpcuaConfig
from qdspace.connector.linein.mapping import measurement
from qdspace.connector.linein.opcua import OpcuaConnector
from qdspace.connector.linein.sink import MeasurementSink
from qdspace.connector.storage import QualityStore, open_store
from qdspace.util.ports import free_port

pytestmark = pytest.mark.integration
NODE = "ns=2;s=F1.Peak"
T0 = (datetime.now(UTC) - timedelta(minutes=50)).replace(second=0, microsecond=0)


class Furnace:
    """A firing furnace's OPC UA server: its peak temperature (°C), historized."""

    def __init__(self) -> None:
        self.port = free_port()
        self.server: Server | None = None
        self.peak: Any = None
        self.starts = 0

    async def start(self, first: ua.DataValue | None = None) -> None:
        server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{self.port}/furnace/")
        idx = await server.register_namespace("urn:qdspace:test:furnace")
        tool = await server.nodes.objects.add_object(ua.NodeId("F1", idx), "F1")
        self.peak = await tool.add_variable(ua.NodeId("F1.Peak", idx), "Peak", 0.0)
        await self.peak.write_value(first or value(800.0, T0))
        await server.start()
        await server.historize_node_data_change(self.peak, period=None, count=10_000)
        self.server = server
        self.starts += 1

    async def stop(self) -> None:
        assert self.server is not None
        await self.server.stop()
        self.server = None


def value(v: float, source: datetime | None, server: datetime | None = None) -> ua.DataValue:
    return ua.DataValue(
        ua.Variant(v, ua.VariantType.Double), SourceTimestamp=source, ServerTimestamp=server
    )


def config(port: int, **extra: Any) -> OpcuaConfig:
    node = {"node_id": NODE, "element": "firing_peak_temperature", "unit": "°C"}
    return OpcuaConfig.model_validate(
        {
            "endpoint": f"opc.tcp://127.0.0.1:{port}/furnace/",
            "publishing_interval_ms": 50,
            "reconnect_s": 0.2,
            "timeout_s": 2.0,
            "backfill_max_s": 86400,
            "nodes": [{**node, "equipment": "F1", **extra.pop("node", {})}],
            **extra,
        }
    )


def stored(store: QualityStore) -> dict[datetime, float]:
    sql = "SELECT measured_at, value FROM qdm_measurement"
    with store.engine.connect() as c:
        rows = c.execute(text(sql)).all()
    return {datetime.fromisoformat(str(t)).replace(tzinfo=UTC): float(v) for t, v in rows}


async def until(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


class Running:
    def __init__(self, connector: OpcuaConnector) -> None:
        self.connector = connector
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(connector.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 10)


@pytest.fixture
def store(tmp_path: Path) -> QualityStore:
    return open_store(f"sqlite:///{tmp_path}/qdm.db")


@pytest.fixture
async def furnace() -> AsyncIterator[Furnace]:
    f = Furnace()
    await f.start()
    yield f
    if f.server is not None:
        await f.stop()


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def outage_with_a_newer_reading_from_a_file(
    furnace: Furnace,
    store: QualityStore,
    first: OpcuaConnector,
    again: Callable[[], OpcuaConnector],
) -> None:
    """The connector stores T0..3 s, goes away; the furnace writes 4..7 s; an MES export
    stores a reading at 40 min (newer than all of them); the connector comes back."""
    run = Running(first)
    for i in range(1, 4):
        await furnace.peak.write_value(value(800.0 + i, at(i)))
    await until(lambda: set(stored(store)) >= {at(i) for i in range(4)})
    await run.close()
    for i in range(4, 8):
        await furnace.peak.write_value(value(800.0 + i, at(i)))
    mes = measurement(
        equipment="F1",
        element="firing_peak_temperature",
        value=790.0,
        unit="°C",
        measured_at=at(2400),
    )
    assert store.ingest_rows("measurement", [(1, mes)], source="mes-export.csv").accepted == 1
    run = Running(again())
    try:
        # 7 s is the current value: the subscription brings it, after the backfill stored
        # what it read (4 to 7 s on one page, in one transaction)
        await until(lambda: at(7) in stored(store))
    finally:
        await run.close()
    rows = stored(store)
    assert [rows.get(at(i)) for i in range(4, 8)] == [804.0, 805.0, 806.0, 807.0]


async def test_a_newer_reading_of_another_source_does_not_skip_the_outage(
    furnace: Furnace, store: QualityStore
) -> None:
    """The same process (the sink's marks): a reconnect after an outage."""
    sink = MeasurementSink(store, "opcua-test")
    cfg = config(furnace.port)
    await outage_with_a_newer_reading_from_a_file(
        furnace, store, OpcuaConnector(cfg, sink), lambda: OpcuaConnector(cfg, sink)
    )


async def test_across_a_restart_the_mark_is_kept_in_the_state_file(
    furnace: Furnace, store: QualityStore, tmp_path: Path
) -> None:
    """A new process (a new sink): the mark comes from ``state_file``."""
    cfg = config(furnace.port, state_file=tmp_path / "opcua-state.json")
    await outage_with_a_newer_reading_from_a_file(
        furnace,
        store,
        OpcuaConnector(cfg, MeasurementSink(store, "opcua-test")),
        lambda: OpcuaConnector(cfg, MeasurementSink(store, "opcua-test")),
    )
    state = json.loads((tmp_path / "opcua-state.json").read_text(encoding="utf-8"))
    assert datetime.fromisoformat(state["stored_until"][NODE]) == at(7)


async def reconnects(
    furnace: Furnace, store: QualityStore, connector: OpcuaConnector, times: int
) -> None:
    """The furnace's server restarts ``times`` times with the same value and no source
    time, its server time new each time (as a server stamps each (re)subscription's
    first value): the connector reconnects and receives it each time."""
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    await furnace.stop()
    await furnace.start(value(800.0, None, now))
    run = Running(connector)
    try:
        for k in range(1, times + 1):
            await until(lambda k=k: connector.sessions == k, timeout=30)  # type: ignore[misc]
            # the first value of the session went through the pump (the sink counts it)
            await until(lambda k=k: seen(connector) >= k, timeout=30)  # type: ignore[misc]
            if k < times:
                await furnace.stop()
                await furnace.start(value(800.0, None, now + timedelta(seconds=7 * k)))
    finally:
        await run.close()


def seen(connector: OpcuaConnector) -> int:
    totals = connector.sink.totals
    untimed = getattr(connector, "untimed", None)  # (for the proof on the old connector)
    skipped = sum(untimed.skipped.values()) if untimed is not None else 0
    return totals.stored + totals.duplicates + totals.rejected + skipped


async def test_a_reading_without_a_source_time_is_refused_once_per_node_logged(
    furnace: Furnace, store: QualityStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "qdspace.connector.linein")
    sink = MeasurementSink(store, "opcua-test")
    connector = OpcuaConnector(config(furnace.port, history=False), sink)
    await reconnects(furnace, store, connector, 3)
    assert stored(store) == {}
    assert connector.untimed.refused == {NODE: 3}
    assert sink.totals.rejected == 3
    said = [r.getMessage() for r in caplog.records if "without a source time" in r.getMessage()]
    assert len(said) == 1 and NODE in said[0]


async def test_with_server_time_allowed_a_reconnects_first_value_is_stored_once(
    furnace: Furnace, store: QualityStore
) -> None:
    sink = MeasurementSink(store, "opcua-test")
    cfg = config(furnace.port, history=False, node={"server_time": True})
    connector = OpcuaConnector(cfg, sink)
    await reconnects(furnace, store, connector, 3)
    assert list(stored(store).values()) == [800.0]
    assert connector.untimed.skipped == {NODE: 2}
