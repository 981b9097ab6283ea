"""Bulk insert of validated QDM rows: SQLite ``executemany``, PostgreSQL ``COPY``.

Why a module of its own: how fast rows reach the table is a property of the driver,
not of the store. On SQLite the fastest path is one prebuilt ``INSERT ... ON CONFLICT
DO NOTHING`` handed straight to the DBAPI's ``executemany`` with values already in the
form SQLAlchemy would bind them in (times as its SQLite text, ``YYYY-MM-DD
HH:MM:SS.ffffff`` in UTC: the form every query's time bound is written in, so that a
text comparison orders like the times), skipping SQLAlchemy's per-row bind processing.

On PostgreSQL ``executemany`` costs a round of protocol per row; ``COPY`` streams the
batch. COPY has no ``ON CONFLICT``, so it is tried first straight into the table under
a savepoint (the common case: new rows); if any natural key is already stored the COPY
fails as a whole, the savepoint is rolled back (nothing of it stays), and the batch
is copied into a temporary table and moved with ``INSERT ... SELECT ... ON CONFLICT
DO NOTHING`` in line order, which counts what was inserted exactly as the row-wise
statement did. Any other failure aborts the caller's transaction: nothing of the batch
is written. Rows keep their order either way, so ids are assigned in line order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain, repeat
from operator import add, itemgetter, methodcaller
from typing import Any

from sqlalchemy import Connection, DateTime, Table

from qdspace.connector.qdm import VERSION_COLUMNS


def insert_columns(table: Table) -> list[str]:
    """The columns an ingest writes: all but the surrogate id and the versioning."""
    return [c.name for c in table.columns if c.name not in ("id", *VERSION_COLUMNS)]


class BulkInserter:
    """Prebuilt statements for one table on one dialect; ``insert`` returns rows inserted."""

    def __init__(self, table: Table, dialect_name: str, paramstyle: str):
        self.table = table
        self.columns = insert_columns(table)
        self.dialect = dialect_name
        names = ", ".join(self.columns)
        mark = "?" if paramstyle == "qmark" else "%s"
        self.insert_sql = (
            f"INSERT INTO {table.name} ({names}) "
            f"VALUES ({', '.join([mark] * len(self.columns))}) ON CONFLICT DO NOTHING"
        )
        self.copy_sql = f"COPY {table.name} ({names}) FROM STDIN"
        self.temp = f"qdspace_bulk_{table.name}"
        self.temp_sql = (
            f"CREATE TEMP TABLE IF NOT EXISTS {self.temp} ON COMMIT DROP AS "
            f"SELECT {names} FROM {table.name} WITH NO DATA"
        )
        self.temp_copy_sql = f"COPY {self.temp} ({names}, qdspace_line) FROM STDIN"
        self.move_sql = (
            f"INSERT INTO {table.name} ({names}) SELECT {names} FROM {self.temp} "
            "ORDER BY qdspace_line ON CONFLICT DO NOTHING"
        )
        self.times = [i for i, c in enumerate(self.columns) if _is_datetime(table.c[c].type)]

    def prepare(
        self, rows: Sequence[tuple[Any, ...]], columns: Sequence[Sequence[Any]] | None = None
    ) -> Prepared:
        """The driver's form of ``rows`` (values in ``self.columns`` order; ``columns``,
        when given, the same values column by column): pure, no database touched, so the
        store can make it for the next batch while this one is being written."""
        if not rows:
            return Prepared()
        given = columns if columns is not None else list(zip(*rows, strict=True))
        return self.prepare_columns([list(c) for c in given])

    def prepare_columns(
        self,
        columns: Sequence[list[Any]],
        time_texts: Mapping[int, list[str]] | None = None,
        number_texts: Mapping[int, list[str]] | None = None,
    ) -> Prepared:
        """``prepare`` of rows given column by column (a batch validated in bulk: no row
        tuples are made at all; the driver takes them from ``Prepared.rows``, one at a
        time). ``time_texts``: for some time columns (by index), their values already as
        UTC text ``YYYY-MM-DD HH:MM:SS.ffffff`` (`bulk_insert_texts.utc_texts`), used instead
        of formatting each datetime again; ``number_texts``: for some float columns, the
        plain decimal texts they were read from (`bulk_insert_texts.decimal_texts`), which
        COPY sends instead of each float's ``repr`` (PostgreSQL reads the same double)."""
        if not columns or not columns[0]:
            return Prepared()
        texts = {i: t for i, t in (time_texts or {}).items() if i in self.times}
        if self.dialect == "postgresql":
            given = list(columns)
            for i, t in texts.items():  # with the zone: what `_encode_column` makes of UTC
                given[i] = list(map(add, t, repeat("+00:00")))
            for i, t in (number_texts or {}).items():
                if i not in self.times and len(t) == len(columns[i]):
                    given[i] = t
            return Prepared(columns, copy_text((), given))
        if self.times and self.dialect == "sqlite":
            return Prepared(_times_as_text(self.times, columns, texts))
        return Prepared(columns)

    def insert(
        self,
        connection: Connection,
        rows: Sequence[tuple[Any, ...]],
        columns: Sequence[Sequence[Any]] | None = None,
    ) -> int:
        """Insert ``rows`` (values in ``self.columns`` order) in the caller's transaction;
        ``columns``, when given, holds the same values column by column."""
        return self.write(connection, self.prepare(rows, columns))

    def write(
        self,
        connection: Connection,
        prepared: Prepared,
        waiting: Callable[[], None] | None = None,
    ) -> int:
        """Insert prepared rows in the caller's transaction; returns the rows inserted.
        ``waiting`` is called once the rows are sent and the database is still working on
        them (PostgreSQL: before the COPY's end is awaited), if there is such a moment."""
        if not prepared.count:
            return 0
        return self.write_chunks(connection, (prepared,), waiting)

    def write_chunks(
        self,
        connection: Connection,
        chunks: Iterable[Prepared],
        waiting: Callable[[], None] | None = None,
    ) -> int:
        """``write`` of a batch given in chunks, taken from ``chunks`` one at a time. On
        PostgreSQL they go into one COPY: each is sent before the next is taken, so a
        generator that validates a chunk when asked does so while the server inserts the
        one before it (two processes, two cores; see bench/PROFILE-ingest.md, round 4)."""
        if self.dialect == "postgresql":
            return self._copy(connection, chunks, waiting)
        inserted = 0
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            for prepared in chunks:
                if prepared.count:
                    # one row tuple at a time, from the columns: sqlite3 lets each go
                    # before it takes the next, so ``zip`` reuses one tuple instead of
                    # allocating a batch of them (10,000 GC-tracked tuples cost a tenth
                    # of a 10,000-row ingest)
                    cursor.executemany(self.insert_sql, prepared.rows())
                    inserted += int(cursor.rowcount)
            return inserted
        finally:
            cursor.close()

    def _copy(
        self,
        connection: Connection,
        chunks: Iterable[Prepared],
        waiting: Callable[[], None] | None,
    ) -> int:
        import psycopg

        raw = connection.connection.driver_connection
        assert isinstance(raw, psycopg.Connection)
        sent: list[Prepared] = []  # kept for the temporary table, should a key be stored
        pending = iter(chunks)
        with raw.cursor() as cursor:
            cursor.execute("SAVEPOINT qdspace_copy")
            try:
                with cursor.copy(self.copy_sql) as copy:
                    for prepared in pending:
                        sent.append(prepared)
                        if prepared.text is not None:
                            if prepared.text:
                                copy.write(prepared.text)
                        else:
                            write = copy.write_row
                            for row in prepared.rows():
                                write(row)
                    if waiting is not None:
                        waiting()  # the server still inserts what it was sent
            except psycopg.errors.UniqueViolation:
                cursor.execute("ROLLBACK TO SAVEPOINT qdspace_copy")
                sent.extend(pending)  # chunks not taken yet, should the refusal come early
            else:
                cursor.execute("RELEASE SAVEPOINT qdspace_copy")
                return sum(p.count for p in sent)
            # some natural keys are stored already: through a temporary table
            cursor.execute(self.temp_sql)
            cursor.execute(f"ALTER TABLE {self.temp} ADD COLUMN IF NOT EXISTS qdspace_line bigint")
            cursor.execute(f"TRUNCATE {self.temp}")
            rows = chain.from_iterable(p.rows() for p in sent)
            numbered = [(*row, i) for i, row in enumerate(rows)]
            encoded = copy_text(numbered)
            with cursor.copy(self.temp_copy_sql) as copy:
                if encoded is not None:
                    copy.write(encoded)
                else:
                    write = copy.write_row
                    for row in numbered:
                        write(row)
            cursor.execute(self.move_sql)
            return int(cursor.rowcount)


