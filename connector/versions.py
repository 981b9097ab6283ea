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

What a record said before is kept: each correction or withdrawal first copies the
version it replaces into ``qdm_record_history`` (`connector.qdm.RecordHistory`), in the
same transaction, so `history` gives every version of a record, oldest first, even
when two ingesters correct it one after the other. The copy is made in two steps: one
``INSERT ... SELECT`` per row marks the records that will change (the same test the
rewrite makes, so a re-delivered duplicate writes nothing), then only those are read
and their content written as JSON from Python (exact floats, one time form on both
databases). A batch in which nothing changes is not rewritten at all.

Whether a row changes a record is decided on its *canonical* content
(`compared_columns`): a measurement's ``raw_value`` and ``raw_unit`` record how the
first delivery spelled it (``150.0`` Pa, ``1,5`` hPa), and the same reading re-sent in
another spelling is a duplicate that keeps the first spelling, not a correction. A
row whose canonical content does differ stores its own spelling with it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, Connection, DateTime, Float, Table, select

from qdspace.connector.errors import UnknownKind, UnknownRecordError
from qdspace.connector.qdm import NATURAL_KEYS, TABLES, VERSION_COLUMNS, RecordHistory
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


#: content columns that keep how a value was delivered, not what it is: a row that
#: differs only in these is the same record re-sent (the first spelling is kept)
RAW_COLUMNS = frozenset({"raw_value", "raw_unit"})


