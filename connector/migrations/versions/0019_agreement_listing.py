"""List agreements a page at a time, and find one asset's agreements, by index.

Revision ID: 0019_agreement_listing
Revises: 0018_transfer_pull_key
Create Date: 2026-12-05 06:10:00

A node holds an agreement per order and partner (an OEM with fifty suppliers makes tens of
thousands a year). Every listing read them all, a statement and a parse (~0.3 ms) each:
the console's contracts page, the overview's network picture, the API's list, a
federation job's check of a member and a trace's search for its producer's agreement.
They now read a page in the order agreements were made (``ix_contract_agreement_agreed``)
or one asset's agreements (``ix_contract_agreement_asset``), and the overview counts them
in SQL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019_agreement_listing"
down_revision = "0018_transfer_pull_key"
branch_labels = None
depends_on = None

_TABLE = "contract_agreement"
_INDEXES = {
    "ix_contract_agreement_agreed": ["agreed_at", "agreement_id"],
    "ix_contract_agreement_asset": ["asset_id", "role", "consumer_id"],
}


def upgrade() -> None:
    # Idempotent, like the earlier revisions: an index already there is kept (a node from
    # before 0002_contracts made its tables with create_all).
    found = sa.inspect(op.get_bind())
    indexes = {i["name"]: i["column_names"] for i in found.get_indexes(_TABLE)}
    for name, columns in _INDEXES.items():
        if indexes.get(name) != columns:
            if name in indexes:
                op.drop_index(name, table_name=_TABLE)
            op.create_index(name, _TABLE, columns)


def downgrade() -> None:
    for name in _INDEXES:
        op.drop_index(name, table_name=_TABLE)
