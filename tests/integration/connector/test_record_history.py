"""Every version of a QDM record stays readable after corrections and withdrawals.

A correction rewrites the record's row and a withdrawal makes it a tombstone; the
version each replaces is copied into ``qdm_record_history`` in the same transaction
(`connector.versions`), and `QualityStore.history` gives all versions, oldest first.
Run against SQLite and, where configured, PostgreSQL (the suite's ``store`` fixture).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text

from qdspace.connector import versions
from qdspace.connector.errors import UnknownRecordError
from qdspace.connector.storage import QualityStore, create_store_engine, migrate, open_store

KEY = {"inspection_id": "EL-00001"}
AT = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)


def _inspection(**changes: Any) -> dict[str, Any]:
    row = {
        "inspection_id": "EL-00001",
        "station": "EL-1",
        "inspected_at": "2026-11-02T08:00:00+01:00",
        "verdict": "pass",
        "score": 0.1,
    }
    row.update(changes)
    return row


def _history_rows(store: QualityStore) -> int:
    with store.engine.connect() as connection:
        return int(connection.execute(text("SELECT COUNT(*) FROM qdm_record_history")).scalar())


def test_corrections_and_withdrawals_keep_every_version(store: QualityStore) -> None:
    store.ingest_rows("inspection", [(1, _inspection())])
    odd = 0.1 + 0.2  # 0.30000000000000004: kept exactly, not as 15 digits
    assert store.ingest_rows("inspection", [(1, _inspection(score=odd))]).corrected == 1
    corrected = _inspection(verdict="fail", defect_class="crack", score=0.9)
    assert store.ingest_rows("inspection", [(1, corrected)]).corrected == 1
    store.withdraw("inspection", KEY, AT)
    assert store.ingest_rows("inspection", [(1, _inspection(score=0.5))]).corrected == 1

    found = store.history("inspection", KEY)
    assert [v.version for v in found] == [1, 2, 3, 4, 5]
    assert [v.replaced_by for v in found] == [
        "correction",
        "correction",
        "withdrawal",
        "correction",
        None,
    ]
    assert [v.content["score"] for v in found] == [0.1, odd, 0.9, 0.9, 0.5]
    assert [v.content["verdict"] for v in found] == ["pass", "pass", "fail", "fail", "pass"]
    assert found[2].content["defect_class"] == "crack"
    assert [v.withdrawn_at for v in found] == [None, None, None, AT, None]
    inspected = datetime(2026, 11, 2, 7, 0, tzinfo=UTC)
    assert all(v.content["inspected_at"] == inspected for v in found)
    assert all(v.replaced_at is not None for v in found[:-1]) and found[-1].replaced_at is None
    assert all(v.key == KEY for v in found)
    # the current version reads as the record's row does; the rows copied as the columns do
    assert found[-1].content == {**found[0].content, "score": 0.5}


def test_duplicates_and_refused_rows_add_no_history(store: QualityStore) -> None:
    store.ingest_rows("inspection", [(1, _inspection())])
    assert store.ingest_rows("inspection", [(1, _inspection())]).duplicates == 1
    store.ingest_rows("inspection", [(1, _inspection(verdict="fail"))], corrections=False)
    with pytest.raises(RuntimeError), store.engine.begin() as connection:
        versions.withdraw(connection, "inspection", KEY, AT)
        raise RuntimeError("the caller's transaction fails after the withdrawal")
    assert _history_rows(store) == 0
    assert [v.version for v in store.history("inspection", KEY)] == [1]


def test_one_delivery_that_corrects_a_record_twice_keeps_both(store: QualityStore) -> None:
    """A batch naming a stored record twice corrects it twice, in delivery order."""
    store.ingest_rows("inspection", [(1, _inspection())])
    report = store.ingest_rows(
        "inspection",
        [(1, _inspection(score=0.2)), (2, _inspection(score=0.3)), (3, _inspection(score=0.3))],
    )
    assert report.corrected == 2
    assert [v.content["score"] for v in store.history("inspection", KEY)] == [0.1, 0.2, 0.3]


def test_history_by_natural_key_with_a_time(store: QualityStore) -> None:
    """A key with a time is found however the caller writes the time."""
    reading = {"location": "HALL-A", "measured_at": "2026-11-02T08:00:00Z", "temperature": 21}
    store.ingest_rows("environment", [(1, reading)])
    store.ingest_rows("environment", [(1, {**reading, "temperature": 22})])
    for when in ("2026-11-02T09:00:00+01:00", datetime(2026, 11, 2, 8, 0, tzinfo=UTC)):
        found = store.history("environment", {"location": "HALL-A", "measured_at": when})
        assert [v.content["temperature_c"] for v in found] == [21.0, 22.0]


def test_two_writers_correcting_one_record_at_once_keep_every_content(
    store: QualityStore,
) -> None:
    store.ingest_rows("inspection", [(1, _inspection())])
    rounds = 6
    scores = {
        "a": [round(0.2 + i / 100, 2) for i in range(rounds)],
        "b": [round(0.6 + i / 100, 2) for i in range(rounds)],
    }
    start = threading.Barrier(2)
    failed: list[BaseException] = []

    def write(name: str) -> None:
        try:
            start.wait()
            for score in scores[name]:
                store.ingest_rows("inspection", [(1, _inspection(score=score))], source=name)
        except BaseException as exc:  # reported below, in the test's thread
            failed.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in scores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failed == []
    found = store.history("inspection", KEY)
    assert [v.version for v in found] == list(range(1, 2 * rounds + 2))
    held = [v.content["score"] for v in found]
    assert sorted(held) == sorted([0.1, *scores["a"], *scores["b"]])
    for name in scores:  # each writer's corrections in the order it made them
        assert [s for s in held if s in scores[name]] == scores[name]


def test_an_unknown_record_has_no_history(store: QualityStore) -> None:
    with pytest.raises(UnknownRecordError, match="no inspection record inspection_id=EL-9"):
        store.history("inspection", {"inspection_id": "EL-9"})
    with pytest.raises(UnknownRecordError, match="named by inspection_id"):
        store.history("inspection", {"serial": "X"})


def test_a_store_from_before_the_history_is_migrated_with_its_rows(store_url: str) -> None:
    """A store at 0030 gains ``qdm_record_history`` at its next start, its records kept;
    versions replaced before have no content to show, those replaced after do."""
    engine = create_store_engine(store_url)
    migrate(engine, "0030_dsp_peer_pid")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO qdm_inspection (inspection_id, station, inspected_at, verdict, "
                "score, version) VALUES ('EL-00001', 'EL-1', '2026-11-02 07:00:00.000000', "
                "'pass', 0.1, 3)"
            )
        )
    engine.dispose()
    store = open_store(store_url)
    try:
        store.ingest_rows("inspection", [(1, _inspection(score=0.4))])
        found = store.history("inspection", KEY)
        assert [(v.version, v.content["score"]) for v in found] == [(3, 0.1), (4, 0.4)]
    finally:
        store.close()
