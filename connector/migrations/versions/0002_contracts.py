"""Contract tables: negotiations and their applied messages, signed agreements, transfer
cursors, the outbox, data keys and received rows, order closures, deletion receipts and
the SPC alerts peers sent.

Revision ID: 0002_contracts
Revises: 0001_qdm
Create Date: 2026-11-29 20:05:00

The schema of ``connector.contract_store`` (its ``CONTRACT_METADATA``); a unit test
compares the two, so a change to the tables needs a new revision.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0002_contracts"
down_revision = "0001_qdm"
branch_labels = None
depends_on = None

_ID = 128


def _id(name: str, **kw: object) -> sa.Column:
    return sa.Column(name, sa.String(length=_ID), **kw)


def _at(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sqlmodel.sql.sqltypes.UTCDateTime(), nullable=nullable)


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("contract_negotiation"):
        return  # a node from before this revision made the same tables with create_all
    op.create_table(
        "contract_negotiation",
        _id("negotiation_id", nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        _id("provider_id", nullable=False),
        _id("consumer_id", nullable=False),
        _id("asset_id", nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("offer_json", sa.LargeBinary(), nullable=False),
        _id("agreement_id", nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("message_count", sa.Integer(), nullable=False),
        _at("created_at"),
        _at("updated_at"),
        sa.PrimaryKeyConstraint("negotiation_id"),
    )
    op.create_index(
        "ix_contract_negotiation_state", "contract_negotiation", ["state"], unique=False
    )
    op.create_table(
        "contract_message",
        sa.Column("process_kind", sa.String(length=16), nullable=False),
        _id("process_id", nullable=False),
        _id("message_id", nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("process_kind", "process_id", "message_id"),
        sa.UniqueConstraint(
            "process_kind", "process_id", "sequence", name="uq_contract_message_seq"
        ),
    )
    op.create_table(
        "contract_agreement",
        _id("agreement_id", nullable=False),
        _id("negotiation_id", nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        _id("provider_id", nullable=False),
        _id("consumer_id", nullable=False),
        _id("asset_id", nullable=False),
        sa.Column("canonical", sa.LargeBinary(), nullable=False),
        sa.Column("provider_signature", sa.LargeBinary(), nullable=False),
        sa.Column("consumer_signature", sa.LargeBinary(), nullable=True),
        sa.Column("digest", sa.String(length=64), nullable=False),
        _at("agreed_at"),
        _at("terminated_at", nullable=True),
        sa.Column("termination_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("agreement_id"),
    )
    op.create_table(
        "contract_transfer",
        _id("transfer_id", nullable=False),
        _id("agreement_id", nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        _id("provider_id", nullable=False),
        _id("consumer_id", nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("scope_json", sa.Text(), nullable=False),
        sa.Column("cursor_offset", sa.BigInteger(), nullable=False),
        sa.Column("cursor_digest", sa.LargeBinary(), nullable=False),
        sa.Column("cursor_position", sa.String(length=256), nullable=False),
        sa.Column("final_offset", sa.BigInteger(), nullable=True),
        sa.Column("final_digest", sa.LargeBinary(), nullable=True),
        sa.Column("final_position", sa.String(length=256), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("message_count", sa.Integer(), nullable=False),
        _at("created_at"),
        _at("updated_at"),
        sa.PrimaryKeyConstraint("transfer_id"),
    )
    op.create_index(
        "ix_contract_transfer_agreement_id", "contract_transfer", ["agreement_id"], unique=False
    )
    op.create_table(
        "contract_outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        _id("peer_id", nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        _id("process_id", nullable=False),
        _id("message_id", nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        _at("created_at"),
        _at("next_attempt_at"),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _at("sent_at", nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("peer_id", "message_id", name="uq_contract_outbox_message"),
    )
    op.create_index(
        "ix_contract_outbox_next_attempt_at", "contract_outbox", ["next_attempt_at"], unique=False
    )
    op.create_table(
        "contract_data_key",
        _id("agreement_id", nullable=False),
        _id("order_id", nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=True),
        _at("created_at"),
        _at("destroyed_at", nullable=True),
        sa.PrimaryKeyConstraint("agreement_id", "order_id"),
    )
    op.create_table(
        "contract_received_row",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        _id("agreement_id", nullable=False),
        _id("order_id", nullable=False),
        _id("source_id", nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("nonce", sa.LargeBinary(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        _at("received_at"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("source_id", "seq", name="uq_contract_received_row"),
    )
    op.create_table(
        "contract_order_closure",
        _id("agreement_id", nullable=False),
        _id("order_id", nullable=False),
        _at("closed_at"),
        _at("deadline", nullable=True),
        sa.PrimaryKeyConstraint("agreement_id", "order_id"),
    )
    op.create_index(
        "ix_contract_order_closure_deadline", "contract_order_closure", ["deadline"], unique=False
    )
    op.create_table(
        "contract_deletion_receipt",
        sa.Column("receipt_id", sa.String(length=64), nullable=False),
        _id("agreement_id", nullable=False),
        _id("order_id", nullable=False),
        _id("consumer_id", nullable=False),
        sa.Column("canonical", sa.LargeBinary(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.Column("row_count", sa.BigInteger(), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        _at("deleted_at"),
        sa.PrimaryKeyConstraint("receipt_id"),
        sa.UniqueConstraint("agreement_id", "order_id", name="uq_contract_receipt_duty"),
    )
    op.create_table(
        "contract_quality_alert",
        _id("sender_id", nullable=False),
        _id("alert_id", nullable=False),
        _id("agreement_id", nullable=False),
        _id("order_id", nullable=False),
        _id("station", nullable=False),
        _id("characteristic", nullable=False),
        sa.Column("rule", sa.String(length=16), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("points_json", sa.Text(), nullable=False),
        _at("alert_at"),
        _at("received_at"),
        sa.PrimaryKeyConstraint("sender_id", "alert_id"),
    )
    op.create_index(
        "ix_contract_quality_alert_received_at",
        "contract_quality_alert",
        ["received_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_contract_quality_alert_received_at", table_name="contract_quality_alert")
    op.drop_table("contract_quality_alert")
    op.drop_table("contract_deletion_receipt")
    op.drop_index("ix_contract_order_closure_deadline", table_name="contract_order_closure")
    op.drop_table("contract_order_closure")
    op.drop_table("contract_received_row")
    op.drop_table("contract_data_key")
    op.drop_index("ix_contract_outbox_next_attempt_at", table_name="contract_outbox")
    op.drop_table("contract_outbox")
    op.drop_index("ix_contract_transfer_agreement_id", table_name="contract_transfer")
    op.drop_table("contract_transfer")
    op.drop_table("contract_agreement")
    op.drop_table("contract_message")
    op.drop_index("ix_contract_negotiation_state", table_name="contract_negotiation")
    op.drop_table("contract_negotiation")
