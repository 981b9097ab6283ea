"""The contract store's database for the unit tests of this folder: a real SQLite file,
and a fresh PostgreSQL schema when QDSPACE_TEST_PG_URL is set (dropped afterwards)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from qdspace.connector.contract_store import ensure_schema

PG_URL = os.environ.get("QDSPACE_TEST_PG_URL")


def postgres_schema(prefix: str) -> Iterator[Engine]:
    """An engine on a new schema of the test server; the schema is dropped after."""
    assert PG_URL is not None
    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_URL)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    engine = create_engine(PG_URL, connect_args={"options": f"-csearch_path={schema}"})
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "postgres",
            marks=[
                pytest.mark.postgres,
                pytest.mark.skipif(PG_URL is None, reason="QDSPACE_TEST_PG_URL not set"),
            ],
        ),
    ]
)
def contract_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine with the contract schema made (by its migration)."""
    if request.param == "sqlite":
        created = create_engine(f"sqlite:///{tmp_path / 'contracts.db'}")
        ensure_schema(created)
        yield created
        created.dispose()
    else:
        for created in postgres_schema("contract"):
            ensure_schema(created)
            yield created
