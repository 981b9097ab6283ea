"""Count the rewrites of each QDM kind, for readers that keep what they made of a table.

Revision ID: 0017_qdm_rewrites
Revises: 0016_received_revision
Create Date: 2026-12-05 02:00:00

The console's inspection page grouped every verdict by station on each load (0.6 s on a
line's million verdicts on SQLite, growing with every verdict), and a station's SPC
chart, fed only the rows above the last id it saw, kept the old value of a verdict
corrected or withdrawn since (the row moves to a fresh id; the chart saw only its new
version, or none). ``qdm_rewrites`` counts, per kind, the records corrected or
withdrawn, in the transaction that rewrites them (`connector.versions`); while a kind's
count stays, the rows above a reader's last id are exactly what was added
(`connector.qdm.Rewrites`). Existing nodes start with no counts (a reader compares the
count it saw with the count now); no row changes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017_qdm_rewrites"
down_revision = "0016_received_revision"
branch_labels = None
depends_on = None

_TABLE = "qdm_rewrites"


def upgrade() -> None:
    # Idempotent, like the earlier revisions: a table already there is kept.
    if _TABLE in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        _TABLE,
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("rewrites", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table(_TABLE)
