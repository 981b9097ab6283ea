"""Ledger anchoring queue: leaf references, packed leaf chunks and anchored batches.

Revision ID: 0003_ledger
Revises: 0002_contracts
Create Date: 2026-11-29 20:35:00

The schema of ``ledger.queue`` (its ``metadata``) in a node's own database; a unit test
compares the two, so a change to those tables needs a new revision. A standalone queue
(an anchorer outside a node) still creates the same tables itself.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_ledger"
down_revision = "0002_contracts"
branch_labels = None
depends_on = None

MAX_REF_ID = 200


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("ledger_leaf_ref"):
        op.create_table(
            "ledger_leaf_ref",
            sa.Column("kind", sa.SmallInteger(), autoincrement=False, nullable=False),
            sa.Column("ref_id", sa.String(length=MAX_REF_ID), nullable=False),
            sa.Column("seq", sa.BigInteger(), nullable=False),
            sa.PrimaryKeyConstraint("kind", "ref_id"),
            sqlite_with_rowid=False,
        )
    if not inspector.has_table("ledger_leaf_chunk"):
        op.create_table(
            "ledger_leaf_chunk",
            sa.Column("kind", sa.SmallInteger(), autoincrement=False, nullable=False),
            sa.Column("seq_from", sa.BigInteger(), autoincrement=False, nullable=False),
            sa.Column("leaf_count", sa.Integer(), nullable=False),
            sa.Column("enqueued_at", sa.Float(), nullable=False),
            sa.Column("ref_ids", sa.Text(), nullable=False),
            sa.Column("record_sha256", sa.LargeBinary(), nullable=False),
            sa.Column("leaf_hash", sa.LargeBinary(), nullable=False),
            sa.PrimaryKeyConstraint("kind", "seq_from"),
        )
    if not inspector.has_table("ledger_batch"):
        op.create_table(
            "ledger_batch",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("kind", sa.String(length=32), nullable=False),
            sa.Column("seq_from", sa.BigInteger(), nullable=False),
            sa.Column("seq_to", sa.BigInteger(), nullable=False),
            sa.Column("leaf_count", sa.Integer(), nullable=False),
            sa.Column("root", sa.LargeBinary(length=32), nullable=False),
            sa.Column("state", sa.String(length=16), nullable=False),
            sa.Column("sealed_at", sa.Float(), nullable=False),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("last_error", sa.Text(), nullable=True),
            sa.Column("chain_id", sa.BigInteger(), nullable=True),
            sa.Column("contract", sa.String(length=42), nullable=True),
            sa.Column("sender", sa.String(length=42), nullable=True),
            sa.Column("nonce", sa.BigInteger(), nullable=True),
            sa.Column("raw_tx", sa.LargeBinary(), nullable=True),
            sa.Column("tx_hash", sa.LargeBinary(length=32), nullable=True),
            sa.Column("sent_at", sa.Float(), nullable=True),
            sa.Column("block_number", sa.BigInteger(), nullable=True),
            sa.Column("block_hash", sa.LargeBinary(length=32), nullable=True),
            sa.Column("anchored_at", sa.Float(), nullable=True),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("root"),
            sa.UniqueConstraint("kind", "seq_from", name="uq_ledger_batch_start"),
        )
        op.create_index("ix_ledger_batch_state", "ledger_batch", ["state", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_ledger_batch_state", table_name="ledger_batch")
    op.drop_table("ledger_batch")
    op.drop_table("ledger_leaf_chunk")
    op.drop_table("ledger_leaf_ref")
