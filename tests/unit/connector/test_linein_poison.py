"""Readings no validation rule foresaw (audit of the line-in listeners): a time that
leaves the calendar in UTC, a number too long for a float or for Python's JSON, a lone
surrogate in a batch id. Each is a refused row with its reason on every path that shares
the parsers (an MQTT payload, the sink, a JSON Lines or CSV file, the REST rows), and
the good reading beside it is stored; the sink stays bounded however much is refused."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from qdspace.connector import storage as storage_module
from qdspace.connector.batch_validate import BatchValidator
from qdspace.connector.ingest import ingest_file
from qdspace.connector.linein import sink as sink_module
from qdspace.connector.linein.config import MqttConfig
from qdspace.connector.linein.mapping import mqtt_mapping, mqtt_row
from qdspace.connector.linein.sink import REASON_MAX, Item, MeasurementSink
from qdspace.connector.storage import QualityStore, open_store

T = "2025-03-01T08:00:00Z"
MQTT = MqttConfig.model_validate(
    {"topics": [{"topic": "plant/+/temp", "element": "firing_peak_temperature", "unit": "°C",
                 "equipment_level": 1}]}
)  # fmt: skip
GOOD = {"equipment": "F1", "parameter": "firing_peak_temperature", "value": 750, "unit": "°C"}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[QualityStore]:
    s = open_store(f"sqlite:///{tmp_path}/q.db")
    yield s
    s.close()


@pytest.mark.parametrize(
    ("payload", "field", "reason"),
    [
        (b'{"value":5,"ts":"0001-01-01T00:00:00+01:00"}', "ts", "out of range in UTC"),
        (b'{"value":5,"ts":"9999-12-31T23:59:59-01:00"}', "ts", "out of range in UTC"),
        (b'{"value":' + b"1" * 5000 + b',"ts":1700000000}', "-", "more than 4300 digits"),
    ],
)
def test_mqtt_payloads_out_of_range_are_refused_with_the_reason(
    payload: bytes, field: str, reason: str
) -> None:
    mapping = mqtt_mapping(MQTT, "plant/f1/temp")
    assert mapping is not None
    got = mqtt_row(MQTT, mapping, "plant/f1/temp", payload)
    assert isinstance(got, tuple) and got[0] == field and reason in got[1]


POISON: list[tuple[dict[str, Any], str, str]] = [
    ({**GOOD, "measured_at": "0001-01-01T00:00:00+01:00"}, "measured_at", "out of range"),
    ({**GOOD, "measured_at": "9999-12-31T23:59:59-01:00"}, "measured_at", "out of range"),
    ({**GOOD, "value": int("9" * 400), "measured_at": T}, "value", "integer of 400 digits"),
    ({**GOOD, "measured_at": T, "batch_id": "\ud800"}, "batch_id", "lone surrogate"),
    ({**GOOD, "measured_at": T, "order_id": "a\udfffb"}, "order_id", "lone surrogate"),
    ({**GOOD, "measured_at": T, "equipment": "\ud800"}, "equipment", "lone surrogate"),
]


@pytest.mark.parametrize(("row", "field", "reason"), POISON)
def test_rest_rows_out_of_range_are_row_errors_not_exceptions(
    store: QualityStore, row: dict[str, Any], field: str, reason: str
) -> None:
    """``store.ingest_rows`` is what ``POST /v1/ingest/{kind}`` (JSON rows) calls: the bad
    row is a row error (a 200 with it named, not a 500) and the good one is stored."""
    good = {**GOOD, "measured_at": T}
    report = store.ingest_rows("measurement", [(1, row), (2, good)])
    assert report.accepted == 1
    (error,) = report.rejected
    assert (error.line, error.field) == (1, field) and reason in error.reason


def test_files_with_such_rows_report_them_by_line(store: QualityStore, tmp_path: Path) -> None:
    """The upload and folder path: JSON Lines and CSV (the column rules' bulk path)."""
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(
        '{"equipment":"F1","parameter":"firing_peak_temperature","value":'
        + "9" * 5000
        + ',"unit":"°C","measured_at":"2025-03-01T08:00:00Z"}\n'
        '{"equipment":"F1","parameter":"firing_peak_temperature","value":5,"unit":"°C",'
        '"measured_at":"2025-03-01T08:00:00Z","batch_id":"\\ud800"}\n'
        '{"equipment":"F1","parameter":"firing_peak_temperature","value":5,"unit":"°C",'
        '"measured_at":"2025-03-01T08:00:01Z"}\n',
        encoding="utf-8",
    )
    report = ingest_file(store, jsonl, "measurement")
    assert report.accepted == 1
    assert [(e.line, e.field) for e in report.rejected] == [(1, "-"), (2, "batch_id")]
    assert "more than 4300 digits" in report.rejected[0].reason
    csv = tmp_path / "m.csv"
    csv.write_text(
        "equipment,parameter,value,unit,measured_at,batch_id\n"
        "F1,firing_peak_temperature,5,°C,0001-01-01T00:00:00+01:00,B1\n"
        "F1,firing_peak_temperature,6,°C,2025-03-01T08:00:02+01:00,B1\n",
        encoding="utf-8",
    )
    report = ingest_file(store, csv, "measurement")
    assert report.accepted == 1
    assert [(e.line, e.field) for e in report.rejected] == [(2, "measured_at")]


def test_the_sink_refuses_poison_readings_and_stores_the_good_one(store: QualityStore) -> None:
    sink = MeasurementSink(store, "t")
    taken = datetime(2025, 3, 1, tzinfo=UTC)
    items = [("mqtt:a", row) for row, _, _ in POISON] + [("mqtt:a", {**GOOD, "measured_at": taken})]
    problems = sink.put(items)
    assert sink.totals.stored == 1 and sink.totals.rejected == len(POISON)
    assert [p.field for p in problems] == [f for _, f, _ in POISON]


class Breaking:
    """A store whose ingest breaks on one reading in a way no rule foresaw."""

    def __init__(self, store: QualityStore) -> None:
        self.store = store
        self.dictionary = store.dictionary

    def ingest_rows(self, kind: str, rows: Any, **kw: Any) -> Any:
        rows = list(rows)
        if any(isinstance(r, dict) and r.get("batch_id") == "boom" for _, r in rows):
            raise RuntimeError("unforeseen")
        return self.store.ingest_rows(kind, rows, **kw)


def test_a_reading_that_breaks_the_ingest_is_refused_not_raised(store: QualityStore) -> None:
    sink = MeasurementSink(Breaking(store), "t")  # type: ignore[arg-type]
    t1, t2 = datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 3, 2, tzinfo=UTC)
    problems = sink.put(
        [
            ("mqtt:a", {**GOOD, "measured_at": t1, "batch_id": "boom"}),
            ("mqtt:a", {**GOOD, "measured_at": t2}),
        ]
    )
    assert sink.totals.stored == 1 and sink.totals.rejected == 1
    (p,) = problems
    assert (p.line, p.field) == (1, "-") and "RuntimeError: unforeseen" in p.reason


