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

from collections import namedtuple
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Dialect,
    Engine,
    Integer,
    MetaData,
    Result,
    Select,
    String,
    Table,
    UniqueConstraint,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.types import TypeEngine
from sqlmodel.sql.sqltypes import UTCDateTime

from qdspace.connector import held_connection
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
    into means another process saved it first, so it reads as `ConcurrentUpdateError`.
    On the thread that holds a connection of `engine` (the node's event loop), on that
    one (`held_connection`)."""
    try:
        with held_connection.begin(engine) as connection:
            yield connection
    except IntegrityError:  # `DriverStatement` raises the driver's as SQLAlchemy's
        raise ConcurrentUpdateError(f"{what} was saved concurrently") from None


def result_processor(kind: TypeEngine[Any], dialect: Dialect) -> Any:
    """What a value of column type `kind` read from the driver goes through to read as it
    does through SQLAlchemy (None: nothing). A UTC time on SQLite (`UTCDateTime`: text,
    no offset) is parsed with its offset in one call, which gives the same aware time as
    SQLAlchemy's parse and then ``replace(tzinfo=UTC)``, ~0.3 against ~2.9 us (a keyword
    ``replace`` alone is ~1 us); text of any other shape goes SQLAlchemy's way."""
    slow = kind.dialect_impl(dialect).result_processor(dialect, None)
    if slow is None or dialect.name != "sqlite" or not isinstance(kind, UTCDateTime):
        return slow
    parse = datetime.fromisoformat

    def read(value: Any) -> Any:
        # the shape SQLAlchemy stores (``YYYY-MM-DD HH:MM:SS[.ffffff]``); any other (an
        # offset of its own, a date alone, which would take the offset for a time) is
        # read SQLAlchemy's way
        if value.__class__ is str and len(value) in (19, 26) and value[10] == " ":
            try:
                return parse(value + "+00:00")
            except ValueError:
                pass
        return slow(value)

    return read


