"""A cursor row per source of received rows instead of the (source, seq) row index.

Revision ID: 0011_received_cursor
Revises: 0010_sqlite_time_text
Create Date: 2026-12-03 12:00:00

``ix_contract_received_row_source`` indexed every received row by (source, seq) only so
that ``last_received_seq`` (where a source's deliveries stop) could read the highest
seq of a source. It cost a B-tree insert per record on the consumer's hot path (about
a tenth of the row index's time; bench/PROFILE-transfer.md, consumer store, round 3).
``contract_received_source`` keeps that position instead: one row per source, moved
forward once per delivery. This revision fills it from the rows held (the highest seq
of each source, as the index gave it) and drops the index; the rows themselves, their
pages and their keys are not touched, so everything stored under 0009/0010 reads as
before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_received_cursor"
down_revision = "0010_sqlite_time_text"
branch_labels = None
depends_on = None

_ID = 128
_INDEX = "ix_contract_received_row_source"


def upgrade() -> None:
    # Idempotent, like the earlier revisions: a node whose tables a newer build created
    # (before its migrations ran) is adopted as it is.
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("contract_received_source"):
        op.create_table(
            "contract_received_source",
            sa.Column("source_id", sa.String(length=_ID), nullable=False),
            sa.Column("seq", sa.BigInteger(), nullable=False),
            sa.PrimaryKeyConstraint("source_id"),
        )
        op.execute(
            "INSERT INTO contract_received_source (source_id, seq) "
            "SELECT source_id, max(seq) FROM contract_received_row GROUP BY source_id"
        )
    if _INDEX in {i["name"] for i in inspector.get_indexes("contract_received_row")}:
        op.drop_index(_INDEX, table_name="contract_received_row")


def downgrade() -> None:
    op.create_index(_INDEX, "contract_received_row", ["source_id", "seq"])
    op.drop_table("contract_received_source")
