"""The Dataspace Protocol binding: unsigned agreements and the DSP side of each process.

Revision ID: 0008_dsp
Revises: 0007_trace
Create Date: 2026-12-05 09:00:00

A negotiation with a peer that does not sign (a standard DSP connector such as EDC)
reaches an agreement without Ed25519 signatures; ``signed`` on the negotiation and on
the agreement records which kind it is (every earlier row was signed, hence the
default). ``dsp_process`` keeps, per negotiation or transfer run over the DSP binding,
the peer's process id, the callback address its messages go to, the peer it belongs to
and, on the consumer side, the terms asked for (a counter-offer is judged against them).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_dsp"
down_revision = "0007_trace"
branch_labels = None
depends_on = None


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for table in ("contract_negotiation", "contract_agreement"):
        columns = {c["name"] for c in inspector.get_columns(table)}
        if "signed" not in columns:
            with op.batch_alter_table(table) as batch:
                batch.add_column(
                    sa.Column("signed", sa.Boolean(), nullable=False, server_default=sa.true())
                )
    if not inspector.has_table("dsp_process"):
        op.create_table(
            "dsp_process",
            sa.Column("kind", sa.String(length=16), nullable=False),
            sa.Column("local_id", sa.String(length=128), nullable=False),
            sa.Column("role", sa.String(length=16), nullable=False),
            sa.Column("peer_id", sa.String(length=128), nullable=False),
            sa.Column("peer_pid", sa.String(length=128), nullable=True),
            sa.Column("own_pid", sa.String(length=128), nullable=False),
            sa.Column("callback", sa.String(length=2048), nullable=False),
            sa.Column("asked_json", sa.LargeBinary(), nullable=True),
            sa.PrimaryKeyConstraint("kind", "local_id"),
            sa.UniqueConstraint("kind", "own_pid", name="uq_dsp_process_own_pid"),
        )


def downgrade() -> None:
    op.drop_table("dsp_process")
    for table in ("contract_agreement", "contract_negotiation"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("signed")
