"""Corrections and withdrawals of QDM records: new versions, never silent overwrites.

A quality record changes after it was first stored: an EL verdict is re-judged, a
measurement's unit was wrong, an operator log was filed against the wrong order. Each
such change must reach every consumer that holds a copy under a usage contract, and
an auditor must be able to see that, and when, it changed. So a row re-ingested under
its natural key with different content is a *correction*: the row takes the new
content and ``version + 1``. A *withdrawal* (an explicit operation, never inferred
from a file that lacks a row) keeps the row as a tombstone: ``withdrawn_at`` set and
``version + 1``; re-ingesting it later is a correction that brings it back.

Either change also moves the row to a fresh surrogate id above every other row of
its table. Readers that walk a table by id (a transfer's view cursor and an
incremental pull's watermark in `connector.paging`, the ledger sweeper that anchors
each record) therefore meet the new version as a new row after their cursor: the
consumer gets it on its next pull, and the ledger anchors the new version's hash
next to the old one's. On PostgreSQL the fresh id comes from the table's own
sequence, on SQLite from ``MAX(id) + 1`` inside the writing transaction (SQLite has
one writer at a time).

A cursor is only a watermark if rows become visible in id order. SQLite has one writer
at a time; on PostgreSQL two writers could take ids 10 and 11 and commit 11 first, and
a reader that saw 11 would never look at 10. So every QDM write takes one transaction
advisory lock first (`serialize_writes`): writers of a node's QDM commit one after the
other, and ids become visible in order.

A reader that keeps what it made of a table and reads only the rows above the last id
it saw (the console's verdict counts by station, a station's SPC chart) would count a
rewritten record twice, or a withdrawn one still: its old content was below. So each
correction or withdrawal adds to its kind's count in ``qdm_rewrites``
(`count_rewrites`, in the same transaction); a reader that finds the count as it was
knows that only rows were added since, and one that finds it moved reads again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, DateTime, Table

from qdspace.connector.errors import UnknownKind, UnknownRecordError
from qdspace.connector.qdm import NATURAL_KEYS, TABLES, VERSION_COLUMNS
from qdspace.policies.canonical import parse_datetime


@dataclass(frozen=True)
class Withdrawal:
    """A record withdrawn: its kind, natural key and the tombstone's version."""

    kind: str
    key: dict[str, Any]
    version: int
    withdrawn_at: datetime


def qdm_table(kind: str) -> Table:
    model = TABLES.get(kind)
    if model is None:
        raise UnknownKind(f"unknown kind {kind!r}; one of: {', '.join(TABLES)}")
    table = model.__table__  # type: ignore[attr-defined]
    assert isinstance(table, Table)
    return table


def content_columns(kind: str) -> list[str]:
    """The columns of a record's content: neither its natural key, nor id, nor versioning."""
    keys = NATURAL_KEYS[kind]
    skip = {"id", *keys, *VERSION_COLUMNS}
    return [c.name for c in qdm_table(kind).columns if c.name not in skip]


def _next_id(connection: Connection, table: Table) -> str:
    if connection.dialect.name == "postgresql":
        return f"nextval(pg_get_serial_sequence('{table.name}', 'id'))"
    return f"(SELECT MAX(id) FROM {table.name}) + 1"


def _mark(connection: Connection) -> str:
    return "?" if connection.dialect.paramstyle == "qmark" else "%s"


def _differs(connection: Connection) -> str:
    return "IS DISTINCT FROM" if connection.dialect.name == "postgresql" else "IS NOT"


def _bind(connection: Connection, table: Table, name: str, value: Any) -> Any:
    """``value`` as SQLAlchemy would bind it for column ``name``: through the type's
    *dialect* implementation, so a time on SQLite becomes the same text as a query's
    bound (the bare type's processor hands the datetime to sqlite3's adapter, whose
    ``isoformat(" ")`` text does not compare with it; see 0010_sqlite_time_text)."""
    dialect = connection.dialect
    processor = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
    return processor(value) if processor is not None else value


def _bound(
    connection: Connection,
    table: Table,
    row: Mapping[str, Any],
    content: Sequence[str],
    keys: Sequence[str],
) -> tuple[list[Any], list[Any]]:
    """A row's content values and natural key, each bound as its column binds it."""
    values = [_bind(connection, table, c, row.get(c)) for c in content]
    return values, [_bind(connection, table, k, row[k]) for k in keys]


#: the advisory lock every QDM writer holds on PostgreSQL (see the module docstring)
QDM_WRITE_LOCK = 0x7164_6D5F_7772  # "qdm_wr"


