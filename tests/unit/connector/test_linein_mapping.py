"""Pure line-data mapping: topics, payloads and OPC UA values -> measurement rows or reasons."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from qdspace.connector.dictionary import default_dictionary
from qdspace.connector.field_parsers import RowInvalid
from qdspace.connector.linein.config import (
    ConnectorConfigError,
    MqttConfig,
    OpcuaConfig,
    check_elements,
    read_config,
)
from qdspace.connector.linein.mapping import mqtt_mapping, mqtt_row, opcua_row, topic_matches
from qdspace.connector.validate import parse_measurement

T = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
MQTT = MqttConfig.model_validate(
    {"topics": [{"topic": "plant/+/pecvd/#", "element": "silane_flow", "equipment_level": 1}]}
)


@pytest.mark.parametrize(
    ("pattern", "topic", "match"),
    [
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/b/d", False),
        ("a/#", "a/b/c", True),
        ("a/b", "a/b/c", False),
        ("a/b/c", "a/b", False),
    ],
)
def test_topic_filters(pattern: str, topic: str, match: bool) -> None:
    assert topic_matches(pattern, topic) is match


def test_an_mqtt_payload_becomes_a_canonical_measurement() -> None:
    topic = "plant/PECVD-2/pecvd/silane"
    mapping = mqtt_mapping(MQTT, topic)
    assert mapping is not None
    row = mqtt_row(MQTT, mapping, topic, b'{"value": 1.2, "unit": "slm", "ts": 1740816000}')
    assert isinstance(row, dict)
    parsed = parse_measurement(row, default_dictionary())
    assert parsed["equipment"] == "PECVD-2"
    assert parsed["value"] == pytest.approx(1200.0)
    assert parsed["measured_at"] == datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("payload", "field", "reason"),
    [
        (b"\xff", "-", "not UTF-8"),
        (b"[1]", "-", "must be a JSON object"),
        (b"{", "-", "not JSON"),
        (b'{"ts": "2025-03-01T08:00:00Z"}', "value", "missing"),
        (b'{"value": 1}', "ts", "missing"),
        (b'{"value": 1, "ts": "2025-03-01T08:00:00"}', "ts", "no zone"),
        (b"[" * 100 + b"]" * 100, "-", "nested too deep"),
    ],
)
def test_a_malformed_payload_says_why(payload: bytes, field: str, reason: str) -> None:
    mapping = MQTT.topics[0]
    bad = mqtt_row(MQTT, mapping, "plant/P/pecvd/x", payload)
    assert isinstance(bad, tuple)
    assert bad[0] == field and reason in bad[1]


def test_an_opcua_value_without_a_timestamp_is_refused() -> None:
    cfg = OpcuaConfig.model_validate(
        {
            "endpoint": "opc.tcp://x:4840",
            "nodes": [{"node_id": "i=1", "element": "silane_flow", "equipment": "P"}],
        }
    )
    assert opcua_row(cfg.nodes[0], 1.0, None, None, {})[0] == "measured_at"
    assert opcua_row(cfg.nodes[0], [1, 2], T, None, {})[0] == "value"
    # the server's time is no reading's time (each re-subscription brings a fresh one)...
    assert opcua_row(cfg.nodes[0], 1.0, None, T, {})[0] == "measured_at"
    # ...unless the node says so
    node = cfg.nodes[0].model_copy(update={"server_time": True})
    row = opcua_row(node, 1.0, None, T, {})
    assert isinstance(row, dict) and row["measured_at"] == T


def test_a_config_is_checked_against_the_dictionary(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "endpoint: opc.tcp://x:4840\nnodes:\n"
        "  - {node_id: 'i=1', element: silane_flow, unit: psi, equipment: P}\n"
    )
    cfg = read_config(path, OpcuaConfig)
    with pytest.raises(ConnectorConfigError, match=r"mapping 1 \(i=1\): unit: 'psi'"):
        check_elements(path, cfg.nodes, default_dictionary())
    path.write_text('{"endpoint": "http://x", "nodes": []}')
    with pytest.raises(ConnectorConfigError, match=r"c.yaml: endpoint: String should match"):
        read_config(path, OpcuaConfig)


def test_an_opcua_context_history_is_trimmed_behind_the_newest_reading() -> None:
    """Live context changes were kept for ever (and inserted in O(n)): the history keeps
    what a reading still to come can need, the value current at the cut included."""
    from datetime import timedelta
    from types import SimpleNamespace

    from qdspace.connector.linein import opcua

    connector = opcua.OpcuaConnector.__new__(opcua.OpcuaConnector)
    connector.context, connector.history, connector.newest = {}, {}, None
    start = datetime.now(UTC) - timedelta(hours=5)

    def change(minutes: int, value: str) -> tuple[str, opcua.Reading]:
        at = start + timedelta(minutes=minutes)
        dv = SimpleNamespace(Value=SimpleNamespace(Value=value), SourceTimestamp=at)
        dv.ServerTimestamp = None
        return ("ns=2;s=Batch", opcua.screened(dv))

    changes = [change(m, f"B{m}") for m in range(0, 300, 10)]
    for node_id, dv in changes:
        connector._context_change(node_id, dv)
    connector._trim_history(changes)
    history = connector.history["ns=2;s=Batch"]
    assert len(history) == 7  # the last hour, and the batch current at its start
    assert history.at(start + timedelta(minutes=235)) == (True, "B230")
    assert history.at(start + timedelta(minutes=295)) == (True, "B290")


def test_an_opcua_context_history_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    from qdspace.connector.linein import opcua_context

    monkeypatch.setattr(opcua_context, "MAX_HISTORY", 100)
    history = opcua_context.ContextHistory([])
    for i in range(1000):
        history.add(T.replace(microsecond=i), i)
    assert len(history) <= 100 and history.at(T.replace(microsecond=999)) == (True, 999)


def test_a_reading_older_than_the_context_kept_is_refused_not_given_another_batch(
    tmp_path: Path,
) -> None:
    """A reading delivered more than HISTORY_KEEP late, taken before the oldest batch
    change the trimmed history kept, took the batch current *now* (B200 where B100 was
    in force). It is refused with the reason; one not older than that change keeps
    the batch it was taken in, and a node with a fixed batch is not concerned."""
    from datetime import timedelta
    from types import SimpleNamespace

    from qdspace.connector.linein import opcua, opcua_marks
    from qdspace.connector.linein.sink import MeasurementSink
    from qdspace.connector.storage import open_store

    cfg = OpcuaConfig.model_validate(
        {
            "endpoint": "opc.tcp://x:4840",
            "nodes": [
                {"node_id": "ns=2;s=P", "element": "pecvd_chamber_vacuum", "unit": "mbar",
                 "equipment": "PECVD-1", "batch_id_node": "ns=2;s=Batch"},
                {"node_id": "ns=2;s=Q", "element": "pecvd_chamber_vacuum", "unit": "mbar",
                 "equipment": "PECVD-2", "batch_id_node": "ns=2;s=Batch", "batch_id": "FIX"},
            ],
        }
    )  # fmt: skip
    pressure, fixed = cfg.nodes
    connector = opcua.OpcuaConnector.__new__(opcua.OpcuaConnector)
    connector.context, connector.history, connector.newest = {}, {}, None
    connector.untimed = opcua_marks.Untimed()
    start = datetime.now(UTC) - timedelta(hours=5)

    def dv(minutes: int, value: object) -> opcua.Reading:
        at = start + timedelta(minutes=minutes)
        return opcua.screened(
            SimpleNamespace(
                Value=SimpleNamespace(Value=value), SourceTimestamp=at, ServerTimestamp=None
            )
        )

    changes = [("ns=2;s=Batch", dv(m, f"B{m}")) for m in range(0, 250, 50)]
    changes.append(("ns=2;s=P", dv(290, 1.0)))  # the newest reading: the cut is at 230
    for node_id, change in changes[:-1]:
        connector._context_change(node_id, change)
    connector._trim_history(changes)
    assert connector.history["ns=2;s=Batch"].times[0] == start + timedelta(minutes=200)

    items = [
        connector._item(pressure, dv(210, 1.21)),  # late, after the oldest change kept
        connector._item(pressure, dv(120, 1.12)),  # taken in B100: forgotten
        connector._item(fixed, dv(120, 2.12)),
    ]
    store = open_store(f"sqlite:///{tmp_path}/q.db")
    try:
        sink = MeasurementSink(store, "opcua-test")
        problems = sink.put(items)
        with store.engine.connect() as c:
            rows = c.exec_driver_sql(
                "SELECT equipment, value, batch_id FROM qdm_measurement ORDER BY equipment"
            ).all()
    finally:
        store.close()
    assert [tuple(r) for r in rows] == [("PECVD-1", 121.0, "B200"), ("PECVD-2", 212.0, "FIX")]
    (problem,) = problems
    assert (problem.source, problem.line, problem.field) == ("opcua:ns=2;s=P", 2, "batch_id")
    assert "value 1.12 taken" in problem.reason
    assert "older than the oldest batch change kept" in problem.reason


def test_a_context_history_knows_what_it_forgot_not_what_it_never_knew(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before anything is dropped, a time before the first change is unknown, not
    forgotten (the connector then takes the current value, as at a start); once the cap
    drops the oldest changes, a time before the oldest kept is forgotten, also after a
    change older than that arrives late (what came between is gone)."""
    from datetime import timedelta

    from qdspace.connector.linein import opcua_context

    monkeypatch.setattr(opcua_context, "MAX_HISTORY", 100)
    history = opcua_context.ContextHistory([])
    for i in range(100):
        history.add(T + timedelta(seconds=i), i)
    assert history.at(T - timedelta(seconds=1)) == (False, None)
    assert history.forgotten(T - timedelta(seconds=1)) is None
    history.add(T + timedelta(seconds=100), 100)  # past the cap: the oldest quarter goes
    horizon = history.times[0]
    assert history.horizon == horizon and horizon > T
    assert history.forgotten(T) == horizon
    assert history.forgotten(horizon - timedelta(microseconds=1)) == horizon
    assert history.forgotten(horizon) is None and history.at(horizon) == (True, history.values[0])
    history.add(T, "late")
    assert history.forgotten(T) == horizon and history.horizon == horizon


