"""Keep a consumer's live subscriptions, so that they outlive a stream and a restart.

Revision ID: 0023_subscriptions
Revises: 0022_trace_listing
Create Date: 2026-12-05 15:10:00

A subscription to a supplier's live inspections lived in the consumer's memory only: a
provider's restart ended it for good, a consumer's restart forgot it. ``contract_subscription``
records each one once its provider opened the stream, with what it needs to resume (the
provider's position then, the SPC spec and the baseline its monitor established) and, once,
why it ended (`connector.contract_store.subscriptions`). Existing nodes start with none:
their subscriptions ended with the process that ran them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import UTCDateTime

revision = "0023_subscriptions"
down_revision = "0022_trace_listing"
branch_labels = None
depends_on = None

_TABLE = "contract_subscription"


def upgrade() -> None:
    # Idempotent, like the earlier revisions: a table already there is kept.
    if _TABLE in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        _TABLE,
        sa.Column("subscription_id", sa.String(128), primary_key=True),
        sa.Column("agreement_id", sa.String(128), nullable=False),
        sa.Column("provider", sa.String(128), nullable=False),
        sa.Column("purpose", sa.String(128), nullable=False),
        sa.Column("characteristic", sa.String(128), nullable=False),
        sa.Column("spec_json", sa.Text(), nullable=False),
        sa.Column("since", sa.String(32), nullable=True),
        sa.Column("centre", sa.Float(), nullable=True),
        sa.Column("sigma", sa.Float(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
        sa.Column("end_reason", sa.Text(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table(_TABLE)
