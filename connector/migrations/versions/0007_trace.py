"""Root-cause traces: calibration certificates (a QDM kind), the reports an OEM's traces
produce, and an index that finds failed inspections by time.

Revision ID: 0007_trace
Revises: 0006_quality_cases
Create Date: 2026-12-03 09:00:00

``qdm_calibration`` holds calibration certificates like any QDM record (versioned,
anchored by the ledger sweep); a trace reads them to judge whether the equipment that
took a reading was calibrated then. ``trace_report`` keeps one row per trace this node
started: its state, what it was started from, the finished report and its SHA-256 (the
bytes anchored as ledger kind ``trace_report``). A trace started from a time window
reads failed inspections by ``inspected_at``, hence ``ix_inspection_time``.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0007_trace"
down_revision = "0006_quality_cases"
branch_labels = None
depends_on = None

_TIME = sqlmodel.sql.sqltypes.UTCDateTime


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if not inspector.has_table("qdm_calibration"):
        op.create_table(
            "qdm_calibration",
            sa.Column("id", sa.Integer(), nullable=False),
            sa.Column("certificate_id", sa.String(length=64), nullable=False),
            sa.Column("equipment", sa.String(length=64), nullable=False),
            sa.Column("valid_from", _TIME(), nullable=False),
            sa.Column("valid_until", _TIME(), nullable=False),
            sa.Column("result", sa.String(length=16), nullable=False),
            sa.Column("issuer", sa.String(length=128), nullable=True),
            sa.Column("version", sa.Integer(), server_default="1", nullable=False),
            sa.Column("withdrawn_at", _TIME(), nullable=True),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("certificate_id"),
        )
        op.create_index(
            "ix_calibration_equipment", "qdm_calibration", ["equipment", "valid_from"]
        )
    if not inspector.has_table("trace_report"):
        op.create_table(
            "trace_report",
            sa.Column("trace_id", sa.String(length=64), nullable=False),
            sa.Column("state", sa.String(length=16), nullable=False),
            sa.Column("started_at", _TIME(), nullable=False),
            sa.Column("finished_at", _TIME(), nullable=True),
            sa.Column("selection", sa.Text(), nullable=False),
            sa.Column("report", sa.LargeBinary(), nullable=True),
            sa.Column("report_sha256", sa.String(length=64), nullable=True),
            sa.Column("error", sa.Text(), nullable=True),
            sa.PrimaryKeyConstraint("trace_id"),
        )
    have = {i["name"] for i in inspector.get_indexes("qdm_inspection")}
    if "ix_inspection_time" not in have:
        op.create_index("ix_inspection_time", "qdm_inspection", ["inspected_at"])


def downgrade() -> None:
    op.drop_index("ix_inspection_time", table_name="qdm_inspection")
    op.drop_table("trace_report")
    op.drop_index("ix_calibration_equipment", table_name="qdm_calibration")
    op.drop_table("qdm_calibration")
