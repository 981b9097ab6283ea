"""A peer's pid names one process of a kind with that peer: a unique key on the DSP bindings.

Revision ID: 0030_dsp_peer_pid
Revises: 0029_transfer_prune
Create Date: 2026-12-07 09:00:00

A provider looked a consumer's retried ContractRequestMessage up by its consumerPid
before it bound a new negotiation to it, and nothing stopped two requests of one
consumerPid sent at once from both finding none: each opened a negotiation of its own
(four at once opened four, with four providerPids), and a later retry was answered by
whichever of them the database returned first. ``dsp_process`` now holds each
``(kind, peer_id, peer_pid)`` once (`connector.contract_store.dsp`); bindings whose
peer's pid is not known yet (NULL) never meet.

A database that took such requests holds duplicates already, and the key could not be
made over them. Of each set the first is kept: the binding of the process opened first
(by its ``created_at``; one whose process is gone comes last, ties by local id). The
others' bindings are deleted: their processes stay as they are, no longer reachable
over DSP, as the retries that opened them never learnt of them apart from the one
answer each got.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0030_dsp_peer_pid"
down_revision = "0029_transfer_prune"
branch_labels = None
depends_on = None

_TABLE = "dsp_process"
_KEY = "uq_dsp_process_peer_pid"
_COLUMNS = ["kind", "peer_id", "peer_pid"]
#: where each kind's processes are, and when each was opened
_OPENED = {
    "negotiation": ("contract_negotiation", "negotiation_id"),
    "transfer": ("contract_transfer", "transfer_id"),
}

logger = logging.getLogger("connector.migrations")


def _first_kept(rows: list[Any]) -> list[Any]:
    """The rows of one set of duplicates but the first (see the module docstring)."""
    ordered = sorted(rows, key=lambda r: (r.opened is None, str(r.opened or ""), r.local_id))
    return ordered[1:]


def _drop_duplicates(bind: sa.Connection) -> int:
    """Delete all but the first binding of each ``(kind, peer_id, peer_pid)`` held more
    than once; the number deleted."""
    process = sa.table(_TABLE, *(sa.column(c) for c in ("local_id", *_COLUMNS)))
    sets = bind.execute(
        sa.select(process.c.kind, process.c.peer_id, process.c.peer_pid)
        .where(process.c.peer_pid.is_not(None))
        .group_by(process.c.kind, process.c.peer_id, process.c.peer_pid)
        .having(sa.func.count() > 1)
    ).all()
    dropped = 0
    for kind, peer_id, peer_pid in sets:
        opened: Any = sa.null()
        found = process
        if kind in _OPENED:
            name, key = _OPENED[kind]
            held = sa.table(name, sa.column(key), sa.column("created_at"))
            found = process.outerjoin(held, held.c[key] == process.c.local_id)
            opened = held.c.created_at
        rows = bind.execute(
            sa.select(process.c.local_id, opened.label("opened"))
            .select_from(found)
            .where(
                process.c.kind == kind,
                process.c.peer_id == peer_id,
                process.c.peer_pid == peer_pid,
            )
        ).all()
        for row in _first_kept(rows):
            bind.execute(
                sa.delete(process).where(
                    process.c.kind == kind, process.c.local_id == row.local_id
                )
            )
            dropped += 1
    return dropped


def upgrade() -> None:
    # Idempotent, like the earlier revisions: a key already there (a table made from
    # the models before this revision) is kept.
    bind = op.get_bind()
    have = {c["name"] for c in sa.inspect(bind).get_unique_constraints(_TABLE)}
    if _KEY in have:
        return
    dropped = _drop_duplicates(bind)
    if dropped:
        logger.warning(
            "%s: deleted %d bindings of a peer's pid that another process of the same "
            "peer held too (the first opened kept)",
            _TABLE,
            dropped,
        )
    with op.batch_alter_table(_TABLE) as batch:
        batch.create_unique_constraint(_KEY, _COLUMNS)


def downgrade() -> None:
    with op.batch_alter_table(_TABLE) as batch:
        batch.drop_constraint(_KEY, type_="unique")
