"""Times compare as times: a row stamped exactly at a window's bound is in it (lower)
or out of it (upper), on SQLite as on PostgreSQL, whichever path wrote the row; and a
SQLite file written in the old text form is rewritten by 0010_sqlite_time_text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from qdspace.connector.storage import QualityStore, create_store_engine, migrate, open_store
from qdspace.connector.verdict_data import VerdictFilter, batch_defects, read_verdicts

T = datetime(2026, 11, 2, 14, 0, tzinfo=UTC)


def _verdict(i: int, at: datetime) -> dict[str, Any]:
    return {
        "inspection_id": f"EL-{i:05d}",
        "station": "EL-1",
        "inspected_at": at,
        "verdict": "fail",
        "defect_class": "microcrack",
        "score": 0.9,
        "serial": f"S-{i}",
        "batch_id": "B-1",
    }


def test_a_row_at_a_bound_is_inside_below_and_outside_above(store: QualityStore) -> None:
    rows = [
        _verdict(1, T),
        _verdict(2, T + timedelta(microseconds=250_000)),
        _verdict(3, T + timedelta(hours=1)),
    ]
    assert not store.ingest_rows("inspection", enumerate(rows, 1)).rejected
    at_t = {r.serial for r in read_verdicts(store.engine, VerdictFilter(since=T))}
    assert at_t == {"S-1", "S-2", "S-3"}
    before_hour = {
        r.serial for r in read_verdicts(store.engine, VerdictFilter(until=T + timedelta(hours=1)))
    }
    assert before_hour == {"S-1", "S-2"}
    only_first = read_verdicts(
        store.engine, VerdictFilter(since=T, until=T + timedelta(microseconds=1))
    )
    assert [r.serial for r in only_first] == ["S-1"]
    window = VerdictFilter(since=T, until=T + timedelta(seconds=1))
    assert [(s.batch_id, s.defective) for s in batch_defects(store.engine, window).subgroups] == [
        ("B-1", 2)
    ]


def test_the_migration_rewrites_the_old_sqlite_text(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_store_engine(url)
    migrate(engine, "0009_received_pages")
    old = {
        "EL-00001": "2026-11-02 14:00:00+00:00",
        "EL-00002": "2026-11-02 14:00:00.250000+00:00",
        "EL-00003": "2026-11-02 15:00:00.000000",  # already canonical (written by SQLAlchemy)
    }
    with engine.begin() as connection:
        for key, at in old.items():
            connection.execute(
                text(
                    "INSERT INTO qdm_inspection (inspection_id, station, inspected_at, verdict,"
                    " defect_class, score, serial, batch_id, version, withdrawn_at)"
                    " VALUES (:k, 'EL-1', :at, 'fail', 'microcrack', 0.9, :k, 'B-1', 1, :w)"
                ),
                {
                    "k": key,
                    "at": at,
                    "w": "2026-11-03 08:00:00+00:00" if key == "EL-00003" else None,
                },
            )
    engine.dispose()
    store = open_store(url)  # migrates to head
    try:
        with store.engine.connect() as connection:
            stored = dict(
                connection.execute(
                    text("SELECT inspection_id, inspected_at FROM qdm_inspection")
                ).all()
            )
            withdrawn = connection.execute(
                text("SELECT withdrawn_at FROM qdm_inspection WHERE inspection_id = 'EL-00003'")
            ).scalar_one()
        assert stored == {
            "EL-00001": "2026-11-02 14:00:00.000000",
            "EL-00002": "2026-11-02 14:00:00.250000",
            "EL-00003": "2026-11-02 15:00:00.000000",
        }
        assert withdrawn == "2026-11-03 08:00:00.000000"
        found = read_verdicts(store.engine, VerdictFilter(since=T, until=T + timedelta(seconds=1)))
        assert {r.serial for r in found} == {"EL-00001", "EL-00002"}
        assert {r.inspected_at for r in found} == {T, T + timedelta(microseconds=250_000)}
    finally:
        store.close()