def serialize_writes(connection: Connection) -> None:
    """Make this transaction the only QDM writer until it ends (PostgreSQL; SQLite
    writers are serialised by the database itself)."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({QDM_WRITE_LOCK})")


def correct_rows(connection: Connection, kind: str, rows: Sequence[Mapping[str, Any]]) -> int:
    """Apply `rows` (validated, complete) as corrections of the records they name, in
    the caller's transaction: a record whose stored content differs (or that is
    withdrawn) takes the row's content and a new version and id. Returns how many
    records changed; rows equal to what is stored change nothing."""
    if not rows:
        return 0
    table = qdm_table(kind)
    keys, content = NATURAL_KEYS[kind], content_columns(kind)
    mark, differs = _mark(connection), _differs(connection)
    assignments = ", ".join(f"{c} = {mark}" for c in content)
    changed = " OR ".join([*(f"{c} {differs} {mark}" for c in content), "withdrawn_at IS NOT NULL"])
    sql = (
        f"UPDATE {table.name} SET {assignments}, version = version + 1, withdrawn_at = NULL, "
        f"id = {_next_id(connection, table)} "
        f"WHERE {' AND '.join(f'{k} = {mark}' for k in keys)} AND ({changed})"
    )
    params = []
    for row in rows:
        values, key = _bound(connection, table, row, content, keys)
        params.append((*values, *key, *values))
    changed_rows = int(connection.exec_driver_sql(sql, params).rowcount)
    count_rewrites(connection, kind, changed_rows)
    return changed_rows


def conflicts(
    connection: Connection, kind: str, rows: Sequence[Mapping[str, Any]]
) -> list[tuple[int, str]]:
    """Which of ``rows`` (validated, complete) name a stored record they would change:
    ``(index, column)`` with the first content column that differs, or ``withdrawn_at``
    where the stored record is withdrawn. Nothing is written: a source that may only add
    records (a line's connectors) refuses these rows instead of correcting the record
    (see `connector.linein.sink`). One query a row: it runs only for a batch where some
    rows were not inserted, and a line's batches are small."""
    if not rows:
        return []
    table = qdm_table(kind)
    keys, content = NATURAL_KEYS[kind], content_columns(kind)
    mark, differs = _mark(connection), _differs(connection)
    first = " ".join(f"WHEN {c} {differs} {mark} THEN '{c}'" for c in content)
    sql = (
        f"SELECT CASE WHEN withdrawn_at IS NOT NULL THEN 'withdrawn_at' {first} END "
        f"FROM {table.name} WHERE {' AND '.join(f'{k} = {mark}' for k in keys)}"
    )
    found: list[tuple[int, str]] = []
    for index, row in enumerate(rows):
        values, key = _bound(connection, table, row, content, keys)
        column = connection.exec_driver_sql(sql, (*values, *key)).scalar_one_or_none()
        if column is not None:
            found.append((index, str(column)))
    return found


#: adds to a kind's rewrite count (`qdm.Rewrites`), creating it at the first
_COUNT = (
    "INSERT INTO qdm_rewrites (kind, rewrites) VALUES ({m}, {m}) "
    "ON CONFLICT (kind) DO UPDATE SET rewrites = qdm_rewrites.rewrites + excluded.rewrites"
)


def count_rewrites(connection: Connection, kind: str, records: int) -> None:
    """Add ``records`` rewritten in this transaction to ``kind``'s count (`qdm.Rewrites`),
    which readers that follow a table by id compare to know what they kept is whole."""
    if records:
        mark = _mark(connection)
        connection.exec_driver_sql(_COUNT.format(m=mark), (kind, records))


def rewrites(connection: Connection, kind: str) -> int:
    """How many records of ``kind`` were rewritten since the count began (0: none)."""
    found = connection.exec_driver_sql(
        f"SELECT rewrites FROM qdm_rewrites WHERE kind = {_mark(connection)}", (kind,)
    ).scalar_one_or_none()
    return int(found or 0)


def _key_values(kind: str, key: Mapping[str, Any]) -> dict[str, Any]:
    table = qdm_table(kind)
    names = NATURAL_KEYS[kind]
    if set(key) != set(names):
        raise UnknownRecordError(
            f"a {kind} record is named by {', '.join(names)}; got {', '.join(sorted(key)) or '-'}"
        )
    values: dict[str, Any] = {}
    for name in names:
        value = key[name]
        column_type = table.c[name].type
        is_time = isinstance(column_type, DateTime) or isinstance(
            getattr(column_type, "impl", None), DateTime
        )
        if isinstance(value, str) and is_time:
            try:
                value = parse_datetime(value)
            except ValueError:
                raise UnknownRecordError(f"{name}: {value!r} is not a UTC timestamp") from None
        values[name] = value
    return values


def withdraw(connection: Connection, kind: str, key: Mapping[str, Any], at: datetime) -> Withdrawal:
    """Withdraw the record of `kind` with natural key `key`, in the caller's transaction:
    it becomes a tombstone with a new version and id (see the module docstring)."""
    table = qdm_table(kind)
    values = _key_values(kind, key)
    serialize_writes(connection)
    mark = _mark(connection)
    where = " AND ".join(f"{k} = {mark}" for k in values)
    sql = (
        f"UPDATE {table.name} SET withdrawn_at = {mark}, version = version + 1, "
        f"id = {_next_id(connection, table)} WHERE {where} AND withdrawn_at IS NULL"
    )
    params = (
        _bind(connection, table, "withdrawn_at", at),
        *(_bind(connection, table, k, v) for k, v in values.items()),
    )
    if connection.exec_driver_sql(sql, params).rowcount != 1:
        shown = ", ".join(f"{k}={v}" for k, v in key.items())
        raise UnknownRecordError(f"no {kind} record {shown} to withdraw (none, or withdrawn)")
    count_rewrites(connection, kind, 1)
    found = connection.exec_driver_sql(
        f"SELECT version FROM {table.name} WHERE {where}",
        tuple(_bind(connection, table, k, v) for k, v in values.items()),
    ).scalar_one()
    return Withdrawal(kind, dict(key), int(found), at)
