"""The storage suite runs every test against SQLite and, where configured, PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from qdspace.connector.storage import QualityStore, open_store

PG_ENV = "QDSPACE_TEST_PG_URL"
PG_HOWTO = (
    f"PostgreSQL storage tests need {PG_ENV}=postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB "
    "(a database the user may create schemas in); .ci/run installs and starts one"
)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    fresh_pg_schema: Callable[[str], AbstractContextManager[tuple[str, str]]],
) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a new schema of the test PostgreSQL
    (``tests/conftest.py``'s `fresh_pg_schema`, dropped after the test)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'node.db'}"
        return
    if not os.environ.get(PG_ENV):
        pytest.skip(PG_HOWTO)
    with fresh_pg_schema("qdspace_test") as (url, _):
        yield url


@pytest.fixture
def store(store_url: str) -> Iterator[QualityStore]:
    opened = open_store(store_url)
    try:
        yield opened
    finally:
        opened.close()


def query_plan(engine: Engine, statement: Any) -> list[str]:
    """The database's plan for ``statement``, a step a line. PostgreSQL is told to avoid
    sequential scans (it scans small tables anyway, indexes or not): it still plans one
    where no index can serve, so a scan in the plan means no index path."""
    sql = statement.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True})
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            return [str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")]
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        return [str(r[0]).strip() for r in conn.exec_driver_sql(f"EXPLAIN {sql}")]
