"""List an OEM's traces by when they were started, from an index.

Revision ID: 0022_trace_listing
Revises: 0021_received_by_agreement
Create Date: 2026-12-05 13:10:00

The console's traces page (the newest 100) and ``GET /v1/traces`` read every trace this
node had started, each by its own statement with its whole report, and sorted them in
Python. A quality team starts traces every week for years, and a report holds the whole
graph of what was asked across companies. ``(started_at, trace_id)`` lets a listing read
the newest traces first, a page at a time, without their reports.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022_trace_listing"
down_revision = "0021_received_by_agreement"
branch_labels = None
depends_on = None

_TABLE = "trace_report"
_INDEX = "ix_trace_report_started"


def upgrade() -> None:
    # Idempotent, like the earlier revisions: an index already there is kept.
    have = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes(_TABLE)}
    if _INDEX not in have:
        op.create_index(_INDEX, _TABLE, ["started_at", "trace_id"])


def downgrade() -> None:
    op.drop_index(_INDEX, table_name=_TABLE)
