"""What every aggregate of the contract store shares: one schema, one engine, and one
way to save a process that someone else may be saving at the same moment.

The contract store is split by aggregate (negotiations, agreements, transfers, the
outbox, the received mirror, closures, receipts, notices), each module owning its own
tables. They still share a database and, often, a transaction: a negotiation saves
the agreement it reached and the replies it queued in one commit. This module holds
what makes that possible without any aggregate reaching into another's tables:

- `CONTRACT_METADATA`, the one `MetaData` every aggregate's tables join. The Alembic
  migration ``0002_contracts`` (and later ones) create exactly these tables;
  `ensure_schema` runs the node's migrations, so the store shares the node's QDM
  database or lives in its own.
- `TableStore`, the base of each aggregate's store: the engine, and the dialect's
  INSERT, whose ON CONFLICT clauses SQLite and PostgreSQL spell alike.
- Optimistic locking (`save_process`, `saving`). A negotiation or a transfer is a
  state machine driven by messages; the ids and fingerprints of every message
  applied are kept (`contract_message`), so a retried message is recognised after a
  restart. A process is saved by compare-and-set on the number of messages applied:
  two handlers racing on one process cannot both win; the loser gets
  `ConcurrentUpdateError`, reloads and re-applies, which the idempotent state
  machines turn into a no-op. Two processes inserting the same new id meet a unique
  key instead, which `saving` reports the same way.

A method named ``..._in(connection, ...)`` works inside the caller's transaction: it is
how one aggregate's save takes another's step into the same commit.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Engine,
    Insert,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    Update,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from qdspace.connector.contract_errors import ContractStoreError

CONTRACT_METADATA = MetaData()
#: The length of every id column (negotiation, agreement, transfer, member, order, ...).
ID_LENGTH = 128

message_table = Table(
    "contract_message",
    CONTRACT_METADATA,
    Column("process_kind", String(16), primary_key=True),
    Column("process_id", String(ID_LENGTH), primary_key=True),
    Column("message_id", String(ID_LENGTH), primary_key=True),
    Column("sequence", Integer, nullable=False),
    Column("fingerprint", String(64), nullable=False),
    UniqueConstraint("process_kind", "process_id", "sequence", name="uq_contract_message_seq"),
)


def ensure_schema(engine: Engine) -> None:
    """Bring the database to the newest schema, contract tables included (Alembic
    revision ``0002_contracts``; idempotent). A node's QDM database already is."""
    from qdspace.connector.storage import migrate  # the node's one migration path

    migrate(engine)


def utc_now() -> datetime:
    return datetime.now(UTC)


class ConcurrentUpdateError(ContractStoreError):
    """Someone else saved this process since it was loaded: reload and apply again."""

    grpc_status = "ABORTED"


class TableStore:
    """The base of an aggregate's store: the engine and the dialect's INSERT (for
    ``on_conflict_do_nothing`` / ``on_conflict_do_update``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        dialect = sqlite if engine.dialect.name == "sqlite" else postgresql
        self._upsert = dialect.insert


@contextmanager
def saving(engine: Engine, what: str) -> Iterator[Connection]:
    """One transaction that saves `what` (``"transfer t-1"``); a unique key it runs
    into means another process saved it first, so it reads as `ConcurrentUpdateError`."""
    try:
        with engine.begin() as connection:
            yield connection
    except IntegrityError:
        raise ConcurrentUpdateError(f"{what} was saved concurrently") from None


#: Statements built once (not per call): building a Core statement and computing its
#: cache key cost more than executing it on SQLite (bench/PROFILE-negotiation.md); a
#: prebuilt one has its cache key memoised, and values go in as bound parameters.
_SEEN = (
    select(message_table.c.message_id, message_table.c.fingerprint)
    .where(
        message_table.c.process_kind == bindparam("kind"),
        message_table.c.process_id == bindparam("pid"),
    )
    .order_by(message_table.c.sequence)
)
_APPEND = insert(message_table)
_PREBUILT: dict[tuple[str, str], Insert | Update] = {}


def prebuilt_insert(table: Table) -> Insert:
    """``INSERT INTO table`` whose columns are the keys of the parameters given."""
    found = _PREBUILT.get((table.name, "insert"))
    if found is None:
        found = _PREBUILT[(table.name, "insert")] = insert(table)
    assert isinstance(found, Insert)
    return found


def _process_update(table: Table, kind: str) -> Update:
    """``UPDATE table SET <the parameters' columns> WHERE {kind}_id = :_pid AND
    message_count = :_count`` (the compare-and-set of `save_process`)."""
    found = _PREBUILT.get((table.name, "update"))
    if found is None:
        key = table.c[f"{kind}_id"]
        found = _PREBUILT[(table.name, "update")] = update(table).where(
            key == bindparam("_pid"), table.c.message_count == bindparam("_count")
        )
    assert isinstance(found, Update)
    return found


def seen_messages(connection: Connection, kind: str, process_id: str) -> tuple[Any, ...]:
    """(message id, fingerprint) of every message the process applied, in order."""
    rows = connection.execute(_SEEN, {"kind": kind, "pid": process_id})
    return tuple((row.message_id, row.fingerprint) for row in rows)


def _append_seen(
    connection: Connection,
    kind: str,
    process_id: str,
    before: Sequence[tuple[str, str]],
    after: Sequence[tuple[str, str]],
) -> None:
    if tuple(after[: len(before)]) != tuple(before):
        raise ContractStoreError(f"{kind} {process_id}: message history was rewritten")
    fresh = [
        {
            "process_kind": kind,
            "process_id": process_id,
            "message_id": message_id,
            "sequence": index,
            "fingerprint": fingerprint,
        }
        for index, (message_id, fingerprint) in enumerate(after)
        if index >= len(before)
    ]
    if fresh:
        connection.execute(_APPEND, fresh)


def save_process(
    connection: Connection,
    table: Table,
    kind: str,
    process_id: str,
    values: Mapping[str, Any],
    before: Sequence[tuple[str, str]] | None,
    after: Sequence[tuple[str, str]],
    *,
    unchanged: Sequence[ColumnElement[bool]] = (),
) -> None:
    """Save one row of a message-driven process (`kind` names it and its id column,
    ``{kind}_id``) and append the messages it applied since it was loaded.

    `before` is the message history it was loaded with (None: it is new, inserted);
    `after` the history now. An existing row is updated only while it still holds
    ``len(before)`` messages and the `unchanged` conditions; otherwise someone saved it
    in between and `ConcurrentUpdateError` is raised."""
    key = table.c[f"{kind}_id"]
    if before is None:
        connection.execute(prebuilt_insert(table), {key.name: process_id, **values})
    else:
        if unchanged:
            statement = (
                update(table)
                .where(key == process_id, table.c.message_count == len(before), *unchanged)
                .values(**values)
            )
            result = connection.execute(statement)
        else:
            result = connection.execute(
                _process_update(table, kind), {**values, "_pid": process_id, "_count": len(before)}
            )
        if result.rowcount != 1:
            raise ConcurrentUpdateError(f"{kind} {process_id} changed since it was loaded")
    _append_seen(connection, kind, process_id, () if before is None else before, after)
