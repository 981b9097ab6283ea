"""One database connection kept checked out for the thread that runs a node's event loop.

Why: `Engine.begin()` checks a connection out of the pool and back in around every
transaction (a `Connection` object, the pool's queue and weak references, checkout
and checkin events); on a SQLite file that costs more than the statements of a small
transaction: 63 to 72 us of CPU for one insert and its commit, 26 us for the same on a
connection held open; a read through `Engine.connect()` 18 to 21 us (bench/
PROFILE-negotiation.md, round 6). A negotiation runs five transactions and two reads
across its two nodes, all on the nodes' event-loop threads, one after another (a store
call is synchronous: nothing awaits inside a transaction). So that thread keeps one
`Connection` of its engine (`hold`) and runs its transactions (`begin`) and reads
(`connect`) on it; everything else is as `engine.begin()` / `engine.connect()`:

- Only the thread that called `hold` uses the held connection. Other threads (ingest,
  a transfer's commit thread, the ledger) check connections out of the pool as before,
  and the pool keeps all its other connections for them.
- Not re-entrant: a transaction or read opened while the held connection is in use (one
  store call inside another's transaction) checks a connection out of the pool, as it
  did before, so it never lands in the outer transaction by accident.
- A read ends with a rollback, as a pooled connection's return does: on PostgreSQL the
  reads' transaction (and its snapshot) ends with it; on SQLite there is none to end.
- PostgreSQL: the pool pings a connection at every checkout (``pool_pre_ping``), so a
  server that restarted costs no failed request. The held connection is pinged the same
  way before each use, and replaced by a fresh checkout when the ping fails.
- A connection that raised a database error (other than a unique key: the compare-and-
  set's lost race, which leaves it healthy) or was invalidated is given back to the pool
  (which resets or discards it); the next use checks a fresh one out. So is one found
  with a transaction left open, which the next caller would otherwise join.
- `release` gives it back; the node releases it before its engine is disposed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

_local = threading.local()


class _Held:
    __slots__ = ("busy", "connection", "engine", "ping")

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.connection: Connection | None = None
        self.busy = False
        self.ping = bool(getattr(engine.pool, "_pre_ping", False))

    def take(self) -> Connection:
        connection = self.connection
        if connection is not None and (
            connection.invalidated or connection.closed or connection.in_transaction()
        ):  # (a transaction left open would be joined by the next caller: give it back)
            self.drop()
            connection = None
        if connection is not None and self.ping and not self._alive(connection):
            self.drop(invalidate=True)
            connection = None
        if connection is None:
            connection = self.connection = self.engine.connect()  # the pool pings it
        self.busy = True
        return connection

    def _alive(self, connection: Connection) -> bool:
        dbapi = connection.connection.dbapi_connection
        try:
            return dbapi is not None and bool(self.engine.dialect.do_ping(dbapi))
        except Exception:
            return False

    def drop(self, *, invalidate: bool = False) -> None:
        connection, self.connection = self.connection, None
        if connection is None:
            return
        try:
            if invalidate and not connection.invalidated:
                connection.invalidate()
            connection.close()
        except Exception:  # a dead connection: the pool has discarded it
            pass

    def spoilt_by(self, connection: Connection, error: BaseException) -> None:
        if connection.invalidated or (
            isinstance(error, DBAPIError) and not isinstance(error, IntegrityError)
        ):
            self.drop(invalidate=connection.invalidated)


def _holding() -> dict[Engine, _Held]:
    held: dict[Engine, _Held] | None = getattr(_local, "held", None)
    if held is None:
        held = _local.held = {}
    return held


def hold(engine: Engine) -> None:
    """From now on this thread's `begin` and `connect` on `engine` use one connection
    (checked out on first use). Idempotent."""
    _holding().setdefault(engine, _Held(engine))


def release(engine: Engine) -> None:
    """Give this thread's held connection of `engine` back to the pool; later
    transactions check connections out as `engine.begin()` does."""
    held = _holding().pop(engine, None)
    if held is not None:
        held.drop()


def _free(engine: Engine) -> _Held | None:
    """The held connection of `engine` for this thread, when there is one not in use."""
    held: dict[Engine, _Held] | None = getattr(_local, "held", None)
    if not held:
        return None
    found = held.get(engine)
    return None if found is None or found.busy else found


def begin(engine: Engine) -> AbstractContextManager[Connection]:
    """`engine.begin()`: one transaction, committed at the end, rolled back on an error."""
    return _transaction(engine, commit=True)


def connect(engine: Engine) -> AbstractContextManager[Connection]:
    """`engine.connect()` for reads: whatever the block began is rolled back at its end."""
    return _transaction(engine, commit=False)


@contextmanager
def _transaction(engine: Engine, *, commit: bool) -> Iterator[Connection]:
    held = _free(engine)
    if held is None:
        with engine.begin() if commit else engine.connect() as connection:
            yield connection
        return
    connection = held.take()
    try:
        with connection.begin() as transaction:  # rolled back on an error
            yield connection
            if not commit and transaction.is_active and not connection.invalidated:
                transaction.rollback()  # a read keeps nothing it began
    except BaseException as error:
        held.spoilt_by(connection, error)
        raise
    finally:
        held.busy = False
