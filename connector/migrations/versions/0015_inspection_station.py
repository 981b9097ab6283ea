"""An index of inspections by station in id order, for the SPC page's live charts.

Revision ID: 0015_inspection_station
Revises: 0014_measurement_scope
Create Date: 2026-12-04 21:05:00

The SPC page follows each station's inspection scores live (`node.console.spc`): ten
times a second it asks whether a station gained verdicts, and then reads only the ones
it has not seen, in id order. Without an index on ``station`` each question read every
inspection (274 ms on a line's million verdicts on SQLite, so one open chart kept a core
busy); ``ix_inspection_station`` on ``(station, id)`` answers both from the index. Only
the index is added; no row changes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015_inspection_station"
down_revision = "0014_measurement_scope"
branch_labels = None
depends_on = None

_INDEX = "ix_inspection_station"


def upgrade() -> None:
    # Idempotent, like the earlier revisions: an index already as wanted is kept.
    have = {
        i["name"]: i["column_names"]
        for i in sa.inspect(op.get_bind()).get_indexes("qdm_inspection")
    }
    if have.get(_INDEX) == ["station", "id"]:
        return
    if _INDEX in have:
        op.drop_index(_INDEX, table_name="qdm_inspection")
    op.create_index(_INDEX, "qdm_inspection", ["station", "id"])


def downgrade() -> None:
    op.drop_index(_INDEX, table_name="qdm_inspection")
