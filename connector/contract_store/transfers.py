"""Transfers: the data-transfer processes run under agreements, with their cursors.

Why separate: a transfer is a message-driven process like a negotiation, but what it
carries is a position in the provider's data. Its row holds the transfer's scope
(purpose, order, fields, the watermark it continued from), the cursor reached (offset,
running digest, provider position; see `connector.transfer_wire`) and, once complete, the
final checkpoint.

Invariants: a transfer is saved by compare-and-set on the number of messages applied
*and* on the cursor it was loaded at (see `common.save_process`), so two handlers
cannot both advance it from the same place. The consumer advances its cursor in the
same transaction that stores the rows it covers (`received.commit_transfer_batch`,
through `save_transfer_in`): a crash leaves the cursor exactly where the stored rows
stop. A completed pull's final position is the watermark an incremental pull of the
same scope continues from (`last_completed_pull`).

Why the scope's key and the watermark are columns of their own: a consumer that pulls
every few minutes keeps a transfer per pull, tens of thousands a month. Finding the
last completed pull by loading every transfer of the agreement (two queries each) and
comparing scopes took 5.6 s at 20,000 pulls (SQLite; 24 s on PostgreSQL), before each
incremental pull and growing with every one; ``ix_contract_transfer_pull`` on
(agreement, scope key, watermark, created) finds it in one index search. Listings read
their transfers in one statement and their message histories in a few (`transfers`), a
page at a time where asked, in creation order (``ix_contract_transfer_created``).

A finished transfer is not kept for ever: the retention sweep prunes it once nothing
more can be done with it (`transfer_prune`), and leaves a note of it
(`transfer_records`), so that asking for it again says it is no longer held
(`TransferGoneError`) rather than that there never was one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    select,
)
from sqlmodel.sql.sqltypes import UTCDateTime

from qdspace.connector.contract_errors import UnknownContractError
from qdspace.connector.contract_store.common import (
    CONTRACT_METADATA,
    ID_LENGTH,
    TableStore,
    count_rows,
    histories,
    listing,
    opened_by,
    save_process,
    saving,
    seen_messages,
)
from qdspace.connector.contract_store.outbox import OutboxMessage, OutboxStore
from qdspace.connector.contract_store.transfer_records import (
    TransferGone,
    TransferGoneError,
    transfer_gone_table,
)
from qdspace.connector.negotiation import Role
from qdspace.connector.transfer import TransferProcess, TransferState
from qdspace.connector.transfer_wire import Checkpoint, view_cursor

transfer_table = Table(
    "contract_transfer",
    CONTRACT_METADATA,
    Column("transfer_id", String(ID_LENGTH), primary_key=True),
    Column("agreement_id", String(ID_LENGTH), nullable=False, index=True),
    Column("role", String(16), nullable=False),
    Column("provider_id", String(ID_LENGTH), nullable=False),
    Column("consumer_id", String(ID_LENGTH), nullable=False),
    Column("state", String(16), nullable=False),
    Column("scope_json", Text, nullable=False),
    Column("cursor_offset", BigInteger, nullable=False),
    Column("cursor_digest", LargeBinary, nullable=False),
    Column("cursor_position", String(256), nullable=False),
    Column("final_offset", BigInteger, nullable=True),
    Column("final_digest", LargeBinary, nullable=True),
    Column("final_position", String(256), nullable=True),
    Column("reason", Text, nullable=True),
    Column("message_count", Integer, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    # what an incremental pull looks up (`last_completed_pull`): the scope without its
    # `since` (`scope_key`), and the final position as a number (`watermark`)
    Column("scope_key", String(64), nullable=True),
    Column("watermark", BigInteger, nullable=True),
    Index("ix_contract_transfer_pull", "agreement_id", "scope_key", "watermark", "created_at"),
    # listings in the order transfers were made, a page at a time (the console: newest)
    Index("ix_contract_transfer_created", "created_at", "transfer_id"),
    # what a consumer opened here lately (`opened_by`; revision 0026_member_quotas)
    Index("ix_contract_transfer_opened", "consumer_id", "created_at"),
)
_KIND = "transfer"


def _scope(
    purpose: str | None, order_id: str | None, fields: frozenset[str] | None
) -> dict[str, Any]:
    return {
        "purpose": purpose,
        "order_id": order_id,
        "fields": None if fields is None else sorted(fields),
    }


def scope_key(purpose: str | None, order_id: str | None, fields: frozenset[str] | None) -> str:
    """What makes two pulls of one agreement the same scope, as a fixed-length key. It is
    stored (migration 0018 filled it for older transfers): a change to it needs a
    migration that computes the column again."""
    text = json.dumps(_scope(purpose, order_id, fields), sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def watermark(position: str) -> int:
    """A provider's final position as the row id it names (`view_cursor`); 0 for one that
    names none, which ranks below every other pull of its scope, as it did before."""
    return view_cursor(position) or 0


def _scope_json(process: TransferProcess) -> str:
    scope = _scope(process.purpose, process.order_id, process.fields)
    if process.since:
        scope["since"] = process.since
    return json.dumps(scope, sort_keys=True)


def _values(process: TransferProcess) -> dict[str, Any]:
    final = process.final
    return {
        "agreement_id": process.agreement_id,
        "role": process.role.value,
        "provider_id": process.provider_id,
        "consumer_id": process.consumer_id,
        "state": process.state.value,
        "scope_json": _scope_json(process),
        "cursor_offset": process.checkpoint.offset,
        "cursor_digest": process.checkpoint.digest,
        "cursor_position": process.checkpoint.position,
        "final_offset": None if final is None else final.offset,
        "final_digest": None if final is None else final.digest,
        "final_position": None if final is None else final.position,
        "reason": process.reason,
        "message_count": len(process.seen),
        "created_at": process.created_at,
        "updated_at": process.updated_at,
        "scope_key": scope_key(process.purpose, process.order_id, process.fields),
        "watermark": None if final is None else watermark(final.position),
    }


class TransferStore(TableStore):
    """Save, load and list transfers; find the watermark of an incremental pull."""

    def __init__(self, engine: Engine, outbox: OutboxStore) -> None:
        super().__init__(engine)
        self._outbox = outbox

    def save_transfer_in(
        self, connection: Connection, before: TransferProcess | None, after: TransferProcess
    ) -> None:
        """Save `after` within the caller's transaction (no outbox)."""
        save_process(
            connection,
            transfer_table,
            _KIND,
            after.transfer_id,
            _values(after),
            None if before is None else before.seen,
            after.seen,
            unchanged=None if before is None else {"cursor_offset": before.checkpoint.offset},
        )

    def save_transfer(
        self,
        before: TransferProcess | None,
        after: TransferProcess,
        outbox: Iterable[OutboxMessage] = (),
    ) -> None:
        """Persist `after` (loaded as `before`, None when new) and queue `outbox`, atomically."""
        with saving(self.engine, f"transfer {after.transfer_id}") as connection:
            self.save_transfer_in(connection, before, after)
            self._outbox.enqueue_in(connection, outbox, after.updated_at)

    def load_transfer(self, transfer_id: str) -> TransferProcess:
        table = transfer_table
        with self.engine.connect() as connection:
            row = connection.execute(
                select(table).where(table.c.transfer_id == transfer_id)
            ).first()
            if row is None:
                gone = _gone(connection, transfer_id)
                if gone is not None:
                    raise gone.error()
                raise UnknownContractError(f"no transfer {transfer_id} here")
            seen = seen_messages(connection, _KIND, transfer_id)
        return _process(row, seen)

    def opened_by(self, consumer_id: str, since: datetime) -> int:
        """How many transfers `consumer_id` opened with us since `since` (`common.opened_by`)."""
        return opened_by(self.engine, transfer_table, consumer_id, since)

    def find_transfer(self, transfer_id: str) -> TransferProcess | None:
        try:
            return self.load_transfer(transfer_id)
        except UnknownContractError:
            return None

    def find_transfer_or_gone(self, transfer_id: str) -> TransferProcess | TransferGone | None:
        """The transfer `transfer_id` held here, the note of it once the retention sweep
        pruned it (`connector.transfer_retention`: no new one goes in its place), or None."""
        try:
            return self.load_transfer(transfer_id)
        except TransferGoneError as error:
            return error.gone
        except UnknownContractError:
            return None

    def transfers(
        self,
        agreement_id: str | None = None,
        *,
        role: Role | None = None,
        state: TransferState | None = None,
        limit: int | None = None,
        offset: int = 0,
        newest_first: bool = False,
    ) -> list[TransferProcess]:
        """The transfers (of ``agreement_id``, ``role``, ``state`` where given) in the order
        they were created (``newest_first``: the reverse), ``limit`` of them from
        ``offset`` (None: all): one statement for the transfers, and their message
        histories read together (`common.histories`)."""
        table = transfer_table
        statement = select(table)
        if agreement_id is not None:
            statement = statement.where(table.c.agreement_id == agreement_id)
        if role is not None:
            statement = statement.where(table.c.role == role.value)
        if state is not None:
            statement = statement.where(table.c.state == state.value)
        order = (table.c.created_at, table.c.transfer_id)
        statement = listing(statement, order, limit=limit, offset=offset, newest_first=newest_first)
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
            seen = histories(connection, _KIND, [r.transfer_id for r in rows])
        return [_process(r, seen.get(r.transfer_id, ())) for r in rows]

    def count_transfers(self, agreement_id: str | None = None) -> int:
        table = transfer_table
        where = [] if agreement_id is None else [table.c.agreement_id == agreement_id]
        return count_rows(self.engine, table, *where)

    def last_completed_pull(
        self,
        agreement_id: str,
        order_id: str | None,
        fields: frozenset[str] | None,
        purpose: str | None,
    ) -> TransferProcess | None:
        """The consumer's latest completed pull of exactly this scope (its final position is
        the watermark an incremental pull continues from), None when there is none: the
        highest watermark of the scope, the latest created of equal ones; one search of
        ``ix_contract_transfer_pull``."""
        table = transfer_table
        found = (
            select(table.c.transfer_id)
            .where(
                table.c.agreement_id == agreement_id,
                table.c.scope_key == scope_key(purpose, order_id, fields),
                table.c.watermark.is_not(None),
                table.c.role == Role.CONSUMER.value,
                table.c.state == TransferState.COMPLETED.value,
            )
            .order_by(table.c.watermark.desc(), table.c.created_at.desc())
            .limit(1)
        )
        with self.engine.connect() as connection:
            transfer_id = connection.execute(found).scalar_one_or_none()
        return None if transfer_id is None else self.load_transfer(transfer_id)


