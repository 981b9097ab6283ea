"""The QDM store: one SQLAlchemy engine (SQLite/WAL by default, PostgreSQL by URL).

``open_store`` connects and migrates the schema to the newest revision (Alembic);
``QualityStore.ingest_rows`` validates rows and commits the good ones in atomic
batches with ``INSERT ... ON CONFLICT DO NOTHING`` on the natural keys (or its COPY
equivalent on PostgreSQL, `connector.bulk_insert`), so a
re-delivered row is counted as a duplicate and stored once; a row whose natural key
is stored with different content is a correction, stored as a new version
(:mod:`connector.versions`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from functools import cache
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, Table, create_engine, event, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError, SQLAlchemyError

from qdspace.connector.batch_validate import BatchResult, BatchValidator
from qdspace.connector.bulk_insert import BulkInserter, Prepared
from qdspace.connector.dictionary import DataDictionary, default_dictionary
from qdspace.connector.errors import StorageError
from qdspace.connector.ingest import IngestReport, RowError, check_kind
from qdspace.connector.qdm import NATURAL_KEYS, TABLES
from qdspace.connector.versions import (
    RecordVersion,
    Withdrawal,
    conflicts,
    correct_rows,
    history,
    serialize_writes,
    withdraw,
)

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


def normalise_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (the driver we install)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


#: query parameters that carry a password (libpq reads ``?password=``)
SECRET_QUERY_KEYS = frozenset({"password", "sslpassword"})


def safe_url(url: str) -> str:
    """``url`` fit for a log line or an error message: every password shown as ``***``."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is no number
        return "<unparsable database URL>"
    hidden = {k: "***" for k in parsed.query if k.lower() in SECRET_QUERY_KEYS}
    return parsed.update_query_dict(hidden).render_as_string(hide_password=True)


#: WAL pages between automatic checkpoints (4 KiB pages: 256 MiB); SQLite's default is 1,000
WAL_CHECKPOINT_PAGES = 65536
#: size the WAL file is cut back to after a checkpoint has emptied it
WAL_KEEP_BYTES = 64 * 1024 * 1024


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA cache_size=-65536")  # 64 MiB: keeps the natural-key indexes in memory
    cursor.execute("PRAGMA temp_store=MEMORY")
    # Checkpoint the WAL every WAL_CHECKPOINT_PAGES pages (SQLite's default is 1,000 pages,
    # 4 MiB). A batch of inspections whose times are not in line order dirties a page of
    # the time index per few rows: at 1M rows one 5,000-row commit writes ~16 MiB of index
    # pages, so with the default every commit ran a checkpoint of its own (copy + two
    # fsyncs), and the pages a later commit dirtied again were copied again: 6.3 GB
    # written for 1M rows, 25-38k rows/s. With 256 MiB between checkpoints a page dirtied
    # by many commits is copied once per checkpoint (3.7 GB, 75-90k rows/s; see
    # bench/PROFILE-ingest.md, round 2). Durability is unchanged: what a commit returns
    # is in the WAL either way (synchronous=NORMAL, as before), the checkpoint only moves
    # it into the database file. The WAL file is cut back to WAL_KEEP_BYTES once a
    # checkpoint has emptied it, so a node does not keep 256 MiB of disk after a burst.
    cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
    cursor.execute(f"PRAGMA journal_size_limit={WAL_KEEP_BYTES}")
    cursor.close()


#: seconds a PostgreSQL connection may take to open (libpq ``connect_timeout``)
PG_CONNECT_S = 10


