"""Keep a consumer's live subscriptions and their alerts, so they outlive a stream and a restart.

Revision ID: 0023_subscriptions
Revises: 0022_trace_listing
Create Date: 2026-12-05 15:10:00

A subscription to a supplier's live inspections lived in the consumer's memory only: a
provider's restart ended it for good, a consumer's restart forgot it. ``contract_subscription``
records each one once its provider opened the stream, with what it needs to resume (the
provider's position then, the SPC spec and the baseline its monitor established) and, once,
why it ended (`connector.contract_store.subscriptions`); ``contract_raised_alert`` keeps
the SPC alerts their monitors raise, which lived in memory too (and grew there for as
long as a subscription ran). Existing nodes start with none: their subscriptions ended
with the process that ran them.
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
_ALERTS = "contract_raised_alert"


def upgrade() -> None:
    # Idempotent, like the earlier revisions: a table already there is kept.
    have = set(sa.inspect(op.get_bind()).get_table_names())
    if _ALERTS not in have:
        op.create_table(
            _ALERTS,
            sa.Column("alert_id", sa.String(128), primary_key=True),
            sa.Column("subscription_id", sa.String(128), nullable=False),
            sa.Column("agreement_id", sa.String(128), nullable=False),
            sa.Column("order_id", sa.String(128), nullable=False),
            sa.Column("station", sa.String(128), nullable=False),
            sa.Column("characteristic", sa.String(128), nullable=False),
            sa.Column("rule", sa.String(16), nullable=False),
            sa.Column("description", sa.Text(), nullable=False),
            sa.Column("points_json", sa.Text(), nullable=False),
            sa.Column("alert_at", UTCDateTime(), nullable=False),
            sa.Column("raised_at", UTCDateTime(), nullable=False),
        )
        op.create_index(
            "ix_contract_raised_alert_subscription_id", _ALERTS, ["subscription_id"]
        )
        op.create_index("ix_contract_raised_alert_listing", _ALERTS, ["raised_at", "alert_id"])
    if _TABLE in have:
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
    op.drop_table(_ALERTS)
    op.drop_table(_TABLE)
