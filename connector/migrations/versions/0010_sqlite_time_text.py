"""QDM times on SQLite in one text form, so that comparisons by time are right.

Revision ID: 0010_sqlite_time_text
Revises: 0009_received_pages
Create Date: 2026-12-03 09:00:00

SQLite has no time type: SQLAlchemy stores a time as text,
``YYYY-MM-DD HH:MM:SS.ffffff`` (UTC, always six fractional digits), and writes every
bound parameter of a query the same way, so ``inspected_at >= :since`` is a text
comparison that orders like the times. The bulk ingest path wrote times as Python's
``isoformat(" ")`` instead (``2026-01-01 14:00:00+00:00``: no fraction when it is zero,
an offset after), and ``"14:00:00+00:00"`` sorts *before* ``"14:00:00.000000"``: a
row stamped exactly at a window's lower bound fell out of the window (verdicts, defect
p-charts, a trace's failed inspections), one at its upper bound fell in, and rows of
the two forms within the same second sorted by the accident of their text.

The ingest now writes SQLAlchemy's form; this revision rewrites what was stored in the
old one. Both old shapes (with and without a fraction; the offset is always ``+00:00``
because the ingest turns every time into UTC first) become the canonical text. Only
the text changes, not the time it reads back as: ids, versions and anything hashed
from a record (read back as datetimes) stay as they were. PostgreSQL stores
``timestamptz`` and is not touched.
"""

from __future__ import annotations

from alembic import op

revision = "0010_sqlite_time_text"
down_revision = "0009_received_pages"
branch_labels = None
depends_on = None

#: every QDM time column, by table
TIME_COLUMNS: dict[str, tuple[str, ...]] = {
    "qdm_order": ("opened_at", "closed_at", "withdrawn_at"),
    "qdm_product": ("made_at", "withdrawn_at"),
    "qdm_batch": ("made_at", "withdrawn_at"),
    "qdm_genealogy": ("withdrawn_at",),
    "qdm_inspection": ("inspected_at", "withdrawn_at"),
    "qdm_measurement": ("measured_at", "withdrawn_at"),
    "qdm_environment": ("measured_at", "withdrawn_at"),
    "qdm_operator_log": ("logged_at", "withdrawn_at"),
    "qdm_calibration": ("valid_from", "valid_until", "withdrawn_at"),
}

_D = "[0-9]"
_SECONDS = f"{_D * 4}-{_D * 2}-{_D * 2} {_D * 2}:{_D * 2}:{_D * 2}"
#: ``2026-01-01 14:00:00+00:00`` -> ``2026-01-01 14:00:00.000000``
WHOLE = f"{_SECONDS}+00:00"
#: ``2026-01-01 14:00:00.250000+00:00`` -> ``2026-01-01 14:00:00.250000``
FRACTION = f"{_SECONDS}.{_D * 6}+00:00"


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    present = set(op.get_context().dialect.get_table_names(bind))
    for table, columns in TIME_COLUMNS.items():
        if table not in present:
            continue
        for column in columns:
            op.execute(
                f"UPDATE {table} SET {column} = substr({column}, 1, 19) || '.000000' "
                f"WHERE {column} GLOB '{WHOLE}'"
            )
            op.execute(
                f"UPDATE {table} SET {column} = substr({column}, 1, 26) "
                f"WHERE {column} GLOB '{FRACTION}'"
            )


def downgrade() -> None:
    """Nothing to undo: the canonical text reads back as the same times."""
