"""Agreements listed a page at a time, one asset's and one order's found by index, and
their delete duties read without parsing their terms.

Revision ID: 0019_agreement_listing
Revises: 0018_transfer_pull_key
Create Date: 2026-12-05 06:10:00

A node holds an agreement per order and partner (an OEM with fifty suppliers makes tens of
thousands a year). Every reader read them all, a statement and a parse (~0.3 ms) each: the
console's contracts page (its agreements and its deletion duties), the overview's network
picture, the API's list, a federation job's check of a member, a trace's search for its
producer's agreement, and every order closure (which agreements does it concern?).

``contract_agreement`` gains what those readers took from the parsed terms, read from
them when an agreement is stored: the one order its scope names (``scope_order``,
`policies.evaluate.single_order`; NULL when it names several or none), its delete duty's
retention days and whether the duty asks a receipt. Agreements stored before get them here,
from their terms. Indexes: the order agreed (pages, the newest), one asset's agreements,
one order's; deletion receipts (one per agreement and order) in the order deleted.

The terms are read with the live code (`agreement_from_bytes`, `derived_terms`), not a
copy frozen here, on purpose: a node reads every agreement it ever stored with its live
code anyway (each transfer is decided on one, a regulator verifies them for years), so
the live parser must keep reading these bytes, and a change that broke this migration
would break the node first. `tests/unit/connector/test_agreement_listing.py` upgrades a
0018 store holding agreements through it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from qdspace.connector.agreement import agreement_from_bytes
from qdspace.connector.contract_store.agreements import derived_terms

revision = "0019_agreement_listing"
down_revision = "0018_transfer_pull_key"
branch_labels = None
depends_on = None

_TABLE = "contract_agreement"
_COLUMNS = {
    "scope_order": lambda: sa.Column("scope_order", sa.String(128), nullable=True),
    "retention_days": lambda: sa.Column("retention_days", sa.Integer(), nullable=True),
    "receipt_required": lambda: sa.Column(
        "receipt_required", sa.Boolean(), nullable=False, server_default=sa.false()
    ),
}
_INDEXES = {
    "ix_contract_agreement_agreed": ["agreed_at", "agreement_id"],
    "ix_contract_agreement_asset": ["asset_id", "role", "consumer_id"],
    "ix_contract_agreement_order": ["scope_order", "role"],
}
#: receipts, listed a page at a time in the order of deletion (the console: the newest)
_RECEIPTS = "contract_deletion_receipt"
_RECEIPT_INDEXES = {"ix_contract_receipt_deleted": ["deleted_at", "receipt_id"]}
#: agreements updated per statement while filling the new columns
_CHUNK = 1000


def upgrade() -> None:
    # Idempotent, like the earlier revisions: columns and indexes already there are kept
    # (a node from before 0002_contracts made its tables with create_all).
    bind = op.get_bind()
    found = sa.inspect(bind)
    have = {c["name"] for c in found.get_columns(_TABLE)}
    for name, column in _COLUMNS.items():
        if name not in have:
            op.add_column(_TABLE, column())
    for table_name, wanted in ((_TABLE, _INDEXES), (_RECEIPTS, _RECEIPT_INDEXES)):
        indexes = {i["name"]: i["column_names"] for i in found.get_indexes(table_name)}
        for name, columns in wanted.items():
            if indexes.get(name) != columns:
                if name in indexes:
                    op.drop_index(name, table_name=table_name)
                op.create_index(name, table_name, columns)
    table = sa.table(
        _TABLE,
        sa.column("agreement_id", sa.String),
        sa.column("canonical", sa.LargeBinary),
        sa.column("scope_order", sa.String),
        sa.column("retention_days", sa.Integer),
        sa.column("receipt_required", sa.Boolean),
    )
    update = (
        table.update()
        .where(table.c.agreement_id == sa.bindparam("aid"))
        .values(
            scope_order=sa.bindparam("order"),
            retention_days=sa.bindparam("days"),
            receipt_required=sa.bindparam("receipt"),
        )
    )
    filled = []
    for agreement_id, canonical in bind.execute(
        sa.select(table.c.agreement_id, table.c.canonical)
    ):
        order, days, receipt = derived_terms(agreement_from_bytes(bytes(canonical)).policy)
        filled.append({"aid": agreement_id, "order": order, "days": days, "receipt": receipt})
    for start in range(0, len(filled), _CHUNK):
        bind.execute(update, filled[start : start + _CHUNK])


def downgrade() -> None:
    for name in _RECEIPT_INDEXES:
        op.drop_index(name, table_name=_RECEIPTS)
    for name in _INDEXES:
        op.drop_index(name, table_name=_TABLE)
    with op.batch_alter_table(_TABLE) as batch:
        for name in reversed(_COLUMNS):
            batch.drop_column(name)