def compared_columns(kind: str) -> list[str]:
    """The content columns whose difference makes a row a correction: all but how the
    value was spelled on delivery (`RAW_COLUMNS`)."""
    return [c for c in content_columns(kind) if c not in RAW_COLUMNS]


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
    the caller's transaction: a record whose stored canonical content differs (or that
    is withdrawn) takes the row's content and a new version and id, and the version it
    replaces is kept in its history. Returns how many records changed; rows equal to
    what is stored (spelled differently or not) change nothing."""
    if not rows:
        return 0
    table = qdm_table(kind)
    keys, content, compared = NATURAL_KEYS[kind], content_columns(kind), compared_columns(kind)
    mark, differs = _mark(connection), _differs(connection)
    where = " AND ".join(f"{k} = {mark}" for k in keys)
    changed = " OR ".join(
        [*(f"{c} {differs} {mark}" for c in compared), "withdrawn_at IS NOT NULL"]
    )
    condition = f"{where} AND ({changed})"
    assignments = ", ".join(f"{c} = {mark}" for c in content)
    sql = (
        f"UPDATE {table.name} SET {assignments}, version = version + 1, withdrawn_at = NULL, "
        f"id = {_next_id(connection, table)} WHERE {condition}"
    )
    at = datetime.now(UTC)
    changed_rows = 0
    tested = [content.index(c) for c in compared]
    for round_ in _rounds(connection, table, keys, content, rows):
        # the WHERE's parameters: the key, then the compared content
        where_params = [(*key, *(values[i] for i in tested)) for values, key in round_]
        if _keep_replaced(connection, kind, condition, where_params, "correction", at):
            params = [(*v, *w) for (v, _k), w in zip(round_, where_params, strict=True)]
            changed_rows += int(connection.exec_driver_sql(sql, params).rowcount)
        # else nothing differs: every row of the round is a duplicate, nothing to rewrite
    count_rewrites(connection, kind, changed_rows)
    return changed_rows


def _rounds(
    connection: Connection,
    table: Table,
    keys: Sequence[str],
    content: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
) -> list[list[tuple[list[Any], list[Any]]]]:
    """``rows`` bound (`_bound`), in rounds that name each record at most once: a batch
    that names one twice corrects it twice, in delivery order, each replaced version
    copied before the next rewrite looks (almost always one round)."""
    rounds: list[list[tuple[list[Any], list[Any]]]] = []
    seen: dict[tuple[Any, ...], int] = {}
    for row in rows:
        values, key = _bound(connection, table, row, content, keys)
        n = seen.get(tuple(key), 0)
        seen[tuple(key)] = n + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append((values, key))
    return rounds


def conflicts(
    connection: Connection, kind: str, rows: Sequence[Mapping[str, Any]]
) -> list[tuple[int, str]]:
    """Which of ``rows`` (validated, complete) name a stored record they would change:
    ``(index, column)`` with the first canonical content column that differs (a
    respelling alone changes nothing: `compared_columns`), or ``withdrawn_at``
    where the stored record is withdrawn. Nothing is written: a source that may only add
    records (a line's connectors) refuses these rows instead of correcting the record
    (see `connector.linein.sink`). One query a row: it runs only for a batch where some
    rows were not inserted, and a line's batches are small."""
    if not rows:
        return []
    table = qdm_table(kind)
    keys, content = NATURAL_KEYS[kind], compared_columns(kind)
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


def _is_time(column: Column[Any]) -> bool:
    column_type = column.type
    return isinstance(column_type, DateTime) or isinstance(
        getattr(column_type, "impl", None), DateTime
    )


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
        if isinstance(value, str) and _is_time(table.c[name]):
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
    condition = f"{where} AND withdrawn_at IS NULL"
    bound_key = tuple(_bind(connection, table, k, v) for k, v in values.items())
    _keep_replaced(connection, kind, condition, [bound_key], "withdrawal", datetime.now(UTC))
    sql = (
        f"UPDATE {table.name} SET withdrawn_at = {mark}, version = version + 1, "
        f"id = {_next_id(connection, table)} WHERE {condition}"
    )
    params = (_bind(connection, table, "withdrawn_at", at), *bound_key)
    if connection.exec_driver_sql(sql, params).rowcount != 1:
        shown = ", ".join(f"{k}={v}" for k, v in key.items())
        raise UnknownRecordError(f"no {kind} record {shown} to withdraw (none, or withdrawn)")
    count_rewrites(connection, kind, 1)
    found = connection.exec_driver_sql(
        f"SELECT version FROM {table.name} WHERE {where}",
        tuple(_bind(connection, table, k, v) for k, v in values.items()),
    ).scalar_one()
    return Withdrawal(kind, dict(key), int(found), at)


# --- history: the versions a correction or withdrawal replaced --------------------------

HISTORY = RecordHistory.__table__  # type: ignore[attr-defined]


def _plain(value: Any) -> Any:
    """``value`` as JSON holds it: a time as ISO 8601 text in UTC."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return value


def key_text(kind: str, row: Mapping[str, Any]) -> str:
    """The natural key of ``row`` (a record of ``kind``) as the history stores it: JSON,
    keys sorted, times in UTC (a time given as text is read as one first)."""
    table = qdm_table(kind)
    key = {}
    for name in NATURAL_KEYS[kind]:
        value = row[name]
        if isinstance(value, str) and _is_time(table.c[name]):
            value = parse_datetime(value)
        key[name] = _plain(value)
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


def _keep_replaced(
    connection: Connection,
    kind: str,
    condition: str,
    params: Sequence[Sequence[Any]],
    replaced_by: str,
    at: datetime,
) -> int:
    """Copy into the history each record of ``kind`` that ``condition`` (the rewrite's own
    WHERE, with one set of ``params`` a row) selects, before it is rewritten. Returns
    how many records were copied: how many the rewrite will change.

    The ``INSERT ... SELECT`` (one a row, like the rewrite) writes nothing for a row
    that changes nothing, so a re-delivered duplicate costs a lookup and no Python work;
    the records it marked (their key and content left as a placeholder: the record's
    id) are then read through the columns' types (exact floats, aware times) and their
    key and content written as JSON, while they are still at the ids just copied."""
    table = qdm_table(kind)
    mark = _mark(connection)
    before = connection.exec_driver_sql(f"SELECT MAX(id) FROM {HISTORY.name}").scalar()
    sql = (
        f"INSERT INTO {HISTORY.name} "
        "(kind, record_key, record_id, version, content, replaced_at, replaced_by) "
        f"SELECT {mark}, CAST(id AS VARCHAR(32)), id, version, '', {mark}, {mark} "
        f"FROM {table.name} WHERE {condition}"
    )
    when = _bind(connection, HISTORY, "replaced_at", at)
    copied = int(
        connection.exec_driver_sql(sql, [(kind, when, replaced_by, *p) for p in params]).rowcount
    )
    if not copied:
        return 0
    keys = [table.c[k] for k in NATURAL_KEYS[kind]]
    columns = [table.c[c] for c in (*content_columns(kind), "withdrawn_at")]
    found = connection.execute(
        select(HISTORY.c.id, *keys, *columns)
        .join(table, table.c.id == HISTORY.c.record_id)
        .where(HISTORY.c.id > (before or 0))
    ).all()
    fill = []
    for row in found:
        named = dict(zip([c.name for c in (*keys, *columns)], row[1:], strict=True))
        held = {c.name: _plain(named[c.name]) for c in columns}
        fill.append((key_text(kind, named), json.dumps(held), row[0]))
    connection.exec_driver_sql(
        f"UPDATE {HISTORY.name} SET record_key = {mark}, content = {mark} WHERE id = {mark}",
        fill,
    )
    return copied


@dataclass(frozen=True)
class RecordVersion:
    """One version of a QDM record: what it said (``content``, its content columns) and
    whether it was withdrawn. ``replaced_at``/``replaced_by`` (``correction`` or
    ``withdrawal``) tell when and how it was replaced; both None for the current one."""

    kind: str
    key: dict[str, Any]
    version: int
    content: dict[str, Any]
    withdrawn_at: datetime | None
    replaced_at: datetime | None
    replaced_by: str | None


def _from_json(table: Table, name: str, value: Any) -> Any:
    """A content value as the history's JSON holds it -> as the column reads it back."""
    if value is None:
        return None
    if _is_time(table.c[name]):
        return parse_datetime(value)
    if isinstance(table.c[name].type, Float):
        return float(value)
    return value


def history(connection: Connection, kind: str, key: Mapping[str, Any]) -> list[RecordVersion]:
    """Every version of the record of ``kind`` with natural key ``key``, oldest first:
    those replaced (from the history), then the current one. Raises
    `UnknownRecordError` when there is no such record."""
    table = qdm_table(kind)
    values = _key_values(kind, key)
    content = content_columns(kind)
    replaced = connection.execute(
        select(HISTORY.c.version, HISTORY.c.content, HISTORY.c.replaced_at, HISTORY.c.replaced_by)
        .where(HISTORY.c.kind == kind, HISTORY.c.record_key == key_text(kind, values))
        .order_by(HISTORY.c.version)
    ).all()
    found: list[RecordVersion] = []
    for version, text, replaced_at, replaced_by in replaced:
        held = {n: _from_json(table, n, v) for n, v in json.loads(text).items()}
        withdrawn_at = held.pop("withdrawn_at", None)
        found.append(
            RecordVersion(
                kind, dict(key), int(version), held, withdrawn_at, replaced_at, str(replaced_by)
            )
        )
    current = connection.execute(
        select(table.c.version, table.c.withdrawn_at, *(table.c[c] for c in content)).where(
            *(table.c[k] == v for k, v in values.items())
        )
    ).one_or_none()
    if current is None:
        shown = ", ".join(f"{k}={v}" for k, v in key.items())
        raise UnknownRecordError(f"no {kind} record {shown}")
    found.append(
        RecordVersion(
            kind,
            dict(key),
            int(current[0]),
            dict(zip(content, current[2:], strict=True)),
            current[1],
            None,
            None,
        )
    )
    return found