NOW = datetime(2026, 12, 6, 23, 0, tzinfo=UTC)
LONG_LOT = "L" * 64


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"ts": "9999-12-31T23:00:00Z"}, "measured_at", "more than 5 minutes after"),
        ({"ts": "2026-12-06T23:06:00Z"}, "measured_at", "more than 5 minutes after"),
        ({"batch_id": "\x1b[2J\rB-1"}, "batch_id", "not printable text"),
        ({"order_id": "PO-1\u2028forged"}, "order_id", "not printable text"),
        ({"batch_id": {"evil": [1, 2]}}, "batch_id", "expected text, got dict"),
        ({"batch_id": LONG_LOT + "-A"}, "batch_id", "longer than 64 characters"),
        ({"unit": False}, "unit", "expected a unit's symbol, got bool"),
        ({"unit": 0}, "unit", "expected a unit's symbol, got int"),
    ],
)
def test_what_a_publisher_sends_is_checked_not_mended(
    fields: dict[str, object], field: str, reason: str
) -> None:
    """A time ahead of our clock, an id that is no printable text, cut or made up from an
    object, a unit that is no symbol: refused with its field, whether by the mapping or by
    the validation after it (they were stored: 9999 as the newest reading for good, the
    escape sequence as a lot no trace can name, two lots equal in 64 characters as one,
    ``{'evil': [1, 2]}`` as a batch, the mapping's unit for ``false``)."""
    import json

    topic = "plant/PECVD-2/pecvd/silane"
    body = {"value": 1.2, "unit": "slm", "ts": "2026-12-06T22:59:00Z", **fields}
    row = mqtt_row(MQTT, MQTT.topics[0], topic, json.dumps(body).encode(), NOW)
    if isinstance(row, tuple):
        assert row[0] == field and reason in row[1], row
        return
    with pytest.raises(RowInvalid) as refused:
        parse_measurement(row, default_dictionary())
    assert field in str(refused.value) and reason in str(refused.value), refused.value


