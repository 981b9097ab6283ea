"""Versioned QDM records and a consumer copy keyed by record: corrections, withdrawals,
idempotent and incremental pulls.

Revision ID: 0005_mirror
Revises: 0004_investigations
Create Date: 2026-12-02 05:00:00

Every QDM table gets ``version`` (1 for every row stored so far) and ``withdrawn_at``
(a tombstone's time). Received rows get the provider's record key: a row is now the
consumer's copy of one provider record under one agreement (unique), no longer one
line of one transfer, so pulling the same rows again stores nothing twice. Rows stored
before this revision keep a key of their own (``legacy:<transfer>#<seq>``): nothing
held is dropped, and their deletion receipts still cover them. ``version`` and
``withdrawn`` let a later version replace an earlier one (never the reverse) and a
tombstone remember that a record was withdrawn; ``contract_received_change`` is the
consumer's audit trail of corrections and withdrawals.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0005_mirror"
down_revision = "0004_investigations"
branch_labels = None
depends_on = None

_ID = 128
QDM_TABLES = (
    "qdm_order",
    "qdm_product",
    "qdm_batch",
    "qdm_genealogy",
    "qdm_inspection",
    "qdm_measurement",
    "qdm_environment",
    "qdm_operator_log",
)


def upgrade() -> None:
    # Idempotent, like 0002 and 0003: a node whose tables a newer build created (before
    # its migrations ran) is adopted as it is.
    inspector = sa.inspect(op.get_bind())
    for name in QDM_TABLES:
        have = {c["name"] for c in inspector.get_columns(name)}
        if "version" not in have:
            op.add_column(
                name, sa.Column("version", sa.Integer(), server_default="1", nullable=False)
            )
        if "withdrawn_at" not in have:
            op.add_column(
                name,
                sa.Column("withdrawn_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
            )
    _received_rows(inspector)
    if not inspector.has_table("contract_received_change"):
        op.create_table(
            "contract_received_change",
            sa.Column("agreement_id", sa.String(length=_ID), nullable=False),
            sa.Column("record_key", sa.String(length=_ID), nullable=False),
            sa.Column("version", sa.BigInteger(), autoincrement=False, nullable=False),
            sa.Column("order_id", sa.String(length=_ID), nullable=False),
            sa.Column("withdrawn", sa.Boolean(), nullable=False),
            sa.Column("content_sha256", sa.String(length=64), nullable=False),
            sa.Column("source_id", sa.String(length=_ID), nullable=False),
            sa.Column("received_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
            sa.PrimaryKeyConstraint("agreement_id", "record_key", "version"),
        )


def _received_rows(inspector: sa.Inspector) -> None:
    table = "contract_received_row"
    have = {c["name"] for c in inspector.get_columns(table)}
    if "record_key" in have:
        return
    op.add_column(table, sa.Column("record_key", sa.String(length=_ID), nullable=True))
    op.add_column(
        table, sa.Column("version", sa.BigInteger(), server_default="1", nullable=False)
    )
    op.add_column(
        table, sa.Column("withdrawn", sa.Boolean(), server_default=sa.false(), nullable=False)
    )
    rows = sa.table(
        table,
        sa.column("record_key", sa.String()),
        sa.column("source_id", sa.String()),
        sa.column("seq", sa.BigInteger()),
    )
    legacy = sa.literal("legacy:") + rows.c.source_id + sa.literal("#") + sa.cast(
        rows.c.seq, sa.String()
    )
    op.execute(rows.update().values(record_key=legacy))
    with op.batch_alter_table(table) as batch:
        batch.alter_column("record_key", existing_type=sa.String(length=_ID), nullable=False)
        batch.drop_constraint("uq_contract_received_row", type_="unique")
        batch.create_unique_constraint(
            "uq_contract_received_record", ["agreement_id", "record_key"]
        )
        batch.create_index("ix_contract_received_row_source", ["source_id", "seq"])


def downgrade() -> None:
    op.drop_table("contract_received_change")
    with op.batch_alter_table("contract_received_row") as batch:
        batch.drop_index("ix_contract_received_row_source")
        batch.drop_constraint("uq_contract_received_record", type_="unique")
        batch.create_unique_constraint("uq_contract_received_row", ["source_id", "seq"])
        batch.drop_column("withdrawn")
        batch.drop_column("version")
        batch.drop_column("record_key")
    for name in QDM_TABLES:
        with op.batch_alter_table(name) as batch:
            batch.drop_column("withdrawn_at")
            batch.drop_column("version")
