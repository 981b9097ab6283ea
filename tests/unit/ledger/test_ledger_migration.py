"""A node's database gets the ledger queue's tables from migration 0003_ledger, exactly as
``ledger.queue`` declares them (a table change without a new revision fails here)."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from qdspace.connector.storage import head_revision, migrate
from qdspace.ledger.queue import LeafQueue
from qdspace.ledger.queue_schema import ensure_schema
from qdspace.ledger.queue_schema import metadata as ledger_metadata


def test_the_ledger_schema_comes_from_its_migration(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'node.db'}")
    migrate(engine)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection)
        assert context.get_current_revision() == head_revision()
        diffs = compare_metadata(context, ledger_metadata)
    ours = [d for d in diffs if "ledger_" in repr(d)]
    assert ours == []
    assert set(ledger_metadata.tables) <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_a_queue_made_before_the_migration_is_adopted(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'node.db'}")
    migrate(engine, "0002_contracts")
    ensure_schema(engine)  # what a node did before 0003_ledger: create_all
    LeafQueue(engine).enqueue("agreement", "agr-1", b"signed agreement bytes")
    migrate(engine)
    with engine.connect() as connection:
        assert MigrationContext.configure(connection).get_current_revision() == head_revision()
    assert LeafQueue(engine).pending("agreement").count == 1
    engine.dispose()
