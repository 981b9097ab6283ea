"""The storage suite runs every test against SQLite and, where configured, PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from qdspace.connector.storage import QualityStore, normalise_url, open_store

PG_ENV = "QDSPACE_TEST_PG_URL"
PG_HOWTO = (
    f"PostgreSQL storage tests need {PG_ENV}=postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB "
    "(a database the user may create schemas in); .ci/run installs and starts one"
)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a new schema of the test PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'node.db'}"
        return
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(PG_HOWTO)
    schema = f"qdspace_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalise_url(base))
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in base else "?"
    try:
        yield f"{base}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def store(store_url: str) -> Iterator[QualityStore]:
    opened = open_store(store_url)
    try:
        yield opened
    finally:
        opened.close()
