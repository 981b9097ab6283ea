"""Count what a consumer opened lately, from an index: the provider's per-member quotas.

Revision ID: 0026_member_quotas
Revises: 0025_outbox_refused
Create Date: 2026-12-06 07:10:00

A negotiation and a transfer process are rows (with the history of their messages, and
over DSP an answer queued for the callback) written on a consumer's initiative, and
nothing bounded how many a member could open: at the peer servers' call caps one member
could write gigabytes a day into a provider's database. A provider now takes at most
``negotiations_per_member_hour`` new negotiations and ``transfers_per_member_hour`` new
transfers from a member in any hour (`node.runtime.contracts_base.over_quota`), which it
counts on every such request by ``(consumer_id, created_at)``; without these indexes each
count reads every negotiation, or every transfer, the node ever had.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0026_member_quotas"
down_revision = "0025_outbox_refused"
branch_labels = None
depends_on = None

_INDEXES = {
    "contract_negotiation": "ix_contract_negotiation_opened",
    "contract_transfer": "ix_contract_transfer_opened",
}


def upgrade() -> None:
    # Idempotent, like the earlier revisions: an index already there is kept.
    inspector = sa.inspect(op.get_bind())
    for table, index in _INDEXES.items():
        if index not in {i["name"] for i in inspector.get_indexes(table)}:
            op.create_index(index, table, ["consumer_id", "created_at"])


def downgrade() -> None:
    for table, index in _INDEXES.items():
        op.drop_index(index, table_name=table)
