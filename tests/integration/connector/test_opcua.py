"""The OPC UA connector against a real asyncua server on loopback: readings land in a
real SQLite QDM, a connector restart backfills from history without duplicates, values
written while the connector connects, subscribes and backfills are all stored, a
server restart is survived, a bad reading is reported and does not stop it, and one
session runs with SignAndEncrypt and certificates. A hostile or broken server (values that
are no reading, Bad samples and batches, a flood of changes, a history that never ends or
answers with events, a port that drops or never answers) is refused with the node and
why, held to bounded memory, and retried ever more slowly."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("asyncua", reason="the connect extra is not installed")
from asyncua import Server, ua
from asyncua.crypto.cert_gen import (
    dump_private_key_as_pem,
    generate_private_key,
    generate_self_signed_app_certificate,
)
from asyncua.server.history import HistoryDict
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from sqlalchemy import text

from qdspace.connector.linein.config import OpcuaConfig
from qdspace.connector.linein.opcua import OpcuaConnector
from qdspace.connector.linein.sink import MeasurementSink
from qdspace.connector.storage import QualityStore, open_store
from qdspace.util.ports import free_port

pytestmark = pytest.mark.integration
SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH
NS_URI = "urn:qdspace:test:pecvd"
#: readings are taken from here on (the tool's clock runs ahead of nothing: all in the past)
T0 = (datetime.now(UTC) - timedelta(minutes=30)).replace(second=0, microsecond=0)


class Plant:
    """A PECVD tool's OPC UA server: chamber pressure (mbar, historized) and batch."""

    def __init__(
        self,
        port: int,
        security: list[ua.SecurityPolicyType] | None = None,
        history: Callable[[], HistoryDict] | None = None,
    ) -> None:
        self.port = port
        self.security = security
        self.history = history
        self.server: Server | None = None
        self.pressure: Any = None
        self.batch: Any = None

    async def start(self, cert: tuple[Path, Path] | None = None) -> None:
        server = Server()
        await server.init()
        if self.history is not None:  # a fresh one per start: a restart forgets
            server.iserver.history_manager.set_storage(self.history())
        server.set_endpoint(f"opc.tcp://127.0.0.1:{self.port}/plant/")
        if self.security is not None:
            server.set_security_policy(self.security)
        if cert is not None:
            await server.load_certificate(str(cert[0]))
            await server.load_private_key(str(cert[1]))
        idx = await server.register_namespace(NS_URI)
        tool = await server.nodes.objects.add_object(ua.NodeId("PECVD1", idx), "PECVD1")
        self.pressure = await tool.add_variable(
            ua.NodeId("PECVD1.ChamberPressure", idx), "ChamberPressure", 0.0
        )
        self.batch = await tool.add_variable(ua.NodeId("PECVD1.Batch", idx), "Batch", "B-0")
        await self.write(0.9, T0)  # the value the tool had before the test
        await server.start()
        await server.historize_node_data_change(self.pressure, period=None, count=10_000)
        self.server = server

    async def stop(self) -> None:
        assert self.server is not None
        await self.server.stop()
        self.server = None

    async def write(self, value: Any, at: datetime) -> None:
        dv = ua.DataValue(ua.Variant(value, ua.VariantType.Double), SourceTimestamp=at)
        await self.pressure.write_value(dv)


def config(port: int, tmp: Path, **extra: Any) -> OpcuaConfig:
    return OpcuaConfig.model_validate(
        {
            "endpoint": f"opc.tcp://127.0.0.1:{port}/plant/",
            "publishing_interval_ms": 50,
            "reconnect_s": 0.3,
            "timeout_s": 2.0,
            "backfill_max_s": 10 * 365 * 86400,
            "nodes": [
                {
                    "node_id": "ns=2;s=PECVD1.ChamberPressure",
                    "element": "pecvd_chamber_vacuum",
                    "unit": "mbar",
                    "equipment": "PECVD-1",
                    "batch_id_node": "ns=2;s=PECVD1.Batch",
                }
            ],
            **extra,
        }
    )


def stored(store: QualityStore) -> list[tuple[Any, ...]]:
    """(measured_at in UTC, value, unit, raw_unit, batch_id) of every stored reading."""
    sql = "SELECT measured_at, value, unit, raw_unit, batch_id FROM qdm_measurement"
    with store.engine.connect() as c:
        rows = [tuple(r) for r in c.execute(text(sql))]
    return sorted((datetime.fromisoformat(str(r[0])).replace(tzinfo=UTC), *r[1:]) for r in rows)


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
async def plant() -> AsyncIterator[Plant]:
    p = Plant(free_port())
    await p.start()
    yield p
    if p.server is not None:
        await p.stop()


