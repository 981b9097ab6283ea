"""Count the changes of the copy held under each agreement, for readers that follow it.

Revision ID: 0016_received_revision
Revises: 0015_inspection_station
Create Date: 2026-12-04 23:40:00

The SPC page charts a subscription from the rows its consumer holds under the agreement
(`node.console.spc`), and asked whether they changed by a count the stream kept in
memory (rows a pull brought were not counted), then read, decrypted and replayed every
row again on each change. ``contract_received_agreement`` now counts what each delivery
changed: ``revision`` for any change of what is held, ``rewrites`` for changes other
than rows added (a record replaced, withdrawn, or an order erased). A reader that saw
every row up to an id reads only the rows after it while ``rewrites`` stays the same
(`MirrorVersion`). Existing agreements start at 0 and 0; no row is rewritten.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016_received_revision"
down_revision = "0015_inspection_station"
branch_labels = None
depends_on = None

_TABLE = "contract_received_agreement"
_COLUMNS = ("revision", "rewrites")


def upgrade() -> None:
    # Idempotent, like the earlier revisions: columns already there are kept.
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns(_TABLE)}
    for name in _COLUMNS:
        if name not in have:
            column = sa.Column(name, sa.BigInteger(), nullable=False, server_default="0")
            op.add_column(_TABLE, column)


def downgrade() -> None:
    with op.batch_alter_table(_TABLE) as batch:
        for name in _COLUMNS:
            batch.drop_column(name)
