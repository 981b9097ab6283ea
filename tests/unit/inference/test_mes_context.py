"""The MES context: station and time to serial / order / batch, checked whole on load."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from qdspace.inference.frame_context import ProductionContext
from qdspace.inference.mes_context import MesContextError, read_mes_context

T0 = datetime(2026, 6, 1, 6, tzinfo=UTC)
CSV = """station,start,end,serial,order_id,batch_id
el-1,2026-06-01T06:00:00Z,,,PO-1,B-1
el-1,2026-06-01T08:30:00+02:00,2026-06-01T06:45:00Z,,PO-1,B-2
el-1,2026-06-01T07:00:00Z,,,PO-2,B-3
el-2,2026-06-01T06:00:00Z,2026-06-01T06:00:05Z,SN-9,PO-1,B-1
"""


def test_a_csv_export_answers_station_and_time(tmp_path: Path) -> None:
    path = tmp_path / "mes.csv"
    path.write_text(CSV)
    mes = read_mes_context(path)
    assert mes.stations == ["el-1", "el-2"]

    def batch(station: str, minutes: float) -> str | None:
        found = mes.at(station, T0 + timedelta(minutes=minutes))
        return None if found is None else found.batch_id

    assert batch("el-1", 0) == "B-1"  # a start is inside its entry
    assert batch("el-1", 10) == "B-1"  # no end: until the station's next entry
    assert batch("el-1", -1 / 60) is None  # before anything ran
    assert batch("el-1", 30) == "B-2"  # 08:30+02:00 is 06:30Z
    assert batch("el-1", 50) is None  # B-2 ended at 06:45, B-3 starts at 07:00
    assert mes.at("el-1", T0 + timedelta(hours=5)) == ProductionContext(None, "PO-2", "B-3")
    assert mes.at("el-2", T0 + timedelta(seconds=2)) == ProductionContext("SN-9", "PO-1", "B-1")
    assert mes.at("el-2", T0 + timedelta(seconds=5)) is None  # an end is outside
    assert mes.at("el-9", T0) is None


def test_a_json_export_reads_the_same(tmp_path: Path) -> None:
    path = tmp_path / "mes.json"
    entries = [
        {"station": "el-1", "start": "2026-06-01T06:00:00Z", "batch_id": "B-1"},
        {"station": "el-1", "start": "2026-06-01T07:00:00Z", "order_id": "PO-2", "end": None},
    ]
    path.write_text(json.dumps(entries))
    mes = read_mes_context(path)
    assert mes.at("el-1", T0 + timedelta(minutes=59)) == ProductionContext(batch_id="B-1")
    assert mes.at("el-1", T0 + timedelta(hours=1)) == ProductionContext(order_id="PO-2")


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ("station,start,batch_id\nel-1,2026-06-01T06:00:00,B-1\n", "mes.csv:2: start .* no zone"),
        ("station,start,batch_id\nel-1,yesterday,B-1\n", "not an ISO 8601 time"),
        ("station,start,batch_id\n,2026-06-01T06:00:00Z,B-1\n", "station is missing"),
        ("station,start,batch_id\nel-1,,B-1\n", "start is missing"),
        ("station,start\nel-1,2026-06-01T06:00:00Z\n", "names no serial, order_id or batch_id"),
        ("station,start,shift\nel-1,2026-06-01T06:00:00Z\n", r"unknown fields \['shift'\]"),
        ("station,start,batch_id\nel-1,2026-06-01T06:00:00Z,B-1,extra\n", "more cells"),
        (
            "station,start,end,batch_id\nel-1,2026-06-01T06:00:00Z,2026-06-01T05:00:00Z,B\n",
            "end must be after start",
        ),
        ("station,start,batch_id\nel-1,2026-06-01T06:00:00Z," + "B" * 65 + "\n", "at most 64"),
        ("station,start,batch_id\nel-1,2026-06-01T06:00:00Z,B\x01\n", "printable"),
        (
            "station,start,end,batch_id\n"
            "el-1,2026-06-01T06:00:00Z,2026-06-01T07:00:00Z,B-1\n"
            "el-1,2026-06-01T06:30:00Z,,B-2\n",
            "overlaps",
        ),
        ("station,start,batch_id\n", "no entries"),
        ("", "empty"),
    ],
)
def test_a_bad_export_is_refused_with_file_entry_and_reason(
    tmp_path: Path, body: str, text: str
) -> None:
    path = tmp_path / "mes.csv"
    path.write_text(body)
    with pytest.raises(MesContextError, match=text):
        read_mes_context(path)


@pytest.mark.parametrize(
    ("body", "text"),
    [("{", "not valid JSON"), ('{"station": "el-1"}', "list of objects"), ("[1]", "list")],
)
def test_bad_json_is_refused(tmp_path: Path, body: str, text: str) -> None:
    path = tmp_path / "mes.json"
    path.write_text(body)
    with pytest.raises(MesContextError, match=text):
        read_mes_context(path)
    with pytest.raises(MesContextError, match="cannot read"):
        read_mes_context(tmp_path / "missing.csv")
