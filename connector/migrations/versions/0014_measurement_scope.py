"""Process readings found by order and by batch in id order, from their indexes.

Revision ID: 0014_measurement_scope
Revises: 0013_inspection_serial
Create Date: 2026-12-04 18:00:00

A pull of process data along an order's genealogy reads the readings of the order and of
each batch of its genealogy in id order (`connector.id_merge`). ``ix_measurement_batch``
on ``batch_id`` alone gives a batch's readings in id order on SQLite (its entries end in
the rowid) but not on PostgreSQL, and nothing indexed ``order_id``, so the read walked
the whole table. This revision makes the batch index ``(batch_id, id)`` and adds
``ix_measurement_order`` on ``(order_id, id)``. Only indexes change; no row does.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_measurement_scope"
down_revision = "0013_inspection_serial"
branch_labels = None
depends_on = None

_TABLE = "qdm_measurement"
_WANTED = {
    "ix_measurement_batch": ["batch_id", "id"],
    "ix_measurement_order": ["order_id", "id"],
}


def upgrade() -> None:
    # Idempotent, like the earlier revisions: an index already as wanted is kept.
    have = {i["name"]: i["column_names"] for i in sa.inspect(op.get_bind()).get_indexes(_TABLE)}
    for name, columns in _WANTED.items():
        if have.get(name) == columns:
            continue
        if name in have:
            op.drop_index(name, table_name=_TABLE)
        op.create_index(name, _TABLE, columns)


def downgrade() -> None:
    op.drop_index("ix_measurement_order", table_name=_TABLE)
    op.drop_index("ix_measurement_batch", table_name=_TABLE)
    op.create_index("ix_measurement_batch", _TABLE, ["batch_id"])
