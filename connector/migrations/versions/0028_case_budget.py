"""Bound what a member makes a node keep of quality cases: a running total of bytes per
member, and the cases it opened lately counted from an index.

Revision ID: 0028_case_budget
Revises: 0027_outbox_unsent
Create Date: 2026-12-06 09:00:00

A quality case needs no agreement, and the only bound on what a member could make its
peer keep was 10,000 cases per opener: one opening fits ~240 KB under the 256 KiB
request cap and each move adds up to 16 KB, so one member could write gigabytes into a
receiver's database in minutes. A node now keeps at most ``case_bytes_per_member``
bytes of case data from a member and takes at most ``cases_per_member_hour`` new cases
from it in any hour (`connector.contract_store.cases.CaseBudget`):

- ``contract_quality_case_usage``: per member, the bytes of the case events it
  authored as `kept_bytes` costs them, kept in the transaction of each append (no sum
  over the member's events per event). Filled here from the events kept before, with
  the live cost function, on purpose (like ``0020_case_listing``): the total must be
  what the live code would have counted;
- ``ix_contract_quality_case_event_opened``: the OPEN events by ``(author_id,
  kept_at)`` (partial, ``WHERE step = 'OPEN'``), which the hourly count reads.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from qdspace.connector.contract_store.cases import kept_bytes

revision = "0028_case_budget"
down_revision = "0027_outbox_unsent"
branch_labels = None
depends_on = None

_USAGE = "contract_quality_case_usage"
_EVENTS = "contract_quality_case_event"
_CASES = "contract_quality_case"
_INDEX = "ix_contract_quality_case_event_opened"
_OPEN = sa.text("step = 'OPEN'")


def upgrade() -> None:
    # Idempotent, like the earlier revisions: what is there already is kept.
    bind = op.get_bind()
    found = sa.inspect(bind)
    if _INDEX not in {i["name"] for i in found.get_indexes(_EVENTS)}:
        op.create_index(
            _INDEX, _EVENTS, ["author_id", "kept_at"], sqlite_where=_OPEN, postgresql_where=_OPEN
        )
    if found.has_table(_USAGE):
        return
    usage = op.create_table(
        _USAGE,
        sa.Column("member_id", sa.String(128), primary_key=True),
        sa.Column("kept_bytes", sa.BigInteger(), nullable=False),
    )
    assert usage is not None
    op.bulk_insert(usage, [{"member_id": m, "kept_bytes": n} for m, n in _totals(bind).items()])


def _totals(bind: sa.Connection) -> dict[str, int]:
    """What each author's events kept so far cost (`kept_bytes`), read a row at a time."""
    events = sa.table(
        _EVENTS,
        sa.column("opener_id", sa.String),
        sa.column("case_id", sa.String),
        sa.column("author_id", sa.String),
        sa.column("step", sa.String),
        sa.column("data", sa.LargeBinary),
        sa.column("signature", sa.LargeBinary),
    )
    cases = sa.table(
        _CASES,
        sa.column("opener_id", sa.String),
        sa.column("case_id", sa.String),
        sa.column("subject", sa.Text),
    )
    opening = sa.and_(
        events.c.step == "OPEN",
        cases.c.opener_id == events.c.opener_id,
        cases.c.case_id == events.c.case_id,
    )
    statement = sa.select(
        events.c.author_id,
        sa.func.length(events.c.data),
        sa.func.length(events.c.signature),
        cases.c.subject,
    ).select_from(events.outerjoin(cases, opening))
    totals: dict[str, int] = {}
    for author, data, signature, subject in bind.execute(statement):
        totals[author] = totals.get(author, 0) + kept_bytes(data, signature, subject)
    return totals


def downgrade() -> None:
    op.drop_table(_USAGE)
    op.drop_index(_INDEX, table_name=_EVENTS)
