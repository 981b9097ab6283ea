"""One storage suite, run against SQLite (always) and PostgreSQL (when configured)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select, text
from sqlmodel import Session

from qdspace.connector import versions
from qdspace.connector.errors import IngestFileError, StorageError, UnknownKind, UnknownRecordError
from qdspace.connector.genealogy import NotYourBatch, UnknownBatch, upstream
from qdspace.connector.ingest import ingest_file
from qdspace.connector.qdm import Inspection, ProcessMeasurement, metadata
from qdspace.connector.sample import sold_batch, write_sample_files
from qdspace.connector.storage import (
    QualityStore,
    create_store_engine,
    head_revision,
    migrate,
    open_store,
)


def _inspection(i: int, **changes: Any) -> dict[str, Any]:
    row = {
        "inspection_id": f"EL-{i:05d}",
        "station": "EL-1",
        "inspected_at": "2026-11-02T08:00:00+01:00",
        "verdict": "pass",
        "score": 0.1,
    }
    row.update(changes)
    return row


def test_schema_is_migrated_and_matches_the_models(store: QualityStore) -> None:
    assert store.schema_version() == head_revision() == "0031_record_history"
    with store.engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "include_name": lambda name, type_, _p: (
                    type_ != "table" or str(name).startswith("qdm_")
                )
            },
        )
        assert compare_metadata(context, metadata) == []


def test_reopening_keeps_data(store_url: str) -> None:
    first = open_store(store_url)
    first.ingest_rows("inspection", [(1, _inspection(1))])
    first.close()
    again = open_store(store_url)
    assert again.counts()["inspection"] == 1
    again.close()


def test_sample_files_ingest_and_reingest_stores_nothing_twice(
    store: QualityStore, tmp_path: Path
) -> None:
    files = write_sample_files(tmp_path / "cellex", "cellex", "supplier", bad_rows=True)
    first = {kind: ingest_file(store, path, kind, batch_size=500) for kind, path in files.items()}
    counts = store.counts()
    second = {kind: ingest_file(store, path, kind, batch_size=500) for kind, path in files.items()}
    assert store.counts() == counts
    for kind in files:
        assert counts[kind] == first[kind].accepted > 0
        assert second[kind].accepted == 0
        assert second[kind].duplicates == first[kind].accepted
        assert second[kind].rejected == first[kind].rejected
    bad = [str(e) for e in first["inspection"].rejected]
    assert bad[0] == "el_inspections.jsonl:11: score: 1.7 is above the maximum 1"
    assert any(e.startswith("el_inspections.jsonl:41: -: invalid JSON") for e in bad)
    assert [e.field for e in first["measurement"].rejected] == ["unit"]


def test_a_changed_row_is_a_new_version_and_a_withdrawal_a_tombstone(store: QualityStore) -> None:
    """Corrections and withdrawals move the record to a fresh id above every other (so a
    reader walking the table by id meets the change), with the version counted up."""
    store.ingest_rows("inspection", [(i, _inspection(i)) for i in range(1, 5)])
    report = store.ingest_rows(
        "inspection",
        [(1, _inspection(2, verdict="fail", defect_class="crack")), (2, _inspection(3))],
    )
    assert (report.accepted, report.corrected, report.duplicates) == (0, 1, 1)
    table = Inspection.__table__  # type: ignore[attr-defined]
    columns = (table.c.inspection_id, table.c.version, table.c.verdict, table.c.withdrawn_at)

    def in_id_order() -> list[tuple[Any, ...]]:
        with store.engine.connect() as connection:
            return [tuple(r) for r in connection.execute(select(*columns).order_by(table.c.id))]

    assert in_id_order()[-1] == ("EL-00002", 2, "fail", None)
    at = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)
    gone = store.withdraw("inspection", {"inspection_id": "EL-00001"}, at)
    assert gone.version == 2
    assert in_id_order()[-1] == ("EL-00001", 2, "pass", at)
    with pytest.raises(UnknownRecordError, match="withdrawn"):
        store.withdraw("inspection", {"inspection_id": "EL-00001"}, at)
    with pytest.raises(UnknownRecordError, match="named by"):
        store.withdraw("inspection", {"serial": "x"}, at)
    back = store.ingest_rows("inspection", [(1, _inspection(1))])  # the same content again
    assert back.corrected == 1 and in_id_order()[-1] == ("EL-00001", 3, "pass", None)
    assert [r[0] for r in in_id_order()] == ["EL-00003", "EL-00004", "EL-00002", "EL-00001"]
    reading = {"location": "HALL-A", "measured_at": "2026-11-02T08:00:00Z", "temperature": 21}
    store.ingest_rows("environment", [(1, reading)])
    assert store.ingest_rows("environment", [(1, {**reading, "temperature": 22})]).corrected == 1
    when = {"location": "HALL-A", "measured_at": "2026-11-02T09:00:00+01:00"}
    assert store.withdraw("environment", when, at).version == 3
    assert store.counts()["inspection"] == 4  # a tombstone is still a row


def test_a_source_that_only_adds_changes_no_stored_record(store: QualityStore) -> None:
    """``corrections=False`` (a line's connectors): a row that would change a stored
    record, or bring a withdrawn one back, is refused with the column that differs, and
    the record, its version and the rewrite count stay as they were; new rows and rows
    equal to what is stored go on as always, in the same call."""
    store.ingest_rows("inspection", [(i, _inspection(i)) for i in range(1, 4)])
    at = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)
    store.withdraw("inspection", {"inspection_id": "EL-00003"}, at)
    with store.engine.connect() as connection:
        before = versions.rewrites(connection, "inspection")
    report = store.ingest_rows(
        "inspection",
        [
            (1, _inspection(1)),  # as stored
            (2, _inspection(2, verdict="fail", defect_class="crack")),  # would correct
            (3, _inspection(3)),  # would bring the withdrawn one back
            (4, _inspection(4)),  # new
            (5, _inspection(5, score=7)),  # bad
        ],
        source="mqtt:el",
        corrections=False,
    )
    assert (report.accepted, report.duplicates, report.corrected) == (1, 1, 0)
    problems = {(e.line, e.field): e.reason for e in report.rejected}
    assert set(problems) == {(2, "verdict"), (3, "withdrawn_at"), (5, "score")}
    assert problems[(2, "verdict")].startswith(
        "differs from the stored inspection with this inspection_id; this source only adds"
    )
    assert "is withdrawn" in problems[(3, "withdrawn_at")]
    sql = "SELECT inspection_id, version, verdict, withdrawn_at IS NULL FROM qdm_inspection"
    with store.engine.connect() as connection:
        rows = {r[0]: tuple(r[1:]) for r in connection.execute(text(sql + " ORDER BY id"))}
        assert versions.rewrites(connection, "inspection") == before
    assert rows == {
        "EL-00001": (1, "pass", True),
        "EL-00002": (1, "pass", True),
        "EL-00003": (2, "pass", False),
        "EL-00004": (1, "pass", True),
    }


def test_rewrites_are_counted_by_kind_in_the_transaction_that_makes_them(
    store: QualityStore,
) -> None:
    """Each record corrected or withdrawn adds one to its kind's count, in the writing
    transaction (one rolled back counts nothing); inserts, rows re-sent unchanged and a
    refused withdrawal count nothing. Readers that follow a table by id rely on it."""

    def counts() -> tuple[int, int]:
        with store.engine.connect() as connection:
            return (
                versions.rewrites(connection, "inspection"),
                versions.rewrites(connection, "environment"),
            )

    store.ingest_rows("inspection", [(i, _inspection(i)) for i in range(1, 7)])
    assert counts() == (0, 0)
    changed = [(1, _inspection(2, verdict="fail")), (2, _inspection(3)), (3, _inspection(7))]
    store.ingest_rows("inspection", [*changed, (4, _inspection(4, score=0.3))])
    assert counts() == (2, 0)  # EL-00002 and EL-00004 changed; EL-00003 as stored
    at = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)
    store.withdraw("inspection", {"inspection_id": "EL-00001"}, at)
    with pytest.raises(UnknownRecordError):
        store.withdraw("inspection", {"inspection_id": "EL-00001"}, at)
    assert counts() == (3, 0)
    with pytest.raises(RuntimeError), store.engine.begin() as connection:
        versions.withdraw(connection, "inspection", {"inspection_id": "EL-00005"}, at)
        raise RuntimeError("the caller's transaction fails after the withdrawal")
    assert counts() == (3, 0)
    store.ingest_rows("inspection", [(1, _inspection(1)), (2, _inspection(6))])
    assert counts() == (4, 0)  # the withdrawn record is back; EL-00006 as stored
    reading = {"location": "HALL-A", "measured_at": "2026-11-02T08:00:00Z", "temperature": 21}
    store.ingest_rows("environment", [(1, reading)])
    store.ingest_rows("environment", [(1, {**reading, "temperature": 22})])
    assert counts() == (4, 1)


def test_a_store_from_before_the_rewrite_count_is_migrated_with_its_rows(
    store_url: str,
) -> None:
    """A node's store at 0016 gains ``qdm_rewrites`` at its next start, its records
    kept; counting starts from there (a reader compares counts, not totals)."""
    engine = create_store_engine(store_url)
    migrate(engine, "0016_received_revision")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO qdm_inspection (inspection_id, station, inspected_at, verdict, "
                "version) VALUES ('EL-00001', 'EL-1', '2026-11-02 07:00:00.000000', 'pass', 1)"
            )
        )
    engine.dispose()
    store = open_store(store_url)
    try:
        assert store.schema_version() == head_revision()
        assert store.counts()["inspection"] == 1
        store.ingest_rows("inspection", [(1, _inspection(1, verdict="fail"))])
        with store.engine.connect() as connection:
            assert versions.rewrites(connection, "inspection") == 1
    finally:
        store.close()


def test_duplicates_inside_one_delivery_are_stored_once(store: QualityStore) -> None:
    report = store.ingest_rows(
        "inspection", [(i + 1, _inspection(i % 3)) for i in range(9)], batch_size=4
    )
    assert (report.accepted, report.duplicates) == (3, 6)
    assert store.counts()["inspection"] == 3


def test_times_are_stored_in_utc(store: QualityStore) -> None:
    store.ingest_rows("inspection", [(1, _inspection(1, inspected_at="2026-11-02T08:00:00+02:00"))])
    with Session(store.engine) as session:
        stored = session.exec(select(Inspection)).scalars().one()  # type: ignore[call-overload]
    assert stored.inspected_at == datetime(2026, 11, 2, 6, 0, tzinfo=UTC)
    assert stored.defect_class == "none"


def test_void_rate_in_three_representations_is_stored_canonically(store: QualityStore) -> None:
    base = {"equipment": "STRINGER-1", "parameter": "solder_void_rate"}
    rows = [
        {**base, "value": "4", "unit": "%", "measured_at": "2026-11-02T08:00:00Z"},
        {**base, "value": "0.04", "unit": "fraction", "measured_at": "2026-11-02T08:01:00Z"},
        {**base, "value": "A", "unit": "grade", "measured_at": "2026-11-02T08:02:00Z"},
        {
            **base,
            "parameter": "void_rate",
            "value": "0.04",
            "unit": "fraction",
            "measured_at": "2026-11-02T08:01:00Z",
        },
    ]
    report = store.ingest_rows("measurement", list(enumerate(rows, start=1)))
    assert (report.accepted, report.duplicates, report.rejected) == (3, 1, [])
    with Session(store.engine) as session:
        stored = (
            session.exec(select(ProcessMeasurement).order_by(ProcessMeasurement.measured_at))
            .scalars()
            .all()
        )  # type: ignore[call-overload, arg-type]
    assert {(m.parameter, m.element_id, m.unit) for m in stored} == {
        ("solder_void_rate", "QDE-0001", "1")
    }
    assert [round(m.value, 6) for m in stored] == [0.04, 0.04, 0.05]
    assert [(m.raw_value, m.raw_unit, m.grade) for m in stored] == [
        ("4", "%", None),
        ("0.04", "fraction", None),
        ("A", "grade", "A"),
    ]


def test_good_rows_are_stored_and_bad_rows_reported(store: QualityStore) -> None:
    rows = [
        (1, _inspection(1)),
        (2, _inspection(2, score=7)),
        (3, ("-", "invalid JSON: x")),
        (4, _inspection(4)),
    ]
    report = store.ingest_rows("inspection", rows, source="upload.jsonl")
    assert report.accepted == 2
    assert [str(e) for e in report.rejected] == [
        "upload.jsonl:2: score: 7 is above the maximum 1",
        "upload.jsonl:3: -: invalid JSON: x",
    ]


FAIL_ON_6 = {
    "sqlite": [
        "CREATE TRIGGER fail_6 BEFORE INSERT ON qdm_inspection WHEN NEW.inspection_id = 'EL-00006' "
        "BEGIN SELECT RAISE(ABORT, 'disk full (injected)'); END",
    ],
    "postgresql": [
        "CREATE FUNCTION fail_6() RETURNS trigger AS $$ BEGIN "
        "IF NEW.inspection_id = 'EL-00006' THEN RAISE EXCEPTION 'disk full (injected)'; END IF; "
        "RETURN NEW; END $$ LANGUAGE plpgsql",
        "CREATE TRIGGER fail_6 BEFORE INSERT ON qdm_inspection "
        "FOR EACH ROW EXECUTE FUNCTION fail_6()",
    ],
}


def test_a_failing_batch_is_rolled_back_whole_and_earlier_batches_stay(store: QualityStore) -> None:
    with store.engine.begin() as connection:
        for ddl in FAIL_ON_6[store.backend]:
            connection.execute(text(ddl))
    with pytest.raises(StorageError) as caught:
        store.ingest_rows("inspection", [(i, _inspection(i)) for i in range(1, 11)], batch_size=4)
    message = str(caught.value)
    assert (
        "api: lines 5-8 of inspection not stored (earlier batches are committed: 4 rows)" in message
    )
    assert "disk full (injected)" in message
    with store.engine.connect() as connection:
        ids = sorted(
            r[0] for r in connection.execute(text("SELECT inspection_id FROM qdm_inspection"))
        )
    assert ids == [f"EL-{i:05d}" for i in range(1, 5)]


def test_file_level_errors_name_the_file(store: QualityStore, tmp_path: Path) -> None:
    with pytest.raises(IngestFileError, match="no such file"):
        ingest_file(store, tmp_path / "missing.csv", "inspection")
    bad_type = tmp_path / "rows.xlsx"
    bad_type.write_bytes(b"PK")
    with pytest.raises(IngestFileError, match=r"unsupported file type \.xlsx"):
        ingest_file(store, bad_type, "inspection")
    wrong_header = tmp_path / "rows.csv"
    wrong_header.write_text("inspection_id,station,colour\nA,B,red\n")
    with pytest.raises(
        IngestFileError, match=r"rows.csv:1: column 'colour' is not a field of inspection"
    ):
        ingest_file(store, wrong_header, "inspection")
    with pytest.raises(UnknownKind, match="unknown kind 'photo'"):
        ingest_file(store, wrong_header, "photo")
    assert store.counts()["inspection"] == 0


def test_csv_and_jsonl_give_the_same_rows(store: QualityStore, tmp_path: Path) -> None:
    rows = [_inspection(i, defect_class="", model_version="m1") for i in range(5)]
    as_csv = tmp_path / "a.csv"
    as_csv.write_text(
        ",".join(rows[0])
        + "\n"
        + "".join(",".join(str(v) for v in r.values()) + "\n" for r in rows)
    )
    as_jsonl = tmp_path / "a.jsonl"
    as_jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert ingest_file(store, as_csv, "inspection").accepted == 5
    again = ingest_file(store, as_jsonl, "inspection")
    assert (again.accepted, again.duplicates) == (0, 5)


def test_genealogy_hop_is_answered_only_to_the_customer(
    store: QualityStore, tmp_path: Path
) -> None:
    for kind, path in write_sample_files(tmp_path / "s", "cellex", "supplier").items():
        ingest_file(store, path, kind)
    batch, parents = upstream(store.engine, sold_batch("cellex", "sunarc"), customer="sunarc")
    assert (batch.producer, batch.kind) == ("cellex", "cell")
    assert [(p.batch_id, p.producer, p.kind) for p in parents] == [
        ("CX-WB-260001", "siliwafer", "wafer"),
        ("CX-WB-260002", "siliwafer", "wafer"),
    ]
    with pytest.raises(NotYourBatch):
        upstream(store.engine, batch.batch_id, customer="polycell")
    with pytest.raises(UnknownBatch):
        upstream(store.engine, "NOPE", customer="sunarc")


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'node.db'}")
    with store.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
        # durability as before: a commit is in the WAL (synchronous=NORMAL, 1), and the
        # WAL is checkpointed every 256 MiB rather than every 4 MiB (bench/PROFILE-ingest.md)
        assert connection.execute(text("PRAGMA synchronous")).scalar_one() == 1
        assert connection.execute(text("PRAGMA wal_autocheckpoint")).scalar_one() == 65536
        assert connection.execute(text("PRAGMA journal_size_limit")).scalar_one() == 64 << 20
    store.close()


def test_sqlite_rows_of_many_batches_are_all_in_the_database_file_after_close(
    tmp_path: Path,
) -> None:
    # with checkpoints far apart most batches sit in the WAL until the store closes;
    # closing moves them into the file, which then holds every committed row alone
    path = tmp_path / "node.db"
    store = open_store(f"sqlite:///{path}")
    rows = [
        (
            i + 2,
            {
                "inspection_id": f"EL-{i:06d}",
                "station": "EL-1",
                "inspected_at": f"2026-11-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00Z",
                "verdict": "pass",
            },
        )
        for i in range(3000)
    ]
    assert store.ingest_rows("inspection", rows, batch_size=250).accepted == 3000
    store.close()
    assert not (tmp_path / "node.db-wal").exists()
    copy = tmp_path / "copy.db"
    copy.write_bytes(path.read_bytes())  # the file alone, no WAL beside it
    reopened = open_store(f"sqlite:///{copy}")
    assert reopened.counts()["inspection"] == 3000
    reopened.close()


def test_missing_directory_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=f"directory {tmp_path / 'nope'} does not exist"):
        open_store(f"sqlite:///{tmp_path / 'nope' / 'node.db'}")
    assert not (tmp_path / "nope").exists()


def test_unreachable_postgresql_names_the_server_without_password() -> None:
    with pytest.raises(StorageError) as caught:
        open_store("postgresql://qdspace:s3cret@127.0.0.1:1/qdspace?connect_timeout=2")
    assert "127.0.0.1:1" in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_a_postgresql_server_that_never_answers_is_given_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that takes the TCP connection and says nothing (a tenant's own database
    behind a host, a hung server) held `open_store` for ever, and a managed host opening
    its tenants one by one with it: libpq's connect_timeout bounds it now."""
    import socket

    from qdspace.connector import storage

    monkeypatch.setattr(storage, "PG_CONNECT_S", 1)
    with socket.socket() as silent:  # listens, never reads or answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        with pytest.raises(StorageError) as caught:
            open_store(f"postgresql://qdspace:s3cret@127.0.0.1:{port}/qdspace")
    assert f"127.0.0.1:{port}" in str(caught.value) and "s3cret" not in str(caught.value)


def test_writers_take_turns_so_ids_become_visible_in_order(store: QualityStore) -> None:
    """A reader's id cursor is a watermark only if no lower id commits after a higher one."""
    import threading

    from qdspace.connector.versions import serialize_writes

    if store.backend != "postgresql":
        pytest.skip("SQLite has one writer at a time by itself")
    done = threading.Event()

    def other_writer() -> None:
        store.ingest_rows("inspection", [(1, _inspection(1))])
        done.set()

    with store.engine.begin() as connection:
        serialize_writes(connection)
        writer = threading.Thread(target=other_writer)
        writer.start()
        assert not done.wait(0.5)  # the other writer waits until this transaction ends
    writer.join(10)
    assert done.is_set() and store.counts()["inspection"] == 1
