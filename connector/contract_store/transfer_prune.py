"""Prune the finished transfers that are of no more use, in one transaction.

Why separate: which transfers may go is decided by `connector.transfer_retention` (pure);
this module reads the facts it needs (the finished transfers past their keep, the
standing of their agreements) and deletes what it chose, with everything kept for those
transfers only: the messages they applied (``contract_message``), their DSP bindings
(``dsp_process``), on the consumer the cursor of their deliveries
(``contract_received_source``, whose source is the transfer). Agreements, deletion
receipts, received rows and their audit trail are not touched: they are evidence, or
held under the agreement, not the transfer.

Invariants: one transaction deletes a transfer with all of its records and writes the
note of it (`transfer_records`): a crash leaves either all or none. The delete of the
transfer rows repeats the conditions they were chosen by (finished, unchanged since
before the keep), so a transfer that moved on in between (a consumer's re-read that
rewound a completed one) is not deleted, nor are its records. A run takes at most
`PRUNE_BATCH` transfers; while more are due, the next sweep goes on at once, otherwise
the next run is `PRUNE_EVERY` later (the sweep runs every half minute; a run reads every
finished transfer past its keep).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, delete, or_, select

from qdspace.connector.agreement import agreement_from_bytes
from qdspace.connector.contract_store.agreements import agreement_table
from qdspace.connector.contract_store.common import TableStore, message_table
from qdspace.connector.contract_store.dsp import dsp_table
from qdspace.connector.contract_store.outbox import outbox_table
from qdspace.connector.contract_store.receipts import receipt_table
from qdspace.connector.contract_store.received_model import received_source_table
from qdspace.connector.contract_store.transfer_records import (
    ACT_KEEP,
    GONE_KEEP,
    PRUNE_EVERY,
    transfer_act_table,
    transfer_gone_table,
    transfer_prune_table,
)
from qdspace.connector.contract_store.transfers import transfer_table
from qdspace.connector.errors import ConnectorError
from qdspace.connector.negotiation import Role
from qdspace.connector.transfer import TransferState
from qdspace.connector.transfer_retention import (
    FINISHED,
    TRANSFER_KEEP,
    AgreementStanding,
    FinishedTransfer,
    agreement_standing,
    of_no_more_use,
)
from qdspace.policies.errors import PolicyError
from qdspace.policies.model import Policy

#: the most transfers one run prunes (one transaction)
PRUNE_BATCH = 2000
#: ids per ``IN (...)`` list
_CHUNK = 500
_KIND = "transfer"
_JOB = "finished-transfers"


@dataclass(frozen=True)
class TransferPruning:
    """What one run pruned: transfers, and of them their messages, DSP bindings and
    delivery cursors; notes of pruned transfers and members' re-reads that expired;
    `more`: transfers still due (the next sweep goes on)."""

    transfers: int = 0
    messages: int = 0
    bindings: int = 0
    cursors: int = 0
    notes_expired: int = 0
    acts_expired: int = 0
    more: bool = False


class TransferPruner(TableStore):
    """`prune` the finished transfers of no more use (`connector.transfer_retention`)."""

    def prune(
        self,
        now: datetime,
        *,
        keep: timedelta = TRANSFER_KEEP,
        every: timedelta = PRUNE_EVERY,
        limit: int = PRUNE_BATCH,
    ) -> TransferPruning | None:
        """Prune up to `limit` finished transfers that changed last before ``now - keep``
        and are of no more use, with their records, in one transaction, and the notes
        and re-reads past their keep; None when the last complete run was less than
        `every` before `now` (nothing done)."""
        if keep <= timedelta(0):
            raise ValueError("the keep of finished transfers must be positive")
        before = now - keep
        with self.engine.begin() as connection:
            if not _due(connection, now, every):
                return None
            chosen = _chosen(connection, before, now)
            pruned = _delete(connection, self._upsert, chosen[:limit], before, now)
            notes = connection.execute(
                delete(transfer_gone_table).where(transfer_gone_table.c.pruned_at < now - GONE_KEEP)
            ).rowcount
            acts = connection.execute(
                delete(transfer_act_table).where(transfer_act_table.c.at < now - ACT_KEEP)
            ).rowcount
            more = len(chosen) > limit
            if not more:
                _mark(connection, self._upsert, now)
        return TransferPruning(*pruned, notes_expired=notes, acts_expired=acts, more=more)


def _due(connection: Connection, now: datetime, every: timedelta) -> bool:
    """No complete run within `every` before `now` (one dated after `now`, a clock set
    back, does not count)."""
    t = transfer_prune_table
    ran = connection.execute(select(t.c.ran_at).where(t.c.job == _JOB)).scalar_one_or_none()
    return ran is None or not (ran <= now < ran + every)


def _mark(connection: Connection, upsert: Any, now: datetime) -> None:
    t = transfer_prune_table
    statement = upsert(t).values(job=_JOB, ran_at=now)
    connection.execute(
        statement.on_conflict_do_update(index_elements=[t.c.job], set_={"ran_at": now})
    )


def _finished(connection: Connection, before: datetime) -> list[FinishedTransfer]:
    """The finished transfers that changed last before `before`, each with whether a
    later completed pull of its scope holds its watermark (a consumer's completed pull:
    the one `TransferStore.last_completed_pull` no longer returns, found by
    ``ix_contract_transfer_pull``)."""
    t = transfer_table
    later = transfer_table.alias("later")
    superseded = (
        select(later.c.transfer_id)
        .where(
            later.c.agreement_id == t.c.agreement_id,
            later.c.scope_key == t.c.scope_key,
            later.c.watermark.is_not(None),
            later.c.role == Role.CONSUMER.value,
            later.c.state == TransferState.COMPLETED.value,
            or_(
                later.c.watermark > t.c.watermark,
                and_(later.c.watermark == t.c.watermark, later.c.created_at > t.c.created_at),
            ),
        )
        .exists()
    )
    statement = select(
        t.c.transfer_id,
        t.c.agreement_id,
        t.c.role,
        t.c.state,
        t.c.scope_json,
        superseded.label("superseded"),
    ).where(t.c.state.in_([s.value for s in FINISHED]), t.c.updated_at < before)
    return [
        FinishedTransfer(
            r.transfer_id,
            r.agreement_id,
            Role(r.role),
            TransferState(r.state),
            json.loads(r.scope_json).get("order_id"),
            bool(r.superseded) and r.role == Role.CONSUMER.value,
        )
        for r in connection.execute(statement)
    ]


def _standings(
    connection: Connection, agreement_ids: Iterable[str], now: datetime
) -> dict[str, AgreementStanding]:
    """The standing of each of `agreement_ids` held here (one not held is left out)."""
    a, r = agreement_table, receipt_table
    found: dict[str, AgreementStanding] = {}
    for chunk in _chunks(sorted(set(agreement_ids))):
        receipted: dict[str, set[str]] = {}
        rows = connection.execute(
            select(r.c.agreement_id, r.c.order_id).where(r.c.agreement_id.in_(chunk))
        )
        for agreement_id, order_id in rows:
            receipted.setdefault(agreement_id, set()).add(order_id)
        statement = select(
            a.c.agreement_id, a.c.canonical, a.c.terminated_at, a.c.scope_order
        ).where(a.c.agreement_id.in_(chunk))
        for row in connection.execute(statement):
            policy = _policy(bytes(row.canonical))
            orders = frozenset(receipted.get(row.agreement_id, ()))
            found[row.agreement_id] = agreement_standing(
                policy, row.terminated_at, row.scope_order, orders, now
            )
    return found


def _policy(canonical: bytes) -> Policy | None:
    """The policy of an agreement's stored terms; None when they do not read (one such
    agreement must not stop the prune of every other: it is taken as in force)."""
    try:
        return agreement_from_bytes(canonical).policy
    except (ConnectorError, PolicyError):
        return None


def _chosen(connection: Connection, before: datetime, now: datetime) -> list[str]:
    """The ids of the finished transfers past their keep that are of no more use."""
    finished = _finished(connection, before)
    standings = _standings(connection, (f.agreement_id for f in finished), now)
    return sorted(
        f.transfer_id for f in finished if of_no_more_use(f, standings.get(f.agreement_id))
    )


def _delete(
    connection: Connection, upsert: Any, ids: Sequence[str], before: datetime, now: datetime
) -> tuple[int, int, int, int]:
    """Delete the transfers `ids` that are still finished and unchanged since `before`,
    with their messages, DSP bindings and delivery cursors, and note each
    (`transfer_gone_table`): (transfers, messages, bindings, cursors)."""
    t, o = transfer_table, outbox_table
    # a message still owed for it (a peer away for a month) keeps it: its delivery may
    # need the binding and the process it speaks of
    owed = (
        select(o.c.id)
        .where(o.c.process_id == t.c.transfer_id, o.c.sent_at.is_(None), o.c.refused_at.is_(None))
        .exists()
    )
    counts = [0, 0, 0, 0]
    for chunk in _chunks(ids):
        gone = connection.execute(
            delete(t)
            .where(
                t.c.transfer_id.in_(chunk),
                t.c.state.in_([s.value for s in FINISHED]),
                t.c.updated_at < before,
                ~owed,
            )
            .returning(
                t.c.transfer_id,
                t.c.agreement_id,
                t.c.role,
                t.c.consumer_id,
                t.c.state,
                t.c.updated_at,
            )
        ).all()
        if not gone:
            continue
        went = [g.transfer_id for g in gone]
        _note(connection, upsert, gone, now)
        m, d, s = message_table, dsp_table, received_source_table
        counts[0] += len(went)
        counts[1] += connection.execute(
            delete(m).where(m.c.process_kind == _KIND, m.c.process_id.in_(went))
        ).rowcount
        counts[2] += connection.execute(
            delete(d).where(d.c.kind == _KIND, d.c.local_id.in_(went))
        ).rowcount
        counts[3] += connection.execute(delete(s).where(s.c.source_id.in_(went))).rowcount
    return counts[0], counts[1], counts[2], counts[3]


def _note(connection: Connection, upsert: Any, gone: Sequence[Any], now: datetime) -> None:
    """Write the note of each transfer `gone` (an id noted before is noted again: the
    newest note stands)."""
    t = transfer_gone_table
    statement = upsert(t).values(
        [
            {
                "transfer_id": g.transfer_id,
                "agreement_id": g.agreement_id,
                "role": g.role,
                "consumer_id": g.consumer_id,
                "state": g.state,
                "ended_at": g.updated_at,
                "pruned_at": now,
            }
            for g in gone
        ]
    )
    kept = ("agreement_id", "role", "consumer_id", "state", "ended_at", "pruned_at")
    connection.execute(
        statement.on_conflict_do_update(
            index_elements=[t.c.transfer_id],
            set_={name: statement.excluded[name] for name in kept},
        )
    )


def _chunks(ids: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]
