"""`connector.storage.head_revision` reads the newest revision off the file names (no
Alembic import at start): the naming rule it relies on must hold for every migration."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from qdspace.connector.storage import MIGRATIONS, current_revision, head_revision, migrate


def test_each_revision_is_named_after_its_file_and_follows_the_one_before() -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    scripts = ScriptDirectory.from_config(config)
    files = sorted(p.stem for p in (MIGRATIONS / "versions").glob("[0-9]*.py"))
    assert files, "no migration files"
    chain = list(reversed([s.revision for s in scripts.walk_revisions()]))
    assert chain == files, "a revision id is not its file's name, or the chain branches"
    for before, script in zip([None, *files], chain, strict=False):
        assert scripts.get_revision(script).down_revision == before
    assert head_revision() == scripts.get_current_head() == files[-1]


def test_migrate_skips_alembic_only_at_the_newest_revision(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'q.db'}")
    assert current_revision(engine) is None  # nothing yet
    migrate(engine, "0001_qdm")
    assert current_revision(engine) == "0001_qdm"
    migrate(engine)  # not at head: Alembic runs
    assert current_revision(engine) == head_revision()
    migrate(engine)  # at head: nothing to do
    assert current_revision(engine) == head_revision()
    engine.dispose()
