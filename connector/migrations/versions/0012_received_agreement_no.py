"""The row index of received rows keyed by an agreement number, not the agreement id.

Revision ID: 0012_received_agreement_no
Revises: 0011_received_cursor
Create Date: 2026-12-03 23:00:00

``uq_contract_received_record`` made every received row an entry of (agreement id,
record key): ~80 bytes, of which the agreement id is the same in every entry of a
delivery. Record keys are random (HMAC pseudonyms), so a 10k-row delivery dirties most
of that index's leaf pages, and its size is the consumer's SQLite cost per record (the
row-index statement and ``COMMIT``; bench/PROFILE-transfer.md, consumer store, rounds 5
and 6). ``contract_received_agreement`` numbers the agreements rows were received under
(one row per agreement, never deleted, so a number is never given twice), and the
unique key becomes (agreement number, record key), ~45 bytes. It stays per agreement:
keys are the provider's choice, and one unique on the key alone would let a provider
reach another agreement's copy by choosing its keys.

This revision numbers the agreements held (in agreement id order), gives every row its
agreement's number and swaps the unique key (on SQLite a rebuild of the table, which
rewrites every row and its index; PostgreSQL alters it in place). The rows keep their
ids, agreement ids, keys, pages and slots: everything stored under 0011 reads, pages,
is kept once and purged as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_received_agreement_no"
down_revision = "0011_received_cursor"
branch_labels = None
depends_on = None

_ID = 128
_ROWS = "contract_received_row"
_NUMBERS = "contract_received_agreement"
_OLD, _NEW = "uq_contract_received_record", "uq_contract_received_record_no"


def upgrade() -> None:
    # Idempotent, like the earlier revisions: a node whose tables a newer build created
    # (before its migrations ran) is adopted as it is.
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table(_NUMBERS):
        op.create_table(
            _NUMBERS,
            sa.Column("agreement_no", sa.Integer(), nullable=False),
            sa.Column("agreement_id", sa.String(length=_ID), nullable=False),
            sa.PrimaryKeyConstraint("agreement_no"),
            sa.UniqueConstraint("agreement_id", name="uq_contract_received_agreement"),
        )
    if "agreement_no" in {c["name"] for c in inspector.get_columns(_ROWS)}:
        return
    op.execute(
        f"INSERT INTO {_NUMBERS} (agreement_id) SELECT DISTINCT agreement_id FROM {_ROWS} "
        f"WHERE agreement_id NOT IN (SELECT agreement_id FROM {_NUMBERS}) ORDER BY agreement_id"
    )
    op.add_column(_ROWS, sa.Column("agreement_no", sa.Integer(), nullable=True))
    op.execute(
        f"UPDATE {_ROWS} SET agreement_no = (SELECT n.agreement_no FROM {_NUMBERS} n "
        f"WHERE n.agreement_id = {_ROWS}.agreement_id)"
    )
    with op.batch_alter_table(_ROWS) as batch:
        batch.alter_column("agreement_no", existing_type=sa.Integer(), nullable=False)
        batch.drop_constraint(_OLD, type_="unique")
        batch.create_unique_constraint(_NEW, ["agreement_no", "record_key"])


def downgrade() -> None:
    with op.batch_alter_table(_ROWS) as batch:
        batch.drop_constraint(_NEW, type_="unique")
        batch.create_unique_constraint(_OLD, ["agreement_id", "record_key"])
        batch.drop_column("agreement_no")
    op.drop_table(_NUMBERS)
