"""The contract store's database for the unit tests of this folder: a real SQLite file,
and a fresh PostgreSQL schema when QDSPACE_TEST_PG_URL is set (dropped afterwards; the
backends and the schema come from ``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from qdspace.connector.contract_store import ensure_schema


@pytest.fixture
def bare_engine(
    db_backend: str, tmp_path: Path, postgres_schema: Callable[[str], Engine]
) -> Iterator[Engine]:
    """An empty database, no schema made: a SQLite file, or a new PostgreSQL schema."""
    if db_backend == "sqlite":
        created = create_engine(f"sqlite:///{tmp_path / 'contracts.db'}")
        yield created
        created.dispose()
    else:
        yield postgres_schema("contract")


@pytest.fixture
def contract_engine(bare_engine: Engine) -> Engine:
    """An engine with the contract schema made (by its migration)."""
    ensure_schema(bare_engine)
    return bare_engine