def test_the_sink_keeps_counts_not_histories(
    store: QualityStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sink_module, "MAX_SOURCES", 5)
    sink = MeasurementSink(store, "t")
    sink.rejected = type(sink.rejected)(maxlen=10)
    mapping = mqtt_mapping(MQTT, "plant/f1/temp")
    assert mapping is not None
    big = b'{"value":"' + b"A" * 60_000 + b'","ts":1700000000}'
    for i in range(30):
        topic = f"plant/f{i}/temp"
        sink.put([("mqtt:" + topic, mqtt_row(MQTT, mapping, topic, big))])
    assert sink.totals.rejected == 30
    assert len(sink.rejected) == 10
    assert max(len(p.reason) for p in sink.rejected) <= REASON_MAX
    assert len(sink._counters) == 6  # five sources, and the rest folded into one


def test_the_sink_keeps_the_newest_refusals_by_default(store: QualityStore) -> None:
    sink = MeasurementSink(store, "t")
    assert sink.rejected.maxlen == sink_module.KEEP_REJECTED


def _at(second: int, value: float = 750) -> dict[str, Any]:
    taken = datetime(2025, 3, 1, tzinfo=UTC) + timedelta(seconds=second)
    return {**GOOD, "value": value, "measured_at": taken}


@pytest.fixture
def breaking_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real store's validation raises (as no rule foresaw) on a batch that holds a
    reading of batch ``boom``; everything else is the real SQLite store."""
    validate = BatchValidator.validate

    def breaking(self: BatchValidator, items: Any, *args: Any, **kwargs: Any) -> Any:
        if any(isinstance(r, dict) and r.get("batch_id") == "boom" for _, r in items):
            raise RuntimeError("unforeseen")
        return validate(self, items, *args, **kwargs)

    monkeypatch.setattr(BatchValidator, "validate", breaking)


@pytest.mark.usefixtures("breaking_validation")
def test_a_fault_past_the_first_store_batch_counts_each_reading_once(store: QualityStore) -> None:
    """More readings of one source than the store commits at once (a Sparkplug burst):
    the store committed the first 5,000 before the fault in the next batch came up, and
    the retry reading by reading counted all of those as duplicates (1 stored, 5,000
    duplicates of 5,002). Each is counted once, and what was stored before the burst is
    still a duplicate, or a refused change, as it was."""
    store.ingest_rows("measurement", [(1, _at(0)), (2, _at(1, value=700))])
    sink = MeasurementSink(store, "t")
    items: list[Item] = [("mqtt:a", _at(i)) for i in range(5000)]
    items += [("mqtt:a", {**_at(6000), "batch_id": "boom"}), ("mqtt:a", _at(5000))]
    problems = sink.put(items)
    t = sink.totals
    assert (t.stored, t.duplicates, t.rejected) == (4999, 1, 2)
    assert t.stored + t.duplicates + t.rejected == len(items)
    changed, broken = problems
    assert (changed.line, changed.field) == (2, "value") and "differs" in changed.reason
    assert (broken.line, broken.field) == (5001, "-")
    assert "RuntimeError: unforeseen" in broken.reason
    assert store.counts()["measurement"] == 5001


def test_a_fault_after_a_batchs_insert_stores_none_of_it(
    store: QualityStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the sink's count rests on: a call of one transaction that raises, even after
    its rows are inserted (here where the store looks for changed records), stored none
    of them, so the retry reading by reading counts each as what it is."""
    find = storage_module.conflicts

    def breaking(connection: Any, kind: str, rows: Any) -> Any:
        if len(rows) > 1:
            raise RuntimeError("unforeseen")
        return find(connection, kind, rows)

    store.ingest_rows("measurement", [(1, _at(0))])
    monkeypatch.setattr(storage_module, "conflicts", breaking)
    sink = MeasurementSink(store, "t")
    sink.put([("mqtt:a", _at(i)) for i in range(10)])
    t = sink.totals
    assert (t.stored, t.duplicates, t.rejected) == (9, 1, 0)
    assert store.counts()["measurement"] == 10