def create_store_engine(url: str) -> Engine:
    url = normalise_url(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        scheme = url.partition("://")[0] if "://" in url else "(none)"
        # the text itself is not repeated: an unparsable URL may still hold a password
        raise StorageError(f"database URL (scheme {scheme!r}) cannot be parsed") from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not Path(database).parent.is_dir():
            raise StorageError(
                f"cannot open database {database}: directory {Path(database).parent} does not exist"
            )
        # LIFO: back-to-back transactions take the connection just returned, whose page
        # cache is warm (each SQLite connection keeps its own); FIFO rotated through them
        lifo = {"pool_use_lifo": True} if database and database != ":memory:" else {}
        engine = create_engine(url, connect_args={"timeout": 30}, **lifo)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # a server that takes the connection and never answers (a host's tenant on its own
    # PostgreSQL, a firewall dropping packets) held the opening for ever, and a managed
    # host opens its tenants one after another: libpq's own bound, unless the URL sets one
    timeout = {} if "connect_timeout" in parsed.query else {"connect_timeout": PG_CONNECT_S}
    try:
        return create_engine(url, pool_pre_ping=True, connect_args=timeout)
    except (ArgumentError, ImportError) as exc:
        raise StorageError(f"database URL {safe_url(url)}: {exc}") from None


def alembic_config(connection: Any) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@cache
def head_revision() -> str:
    """The newest schema revision this code knows (what ``migrate`` brings a database to).

    Revisions are named after their files (``0006_quality_cases.py`` is revision
    ``0006_quality_cases``, whose parent is the file before it), so the newest is the
    last file name: no Alembic import, which costs about 0.2 s of every node's and
    every host's start (a test holds the naming rule against Alembic's own view)."""
    stems = sorted(p.stem for p in (MIGRATIONS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))
    if not stems:  # pragma: no cover - the package always ships its migrations
        raise StorageError(f"no migrations found in {MIGRATIONS}")
    return stems[-1]


def current_revision(engine: Engine) -> str | None:
    """The database's schema revision (Alembic's version table), None before the first."""
    try:
        with engine.connect() as connection:
            found = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    except DBAPIError as exc:
        if isinstance(exc, OperationalError) and "no such table" not in str(exc.orig):
            raise  # the database cannot be reached: the caller names it
        return None  # no version table yet (PostgreSQL says so with a ProgrammingError)
    return str(found[0][0]) if len(found) == 1 else None


#: one Alembic upgrade at a time in this process: Alembic keeps its migration context and
#: ``op`` in module globals, so two databases migrating at once (a host opening its
#: tenants side by side) could run one's steps on the other's connection
_ALEMBIC = threading.Lock()


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (newest by default). A database already at the
    newest revision is left alone without loading Alembic (the common case at start).
    The look at the revision holds no lock: a database that does not answer waits alone,
    never holding another's migration up (`_ALEMBIC`)."""
    if revision == "head" and current_revision(engine) == head_revision():
        return
    from alembic import command

    with _ALEMBIC, engine.begin() as connection:
        command.upgrade(alembic_config(connection), revision)


class QualityStore:
    """A node's QDM database."""

    def __init__(self, engine: Engine, dictionary: DataDictionary | None = None):
        self.engine = engine
        self.dictionary = dictionary or default_dictionary()
        self._inserters: dict[str, BulkInserter] = {}

    @property
    def url(self) -> str:
        return safe_url(str(self.engine.url.render_as_string(hide_password=False)))

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    def schema_version(self) -> str:
        return current_revision(self.engine) or "none"

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as connection:
            return {
                kind: int(
                    connection.execute(select(func.count()).select_from(_table(kind))).scalar_one()
                )
                for kind in TABLES
            }

    def ingest_rows(
        self,
        kind: str,
        rows: Iterable[tuple[int, Mapping[str, Any] | tuple[str, str]]],
        *,
        source: str = "api",
        batch_size: int = 5000,
        on_progress: Callable[[int], None] | None = None,
        corrections: bool = True,
    ) -> IngestReport:
        """Validate ``(line, row)`` pairs and store the good rows, one transaction for
        each ``batch_size`` delivered rows (5,000 by default, for a line's connectors; a
        file or an upload uses ``connector.ingest.BULK_BATCH_ROWS``, 50,000).

        A batch is validated column by column (`connector.batch_validate`, which hands
        any doubtful row to `parse_row`) and its good rows go in by one bulk statement
        (`connector.bulk_insert`: executemany on SQLite, COPY on PostgreSQL; there the
        batch is validated ``STREAM_CHUNK_ROWS`` rows at a time inside its COPY, each
        chunk sent before the next is validated, so the server inserts while this
        process validates; the batch is still one transaction). While the database
        works on one batch, a worker thread reads (SQLite: and validates) the next (so
        ``rows`` is iterated from that thread after the first batch, never from two
        threads at once: a generator over a file or a list is fine). A line
        given as ``(field, reason)`` instead of a row is reported as it is. A database
        failure rolls the current batch back and raises :class:`StorageError` naming the
        lines of that batch; batches before it stay committed.

        ``corrections=False`` (a line's connectors) only adds records: a row whose
        natural key is stored with other content, or withdrawn, is refused with the
        column that differs and changes nothing (`connector.versions.conflicts`).
        """
        check_kind(kind)
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        report = IngestReport(kind=kind, source=source)
        inserter = self._inserter(kind)
        validator = BatchValidator(
            kind, self.dictionary, inserter.columns, number_texts=self.backend == "postgresql"
        )
        source_rows = iter(rows)

        # PostgreSQL: a batch is validated a chunk at a time inside its COPY, each chunk
        # sent before the next is validated, so the server inserts while this process
        # validates (see `_chunks`); SQLite's executemany runs in this process,
        # so there a batch is validated whole, ahead, by the worker below.
        streamed = self.backend == "postgresql"

        def next_batch() -> tuple[list[Item], _Ready | None]:
            """The next ``batch_size`` delivered rows; validated and in the driver's form
            unless they are to be validated as they are streamed."""
            items = list(islice(source_rows, batch_size))
            if streamed or not items:
                return items, None
            return items, _validated(validator, inserter, items)

        done = 0
        items, ready = next_batch()
        if len(items) < batch_size:  # the source is spent: one batch, nothing to overlap
            done = len(items)
            if items:
                self._flush(kind, items, ready, validator, inserter, report, _nothing, corrections)
        else:
            # More may follow: the next batch is read (SQLite: and validated and encoded)
            # by a worker thread while the database works on this one. The worker is
            # started only where this thread then waits in one long call with the GIL
            # released (the end of a COPY, a commit): sqlite3's executemany and psycopg's
            # COPY writes give the GIL up and take it back per row or chunk, and would
            # queue behind a busy worker (see bench/PROFILE-ingest.md, round 2). Batches
            # are still written one at a time, in delivery order, each in its own
            # transaction; a batch is written as soon as it is read, never held back for
            # the next one to arrive. Only the worker touches the source and the
            # validator until it hands its batch over.
            with ThreadPoolExecutor(1, thread_name_prefix="qdspace-ingest") as worker:
                while items:
                    more = len(items) == batch_size
                    ahead = _Ahead(worker, next_batch if more else None)
                    self._flush(
                        kind, items, ready, validator, inserter, report, ahead.start, corrections
                    )
                    done += len(items)
                    if ahead.future is None:
                        break
                    if on_progress is not None:
                        on_progress(done)
                    items, ready = ahead.future.result()
        if on_progress is not None:
            on_progress(done)
        return report

    def _flush(
        self,
        kind: str,
        items: list[Item],
        ready: _Ready | None,
        validator: BatchValidator,
        inserter: BulkInserter,
        report: IngestReport,
        start_next: Callable[[], None],
        corrections: bool = True,
    ) -> None:
        """Write one batch of delivered rows in a transaction of its own (``ready``: the
        batch validated and prepared already; None: validated chunk by chunk as it is
        sent); ``start_next`` is called (once, when the database is about to work
        without us) to start on the next."""
        results: list[BatchResult] = []
        if ready is not None:
            results.append(ready[0])
            if not ready[0].lines:
                report.reject(RowError(report.source, *e) for e in ready[0].errors)
                start_next()
                return
            chunks: Iterable[Prepared] = (ready[1],)
        else:
            chunks = _chunks(validator, inserter, items, results)
        dbapi_error = self.engine.dialect.loaded_dbapi.Error
        try:
            with self.engine.begin() as connection:
                serialize_writes(connection)  # ids become visible in order (watermarks)
                # straight to the driver (executemany on SQLite, COPY on PostgreSQL): the
                # rows are validated (on PostgreSQL a chunk at a time as they are sent),
                # and SQLAlchemy's per-row machinery would double the cost
                inserted = inserter.write_chunks(connection, chunks, start_next)
                good = sum(len(b.lines) for b in results)
                corrected = 0
                refused: list[RowError] = []
                if inserted < good:  # some natural keys are stored: corrections?
                    columns = inserter.columns
                    rows = [dict(zip(columns, r, strict=True)) for b in results for r in b.rows]
                    if corrections:
                        corrected = correct_rows(connection, kind, rows)
                    else:
                        lines = [line for b in results for line in b.lines]
                        refused = [
                            RowError(report.source, lines[i], column, _not_added(kind, column))
                            for i, column in conflicts(connection, kind, rows)
                        ]
                start_next()  # before the commit (and on SQLite its checkpoint)
        except (SQLAlchemyError, dbapi_error) as exc:
            orig = getattr(exc, "orig", None)
            reason = str(orig) if orig is not None else str(exc)
            lines = [line for b in results for line in b.lines] or [i[0] for i in items]
            raise StorageError(
                f"{report.source}: lines {lines[0]}-{lines[-1]} of {kind} not stored "
                f"(earlier batches are committed: {report.accepted} rows): {reason}"
            ) from exc
        for b in results:
            report.reject(RowError(report.source, *e) for e in b.errors)
        report.reject(refused)
        report.accepted += inserted
        report.corrected += corrected
        report.duplicates += good - inserted - corrected - len(refused)

    def _inserter(self, kind: str) -> BulkInserter:
        """The prebuilt bulk statements of ``kind`` on this database (made once)."""
        found = self._inserters.get(kind)
        if found is None:
            dialect = self.engine.dialect
            found = BulkInserter(_table(kind), dialect.name, dialect.paramstyle)
            self._inserters[kind] = found
        return found

    def latest_measurement(
        self, equipment: str, parameter: str, not_after: datetime | None = None
    ) -> datetime | None:
        """When the newest stored reading of ``parameter`` on ``equipment`` was taken (None:
        none yet): where a line connector's backfill after an outage starts. With
        ``not_after``, readings dated later are passed over: one dated 9999 (a file from an
        exporter whose clock is wrong) would otherwise start every backfill after it."""
        table = _table("measurement")
        query = select(func.max(table.c.measured_at)).where(
            table.c.equipment == equipment, table.c.parameter == parameter
        )
        if not_after is not None:
            query = query.where(table.c.measured_at <= not_after)
        with self.engine.connect() as connection:
            found = connection.execute(query).scalar_one_or_none()
        if found is not None and found.tzinfo is None:
            found = found.replace(tzinfo=UTC)
        return found

    def withdraw(self, kind: str, key: Mapping[str, Any], at: datetime) -> Withdrawal:
        """Withdraw one record (a tombstone that consumers holding a copy receive)."""
        check_kind(kind)
        with self.engine.begin() as connection:
            return withdraw(connection, kind, key, at)

    def history(self, kind: str, key: Mapping[str, Any]) -> list[RecordVersion]:
        """Every version of one record, oldest first, the current one last: what it
        said before each correction or withdrawal (`connector.versions.history`)."""
        check_kind(kind)
        with self.engine.connect() as connection:
            return history(connection, kind, key)

    def close(self) -> None:
        self.engine.dispose()


def _not_added(kind: str, column: str) -> str:
    """Why a row that would change a stored record was refused (``corrections=False``)."""
    key = ", ".join(NATURAL_KEYS[kind])
    if column == "withdrawn_at":
        what = f"the stored {kind} with this {key} is withdrawn"
    else:
        what = f"differs from the stored {kind} with this {key}"
    return f"{what}; this source only adds records (correct one from a file or the API)"


def _nothing() -> None:
    """No next batch to start."""


Item = tuple[int, Mapping[str, Any] | tuple[str, str]]
#: a batch validated, and in its driver's form
_Ready = tuple[BatchResult, Prepared]

#: rows validated at a time inside a streamed (PostgreSQL) batch: small enough that the
#: server is soon at work on the first and has little left after the last, large enough
#: that the per-chunk work (13 column passes, one COPY message) is noise
STREAM_CHUNK_ROWS = 2000


def _validated(validator: BatchValidator, inserter: BulkInserter, items: list[Item]) -> _Ready:
    """``items`` validated, the good rows in the driver's form."""
    batch = validator.validate(items)
    if batch.column_values is not None:  # no row tuples but the driver's own
        return batch, inserter.prepare_columns(
            batch.column_values, batch.time_texts, batch.number_texts
        )
    return batch, inserter.prepare(batch.rows)


def _chunks(
    validator: BatchValidator,
    inserter: BulkInserter,
    items: list[Item],
    results: list[BatchResult],
) -> Iterator[Prepared]:
    """``items`` validated a chunk at a time, when asked for (each result kept in
    ``results``): the driver sends one chunk before it asks for the next."""
    for start in range(0, len(items), STREAM_CHUNK_ROWS):
        batch, prepared = _validated(validator, inserter, items[start : start + STREAM_CHUNK_ROWS])
        results.append(batch)
        yield prepared


class _Ahead:
    """The next batch's validation, started at most once, when the writer says so."""

    def __init__(
        self,
        worker: ThreadPoolExecutor,
        job: Callable[[], tuple[list[Item], _Ready | None]] | None,
    ):
        self.worker = worker
        self.job = job
        self.future: Future[tuple[list[Item], _Ready | None]] | None = None

    def start(self) -> None:
        if self.job is not None and self.future is None:
            self.future = self.worker.submit(self.job)


def _table(kind: str) -> Table:
    table = TABLES[kind].__table__  # type: ignore[attr-defined]
    assert isinstance(table, Table)
    return table


def open_store(url: str, dictionary: DataDictionary | None = None) -> QualityStore:
    """Connect to ``url`` and migrate its schema; errors name the database (password hidden)."""
    engine = create_store_engine(url)
    try:
        migrate(engine)
    except OperationalError as exc:
        engine.dispose()
        raise StorageError(
            f"cannot open database {safe_url(normalise_url(url))}: {exc.orig}"
        ) from None
    except SQLAlchemyError as exc:
        engine.dispose()
        raise StorageError(
            f"cannot migrate database {safe_url(normalise_url(url))}: {exc}"
        ) from None
    return QualityStore(engine, dictionary)
