"""Set aside an outbox message its peer keeps refusing, instead of trying it for ever.

Revision ID: 0025_outbox_refused
Revises: 0024_source_delivered
Create Date: 2026-12-06 01:00:00

The outbox retried every failed delivery, with back-off, until the peer took it. A peer
that cannot be reached should be: it takes the message once it is back. A peer that
answers and refuses (a DSP callback for a transfer it does not hold, a notification it
finds malformed or not its business) refuses the same message again every minute, for
ever, and the operator's view shows that peer owed for ever. ``contract_outbox`` gains
how many times in a row the message was refused (``refusals``; a failure of any other
kind starts the count over) and when it was set aside (``refused_at``): after
`outbox_refused_after` refusals in a row it is no longer tried, kept with its last
error, listed apart, and queued again by the operator (``qdspace contracts outbox
--retry PEER``). Messages queued before start with no refusal counted.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import UTCDateTime

revision = "0025_outbox_refused"
down_revision = "0024_source_delivered"
branch_labels = None
depends_on = None

_TABLE = "contract_outbox"


def upgrade() -> None:
    # Idempotent, like the earlier revisions: a column already there is kept.
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns(_TABLE)}
    with op.batch_alter_table(_TABLE) as batch:
        if "refusals" not in columns:
            batch.add_column(
                sa.Column("refusals", sa.Integer(), nullable=False, server_default="0")
            )
        if "refused_at" not in columns:
            batch.add_column(sa.Column("refused_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table(_TABLE) as batch:
        batch.drop_column("refused_at")
        batch.drop_column("refusals")
