"""Index the outbox's undelivered messages alone, and keep a process's messages in order.

Revision ID: 0027_outbox_unsent
Revises: 0026_member_quotas
Create Date: 2026-12-06 07:30:00

A node keeps every message it sent in ``contract_outbox``, and its dispatcher polls for
what is due twice a second on the event loop. The poll (``sent_at IS NULL AND refused_at
IS NULL AND next_attempt_at <= now ORDER BY id``) had no index it could use and read the
whole table: 13 ms a poll at 100,000 messages sent, growing with every message, each a
stall of everything else the loop serves. Two partial indexes over the undelivered rows
only (``WHERE sent_at IS NULL``; SQLite and PostgreSQL both keep them): by ``id``, the
poll's order, and by ``(peer_id, process_id, id)``, which the poll now also asks of each
message (is one queued before it for the same process still owed? then it waits, so a
peer gets a process's messages in the order they were decided).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0027_outbox_unsent"
down_revision = "0026_member_quotas"
branch_labels = None
depends_on = None

_TABLE = "contract_outbox"
_UNSENT = sa.text("sent_at IS NULL")
_INDEXES = {
    "ix_contract_outbox_unsent": ["id"],
    "ix_contract_outbox_unsent_process": ["peer_id", "process_id", "id"],
}


def upgrade() -> None:
    # Idempotent, like the earlier revisions: an index already there is kept.
    have = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes(_TABLE)}
    for name, columns in _INDEXES.items():
        if name not in have:
            op.create_index(
                name, _TABLE, columns, sqlite_where=_UNSENT, postgresql_where=_UNSENT
            )


def downgrade() -> None:
    for name in _INDEXES:
        op.drop_index(name, table_name=_TABLE)