async def test_readings_restart_backfill_and_outage_lose_and_duplicate_nothing(
    plant: Plant, store: QualityStore, tmp_path: Path
) -> None:
    await restart_backfill_and_outage(plant, store, tmp_path)


async def test_the_same_with_a_server_that_historizes_late(
    store: QualityStore, tmp_path: Path
) -> None:
    """The fresh-clone CI failure, made repeatable: the second connector read the
    server's history before the server had saved the readings written while it was
    away, so its backfill brought none of them (the connector before this test read
    history once, and before subscribing; it fails here at the second wait)."""
    plant = Plant(free_port(), history=SlowHistory)
    await plant.start()
    try:
        await restart_backfill_and_outage(plant, store, tmp_path)
    finally:
        if plant.server is not None:
            await plant.stop()


async def restart_backfill_and_outage(plant: Plant, store: QualityStore, tmp_path: Path) -> None:
    sink = MeasurementSink(store, "opcua-test")
    run = Running(OpcuaConnector(config(plant.port, tmp_path), sink))
    await until(lambda: run.connector.sessions == 1)
    await asyncio.sleep(0.2)
    for i in range(1, 4):
        await plant.write(1.0 + i / 10, T0 + timedelta(seconds=i))
        await asyncio.sleep(0.08)
    await until(lambda: len(stored(store)) >= 4)  # the initial 0.9 and the three
    # the connector goes away; the tool goes on writing (its history keeps them)
    await run.close()
    for i in range(4, 8):
        await plant.write(1.0 + i / 10, T0 + timedelta(seconds=i))
    await plant.batch.write_value("B-7")
    run = Running(OpcuaConnector(config(plant.port, tmp_path), sink))
    await until(lambda: len(stored(store)) >= 8)
    # the re-subscription's first value (1.7), which the backfill stored before the live
    # queue is taken (it stores each history page as it comes, so 8 are there earlier)
    await until(lambda: sink.totals.duplicates >= 1)
    # the server restarts mid-stream (new process state, same endpoint)
    await plant.stop()
    await asyncio.sleep(0.5)
    await plant.start()
    await until(lambda: run.connector.sessions >= 2, timeout=15)
    await plant.batch.write_value("B-9")
    # the connector has B-9 (it counts a session once connected, and may still read the
    # batch before the write: readings backfilled then took B-0, under load)
    await until(lambda: run.connector.context.get("ns=2;s=PECVD1.Batch") == "B-9")
    for i in range(8, 11):
        await plant.write(1.0 + i / 10, T0 + timedelta(seconds=i))
        await asyncio.sleep(0.08)
    await until(lambda: any(r[0].second == 10 for r in stored(store)))
    await run.close()
    rows = stored(store)
    taken = [r[0] for r in rows]
    assert len(taken) == len(set(taken))  # nothing twice
    seconds = {r[0].second for r in rows if r[0] >= T0}
    assert set(range(1, 11)) <= seconds  # nothing lost, the gap backfilled
    by_second = {r[0].second: r for r in rows if r[0] >= T0}
    assert by_second[5][1] == pytest.approx(150.0)  # 1.5 mbar stored as Pa
    assert by_second[5][2:4] == ("Pa", "mbar")
    assert by_second[2][4] == "B-0" and by_second[9][4] == "B-9"
    assert sink.totals.duplicates >= 1  # the re-subscription's first value, the overlap


async def test_a_batch_change_published_behind_a_later_reading_still_applies_to_it(
    plant: Plant, store: QualityStore, tmp_path: Path
) -> None:
    """The fresh-clone CI failure, made repeatable: asyncua's server groups one publish's
    notifications by monitored item, so a reading, a batch change and a second reading
    written within one publishing interval arrive as reading, reading, batch change.
    The second reading was stored with the old batch (the connector took the changes in
    arrival order); it takes the batch current at its source time."""
    sink = MeasurementSink(store, "opcua-test")
    cfg = config(plant.port, tmp_path, publishing_interval_ms=1500)
    run = Running(OpcuaConnector(cfg, sink))
    # subscribed and pumping: the subscription's first value (T0) came after the backfill
    # stored it (the backfill stores each history page as it comes: T0 stored is not enough)
    await until(lambda: sink.totals.duplicates >= 1)
    first = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    await plant.write(1.1, first)
    await plant.batch.write_value(
        ua.DataValue(
            ua.Variant("B-9", ua.VariantType.String), SourceTimestamp=first + timedelta(seconds=1)
        )
    )
    await plant.write(1.2, first + timedelta(seconds=2))
    await until(lambda: len([r for r in stored(store) if r[0] >= first]) >= 2)
    await run.close()
    batches = [r[4] for r in stored(store) if r[0] >= first]
    assert batches == ["B-0", "B-9"]


