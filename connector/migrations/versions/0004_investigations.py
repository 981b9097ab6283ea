"""Received quality investigations: kept in the database, once per sender and id.

Revision ID: 0004_investigations
Revises: 0003_ledger
Create Date: 2026-12-02 05:00:00

Investigations a peer opened with this node used to live in a list in memory: lost on
restart, counted again on every retry, and growing without bound. They are now rows of
``contract_investigation`` (``connector.contract_store``), keyed by sender and id, with
a per-sender cap enforced by the store.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004_investigations"
down_revision = "0003_ledger"
branch_labels = None
depends_on = None

_ID = 128


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("contract_investigation"):
        return  # made by create_all (ensure_schema) before this revision ran
    op.create_table(
        "contract_investigation",
        sa.Column("sender_id", sa.String(length=_ID), nullable=False),
        sa.Column("investigation_id", sa.String(length=_ID), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("batch_id", sa.String(length=_ID), nullable=False),
        sa.Column("order_id", sa.String(length=_ID), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("received_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("sender_id", "investigation_id"),
    )
    op.create_index(
        "ix_contract_investigation_received_at",
        "contract_investigation",
        ["received_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_contract_investigation_received_at", table_name="contract_investigation")
    op.drop_table("contract_investigation")
