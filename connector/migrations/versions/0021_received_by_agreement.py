"""Read one agreement's received rows in the order they came, from an index.

Revision ID: 0021_received_by_agreement
Revises: 0020_case_listing
Create Date: 2026-12-05 12:40:00

The consumer's copy is read by agreement and in the order rows came: a subscription
chart's history (the newest 20,000 rows held), what came since a reader's last row, and
``GET /v1/contracts/received`` a page at a time. The only index that named the agreement
was the unique (agreement, record key) one, whose keys are random pseudonyms: every such
read found all of the agreement's rows through it and sorted them by id, so it cost the
whole copy (242 ms at 200,000 rows held for the chart's history, 63 ms for a page of
1,000; `received_since` went round it by the primary key). ``(agreement_no, id)`` makes
each of them a range of the agreement's own entries. New entries land at the right end of
their agreement's range (ids only grow), so a delivery pays little for it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021_received_by_agreement"
down_revision = "0020_case_listing"
branch_labels = None
depends_on = None

_TABLE = "contract_received_row"
_INDEX = "ix_contract_received_row_agreement"


def upgrade() -> None:
    # Idempotent, like the earlier revisions: an index already there is kept.
    have = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes(_TABLE)}
    if _INDEX not in have:
        op.create_index(_INDEX, _TABLE, ["agreement_no", "id"])


def downgrade() -> None:
    op.drop_index(_INDEX, table_name=_TABLE)
