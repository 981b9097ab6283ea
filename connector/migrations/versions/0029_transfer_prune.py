"""Prune finished transfers, note the pruned, and count re-reads in the database.

Revision ID: 0029_transfer_prune
Revises: 0028_case_budget
Create Date: 2026-12-06 10:00:00

Every transfer a node took part in stayed in its database for ever, with the messages it
applied, its DSP binding and its delivery cursor: a consumer pulling every few minutes
left tens of thousands a month on both sides. The retention sweep now prunes the
finished ones that are of no more use (`connector.transfer_retention`,
`connector.contract_store.transfer_prune`); what stays (`connector.contract_store.
transfer_records`):

- ``contract_transfer_gone``: a note of each transfer pruned, so that a consumer asking
  for it again is told it is no longer held;
- ``contract_transfer_act``: each re-read (and charged resume or suspension) a member
  made, counted against its hourly transfer quota. They were counted in memory, and a
  restart gave every member a fresh quota. A node starts with none: what its memory
  held went with the process that held it;
- ``contract_transfer_prune``: when the sweep last pruned, so that it prunes once an
  hour, not on every run.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import UTCDateTime

revision = "0029_transfer_prune"
down_revision = "0028_case_budget"
branch_labels = None
depends_on = None

_GONE = "contract_transfer_gone"
_ACT = "contract_transfer_act"
_PRUNE = "contract_transfer_prune"


def upgrade() -> None:
    # Idempotent, like the earlier revisions: a table already there is kept.
    have = set(sa.inspect(op.get_bind()).get_table_names())
    if _GONE not in have:
        op.create_table(
            _GONE,
            sa.Column("transfer_id", sa.String(128), primary_key=True),
            sa.Column("agreement_id", sa.String(128), nullable=False),
            sa.Column("role", sa.String(16), nullable=False),
            sa.Column("consumer_id", sa.String(128), nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("ended_at", UTCDateTime(), nullable=False),
            sa.Column("pruned_at", UTCDateTime(), nullable=False),
        )
        op.create_index("ix_contract_transfer_gone_pruned_at", _GONE, ["pruned_at"])
    if _ACT not in have:
        op.create_table(
            _ACT,
            sa.Column(
                "act_id",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                primary_key=True,
                autoincrement=True,
            ),
            sa.Column("member_id", sa.String(128), nullable=False),
            sa.Column("at", UTCDateTime(), nullable=False),
        )
        op.create_index("ix_contract_transfer_act_member", _ACT, ["member_id", "at"])
    if _PRUNE not in have:
        op.create_table(
            _PRUNE,
            sa.Column("job", sa.String(32), primary_key=True),
            sa.Column("ran_at", UTCDateTime(), nullable=False),
        )


def downgrade() -> None:
    op.drop_table(_PRUNE)
    op.drop_index("ix_contract_transfer_act_member", table_name=_ACT)
    op.drop_table(_ACT)
    op.drop_index("ix_contract_transfer_gone_pruned_at", table_name=_GONE)
    op.drop_table(_GONE)
