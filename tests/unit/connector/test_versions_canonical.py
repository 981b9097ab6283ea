"""A reading re-sent in another spelling is the same record, not a correction.

A measurement keeps how its value was delivered (``raw_value``, ``raw_unit``) next to
the canonical ``value`` in ``unit``. Whether a row re-delivered under a stored natural
key corrects the record is decided on the canonical content only
(`connector.versions.compared_columns`): ``150`` Pa, ``"150.0"`` Pa, ``"1,5"`` hPa and
``"1.50"`` hPa are one reading, stored once with its first spelling. Run against a
real SQLite file and a real PostgreSQL schema.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from qdspace.connector import versions
from qdspace.connector.storage import QualityStore, open_store

KEY = {
    "equipment": "PECVD-1",
    "parameter": "pecvd_chamber_vacuum",
    "measured_at": "2026-12-01T10:00:00Z",
}
SPELLINGS = [(150, "Pa"), ("150.0", "Pa"), ("1,5", "hPa"), ("1.50", "hPa")]


@pytest.fixture
def store(
    db_backend: str,
    tmp_path: Path,
    fresh_pg_schema: Callable[[str], AbstractContextManager[tuple[str, str]]],
) -> Iterator[QualityStore]:
    with ExitStack() as stack:
        if db_backend == "sqlite":
            url = f"sqlite:///{tmp_path / 'q.db'}"
        else:
            url, _ = stack.enter_context(fresh_pg_schema("canonical"))
        opened = open_store(url)
        stack.callback(opened.close)
        yield opened


def _reading(value: Any, unit: str, **more: Any) -> dict[str, Any]:
    return {**KEY, "value": value, "unit": unit, **more}


def _stored(store: QualityStore) -> list[tuple[Any, ...]]:
    sql = "SELECT value, unit, raw_value, raw_unit, version FROM qdm_measurement"
    with store.engine.connect() as connection:
        return [tuple(r) for r in connection.execute(text(sql))]


def test_raw_spelling_is_content_but_not_compared() -> None:
    assert {"raw_value", "raw_unit"} <= set(versions.content_columns("measurement"))
    compared = versions.compared_columns("measurement")
    assert "value" in compared and "unit" in compared
    assert not {"raw_value", "raw_unit"} & set(compared)
    assert versions.compared_columns("inspection") == versions.content_columns("inspection")


def test_a_respelled_reading_is_a_duplicate_that_keeps_the_first_spelling(
    store: QualityStore,
) -> None:
    reports = [
        store.ingest_rows("measurement", [(1, _reading(v, u))], source=f"delivery-{i}")
        for i, (v, u) in enumerate(SPELLINGS)
    ]
    assert [(r.accepted, r.duplicates, r.corrected) for r in reports] == [
        (1, 0, 0),
        (0, 1, 0),
        (0, 1, 0),
        (0, 1, 0),
    ]
    assert _stored(store) == [(150.0, "Pa", "150", "Pa", 1)]
    with store.engine.connect() as connection:
        assert versions.rewrites(connection, "measurement") == 0
    assert [v.version for v in store.history("measurement", KEY)] == [1]


def test_a_line_source_takes_a_respelled_reading_as_a_duplicate(store: QualityStore) -> None:
    """``corrections=False`` (a line's connectors) refused the same reading re-sent in
    another spelling as differing in ``raw_value``; it is a duplicate."""
    store.ingest_rows("measurement", [(1, _reading(150, "Pa"))], source="api")
    for value, unit in SPELLINGS[1:]:
        report = store.ingest_rows(
            "measurement", [(1, _reading(value, unit))], source="line", corrections=False
        )
        assert [str(e) for e in report.rejected] == []
        assert (report.accepted, report.duplicates) == (0, 1)
    assert _stored(store) == [(150.0, "Pa", "150", "Pa", 1)]


def test_a_different_value_is_still_a_correction_with_its_own_spelling(
    store: QualityStore,
) -> None:
    store.ingest_rows("measurement", [(1, _reading(150, "Pa"))])
    report = store.ingest_rows("measurement", [(1, _reading("1,6", "hPa"))])
    assert report.corrected == 1
    assert _stored(store) == [(pytest.approx(160.0), "Pa", "1,6", "hPa", 2)]
    refused = store.ingest_rows(
        "measurement", [(1, _reading(170, "Pa"))], source="line", corrections=False
    )
    assert [(e.field) for e in refused.rejected] == ["value"]
    # a canonical column other than the value still counts (the batch is named now)
    moved = store.ingest_rows("measurement", [(1, _reading("1,6", "hPa", batch_id="B-7"))])
    assert moved.corrected == 1
    assert _stored(store)[0][-1] == 3
