"""Quality cases listed a page at a time, and those with an overdue action found by index,
without folding every case's log.

Revision ID: 0020_case_listing
Revises: 0019_agreement_listing
Create Date: 2026-12-05 09:40:00

Every reader of the cases folded every case's signed log (a statement and ~0.4 ms per
case): the console's investigations page, ``GET /v1/investigations`` and its overdue
actions. An OEM with many suppliers keeps thousands of cases a year (up to 10,000 per
peer). ``contract_quality_case`` gains what those listings took from the fold, written at
each append: how many actions are not done (``open_actions``) and the earliest due date an
overdue action could have (``overdue_from``, `connector.investigation.overdue_from`),
indexed, so that only the cases late at a given day are folded. Cases kept before get
them here, from their logs.

The logs are folded with the live code (`event_from_bytes`, `fold`), not a copy frozen
here, on purpose: a case's signed log is the record both parties and a regulator read
back for as long as it is kept, so the live code must keep folding every stored log,
and a change that broke this migration would break the node first.
`tests/unit/connector/test_case_listing.py` upgrades a 0019 store through it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from qdspace.connector.investigation import fold, overdue_from
from qdspace.connector.investigation_wire import event_from_bytes

revision = "0020_case_listing"
down_revision = "0019_agreement_listing"
branch_labels = None
depends_on = None

_TABLE = "contract_quality_case"
_EVENTS = "contract_quality_case_event"
_INDEX = "ix_contract_quality_case_overdue_from"
#: cases updated per statement while filling the new columns
_CHUNK = 1000


def upgrade() -> None:
    # Idempotent, like the earlier revisions: what is there already is kept (a node from
    # before 0002_contracts made its tables with create_all).
    bind = op.get_bind()
    found = sa.inspect(bind)
    have = {c["name"] for c in found.get_columns(_TABLE)}
    if "open_actions" not in have:
        op.add_column(
            _TABLE, sa.Column("open_actions", sa.Integer(), nullable=False, server_default="0")
        )
    if "overdue_from" not in have:
        op.add_column(_TABLE, sa.Column("overdue_from", sa.Date(), nullable=True))
    if _INDEX not in {i["name"] for i in found.get_indexes(_TABLE)}:
        op.create_index(_INDEX, _TABLE, ["overdue_from"])
    cases = sa.table(
        _TABLE,
        sa.column("opener_id", sa.String),
        sa.column("case_id", sa.String),
        sa.column("open_actions", sa.Integer),
        sa.column("overdue_from", sa.Date),
    )
    events = sa.table(
        _EVENTS,
        sa.column("opener_id", sa.String),
        sa.column("case_id", sa.String),
        sa.column("position", sa.Integer),
        sa.column("data", sa.LargeBinary),
    )
    logs: dict[tuple[str, str], list[bytes]] = {}
    for opener_id, case_id, data in bind.execute(
        sa.select(events.c.opener_id, events.c.case_id, events.c.data).order_by(
            events.c.opener_id, events.c.case_id, events.c.position
        )
    ):
        logs.setdefault((opener_id, case_id), []).append(bytes(data))
    update = (
        cases.update()
        .where(cases.c.opener_id == sa.bindparam("oid"), cases.c.case_id == sa.bindparam("cid"))
        .values(open_actions=sa.bindparam("open"), overdue_from=sa.bindparam("due"))
    )
    filled = []
    for (opener_id, case_id), log in logs.items():
        case = fold(event_from_bytes(data) for data in log)
        filled.append(
            {
                "oid": opener_id,
                "cid": case_id,
                "open": len(case.open_actions()),
                "due": overdue_from(case),
            }
        )
    for start in range(0, len(filled), _CHUNK):
        bind.execute(update, filled[start : start + _CHUNK])


def downgrade() -> None:
    op.drop_index(_INDEX, table_name=_TABLE)
    with op.batch_alter_table(_TABLE) as batch:
        batch.drop_column("overdue_from")
        batch.drop_column("open_actions")
