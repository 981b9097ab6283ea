"""The bulk ingest path (executemany on SQLite, COPY on PostgreSQL) against real databases.

Each test runs on a SQLite file and on PostgreSQL (``QDSPACE_TEST_PG_URL``; see
conftest). On PostgreSQL a batch goes by COPY; a batch that meets stored natural keys
fails that COPY and takes the temporary-table path: these tests hold both paths to
what the row-wise statement did (counts of accepted, duplicate and corrected rows,
ids in line order), and hold that a batch the database refuses half-way leaves
nothing of itself behind while the batches before it stay committed.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import func, select, text

from qdspace.connector.errors import StorageError
from qdspace.connector.qdm import Inspection
from qdspace.connector.storage import QualityStore

TABLE = Inspection.__table__  # type: ignore[attr-defined]


def _row(i: int, **changes: Any) -> dict[str, Any]:
    row = {
        "inspection_id": f"EL-{i:06d}",
        "station": f"EL-{1 + i % 3}",
        "inspected_at": f"2026-11-02T08:{i % 60:02d}:00+01:00",
        "verdict": "NOK" if i % 7 == 0 else "OK",
        "defect_class": "crack" if i % 7 == 0 else "",
        "score": f"{(i % 100) / 100:.2f}",
        "latency_ms": "4.2",
    }
    row.update(changes)
    return row


def _stored(store: QualityStore) -> list[tuple[str, int, str, str | None]]:
    columns = (TABLE.c.inspection_id, TABLE.c.version, TABLE.c.station, TABLE.c.defect_class)
    with store.engine.connect() as connection:
        return [tuple(r) for r in connection.execute(select(*columns).order_by(TABLE.c.id))]  # type: ignore[misc]


def _count(store: QualityStore) -> int:
    with store.engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(TABLE)).scalar_one())


def test_new_rows_are_stored_in_line_order_with_their_values(store: QualityStore) -> None:
    rows = [(i + 2, _row(i)) for i in range(1200)]
    report = store.ingest_rows("inspection", rows, batch_size=500)
    assert (report.accepted, report.duplicates, report.corrected, report.rejected) == (
        1200,
        0,
        0,
        [],
    )
    stored = _stored(store)
    assert [r[0] for r in stored] == [f"EL-{i:06d}" for i in range(1200)]
    assert stored[0] == ("EL-000000", 1, "EL-1", "crack")
    assert stored[1] == ("EL-000001", 1, "EL-2", "none")  # a pass without defect: "none"
    with store.engine.connect() as connection:
        first = connection.execute(select(TABLE).where(TABLE.c.inspection_id == "EL-000001")).one()
    assert first.score == pytest.approx(0.01) and first.latency_ms == pytest.approx(4.2)
    assert first.inspected_at.replace(tzinfo=None).isoformat() == "2026-11-02T07:01:00"


def test_a_batch_that_meets_stored_keys_counts_duplicates_and_corrections(
    store: QualityStore,
) -> None:
    first = store.ingest_rows("inspection", [(i + 2, _row(i)) for i in range(100)])
    assert first.accepted == 100
    # one batch: 50 already stored unchanged, 10 stored with other content, 40 new,
    # the conflicts in the middle of the batch
    rows = [(2 + i, _row(i)) for i in range(150)]
    for i in range(60, 70):
        rows[i] = (2 + i, _row(i, station="EL-9"))
    report = store.ingest_rows("inspection", rows, batch_size=1000)
    assert (report.accepted, report.duplicates, report.corrected) == (50, 90, 10)
    stored = _stored(store)
    assert len(stored) == 150
    changed = {r[0]: r for r in stored if r[1] == 2}
    assert sorted(changed) == [f"EL-{i:06d}" for i in range(60, 70)]
    assert {r[2] for r in changed.values()} == {"EL-9"}
    # unchanged rows keep their ids; the new rows follow in line order; the corrections
    # moved to fresh ids after them (a reader walking by id meets them as new)
    ids = [f"EL-{i:06d}" for i in (*range(60), *range(70, 100), *range(100, 150), *range(60, 70))]
    assert [r[0] for r in stored] == ids
    again = store.ingest_rows("inspection", rows)
    assert (again.accepted, again.duplicates, again.corrected) == (0, 150, 0)
    assert _stored(store) == stored


def test_one_key_twice_in_a_batch_is_stored_once_then_corrected(store: QualityStore) -> None:
    rows = [(2, _row(1)), (3, _row(2)), (4, _row(1, station="EL-9"))]
    report = store.ingest_rows("inspection", rows)
    assert (report.accepted, report.duplicates, report.corrected) == (2, 0, 1)
    assert sorted(_stored(store)) == [
        ("EL-000001", 2, "EL-9", "none"),
        ("EL-000002", 1, "EL-3", "none"),
    ]


def _refuse_station(store: QualityStore, station: str) -> None:
    """A rule of the database itself, so a row passes validation and fails in the insert."""
    with store.engine.begin() as connection:
        if store.backend == "postgresql":
            connection.execute(
                text(
                    "ALTER TABLE qdm_inspection ADD CONSTRAINT no_boom "
                    f"CHECK (station <> '{station}')"
                )
            )
        else:
            connection.execute(
                text(
                    "CREATE TRIGGER no_boom BEFORE INSERT ON qdm_inspection "
                    f"WHEN NEW.station = '{station}' BEGIN SELECT RAISE(ABORT, 'no boom'); END"
                )
            )


@pytest.mark.parametrize("with_conflicts", [False, True])
def test_a_batch_the_database_refuses_half_way_leaves_nothing_of_itself(
    store: QualityStore, with_conflicts: bool
) -> None:
    if with_conflicts:  # on PostgreSQL: the temporary-table path, not the plain COPY
        store.ingest_rows("inspection", [(k + 2, _row(1000 + k)) for k in range(10)])
    _refuse_station(store, "EL-BOOM")
    before = _count(store)
    rows = [(k + 2, _row(1000 + k)) for k in range(500)]
    rows[350] = (352, _row(1350, station="EL-BOOM"))  # in the second batch of 200
    with pytest.raises(StorageError) as caught:
        store.ingest_rows("inspection", rows, batch_size=200)
    message = str(caught.value)
    assert "lines 202-401 of inspection not stored" in message
    assert f"earlier batches are committed: {190 if with_conflicts else 200} rows" in message
    # the first batch is committed; nothing of the second (nor anything after it)
    stored = {r[0] for r in _stored(store)}
    assert len(stored) == before + (190 if with_conflicts else 200)
    assert f"EL-{1200:06d}" not in stored and f"EL-{1349:06d}" not in stored
    assert f"EL-{1199:06d}" in stored
    # the store stays usable: the same rows without the bad one go in
    rows[350] = (352, _row(1350))
    report = store.ingest_rows("inspection", rows, batch_size=200)
    assert report.accepted == 300 and report.duplicates == 200
    assert _count(store) == 500


def test_bad_rows_are_reported_by_line_and_field_and_never_stored(store: QualityStore) -> None:
    rows: list[tuple[int, Any]] = [(i + 2, _row(i)) for i in range(20)]
    rows[3] = (5, _row(3, score="nan"))
    rows[7] = (9, _row(7, verdict="maybe", latency_ms="-1"))
    rows[11] = (13, ("-", "expected 7 values (one per column), got 3"))
    report = store.ingest_rows("inspection", rows, source="el.csv")
    assert report.accepted == 17
    assert [str(e) for e in report.rejected] == [
        "el.csv:5: score: expected a finite number, got 'nan'",
        "el.csv:9: verdict: 'maybe' is not a value of verdict; one of: pass, fail",
        "el.csv:9: latency_ms: -1 is below the minimum 0",
        "el.csv:13: -: expected 7 values (one per column), got 3",
    ]
    stored = {r[0] for r in _stored(store)}
    assert stored.isdisjoint({"EL-000003", "EL-000007", "EL-000011"})


def test_text_that_copy_must_escape_reads_back_unchanged(store: QualityStore) -> None:
    # COPY's text format gives backslash, tab, newline and carriage return a meaning
    notes = [
        "back\\slash",
        "tab\there",
        "two\nlines",
        "carriage\rreturn",
        "\\N",
        "\\.",
        "ends with a backslash \\",
        "unicode: Ω µm °C 温度",
        "quote ' and \" and , comma",
    ]
    rows = [
        (
            i + 2,
            {
                "operator_id": f"op-{i:03d}",
                "logged_at": "2026-11-02T08:00:00.123456+01:00",
                "action": "note",
                "note": note,
                "station": "" if i % 2 else "EL-1",
            },
        )
        for i, note in enumerate(notes)
    ]
    report = store.ingest_rows("operator_log", rows)
    assert report.accepted == len(notes) and not report.rejected
    with store.engine.connect() as connection:
        stored = connection.execute(
            text("SELECT operator_id, note, station, logged_at FROM qdm_operator_log ORDER BY id")
        ).all()
    assert [r[1] for r in stored] == notes
    assert [r[2] for r in stored] == [None if i % 2 else "EL-1" for i in range(len(notes))]
    logged = stored[0][3]
    logged = logged if isinstance(logged, str) else logged.isoformat(" ")
    assert logged.startswith("2026-11-02 07:00:00.123456")


# -- the pipeline: the next batch is read and validated while this one is written -------


def test_progress_is_reported_per_batch_and_once_at_the_end(store: QualityStore) -> None:
    for n, expected in (
        (1200, [500, 1000, 1200]),
        (1000, [500, 1000, 1000]),
        (300, [300]),
        (0, [0]),
    ):
        seen: list[int] = []
        rows = ((i + 2, _row(10_000 * n + i)) for i in range(n))  # a stream, not a list
        report = store.ingest_rows("inspection", rows, batch_size=500, on_progress=seen.append)
        assert report.accepted == n and not report.rejected
        assert seen == expected, n
    assert _count(store) == 1200 + 1000 + 300


def test_a_batch_is_committed_before_the_stream_delivers_the_next_one(
    store: QualityStore,
) -> None:
    # a slow source (a line connector, a file still being written): batch 1 must be
    # stored while the worker still waits for the rows of batch 2, not held back
    other = store.engine  # a connection of its own sees only what is committed
    seen_before_last: list[int] = []

    def stream() -> Any:
        for i in range(400):
            if i == 399:  # the last row of batch 2 comes only once batch 1 is visible
                for _ in range(200):
                    with other.connect() as connection:
                        stored = int(
                            connection.execute(select(func.count()).select_from(TABLE)).scalar_one()
                        )
                    if stored == 200:
                        break
                    time.sleep(0.05)
                seen_before_last.append(stored)
            yield i + 2, _row(20_000 + i)

    report = store.ingest_rows("inspection", stream(), batch_size=200)
    assert report.accepted == 400
    assert seen_before_last == [200]
    assert [r[0] for r in _stored(store)] == [f"EL-{20_000 + i:06d}" for i in range(400)]


def test_a_source_that_fails_in_a_later_batch_keeps_the_batches_before_it(
    store: QualityStore,
) -> None:
    def stream() -> Any:
        for i in range(450):
            if i == 420:
                raise OSError("the file went away")
            yield i + 2, _row(30_000 + i)

    with pytest.raises(OSError, match="the file went away"):
        store.ingest_rows("inspection", stream(), batch_size=200)
    # batches 1 and 2 were complete and are stored; nothing of the third
    assert [r[0] for r in _stored(store)] == [f"EL-{30_000 + i:06d}" for i in range(400)]


def test_a_refused_batch_stops_the_ingest_while_the_next_is_being_read(
    store: QualityStore,
) -> None:
    _refuse_station(store, "EL-BOOM")
    read: list[int] = []

    def stream() -> Any:
        for i in range(1000):
            read.append(i)
            yield i + 2, _row(40_000 + i, station="EL-BOOM" if i == 250 else f"EL-{1 + i % 3}")

    with pytest.raises(StorageError, match="lines 202-401 of inspection not stored"):
        store.ingest_rows("inspection", stream(), batch_size=200)
    assert [r[0] for r in _stored(store)] == [f"EL-{40_000 + i:06d}" for i in range(200)]
    # the worker read at most the batch after the refused one, then stopped
    assert len(read) <= 600


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL validates a batch a chunk at a time inside its COPY: make them 7 rows."""
    monkeypatch.setattr("qdspace.connector.storage.STREAM_CHUNK_ROWS", 7)


