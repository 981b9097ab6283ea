"""Count the transfers a consumer opened lately, from an index: the provider's cap on them.

Revision ID: 0027_transfers_opened
Revises: 0026_negotiations_opened
Create Date: 2026-12-06 07:20:00

Like a negotiation (revision 0026), a transfer process is a row written on a consumer's
initiative, with the history of its messages: a member holding one agreement could open
transfers without end. A provider now takes at most ``transfers_per_member_hour`` new
transfers from a member in any hour (`node.runtime.contracts_transfer`), counted on every
new request by ``(consumer_id, created_at)``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0027_transfers_opened"
down_revision = "0026_negotiations_opened"
branch_labels = None
depends_on = None

_TABLE = "contract_transfer"
_INDEX = "ix_contract_transfer_opened"


def upgrade() -> None:
    # Idempotent, like the earlier revisions: an index already there is kept.
    have = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes(_TABLE)}
    if _INDEX not in have:
        op.create_index(_INDEX, _TABLE, ["consumer_id", "created_at"])


def downgrade() -> None:
    op.drop_index(_INDEX, table_name=_TABLE)
