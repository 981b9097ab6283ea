"""Count the rows each source delivered beside its cursor, so a count outlives a restart.

Revision ID: 0024_source_delivered
Revises: 0023_subscriptions
Create Date: 2026-12-05 18:10:00

A subscription's `received` (and a DSP live transfer's) was counted in the consumer's
memory, from 0 at every start: a subscription resumed after a restart said it had received
nothing while its rows were held. ``contract_received_source`` keeps each source's cursor,
moved forward once per delivery; ``delivered`` adds the delivery's row count in the same
statement. Existing sources start at 0 (what they delivered before was not counted).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024_source_delivered"
down_revision = "0023_subscriptions"
branch_labels = None
depends_on = None

_TABLE = "contract_received_source"


def upgrade() -> None:
    # Idempotent, like the earlier revisions: a column already there is kept.
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns(_TABLE)}
    if "delivered" not in columns:
        with op.batch_alter_table(_TABLE) as batch:
            batch.add_column(
                sa.Column("delivered", sa.BigInteger(), nullable=False, server_default="0")
            )


def downgrade() -> None:
    with op.batch_alter_table(_TABLE) as batch:
        batch.drop_column("delivered")
