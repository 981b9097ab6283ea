"""An index of inspections by serial, so one unit's verdicts are found without a scan.

Revision ID: 0013_inspection_serial
Revises: 0012_received_agreement_no
Create Date: 2026-12-04 17:40:00

A verdict that names only its serial belongs to its product's batch
(`connector.verdict_data`). Without an index on ``qdm_inspection.serial`` both the
listing of one serial's verdicts and the batch filter (which reaches such verdicts
through the serials of the batch's products) read every inspection: 0.4 s and 1.3 s on
a line's million verdicts on SQLite (bench/verdicts.py: 0.55 ms and 3.2 ms with it).
Only the index is added; no row changes.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_inspection_serial"
down_revision = "0012_received_agreement_no"
branch_labels = None
depends_on = None

_INDEX = "ix_inspection_serial"


def upgrade() -> None:
    # Idempotent, like the earlier revisions: tables a newer build created are adopted.
    have = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("qdm_inspection")}
    if _INDEX not in have:
        op.create_index(_INDEX, "qdm_inspection", ["serial"])


def downgrade() -> None:
    op.drop_index(_INDEX, table_name="qdm_inspection")