def test_a_reading_within_the_clock_skew_and_long_ids_in_bounds_are_stored() -> None:
    body = b'{"value": 1.2, "unit": "slm", "ts": "2026-12-06T23:04:00Z", "batch_id": "%s"}'
    row = mqtt_row(MQTT, MQTT.topics[0], "plant/P/pecvd/x", body % LONG_LOT.encode(), NOW)
    assert isinstance(row, dict)
    assert parse_measurement(row, default_dictionary())["batch_id"] == LONG_LOT
    cfg = OpcuaConfig.model_validate(
        {"endpoint": "opc.tcp://x:4840",
         "nodes": [{"node_id": "i=1", "element": "silane_flow", "equipment": "P",
                    "batch_id_node": "i=2"}]}
    )  # fmt: skip
    ahead = datetime(2027, 1, 1, tzinfo=UTC)
    assert opcua_row(cfg.nodes[0], 1.0, ahead, None, {}, NOW)[0] == "measured_at"
    assert opcua_row(cfg.nodes[0], 1.0, T, None, {"i=2": "B\x00"}, NOW)[0] == "batch_id"
    numbered = opcua_row(cfg.nodes[0], 1.0, T, None, {"i=2": 260001}, NOW)
    assert isinstance(numbered, dict) and numbered["batch_id"] == "260001"


@pytest.mark.parametrize("held", [float("nan"), float("inf"), float("-inf")])
def test_a_context_node_reading_no_number_gives_no_batch_id(held: float) -> None:
    """A batch node whose Double reads NaN (a PLC's "no batch") made every reading the
    batch "nan"'s: refused, naming the context node."""
    cfg = OpcuaConfig.model_validate(
        {"endpoint": "opc.tcp://x:4840",
         "nodes": [{"node_id": "i=1", "element": "silane_flow", "equipment": "P",
                    "batch_id_node": "i=2", "order_id_node": "i=3"}]}
    )  # fmt: skip
    for name, node in (("batch_id", "i=2"), ("order_id", "i=3")):
        refused = opcua_row(cfg.nodes[0], 1.0, T, None, {node: held}, NOW)
        assert refused[0] == name and f"context node {node} reads" in str(refused[1])