async def test_values_written_while_the_connector_starts_are_all_stored(
    plant: Plant, store: QualityStore, tmp_path: Path
) -> None:
    """The tool writes on while the connector connects, subscribes and backfills: every
    value is stored once. (A connector that read history before subscribing lost what
    was written between the two; one that did not wait for the server's history to
    settle lost what the server had not historized yet.)"""
    written: list[datetime] = []

    async def tool() -> None:
        for i in range(1, 301):
            at = T0 + timedelta(milliseconds=100 * i)
            await plant.write(1.0 + i / 1000, at)
            written.append(at)
            await asyncio.sleep(0.005)

    writer = asyncio.create_task(tool())
    await until(lambda: len(written) >= 20)  # the tool is busy before we connect
    sink = MeasurementSink(store, "opcua-test")
    run = Running(OpcuaConnector(config(plant.port, tmp_path), sink))
    await writer
    await until(lambda: {r[0] for r in stored(store)} >= set(written))
    await run.close()
    taken = [r[0] for r in stored(store)]
    assert len(taken) == len(set(taken))


class SlowHistory(HistoryDict):
    """A server that historizes a write a while after it is made (as a real one may)."""

    async def save_node_value(self, node_id: ua.NodeId, datavalue: ua.DataValue) -> None:
        await asyncio.sleep(0.4)
        await super().save_node_value(node_id, datavalue)


async def test_the_backfill_waits_for_the_servers_history_to_settle(
    store: QualityStore, tmp_path: Path
) -> None:
    """Values written just before the connector subscribes are in the server's history
    only a moment later: the backfill reads again until nothing new comes. (With
    ``history_settle_s: 0`` this lost readings 1 to 4 here: the subscription brings only
    the newest, and the one history read came before the server had saved them.)"""
    plant = Plant(free_port(), history=SlowHistory)
    await plant.start()
    try:
        for i in range(1, 6):
            await plant.write(1.0 + i / 10, T0 + timedelta(seconds=i))
        sink = MeasurementSink(store, "opcua-test")
        run = Running(OpcuaConnector(config(plant.port, tmp_path, history_settle_s=0.5), sink))
        await until(lambda: {r[0].second for r in stored(store) if r[0] > T0} >= {1, 2, 3, 4, 5})
        await run.close()
    finally:
        await plant.stop()
    taken = [r[0] for r in stored(store)]
    assert len(taken) == len(set(taken))