@pytest.mark.usefixtures("small_chunks")
def test_a_batch_validated_in_chunks_counts_and_orders_as_one(store: QualityStore) -> None:
    assert store.ingest_rows("inspection", [(i + 2, _row(i)) for i in range(50)]).accepted == 50
    # one batch of 120 rows in 18 chunks: 40 stored unchanged, 10 corrections, 68 new,
    # two bad rows in later chunks (the COPY meets stored keys: the temporary table)
    rows: list[tuple[int, Any]] = [(i + 2, _row(i)) for i in range(120)]
    for i in range(20, 30):
        rows[i] = (i + 2, _row(i, station="EL-9"))
    rows[100] = (102, _row(100, score="nan"))
    rows[105] = (107, _row(105, verdict="maybe"))
    report = store.ingest_rows("inspection", rows, source="el.csv", batch_size=1000)
    assert (report.accepted, report.duplicates, report.corrected) == (68, 40, 10)
    assert [str(e) for e in report.rejected] == [
        "el.csv:102: score: expected a finite number, got 'nan'",
        "el.csv:107: verdict: 'maybe' is not a value of verdict; one of: pass, fail",
    ]
    new = [i for i in range(50, 120) if i not in (100, 105)]
    ids = [f"EL-{i:06d}" for i in (*range(20), *range(30, 50), *new, *range(20, 30))]
    assert [r[0] for r in _stored(store)] == ids
    # and with no stored key in it, by the plain COPY: line order, bad rows left out
    fresh = [(i + 2, _row(1000 + i)) for i in range(30)]
    fresh[16] = (18, _row(1016, latency_ms="-1"))
    report = store.ingest_rows("inspection", fresh, batch_size=1000)
    assert report.accepted == 29 and [e.line for e in report.rejected] == [18]
    assert [r[0] for r in _stored(store)][-29:] == [
        f"EL-{1000 + i:06d}" for i in range(30) if i != 16
    ]


