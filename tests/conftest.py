"""The two databases every store's unit tests run on: a SQLite file, and PostgreSQL.

Each store is tested on both backends (CONVENTIONS 5). On PostgreSQL a test gets a schema
of its own on the server ``QDSPACE_TEST_PG_URL`` names, dropped when the test ends, so
tests neither see each other's rows nor leave any behind; without the variable those
tests are skipped. The contract store's (``tests/unit/connector/conftest.py``), the QDM
views' and the ledger's leaf queue's tests each wrote that set-up themselves, in two
folders; it lives here once, where every folder's fixtures can ask for it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine, create_engine, text

PG_URL = os.environ.get("QDSPACE_TEST_PG_URL")


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
def db_backend(request: pytest.FixtureRequest) -> str:
    """``sqlite`` or ``postgres``: a fixture that asks for this runs once on each; the
    PostgreSQL run is marked ``postgres`` and skipped when no test server is named."""
    return str(request.param)


@pytest.fixture
def postgres_schema() -> Iterator[Callable[[str], Engine]]:
    """Makes an engine on a new schema of the test server, named ``PREFIX_`` and 8 random
    hex digits; at the end of the test each engine is closed and its schema dropped."""
    made: list[tuple[str, Engine]] = []
    admin: Engine | None = None

    def make(prefix: str) -> Engine:
        nonlocal admin
        assert PG_URL is not None
        schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
        admin = admin or create_engine(PG_URL)
        with admin.begin() as connection:
            connection.execute(text(f"CREATE SCHEMA {schema}"))
        engine = create_engine(PG_URL, connect_args={"options": f"-csearch_path={schema}"})
        made.append((schema, engine))
        return engine

    yield make
    for schema, engine in reversed(made):
        engine.dispose()
        assert admin is not None
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    if admin is not None:
        admin.dispose()