@dataclass(frozen=True)
class Prepared:
    """A batch in the form its driver takes, column by column: on SQLite the parameter
    values (times as text), on PostgreSQL the values and their COPY text (None: a type
    the text encoder does not know, so the rows go by psycopg's ``write_row``)."""

    columns: Sequence[Sequence[Any]] = ()
    text: str | None = None

    @property
    def count(self) -> int:
        """Rows in the batch."""
        return len(self.columns[0]) if self.columns else 0

    def rows(self) -> Iterator[tuple[Any, ...]]:
        """The rows as tuples in column order, made one at a time."""
        return zip(*self.columns, strict=True)


def _is_datetime(column_type: Any) -> bool:
    return isinstance(column_type, DateTime) or isinstance(
        getattr(column_type, "impl", None), DateTime
    )


_ISO_US = methodcaller("isoformat", " ", "microseconds")
_UTC_SUFFIX = itemgetter(slice(26, None))
_UNTIL_SUFFIX = itemgetter(slice(0, 26))


def _sqlite_time_text(column: Sequence[datetime]) -> list[str]:
    """A column of aware datetimes as SQLAlchemy's SQLite text, C-level passes only.

    ``isoformat(" ", "microseconds")`` of a UTC time is that text plus ``+00:00``; the
    validators hand over UTC times, and a column with any other offset is turned into
    UTC value by value first."""
    texts = list(map(_ISO_US, column))
    if set(map(_UTC_SUFFIX, texts)) != {"+00:00"}:
        texts = [v.astimezone(UTC).isoformat(" ", "microseconds") for v in column]
    return list(map(_UNTIL_SUFFIX, texts))