@pytest.mark.usefixtures("small_chunks")
def test_a_batch_refused_in_a_later_chunk_leaves_nothing_of_itself(store: QualityStore) -> None:
    _refuse_station(store, "EL-BOOM")
    rows = [(k + 2, _row(1000 + k)) for k in range(60)]
    rows[45] = (47, _row(1045, station="EL-BOOM"))  # the third chunk of the second batch
    with pytest.raises(StorageError) as caught:
        store.ingest_rows("inspection", rows, batch_size=30)
    assert "lines 32-61 of inspection not stored" in str(caught.value)
    assert {r[0] for r in _stored(store)} == {f"EL-{1000 + k:06d}" for k in range(30)}


def test_numbers_and_times_read_back_as_the_values_validated(store: QualityStore) -> None:
    """COPY is sent plain decimals and plain UTC times as delivered (not the float's
    ``repr`` nor the datetime's ``isoformat``): the database must hold the same double and
    the same instant as the validator made of them."""
    numbers = [
        "0.1000000000000000055511151231257827",
        "2.2250738585072014",
        "123456789012345678901234567890",
        "-0",
        "007.50",
        "5.",
        "0.30000000000000004",
        "4.35",
    ]
    times = ["2026-11-02T08:00:00Z", "2024-02-29T23:59:59Z", "1999-12-31T00:00:00Z"]
    rows = [
        (i + 2, _row(i, latency_ms=v, score="1", inspected_at=times[i % 3]))
        for i, v in enumerate(numbers)
    ]
    assert store.ingest_rows("inspection", rows).accepted == len(numbers)
    query = select(TABLE.c.latency_ms, TABLE.c.score, TABLE.c.inspected_at).order_by(TABLE.c.id)
    with store.engine.connect() as connection:
        stored = connection.execute(query).all()
    assert [r[0] for r in stored] == [float(v) for v in numbers]
    assert all(r[1] == 1.0 for r in stored)
    got = [r[2].replace(tzinfo=None).isoformat() for r in stored]
    assert got == [times[i % 3].removesuffix("Z") for i in range(len(numbers))]
