"""Quality investigations and alerts: each party's copy of the signed event log.

Revision ID: 0006_quality_cases
Revises: 0005_mirror
Create Date: 2026-12-02 12:00:00

A quality case (``connector.investigation``) is the fold of the signed events both
parties exchange; ``contract_quality_case_event`` keeps them (once per case, author and
number, in the order applied), ``contract_quality_case`` a row per case for listing and
compare-and-set (``connector.contract_store.cases``). The one-shot investigations of
``0004_investigations`` stay as they are: they are notices without a life cycle.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0006_quality_cases"
down_revision = "0005_mirror"
branch_labels = None
depends_on = None

_ID = 128


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("contract_quality_case"):
        op.create_table(
            "contract_quality_case",
            sa.Column("opener_id", sa.String(length=_ID), nullable=False),
            sa.Column("case_id", sa.String(length=_ID), nullable=False),
            sa.Column("receiver_id", sa.String(length=_ID), nullable=False),
            sa.Column("kind", sa.String(length=16), nullable=False),
            sa.Column("severity", sa.String(length=32), nullable=False),
            sa.Column("subject", sa.Text(), nullable=False),
            sa.Column("state", sa.String(length=16), nullable=False),
            sa.Column("event_count", sa.Integer(), nullable=False),
            sa.Column("opened_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
            sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
            sa.PrimaryKeyConstraint("opener_id", "case_id"),
            sa.UniqueConstraint("case_id", name="uq_contract_quality_case_id"),
        )
        op.create_index(
            "ix_contract_quality_case_updated_at", "contract_quality_case", ["updated_at"]
        )
    if not inspector.has_table("contract_quality_case_event"):
        op.create_table(
            "contract_quality_case_event",
            sa.Column("opener_id", sa.String(length=_ID), nullable=False),
            sa.Column("case_id", sa.String(length=_ID), nullable=False),
            sa.Column("author_id", sa.String(length=_ID), nullable=False),
            sa.Column("seq", sa.Integer(), nullable=False),
            sa.Column("position", sa.Integer(), nullable=False),
            sa.Column("step", sa.String(length=16), nullable=False),
            sa.Column("data", sa.LargeBinary(), nullable=False),
            sa.Column("signature", sa.LargeBinary(), nullable=False),
            sa.Column("kept_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
            sa.PrimaryKeyConstraint("opener_id", "case_id", "author_id", "seq"),
        )


def downgrade() -> None:
    op.drop_table("contract_quality_case_event")
    op.drop_index("ix_contract_quality_case_updated_at", table_name="contract_quality_case")
    op.drop_table("contract_quality_case")
