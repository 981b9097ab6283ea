"""Received rows sealed in pages: one ciphertext per delivery and order.

Revision ID: 0009_received_pages
Revises: 0008_dsp
Create Date: 2026-12-03 08:00:00

The consumer used to encrypt every received row on its own (a nonce and a ciphertext
in ``contract_received_row``). Rows now go into ``contract_received_page``: one
AES-GCM ciphertext per delivery (a group of transfer batches, or a stream event) and
order, under the same per-(agreement, order) data key, and the row index gets the
``page_id`` and ``slot`` that hold each record's current version. Rows stored before
this revision keep their own ciphertext (a migration cannot re-encrypt them: the data
keys open only with the node's key, outside the database); readers handle both, and a
later version of such a record goes into a page like any other.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0009_received_pages"
down_revision = "0008_dsp"
branch_labels = None
depends_on = None

_ID = 128


def upgrade() -> None:
    # Idempotent, like the earlier revisions: a node whose tables a newer build created
    # (before its migrations ran) is adopted as it is.
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("contract_received_page"):
        op.create_table(
            "contract_received_page",
            sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
            sa.Column("agreement_id", sa.String(length=_ID), nullable=False),
            sa.Column("order_id", sa.String(length=_ID), nullable=False),
            sa.Column("source_id", sa.String(length=_ID), nullable=False),
            sa.Column("nonce", sa.LargeBinary(), nullable=False),
            sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
            sa.Column("received_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index(
            "ix_contract_received_page_order",
            "contract_received_page",
            ["agreement_id", "order_id"],
        )
    have = {c["name"] for c in inspector.get_columns("contract_received_row")}
    if "page_id" not in have:
        op.add_column("contract_received_row", sa.Column("page_id", sa.BigInteger(), nullable=True))
    if "slot" not in have:
        op.add_column("contract_received_row", sa.Column("slot", sa.Integer(), nullable=True))


def downgrade() -> None:
    held = op.get_bind().execute(sa.text("SELECT count(*) FROM contract_received_page")).scalar()
    if held:
        raise RuntimeError(
            f"{held} received pages are held: going below 0009_received_pages would need "
            "their rows re-encrypted one by one, which needs the node's key (purge them first)"
        )
    with op.batch_alter_table("contract_received_row") as batch:
        batch.drop_column("slot")
        batch.drop_column("page_id")
    op.drop_index("ix_contract_received_page_order", table_name="contract_received_page")
    op.drop_table("contract_received_page")
