"""Keep what a QDM record said before a correction or withdrawal replaced it.

Revision ID: 0031_record_history
Revises: 0030_dsp_peer_pid
Create Date: 2026-12-07 19:00:00

A correction rewrote the record's row in place, and a withdrawal turned it into a
tombstone: an auditor could see that, and when, a record changed (its version, the
ledger's hash of the old content) but not what it said before, and two ingesters
correcting one record at once kept only the last content. ``qdm_record_history`` now
takes a copy of each replaced version, in the transaction that replaces it
(`connector.versions`, `connector.qdm.RecordHistory`). Records corrected before this
revision have no history: their earlier content is gone; no row changes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import UTCDateTime

revision = "0031_record_history"
down_revision = "0030_dsp_peer_pid"
branch_labels = None
depends_on = None

_TABLE = "qdm_record_history"


def upgrade() -> None:
    # Idempotent, like the earlier revisions: a table already there is kept.
    if _TABLE in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        _TABLE,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("record_key", sa.String(400), nullable=False),
        sa.Column("record_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("replaced_at", UTCDateTime(), nullable=False),
        sa.Column("replaced_by", sa.String(16), nullable=False),
        sa.UniqueConstraint("kind", "record_key", "version", name="uq_record_history"),
    )


def downgrade() -> None:
    op.drop_table(_TABLE)