def _times_as_text(
    times: list[int],
    given: Sequence[list[Any]],
    texts: Mapping[int, list[str]] | None = None,
) -> list[list[Any]]:
    """The columns with their datetimes as SQLAlchemy writes them on SQLite, once per
    column rather than through a bind processor per value (``texts``: columns already
    so, by index). Not ``isoformat(" ")``, which sqlite3's own adapter writes:
    ``...14:00:00+00:00`` sorts before a bound's ``...14:00:00.000000`` and put a row
    stamped at a window's lower bound outside it (0010_sqlite_time_text rewrote what was
    stored that way)."""
    columns = list(given)
    for i in times:
        if texts and i in texts:
            columns[i] = texts[i]
            continue
        column = columns[i]
        if None in column:
            present = [v for v in column if v is not None]
            made = iter(_sqlite_time_text(present))
            columns[i] = [None if v is None else next(made) for v in column]
        else:
            columns[i] = _sqlite_time_text(column)
    return columns


# -- COPY text, a column at a time ----------------------------------------------------------
#
# psycopg's ``write_row`` formats each value of each row in turn (about 70k rows/s here);
# the COPY text format is simple enough to build a column at a time with C-level passes:
# values separated by tabs, rows by newlines, NULL as ``\N``, and in text a backslash,
# tab, newline or carriage return escaped with a backslash (PostgreSQL's documented
# text format). Only the types validated rows hold are encoded here (text, float, int,
# an aware datetime); a column with anything else makes the batch go by ``write_row``.

_NULL = "\\N"
_SPECIAL = ("\\", "\t", "\n", "\r")


def _escape(value: str) -> str:
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


def _encode_column(column: Sequence[Any]) -> list[str] | None:
    present = [v for v in column if v is not None]
    kinds = set(map(type, present))
    if not kinds:
        return [_NULL] * len(column)
    if len(kinds) != 1:
        return None
    kind = kinds.pop()
    if kind is str:
        joined = "".join(present)
        if any(c in joined for c in _SPECIAL):
            encode: Any = _escape
        else:
            encode = None
    elif kind is float:
        encode = float.__repr__  # shortest text that reads back as the same double
    elif kind is int:
        encode = int.__repr__
    elif kind is datetime:
        if any(v.tzinfo is None for v in present):
            return None  # a naive time would be read in the session's zone
        encode = _ISO_US  # with its offset; microseconds always, as a time taken as text
    else:
        return None
    if len(present) == len(column):
        return list(column) if encode is None else list(map(encode, column))
    if encode is None:
        return [_NULL if v is None else v for v in column]
    return [_NULL if v is None else encode(v) for v in column]


def copy_text(
    rows: Sequence[tuple[Any, ...]], columns: Sequence[Sequence[Any]] | None = None
) -> str | None:
    """``rows`` in COPY's text format, or None when a column holds a type not encoded here;
    ``columns``, when given, holds the same values column by column (``rows`` then unused)."""
    if columns is None:
        columns = list(zip(*rows, strict=True))
    if not columns or not columns[0]:
        return ""
    encoded = []
    for column in columns:
        values = _encode_column(column)
        if values is None:
            return None
        encoded.append(values)
    return "\n".join(map("\t".join, zip(*encoded, strict=True))) + "\n"