class DriverStatement:
    """One statement handed straight to the DBAPI driver, with prebuilt SQL text.

    Why: even a prebuilt Core statement costs SQLAlchemy's per-execution machinery
    (compile-cache lookup, parameter processing, event dispatch, result setup), which on
    SQLite took more than running the statement (bench/PROFILE-negotiation.md, round 2).
    The hot statements of a negotiation and a transfer's cursor go to the driver on the
    caller's SQLAlchemy connection, so they stay in its transaction: the commit, the
    rollback on an error, and `saving`'s compare-and-set are unchanged.

    `sql` marks its parameters ``?``; on PostgreSQL (psycopg, ``format`` style) each
    becomes ``%s``. Values go through the bind processors of `binds` (the columns'
    types, for the dialect: times as SQLAlchemy stores them), rows read come back through
    the result processors of `results`, so a row reads as it did through SQLAlchemy.
    A driver error is raised as SQLAlchemy's (`IntegrityError` for a unique key)."""

    def __init__(
        self,
        sql: str,
        binds: Sequence[TypeEngine[Any]],
        results: Sequence[TypeEngine[Any]] = (),
    ) -> None:
        self.sql = sql
        self._binds = tuple(binds)
        self._results = tuple(results)
        self._forms: dict[str, tuple[str, list[Any], list[Any]]] = {}

    def _form(self, dialect: Dialect) -> tuple[str, list[Any], list[Any]]:
        found = self._forms.get(dialect.name)
        if found is None:
            sql = self.sql if dialect.name == "sqlite" else self.sql.replace("?", "%s")
            binds = [t.dialect_impl(dialect).bind_processor(dialect) for t in self._binds]
            results = [result_processor(t, dialect) for t in self._results]
            found = self._forms[dialect.name] = (sql, binds, results)
        return found

    @staticmethod
    def _bound(binds: list[Any], params: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(
            value if bind is None or value is None else bind(value)
            for bind, value in zip(binds, params, strict=True)
        )

    def _run(self, connection: Connection, params: Sequence[Any], many: bool) -> Any:
        sql, binds, _ = self._form(connection.dialect)
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        bound: Any = (
            [self._bound(binds, row) for row in params] if many else self._bound(binds, params)
        )
        try:
            if many:
                cursor.executemany(sql, bound)
            else:
                cursor.execute(sql, bound)
        except connection.dialect.loaded_dbapi.Error as error:
            cursor.close()
            raise DBAPIError.instance(
                sql, bound, error, connection.dialect.loaded_dbapi.Error
            ) from error
        return cursor

    def execute(self, connection: Connection, params: Sequence[Any]) -> int:
        """Run it once; the number of rows it changed."""
        cursor = self._run(connection, params, False)
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def execute_many(self, connection: Connection, rows: Sequence[Sequence[Any]]) -> None:
        """Run it once per parameter row (the driver's ``executemany``)."""
        if rows:
            self._run(connection, rows, True).close()

    def all(self, connection: Connection, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """The rows a query returns, each value through its column's result processor."""
        cursor = self._run(connection, params, False)
        try:
            rows = cursor.fetchall()
        finally:
            cursor.close()
        results = self._form(connection.dialect)[2]
        processed = [(i, result) for i, result in enumerate(results) if result is not None]
        if not processed or not rows:
            return [tuple(row) for row in rows]
        # column by column, only the columns whose type processes what it reads: a
        # generator over every value of every row cost ~2 us a row of 12 columns
        columns = list(zip(*rows, strict=True))
        for i, result in processed:
            columns[i] = tuple(None if value is None else result(value) for value in columns[i])
        return list(zip(*columns, strict=True))

    def first(self, connection: Connection, params: Sequence[Any]) -> tuple[Any, ...] | None:
        rows = self.all(connection, params)
        return rows[0] if rows else None


def column_types(table: Table, names: Sequence[str]) -> list[TypeEngine[Any]]:
    return [table.c[name].type for name in names]


@cache
def _opened_by(table: Table) -> DriverStatement:
    return DriverStatement(
        f"SELECT count(*) FROM {table.name} WHERE consumer_id = ? AND created_at >= ?",
        column_types(table, ("consumer_id", "created_at")),
    )


def opened_by(engine: Engine, table: Table, consumer_id: str, since: datetime) -> int:
    """How many of `table`'s processes `consumer_id` (a peer) opened with us at or after
    `since`: the count a provider's per-member quota reads on every request, so straight
    to the driver and from the ``(consumer_id, created_at)`` index alone (a peer's id as
    consumer is on our provider rows only; our own rows as consumer carry our id)."""
    with held_connection.connect(engine) as connection:
        rows = _opened_by(table).all(connection, (consumer_id, since))
    return int(rows[0][0])


def select_by_key(table: Table, key: str) -> tuple[DriverStatement, tuple[str, ...]]:
    """``SELECT <every column> FROM table WHERE key = ?`` and the column names, in order."""
    names = tuple(c.name for c in table.columns)
    sql = f"SELECT {', '.join(names)} FROM {table.name} WHERE {key} = ?"
    return DriverStatement(sql, [table.c[key].type], column_types(table, names)), names


_SEEN = DriverStatement(
    f"SELECT message_id, fingerprint FROM {message_table.name} "
    "WHERE process_kind = ? AND process_id = ? ORDER BY sequence",
    [message_table.c.process_kind.type, message_table.c.process_id.type],
)
_APPEND_COLUMNS = ("process_kind", "process_id", "message_id", "sequence", "fingerprint")
_APPEND = DriverStatement(
    f"INSERT INTO {message_table.name} ({', '.join(_APPEND_COLUMNS)}) VALUES (?, ?, ?, ?, ?)",
    column_types(message_table, _APPEND_COLUMNS),
)
#: (table, kind, columns, conditions) -> the process's INSERT or compare-and-set UPDATE
_PROCESS: dict[tuple[str, str, tuple[str, ...], tuple[str, ...] | None], DriverStatement] = {}


def _process_statement(
    table: Table, kind: str, columns: tuple[str, ...], unchanged: tuple[str, ...] | None
) -> DriverStatement:
    """``INSERT`` of a process row (`unchanged` None) or its compare-and-set ``UPDATE ...
    WHERE {kind}_id = ? AND message_count = ? AND <unchanged> = ?``."""
    found = _PROCESS.get((table.name, kind, columns, unchanged))
    if found is not None:
        return found
    key = f"{kind}_id"
    if unchanged is None:
        names = (key, *columns)
        sql = (
            f"INSERT INTO {table.name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        )
    else:
        names = (*columns, key, "message_count", *unchanged)
        sets = ", ".join(f"{c} = ?" for c in columns)
        where = " AND ".join(f"{c} = ?" for c in (key, "message_count", *unchanged))
        sql = f"UPDATE {table.name} SET {sets} WHERE {where}"
    found = _PROCESS[(table.name, kind, columns, unchanged)] = DriverStatement(
        sql, column_types(table, names)
    )
    return found


def seen_messages(connection: Connection, kind: str, process_id: str) -> tuple[Any, ...]:
    """(message id, fingerprint) of every message the process applied, in order."""
    return tuple(_SEEN.all(connection, (kind, process_id)))


def listing(
    statement: Select[Any],
    order: Sequence[ColumnElement[Any]],
    *,
    limit: int | None = None,
    offset: int = 0,
    newest_first: bool = False,
) -> Select[Any]:
    """``statement`` ordered by ``order`` (which must leave no ties, so that pages never
    overlap; ``newest_first``: descending), ``limit`` rows from ``offset`` (None: all):
    how the stores' listings read a page instead of every row."""
    statement = statement.order_by(*(c.desc() for c in order) if newest_first else order)
    if limit is not None:
        statement = statement.limit(limit)
    return statement.offset(offset) if offset else statement


@cache
def _plain_type(fields: tuple[str, ...]) -> Any:
    return namedtuple("Plain", fields)  # the fields are known only at run time


def plain_rows(result: Result[Any]) -> list[Any]:
    """The rows of ``result`` as named tuples, each column still read by its name: an
    SQLAlchemy ``Row`` finds a column by name in ~0.9 us, a named tuple in ~0.05 us, and
    a reader that takes nine columns of 20,000 rows (a chart's history) spent a third of
    its time there."""
    kind = _plain_type(tuple(result.keys()))
    return [kind._make(row) for row in result]


def count_rows(engine: Engine, table: Table, *where: ColumnElement[bool]) -> int:
    """How many rows of ``table`` meet every condition in ``where`` (all: none given);
    the stores' counts beside their pages (`listing`)."""
    with engine.connect() as connection:
        found = connection.execute(select(func.count()).select_from(table).where(*where))
        return int(found.scalar_one())


#: the processes whose histories one statement of `histories` reads
HISTORY_CHUNK = 500


def histories(
    connection: Connection, kind: str, process_ids: Sequence[str]
) -> dict[str, tuple[Any, ...]]:
    """`seen_messages` of each of ``process_ids`` (a process without messages is left
    out), a statement per `HISTORY_CHUNK` processes instead of one each."""
    table = message_table
    found: dict[str, list[tuple[str, str]]] = {}
    for start in range(0, len(process_ids), HISTORY_CHUNK):
        chunk = process_ids[start : start + HISTORY_CHUNK]
        statement = (
            select(table.c.process_id, table.c.message_id, table.c.fingerprint)
            .where(table.c.process_kind == kind, table.c.process_id.in_(chunk))
            .order_by(table.c.process_id, table.c.sequence)
        )
        for process_id, message_id, fingerprint in connection.execute(statement):
            found.setdefault(process_id, []).append((message_id, fingerprint))
    return {process_id: tuple(seen) for process_id, seen in found.items()}


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
        (kind, process_id, message_id, index, fingerprint)
        for index, (message_id, fingerprint) in enumerate(after)
        if index >= len(before)
    ]
    _APPEND.execute_many(connection, fresh)


def save_process(
    connection: Connection,
    table: Table,
    kind: str,
    process_id: str,
    values: Mapping[str, Any],
    before: Sequence[tuple[str, str]] | None,
    after: Sequence[tuple[str, str]],
    *,
    unchanged: Mapping[str, Any] | None = None,
) -> None:
    """Save one row of a message-driven process (`kind` names it and its id column,
    ``{kind}_id``) and append the messages it applied since it was loaded.

    `before` is the message history it was loaded with (None: it is new, inserted);
    `after` the history now. An existing row is updated only while it still holds
    ``len(before)`` messages and the `unchanged` column values; otherwise someone saved
    it in between and `ConcurrentUpdateError` is raised."""
    columns = tuple(values)
    if before is None:
        statement = _process_statement(table, kind, columns, None)
        statement.execute(connection, (process_id, *values.values()))
    else:
        held = {} if unchanged is None else unchanged
        statement = _process_statement(table, kind, columns, tuple(held))
        changed = statement.execute(
            connection, (*values.values(), process_id, len(before), *held.values())
        )
        if changed != 1:
            raise ConcurrentUpdateError(f"{kind} {process_id} changed since it was loaded")
    _append_seen(connection, kind, process_id, () if before is None else before, after)
