"""Count what a consumer opened lately, from an index: the provider's cap on negotiations.

Revision ID: 0026_negotiations_opened
Revises: 0025_outbox_refused
Create Date: 2026-12-06 07:10:00

A negotiation is a row (and, over DSP, an answer in the outbox) written on a consumer's
initiative, and nothing bounded how many a member could open: at the peer servers' call
caps one member could write gigabytes a day into a provider's database. A provider now
takes at most ``negotiations_per_member_hour`` new negotiations from a member in any
hour (`node.runtime.contracts_negotiation`), which it counts on every request by
``(consumer_id, created_at)``; without this index that count reads every negotiation
the node ever had.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0026_negotiations_opened"
down_revision = "0025_outbox_refused"
branch_labels = None
depends_on = None

_TABLE = "contract_negotiation"
_INDEX = "ix_contract_negotiation_opened"


def upgrade() -> None:
    # Idempotent, like the earlier revisions: an index already there is kept.
    have = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes(_TABLE)}
    if _INDEX not in have:
        op.create_index(_INDEX, _TABLE, ["consumer_id", "created_at"])


def downgrade() -> None:
    op.drop_index(_INDEX, table_name=_TABLE)