async def test_an_unknown_unit_is_reported_with_its_node_and_does_not_stop(
    plant: Plant, store: QualityStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(plant.port, tmp_path)
    nodes = [
        cfg.nodes[0],
        cfg.nodes[0].model_copy(
            update={"node_id": "ns=2;s=PECVD1.Batch", "element": "silane_flow", "unit": "sccm"}
        ),
    ]
    sink = MeasurementSink(store, "opcua-test")
    caplog.set_level(logging.WARNING, "qdspace.connector.linein")
    run = Running(OpcuaConnector(cfg.model_copy(update={"nodes": nodes}), sink))
    await until(lambda: run.connector.sessions == 1)
    await plant.batch.write_value("not a flow")
    await plant.write(2.0, T0 + timedelta(seconds=30))
    await until(lambda: any(r[1] == pytest.approx(200.0) for r in stored(store)))
    # the pressure may come from the backfill, before the subscription's first batch value
    # is taken from its queue: wait for that too (CI closed the connector before it)
    await until(lambda: any(e.source == "opcua:ns=2;s=PECVD1.Batch" for e in sink.rejected))
    await run.close()
    bad = [e for e in sink.rejected if e.source == "opcua:ns=2;s=PECVD1.Batch"]
    assert bad and "neither a number nor a grade code" in bad[0].reason
    assert "opcua:ns=2;s=PECVD1.Batch" in caplog.text


async def test_a_backfill_stores_each_reading_with_the_batch_it_was_taken_in(
    plant: Plant, store: QualityStore, tmp_path: Path
) -> None:
    """The tool keeps its batch variable's history: readings backfilled across a batch
    change carry the batch current when each was taken, not the one current now."""
    assert plant.server is not None
    storage = plant.server.iserver.history_manager.storage
    await storage.new_historized_node(plant.batch.nodeid, None, 0)

    async def batch(name: str, at: datetime) -> None:
        dv = ua.DataValue(ua.Variant(name, ua.VariantType.String), SourceTimestamp=at)
        await plant.batch.write_value(dv)
        await storage.save_node_value(plant.batch.nodeid, dv)

    await batch("B-1", T0 + timedelta(seconds=1))
    for i in (1, 2, 3):
        await plant.write(1.0 + i / 10, T0 + timedelta(seconds=i))
        await asyncio.sleep(0.08)  # the server's historizing subscription samples
    await batch("B-2", T0 + timedelta(seconds=4))
    for i in (4, 5, 6):
        await plant.write(1.0 + i / 10, T0 + timedelta(seconds=i))
        await asyncio.sleep(0.08)  # the server's historizing subscription samples
    await batch("B-3", T0 + timedelta(seconds=7))  # current now; no reading of it yet
    await asyncio.sleep(0.3)  # the server's historizing subscription has the readings
    sink = MeasurementSink(store, "opcua-test")
    run = Running(OpcuaConnector(config(plant.port, tmp_path), sink))
    await until(lambda: len([r for r in stored(store) if r[0] > T0]) >= 6)
    await run.close()
    by_second = {r[0].second: r[4] for r in stored(store) if r[0] > T0}
    assert by_second == {1: "B-1", 2: "B-1", 3: "B-1", 4: "B-2", 5: "B-2", 6: "B-2"}
    before = [r for r in stored(store) if r[0] == T0]  # older than the batch history
    assert [r[4] for r in before] == ["B-3"]  # falls back to the current batch, as live


def _pair(tmp: Path, name: str, uri: str, role: x509.ObjectIdentifier) -> tuple[Path, Path]:
    key = generate_private_key()
    names = [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost")]
    cert = generate_self_signed_app_certificate(key, uri, {"commonName": name}, names, [role])
    cert_path, key_path = tmp / f"{name}.der", tmp / f"{name}.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    key_path.write_bytes(dump_private_key_as_pem(key))
    return cert_path, key_path


async def test_sign_and_encrypt_with_certificates(store: QualityStore, tmp_path: Path) -> None:
    server_cert, server_key = _pair(tmp_path, "plant", "urn:qdspace:test:plant", SERVER_AUTH)
    client_cert, client_key = _pair(tmp_path, "connector", "urn:qdspace:connector", CLIENT_AUTH)
    plant = Plant(free_port(), [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
    await plant.start(cert=(server_cert, server_key))
    try:
        security = {
            "mode": "SignAndEncrypt",
            "policy": "Basic256Sha256",
            "certificate": str(client_cert),
            "private_key": str(client_key),
            "server_certificate": str(server_cert),
        }
        sink = MeasurementSink(store, "opcua-secure")
        run = Running(OpcuaConnector(config(plant.port, tmp_path, security=security), sink))
        await until(lambda: run.connector.sessions == 1)
        await plant.write(1.25, T0 + timedelta(minutes=5))
        await until(lambda: any(r[1] == pytest.approx(125.0) for r in stored(store)))
        await run.close()
        # the same server refuses a connector without security: reported, retried, not stored
        plain = MeasurementSink(store, "opcua-plain")
        insecure = OpcuaConnector(config(plant.port, tmp_path), plain)
        run = Running(insecure)
        await asyncio.sleep(1.0)
        await run.close()
        assert insecure.sessions == 0
    finally:
        await plant.stop()


async def test_after_an_outage_a_backfill_without_batch_history_reads_when_the_batch_changed(
    plant: Plant, store: QualityStore, tmp_path: Path
) -> None:
    """The tool keeps no history of its batch variable. The connector saw batch B-1 live;
    while it was away the tool took a reading in B-1, changed to B-2 and took another.
    Back, it reads the batch variable's value with its source time (when B-2 began), so the
    backfill stores the first reading in B-1 and the second in B-2 (it stored both in B-1,
    the last batch it had seen, reading only the value)."""

    async def batch(name: str, at: datetime) -> None:
        dv = ua.DataValue(ua.Variant(name, ua.VariantType.String), SourceTimestamp=at)
        await plant.batch.write_value(dv)

    await batch("B-1", T0 + timedelta(seconds=1))
    connector = OpcuaConnector(config(plant.port, tmp_path), MeasurementSink(store, "opcua-test"))
    run = Running(connector)
    await until(lambda: connector.context.get("ns=2;s=PECVD1.Batch") == "B-1")
    await plant.write(1.2, T0 + timedelta(seconds=2))
    await until(lambda: any(r[0].second == 2 for r in stored(store) if r[0] > T0))
    await run.close()

    await plant.write(1.3, T0 + timedelta(seconds=3))
    await asyncio.sleep(0.08)  # the server's historizing subscription samples
    await batch("B-2", T0 + timedelta(seconds=4))
    await plant.write(1.5, T0 + timedelta(seconds=5))
    await asyncio.sleep(0.08)
    await plant.write(1.6, T0 + timedelta(seconds=6))  # current: also delivered live
    await asyncio.sleep(0.3)
    run = Running(connector)  # the same connector: what it saw live is still known
    await until(lambda: len([r for r in stored(store) if r[0] > T0]) >= 4)
    await run.close()
    by_second = {r[0].second: r[4] for r in stored(store) if r[0] > T0}
    assert by_second == {2: "B-1", 3: "B-1", 5: "B-2", 6: "B-2"}


# A hostile or broken server: what it sends is refused with its node and why, and nothing
# it does grows the connector's memory without bound or ends the connector.

PRESSURE = "ns=2;s=PECVD1.ChamberPressure"
BATCH = "ns=2;s=PECVD1.Batch"


def sends_any_type(plant: Plant, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server sends whatever it likes for its Double variable (asyncua's address
    space refuses a write of another type, as a conformant server's does)."""
    assert plant.server is not None
    aspace = plant.server.iserver.aspace
    monkeypatch.setattr(aspace, "_is_expected_variant_type", lambda *_: True)


async def send(
    plant: Plant, value: ua.Variant, at: datetime | None, status: int | None = None
) -> None:
    """A data change of the pressure as the server sends it (no server time)."""
    assert plant.server is not None
    code = ua.StatusCode(status if status is not None else ua.StatusCodes.Good)
    dv = ua.DataValue(value, StatusCode=code, SourceTimestamp=at)
    aspace = plant.server.iserver.aspace
    await aspace.write_attribute_value(plant.pressure.nodeid, ua.AttributeIds.Value, dv)


async def test_a_value_that_can_be_no_reading_is_refused_with_its_node_and_what_it_is(
    plant: Plant,
    store: QualityStore,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each value the server sends for the pressure that is no reading is refused with the
    node and what it is, and the next good one is stored. Before, a 5 MB text, a 3 MB
    byte string and a 1,000,000-element array each waited in the queue whole (refused
    only when stored, the text as "not a finite number"); an Uncertain value was stored
    as a good reading, and one stamped with OPC UA's null time as taken in 1601."""
    sends_any_type(plant, monkeypatch)
    sink = MeasurementSink(store, "opcua-test")
    caplog.set_level(logging.WARNING, "qdspace.connector.linein")
    run = Running(OpcuaConnector(config(plant.port, tmp_path, history=False), sink))
    await until(lambda: any(r[0] == T0 for r in stored(store)))  # subscribed and pumping
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    v = ua.VariantType
    cases = [
        (ua.Variant("7" * 5_000_000, v.String), None, "a text of 5000000 characters"),
        (ua.Variant(b"\0" * 3_000_000, v.ByteString), None, "a byte string of 3000000 bytes"),
        (ua.Variant([1.0] * 1_000_000, v.Double), None, "an array of 1000000 elements"),
        (ua.Variant(ua.Argument(Name="x"), v.ExtensionObject), None, "of type Argument"),
        (ua.Variant(float("nan"), v.Double), None, "nan is not a finite number"),
        (ua.Variant(float("inf"), v.Double), None, "inf is not a finite number"),
        (ua.Variant(None, v.Null), None, "got NoneType"),
        (ua.Variant(2**64 - 1, v.UInt64), None, "above the range"),
        (
            ua.Variant(0.5, v.Double),
            ua.StatusCodes.UncertainLastUsableValue,
            "status UncertainLastUsableValue: the server says the value is not good",
        ),
    ]
    for i, (value, status, _) in enumerate(cases):
        await send(plant, value, at + timedelta(seconds=i), status)
    await send(plant, ua.Variant(0.6, v.Double), datetime(1601, 1, 1, tzinfo=UTC))
    await send(plant, ua.Variant(0.7, v.Double), datetime(9999, 12, 31, tzinfo=UTC))
    await send(plant, ua.Variant(1.9, v.Double), at + timedelta(seconds=30))
    await until(lambda: any(r[0] == at + timedelta(seconds=30) for r in stored(store)))
    await until(lambda: len(sink.rejected) >= len(cases) + 1)
    await until(lambda: run.connector.untimed.refused == {PRESSURE: 1})  # 1601: no time
    assert not run.task.done()
    await run.close()
    assert [r[:2] for r in stored(store)] == [(T0, 90.0), (at + timedelta(seconds=30), 190.0)]
    assert {e.source for e in sink.rejected} == {f"opcua:{PRESSURE}"}
    reasons = [f"{e.field}: {e.reason}" for e in sink.rejected]
    for _, _, why in cases:
        assert any(why in r for r in reasons), why
    assert "measured_at: 9999-12-31T00:00:00+00:00 is more than 5 minutes" in "\n".join(reasons)
    assert f"rejected opcua:{PRESSURE}:" in caplog.text
    assert "7777777777" not in caplog.text  # no value quoted at length


async def test_a_sample_the_servers_history_marks_bad_is_not_backfilled_as_a_reading(
    plant: Plant, store: QualityStore, tmp_path: Path
) -> None:
    """A historian keeps a Bad sample with the last value it had (here 0.0 mbar): the
    backfill stored it as a good reading of 0 Pa, and an Uncertain one as certain. Both
    are refused with their status; the good one beside them is stored."""
    assert plant.server is not None
    storage = plant.server.iserver.history_manager.storage
    at = T0 + timedelta(seconds=1)
    samples = [
        (0.0, ua.StatusCodes.BadSensorFailure),
        (0.5, ua.StatusCodes.UncertainSubNormal),
        (1.3, ua.StatusCodes.Good),
    ]
    for i, (value, status) in enumerate(samples):
        dv = ua.DataValue(
            ua.Variant(value, ua.VariantType.Double),
            StatusCode=ua.StatusCode(status),
            SourceTimestamp=at + timedelta(seconds=i),
        )
        await storage.save_node_value(plant.pressure.nodeid, dv)
    sink = MeasurementSink(store, "opcua-test")
    run = Running(OpcuaConnector(config(plant.port, tmp_path), sink))
    await until(lambda: any(r[0] == at + timedelta(seconds=2) for r in stored(store)))
    await until(lambda: len(sink.rejected) >= 2)
    await run.close()
    assert [r[:2] for r in stored(store)] == [(T0, 90.0), (at + timedelta(seconds=2), 130.0)]
    reasons = sorted(f"{e.source}: {e.field}: {e.reason}" for e in sink.rejected)
    assert reasons == [
        f"opcua:{PRESSURE}: value: status {name}: the server says the value is not good"
        for name in ("BadSensorFailure", "UncertainSubNormal")
    ]


async def test_a_batch_the_server_marks_bad_or_sends_oversized_refuses_its_readings(
    plant: Plant, store: QualityStore, tmp_path: Path
) -> None:
    """The batch variable goes Bad (the server then sends it without a value): readings
    taken meanwhile were stored without a batch, untraceable. Then it holds a 2 MB text:
    the connector kept it whole as the current batch and in the batch history. Both now
    refuse the readings that take them, naming the batch node; the text is not kept; a
    good batch after them is stored with its reading."""
    sink = MeasurementSink(store, "opcua-test")
    run = Running(OpcuaConnector(config(plant.port, tmp_path, history=False), sink))
    await until(lambda: any(r[0] == T0 for r in stored(store)))  # subscribed and pumping
    t = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)

    async def batch(dv: ua.DataValue) -> None:
        await plant.batch.write_value(dv)

    bad = ua.StatusCode(ua.StatusCodes.BadCommunicationError)
    text = ua.VariantType.String
    s = [t + timedelta(seconds=i) for i in range(6)]
    await batch(ua.DataValue(ua.Variant("B-1", text), StatusCode=bad, SourceTimestamp=s[0]))
    await plant.write(1.1, s[1])
    await batch(ua.DataValue(ua.Variant("L" * 2_000_000, text), SourceTimestamp=s[2]))
    await plant.write(1.2, s[3])
    await batch(ua.DataValue(ua.Variant("B-5", text), SourceTimestamp=s[4]))
    await plant.write(1.3, s[5])
    await until(lambda: len(sink.rejected) >= 2)
    await until(lambda: len(stored(store)) >= 2)
    await run.close()
    assert [(r[0], r[4]) for r in stored(store)] == [(T0, "B-0"), (s[5], "B-5")]
    reasons = sorted(f"{e.field}: {e.reason}" for e in sink.rejected)
    assert reasons == [
        f"batch_id: context node {BATCH}: a text of 2000000 characters (a number, a grade "
        "code or an id has at most 64)",
        f"batch_id: context node {BATCH}: status BadCommunicationError: the server says "
        "the value is not good",
    ]
    kept = [*run.connector.context.values(), *run.connector.history[BATCH].values]
    assert max(len(repr(v)) for v in kept) < 200


class SlowSink(MeasurementSink):
    """A store that takes half a second a call (a busy database): slower than the server."""

    def put(self, items: Any) -> Any:
        time.sleep(0.5)
        return super().put(items)


async def test_a_flood_of_data_changes_waits_in_a_bounded_queue_and_is_backfilled(
    plant: Plant,
    store: QualityStore,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server sends 6,000 data changes as fast as it can write them (its queues let
    every one through); the store takes 1,000 a second. The queue held every change the
    store had not taken yet (4,000 and more here, and without bound where the server goes
    on). It holds ``QUEUED`` at most now: the rest of the session's changes are dropped,
    counted and logged with the node, the session ends once the queue is stored, and the
    next one backfills what was dropped from the server's history: all 6,000 stored once."""
    from qdspace.connector.linein import opcua

    monkeypatch.setattr(opcua, "QUEUED", 1000)
    assert plant.server is not None
    plant.server.iserver.max_monitored_item_queue_size = 1_000_000  # (its history: 10,000)
    deepest = 0
    handler = opcua._Changes.datachange_notification

    def spy(self: Any, node: Any, value: Any, data: Any) -> None:
        nonlocal deepest
        handler(self, node, value, data)
        deepest = max(deepest, self.queue.qsize())

    monkeypatch.setattr(opcua._Changes, "datachange_notification", spy)
    sink = SlowSink(store, "opcua-test")
    caplog.set_level(logging.WARNING, "qdspace.connector.linein")
    run = Running(OpcuaConnector(config(plant.port, tmp_path), sink))
    # subscribed and pumping: the subscription's first value came after the backfill's
    await until(lambda: sink.totals.duplicates >= 1)
    at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)
    written = [at + timedelta(milliseconds=i) for i in range(6000)]
    for i, when in enumerate(written):
        await plant.write(1.0 + (i % 500) / 1000, when)
    await until(lambda: {r[0] for r in stored(store)} >= set(written), timeout=120)
    await run.close()
    assert deepest <= 1000
    taken = [r[0] for r in stored(store)]
    assert len(taken) == len(set(taken)) == 6001
    assert f"opcua {PRESSURE}: 1000 data changes wait for the store" in caplog.text
    assert f"dropped after 1000 waited ({PRESSURE}: " in caplog.text
    assert run.connector.sessions >= 2


class EndlessHistory(HistoryDict):
    """A historian whose every answer holds 100 more values of a historized node, and a
    continuation point: reading its history never ends."""

    async def read_node_history(
        self, node_id: ua.NodeId, start: datetime | None, end: datetime | None, nb_values: int
    ) -> tuple[list[ua.DataValue], datetime | None]:
        if node_id not in self._datachanges or start is None:
            return await super().read_node_history(node_id, start, end, nb_values)
        await asyncio.sleep(0.01)
        n = min(nb_values or 100, 100)
        values = [
            ua.DataValue(
                ua.Variant(1.0 + i / 1000, ua.VariantType.Double),
                SourceTimestamp=start + timedelta(milliseconds=i),
            )
            for i in range(n)
        ]
        return values, start + timedelta(milliseconds=n)


async def test_a_history_that_never_ends_is_read_to_a_cap_and_live_readings_flow(
    store: QualityStore,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The backfill followed the server's continuation points for as long as it sent them,
    holding every value read: with one that never stops, the connector read (and grew)
    for ever and stored no live reading. It reads ``MAX_BACKFILL`` values of a node at
    most, a page at a time, says so with the node, goes on live, and gives the server the
    continuation point it did not follow back (a server keeps few)."""
    from qdspace.connector.linein import opcua

    monkeypatch.setattr(opcua, "MAX_BACKFILL", 2000)
    plant = Plant(free_port(), history=EndlessHistory)
    await plant.start()
    assert plant.server is not None
    manager = plant.server.iserver.history_manager
    read_history = manager.read_history
    released: list[bytes] = []

    async def noting(params: ua.HistoryReadParameters) -> list[ua.HistoryReadResult]:
        if params.ReleaseContinuationPoints:
            released.extend(v.ContinuationPoint for v in params.NodesToRead)
        return await read_history(params)

    monkeypatch.setattr(manager, "read_history", noting)
    try:
        sink = MeasurementSink(store, "opcua-test")
        caplog.set_level(logging.WARNING, "qdspace.connector.linein")
        run = Running(OpcuaConnector(config(plant.port, tmp_path), sink))
        await until(lambda: run.connector.sessions == 1)
        later = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
        await plant.write(1.7, later)
        await until(lambda: any(r[0] == later for r in stored(store)), timeout=20)
        await run.close()
    finally:
        await plant.stop()
    assert f"opcua {PRESSURE}: history from " in caplog.text
    assert "holds more than 2000 values; the rest is not read" in caplog.text
    assert 2000 <= len(stored(store)) <= 2003  # the cap, T0, and the live reading
    assert len(released) == 1 and released[0]  # the point after the cap, given back


async def test_a_history_answer_of_another_kind_is_logged_with_its_node_and_it_goes_on(
    plant: Plant,
    store: QualityStore,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server answers a history read with events where data values were asked for: the
    connector raised AttributeError and ended for good (no session, no reading, ever
    again). It logs the node and what came, backfills nothing of it, and goes on live."""
    assert plant.server is not None

    async def events(params: ua.HistoryReadParameters) -> list[ua.HistoryReadResult]:
        return [ua.HistoryReadResult(HistoryData=ua.HistoryEvent()) for _ in params.NodesToRead]

    monkeypatch.setattr(plant.server.iserver.history_manager, "read_history", events)
    sink = MeasurementSink(store, "opcua-test")
    caplog.set_level(logging.WARNING, "qdspace.connector.linein")
    run = Running(OpcuaConnector(config(plant.port, tmp_path), sink))
    await until(lambda: run.connector.sessions == 1)
    later = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    await plant.write(1.7, later)
    await until(lambda: run.task.done() or any(r[0] == later for r in stored(store)))
    assert not run.task.done()
    await run.close()
    assert (
        f"opcua {PRESSURE}: no backfill: history of {PRESSURE}: the server answered with "
        "HistoryEvent, not data values" in caplog.text
    )


class Gateway:
    """What answers on the plant's port: drops every connection at once, or accepts it and
    never answers (a server gone wrong, or a broken gateway before it)."""

    def __init__(self, silent: bool) -> None:
        self.silent = silent
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.silent:
            await reader.read()  # until the client gives up
        writer.close()

    def close(self) -> None:
        assert self.server is not None
        self.server.close()


@pytest.mark.parametrize("silent", [False, True])
async def test_a_server_that_drops_or_never_answers_is_retried_ever_more_slowly(
    silent: bool,
    store: QualityStore,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server that drops every connection at once was reconnected to every
    ``reconnect_s`` for ever; the wait now doubles per failed session, up to 16 times
    ``reconnect_s``. One that never answers is given up on after ``timeout_s`` and said so
    (it was logged as ``TimeoutError: ;``). The waits are read from the log, so how fast
    this machine connects does not matter."""
    gateway = Gateway(silent)
    port = await gateway.start()
    caplog.set_level(logging.WARNING, "qdspace.connector.linein")
    cfg = config(port, tmp_path, reconnect_s=0.1, timeout_s=0.5)
    run = Running(OpcuaConnector(cfg, MeasurementSink(store, "opcua-test")))

    def waits() -> list[float]:
        return [float(w) for w in re.findall(r"reconnecting in ([0-9.]+) s", caplog.text)]

    await until(lambda: len(waits()) >= 7, timeout=60)
    await run.close()
    gateway.close()
    assert waits()[:7] == [0.1, 0.2, 0.4, 0.8, 1.6, 1.6, 1.6]
    assert gateway.connections >= 7 and run.connector.sessions == 0
    if silent:
        assert "TimeoutError: no answer in 0.5 s; reconnecting in" in caplog.text


async def test_a_reading_stored_ahead_of_our_clock_does_not_move_the_backfills_start(
    plant: Plant, store: QualityStore, tmp_path: Path
) -> None:
    """A reading of the same parameter dated 9999 came in another way (a file from an
    exporter whose clock was wrong): the backfill started after it, so every reading the
    tool took during an outage was lost for good. Readings ahead of our clock are passed
    over when the backfill's start is looked up."""
    from qdspace.connector.linein.mapping import measurement

    far = measurement(
        equipment="PECVD-1",
        element="pecvd_chamber_vacuum",
        value=1.0,
        unit="mbar",
        measured_at=datetime(9999, 12, 31, 23, 0, tzinfo=UTC),
    )
    assert store.ingest_rows("measurement", [(1, far)]).accepted == 1
    for i in range(1, 6):
        await plant.write(1.0 + i / 10, T0 + timedelta(seconds=i))
    sink = MeasurementSink(store, "opcua-test")
    run = Running(OpcuaConnector(config(plant.port, tmp_path), sink))
    try:
        # 1 to 4 come from the history only: the subscription brings the newest value
        await until(
            lambda: (
                {r[0] for r in stored(store)} >= {T0 + timedelta(seconds=i) for i in range(1, 6)}
            )
        )
    finally:
        await run.close()