def _gone(connection: Connection, transfer_id: str) -> TransferGone | None:
    """The note of `transfer_id` if it was held here and pruned (`transfer_records`)."""
    table = transfer_gone_table
    row = connection.execute(select(table).where(table.c.transfer_id == transfer_id)).first()
    if row is None:
        return None
    return TransferGone(
        row.transfer_id,
        row.agreement_id,
        Role(row.role),
        row.consumer_id,
        row.state,
        row.ended_at,
        row.pruned_at,
    )


def _process(row: Any, seen: tuple[Any, ...]) -> TransferProcess:
    """A transfer as its row and its message history hold it."""
    scope = json.loads(row.scope_json)
    final = None
    if row.final_offset is not None:
        final = Checkpoint(row.final_offset, bytes(row.final_digest), row.final_position)
    return TransferProcess(
        transfer_id=row.transfer_id,
        agreement_id=row.agreement_id,
        role=Role(row.role),
        provider_id=row.provider_id,
        consumer_id=row.consumer_id,
        state=TransferState(row.state),
        checkpoint=Checkpoint(row.cursor_offset, bytes(row.cursor_digest), row.cursor_position),
        created_at=row.created_at,
        updated_at=row.updated_at,
        final=final,
        reason=row.reason,
        seen=seen,
        purpose=scope["purpose"],
        order_id=scope["order_id"],
        fields=None if scope["fields"] is None else frozenset(scope["fields"]),
        since=scope.get("since", ""),
    )
