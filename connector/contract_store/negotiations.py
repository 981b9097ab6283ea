"""Negotiations: the contract-negotiation processes this node takes part in.

Why separate: a negotiation is driven by a peer's messages and is the one process
whose save spans three aggregates. When it applies a message it may reach an
agreement and it usually owes the peer an answer; the new state, the agreement
(`agreements`) and the answer (`outbox`) are committed in one transaction, so a
crash never leaves an agreement without the negotiation that reached it, nor a
state change whose reply is lost (or a reply to a change that rolled back).

Invariants: a negotiation is saved by compare-and-set on the number of messages it
applied, with the ids of those messages kept to recognise a retry after a restart
(see `common.save_process`). `update_negotiation` is the safe way to change one:
load, apply, save; on a concurrent update it reloads and applies again, which the
idempotent state machine (`connector.negotiation`) turns into a no-op when the other
handler already applied the same message.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    LargeBinary,
    Select,
    String,
    Table,
    Text,
    func,
    select,
    true,
)
from sqlmodel.sql.sqltypes import UTCDateTime

from qdspace.connector import held_connection
from qdspace.connector.agreement_memo import Memo, policy_parses_back
from qdspace.connector.contract_errors import UnknownContractError
from qdspace.connector.contract_store.agreements import AgreementStore
from qdspace.connector.contract_store.common import (
    CONTRACT_METADATA,
    ID_LENGTH,
    ConcurrentUpdateError,
    TableStore,
    count_rows,
    listing,
    message_table,
    opened_by,
    save_process,
    saving,
    seen_messages,
    select_by_key,
)
from qdspace.connector.contract_store.dsp import dsp_table
from qdspace.connector.contract_store.outbox import OutboxMessage, OutboxStore
from qdspace.connector.negotiation import Negotiation, NegotiationState, Role, offer_json
from qdspace.policies.codec import parse_policy
from qdspace.policies.model import Policy

negotiation_table = Table(
    "contract_negotiation",
    CONTRACT_METADATA,
    Column("negotiation_id", String(ID_LENGTH), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("provider_id", String(ID_LENGTH), nullable=False),
    Column("consumer_id", String(ID_LENGTH), nullable=False),
    Column("asset_id", String(ID_LENGTH), nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("offer_json", LargeBinary, nullable=False),
    Column("agreement_id", String(ID_LENGTH), nullable=True),
    Column("reason", Text, nullable=True),
    Column("message_count", Integer, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    # False: the peer does not sign (the DSP binding; revision 0008_dsp)
    Column("signed", Boolean, nullable=False, server_default=true()),
    # what a consumer opened here lately (`opened_by`; revision 0026_member_quotas)
    Index("ix_contract_negotiation_opened", "consumer_id", "created_at"),
)
_KIND = "negotiation"
_LOAD, _COLUMNS = select_by_key(negotiation_table, "negotiation_id")
_Row = namedtuple("_Row", _COLUMNS)  # type: ignore[misc]
#: offers by the JSON stored for them (`agreement_memo.Memo`): the offer a negotiation
#: saved is not parsed again when it is loaded for the next message (a provider saves the
#: request's offer and loads it for the countersignature). Only offers that parse back to
#: themselves are kept (`policy_parses_back`), so a load reads what parsing would give
_OFFERS: Memo[bytes, Policy] = Memo()


def _offer(data: bytes) -> Policy:
    found = _OFFERS.get(data)
    return parse_policy(data) if found is None else found


def _keep_offer(data: bytes | None, offer: Policy) -> None:
    if data is not None and policy_parses_back(offer):
        _OFFERS.put(data, offer)


def _delete_chosen(engine: Engine, chosen: Select[Any]) -> int:
    """Delete the negotiations whose ids `chosen` selects, with their messages and their
    DSP bindings (a negotiation opened over the DSP binding), in one transaction; how
    many (a prune's batch)."""
    with engine.begin() as connection:
        ids = list(connection.execute(chosen).scalars())
        if not ids:
            return 0
        connection.execute(
            message_table.delete().where(
                message_table.c.process_kind == _KIND, message_table.c.process_id.in_(ids)
            )
        )
        connection.execute(
            dsp_table.delete().where(dsp_table.c.kind == _KIND, dsp_table.c.local_id.in_(ids))
        )
        connection.execute(
            negotiation_table.delete().where(negotiation_table.c.negotiation_id.in_(ids))
        )
    return len(ids)


class NegotiationStore(TableStore):
    """Save, load and list negotiations."""

    def __init__(self, engine: Engine, agreements: AgreementStore, outbox: OutboxStore) -> None:
        super().__init__(engine)
        self._agreements = agreements
        self._outbox = outbox

    def prune_ended(self, before: datetime, limit: int = 1000) -> int:
        """Delete up to `limit` negotiations that ended without an agreement (TERMINATED,
        no agreement id) and last changed before `before`, with their messages; how many.

        Why: every request a member sends is kept with its negotiation, refused or not,
        and nothing took them away again; a member's quota bounds how many it opens an
        hour, not how many are kept. A refusal is answered at once and a retry of it
        comes within moments, so one that ended long ago is nobody's business any more
        (an agreement, and the negotiation that reached it, is kept with its duties)."""
        table = negotiation_table
        ended = (
            select(table.c.negotiation_id)
            .where(
                table.c.state == NegotiationState.TERMINATED.value,
                table.c.agreement_id.is_(None),
                table.c.updated_at < before,
            )
            .limit(limit)
        )
        return _delete_chosen(self.engine, ended)

    def prune_ended_beyond(
        self, per_member: int, opened_before: datetime, limit: int = 1000
    ) -> int:
        """Delete up to `limit` of the negotiations a member opened with us (we are the
        provider) that ended without an agreement, beyond the `per_member` newest of that
        member's (by last change), with their messages; how many.

        Why: `prune_ended` bounds how long a refused request is kept, not how many; at
        its quota a member has hundreds of requests an hour refused, each with a policy of
        up to `check_policy_size`, and all of them were kept for the whole keep. The
        newest `per_member` are kept (a member's recent refusals, for the operator to
        read); nothing is taken from a negotiation that reached an agreement, one still
        under way, nor one we opened as consumer (its ``consumer_id`` is our own id).

        Cost: each call ranks every refused negotiation a member opened with us, found
        through the index on ``state`` (the ranking needs no index of its own: the
        prune runs hourly, and these rows are bounded by this cap and the quota of an
        hour, members times (cap + quota)); on SQLite reading a row's ``updated_at``
        walks its stored offer, which is what the cap bounds.

        Only negotiations opened before `opened_before` are taken: the member's hourly
        quota counts the negotiations it opened within the hour, so one deleted within
        that window would give the member its quota again (with a quota above the cap,
        a member could open twice its quota an hour)."""
        table = negotiation_table
        rank = (
            func.row_number()
            .over(
                partition_by=table.c.consumer_id,
                order_by=(table.c.updated_at.desc(), table.c.negotiation_id.desc()),
            )
            .label("rank")
        )
        ranked = (
            select(table.c.negotiation_id, table.c.created_at, rank)
            .where(
                table.c.state == NegotiationState.TERMINATED.value,
                table.c.agreement_id.is_(None),
                table.c.role == Role.PROVIDER.value,
            )
            .subquery()
        )
        beyond = (
            select(ranked.c.negotiation_id)
            .where(ranked.c.rank > per_member, ranked.c.created_at < opened_before)
            .limit(limit)
        )
        return _delete_chosen(self.engine, beyond)

    def save_negotiation(
        self,
        before: Negotiation | None,
        after: Negotiation,
        outbox: Iterable[OutboxMessage] = (),
        *,
        also: Callable[[Connection], None] | None = None,
    ) -> None:
        """Persist `after` (loaded as `before`, None when new) and queue `outbox`, atomically
        (with what `also` writes on the same connection: a DSP binding)."""
        with saving(self.engine, f"negotiation {after.negotiation_id}") as connection:
            kept = self._save_in(connection, before, after, outbox)
            if also is not None:
                also(connection)
        _keep_offer(kept, after.offer)

    def _save_in(
        self,
        connection: Connection,
        before: Negotiation | None,
        after: Negotiation,
        outbox: Iterable[OutboxMessage],
    ) -> bytes | None:
        """`save_negotiation` in the caller's transaction; the offer's JSON when written."""
        values: dict[str, Any] = {
            "role": after.role.value,
            "provider_id": after.provider_id,
            "consumer_id": after.consumer_id,
            "asset_id": after.asset_id,
            "state": after.state.value,
            "agreement_id": None
            if after.agreement is None
            else after.agreement.agreement.agreement_id,
            "reason": after.reason,
            "message_count": len(after.seen),
            "created_at": after.created_at,
            "updated_at": after.updated_at,
            "signed": after.signed,
        }
        written = None
        if before is None or after.offer is not before.offer:  # else the stored JSON stands
            written = values["offer_json"] = offer_json(after.offer)
        seen = None if before is None else before.seen
        save_process(
            connection, negotiation_table, _KIND, after.negotiation_id, values, seen, after.seen
        )
        stored = None if before is None else before.agreement
        if after.agreement is not None and after.agreement is not stored:
            # (the same object as loaded or last saved: its row stands as it is)
            self._agreements.save_agreement_in(
                connection, after.agreement, after.role, stored=stored
            )
        self._outbox.enqueue_in(connection, outbox, after.updated_at)
        return written

    def load_negotiation(self, negotiation_id: str) -> Negotiation:
        with held_connection.connect(self.engine) as connection:
            return self._load_in(connection, negotiation_id)

    def _load_in(self, connection: Connection, negotiation_id: str) -> Negotiation:
        found = _LOAD.first(connection, (negotiation_id,))
        if found is None:
            raise UnknownContractError(f"no negotiation {negotiation_id} here")
        row: Any = _Row._make(found)
        seen = seen_messages(connection, _KIND, negotiation_id)
        signed = None
        if row.agreement_id is not None:
            signed = self._agreements.agreement_in(connection, row.agreement_id).signed
        return Negotiation(
            negotiation_id=row.negotiation_id,
            role=Role(row.role),
            provider_id=row.provider_id,
            consumer_id=row.consumer_id,
            asset_id=row.asset_id,
            state=NegotiationState(row.state),
            offer=_offer(bytes(row.offer_json)),
            created_at=row.created_at,
            updated_at=row.updated_at,
            agreement=signed,
            reason=row.reason,
            seen=seen,
            signed=bool(row.signed),
        )

    def count_negotiations(self) -> int:
        return count_rows(self.engine, negotiation_table)

    def opened_by(self, consumer_id: str, since: datetime) -> int:
        """How many negotiations `consumer_id` opened with us since `since` (`common.opened_by`)."""
        return opened_by(self.engine, negotiation_table, consumer_id, since)

    def find_negotiation(self, negotiation_id: str) -> Negotiation | None:
        try:
            return self.load_negotiation(negotiation_id)
        except UnknownContractError:
            return None

    def update_negotiation(
        self,
        negotiation_id: str,
        step: Callable[[Negotiation], tuple[Negotiation, Sequence[OutboxMessage]]],
        opening: Callable[[], tuple[Negotiation, Sequence[OutboxMessage]]] | None = None,
        *,
        attempts: int = 3,
    ) -> Negotiation:
        """Load, apply `step`, save by compare-and-set; retried on a concurrent update.

        `opening`: what to save when there is no such negotiation (None: that raises
        `UnknownContractError`); a concurrent opening of the same id is a concurrent
        update, so the retry applies `step` to the one saved first.

        Load and save share one connection (one pool checkout, not two). The load reads
        no more under a transaction than it did alone: SQLite's driver begins the
        transaction at the first write, and on PostgreSQL the compare-and-set decides
        as before; a save that lost the race still raises `ConcurrentUpdateError`."""
        for attempt in range(attempts):
            try:
                with saving(self.engine, f"negotiation {negotiation_id}") as connection:
                    before: Negotiation | None = None
                    try:
                        before = self._load_in(connection, negotiation_id)
                    except UnknownContractError:
                        if opening is None:
                            raise
                    if before is None:
                        assert opening is not None
                        after, outbox = opening()
                    else:
                        after, outbox = step(before)
                        if after == before and not outbox:
                            return after
                    kept = self._save_in(connection, before, after, outbox)
                _keep_offer(kept, after.offer)
                return after
            except ConcurrentUpdateError:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def negotiations(
        self,
        state: NegotiationState | None = None,
        *,
        limit: int | None = None,
        offset: int = 0,
        newest_first: bool = False,
    ) -> list[Negotiation]:
        """The negotiations (in ``state`` where given) in the order they were opened
        (``newest_first``: the reverse), ``limit`` of them from ``offset`` (None: all);
        only those are loaded (a member may open as many as it likes, declined or not)."""
        table = negotiation_table
        statement = select(table.c.negotiation_id)
        if state is not None:
            statement = statement.where(table.c.state == state.value)
        order = (table.c.created_at, table.c.negotiation_id)
        statement = listing(statement, order, limit=limit, offset=offset, newest_first=newest_first)
        with self.engine.connect() as connection:
            ids = list(connection.execute(statement).scalars())
        return [self.load_negotiation(i) for i in ids]
