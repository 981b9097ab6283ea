"""The connection a node's event-loop thread keeps for its transactions
(`connector.held_connection`), on a SQLite file and on PostgreSQL: this thread reuses
one connection, any other thread and a nested transaction go to the pool, reads see what
others committed and leave no transaction open, a database error other than a unique
key's gives the connection back, and on PostgreSQL a connection the server dropped is
replaced before it is used (as the pool's pre-ping does)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from qdspace.connector import held_connection
from qdspace.connector.contract_store import ContractStore
from qdspace.connector.contract_store.common import ConcurrentUpdateError
from qdspace.connector.negotiation import ContractRequest, Role, open_negotiation
from qdspace.policies.model import OfferTerms, make_offer

from .test_driver_statements import AT


@pytest.fixture
def engine(contract_engine: Engine) -> Iterator[Engine]:
    with contract_engine.begin() as connection:
        connection.execute(text("CREATE TABLE held_probe (k INTEGER PRIMARY KEY)"))
    held_connection.hold(contract_engine)
    try:
        yield contract_engine
    finally:
        held_connection.release(contract_engine)


def _dbapi(connection: Connection) -> Any:
    return connection.connection.dbapi_connection


def _checked_out(engine: Engine) -> int:
    return int(engine.pool.checkedout())  # type: ignore[attr-defined]


def _keys(engine: Engine) -> list[int]:
    with engine.connect() as connection:
        return [k for (k,) in connection.execute(text("SELECT k FROM held_probe ORDER BY k"))]


def test_this_thread_keeps_one_connection_other_threads_and_nesting_use_the_pool(
    engine: Engine,
) -> None:
    with held_connection.begin(engine) as connection:
        connection.execute(text("INSERT INTO held_probe VALUES (1)"))
        first = _dbapi(connection)
        with held_connection.connect(engine) as nested:  # in use: a pooled one, as before
            assert _dbapi(nested) is not first
            # not inside the outer transaction: it does not see the outer's insert yet
            assert nested.execute(text("SELECT count(*) FROM held_probe")).scalar_one() == 0
    with held_connection.begin(engine) as connection:
        assert _dbapi(connection) is first
        connection.execute(text("INSERT INTO held_probe VALUES (2)"))
    assert _checked_out(engine) == 1  # kept, not returned
    elsewhere: list[Any] = []

    def other_thread() -> None:
        with held_connection.begin(engine) as connection:
            elsewhere.append(_dbapi(connection))
            connection.execute(text("INSERT INTO held_probe VALUES (3)"))

    worker = threading.Thread(target=other_thread)
    worker.start()
    worker.join()
    assert elsewhere and elsewhere[0] is not first
    assert _keys(engine) == [1, 2, 3]  # all committed
    held_connection.release(engine)
    assert _checked_out(engine) == 0
    with held_connection.begin(engine) as connection:  # released: the pool's again
        connection.execute(text("INSERT INTO held_probe VALUES (4)"))
    assert _checked_out(engine) == 0


def test_reads_see_what_others_committed_and_leave_no_transaction_open(engine: Engine) -> None:
    with held_connection.connect(engine) as connection:
        assert connection.execute(text("SELECT count(*) FROM held_probe")).scalar_one() == 0
        held = connection
    assert not held.in_transaction()
    if engine.dialect.name == "postgresql":  # the reads' snapshot ended with them
        assert _dbapi(held).info.transaction_status == 0  # psycopg: IDLE
    with engine.begin() as other:  # another connection commits
        other.execute(text("INSERT INTO held_probe VALUES (7)"))
    with held_connection.connect(engine) as connection:
        assert connection is held
        assert connection.execute(text("SELECT count(*) FROM held_probe")).scalar_one() == 1


def test_a_failed_transaction_writes_nothing_and_only_a_database_error_drops_the_connection(
    engine: Engine,
) -> None:
    with held_connection.connect(engine) as connection:
        first = _dbapi(connection)
    with pytest.raises(ValueError), held_connection.begin(engine) as connection:
        connection.execute(text("INSERT INTO held_probe VALUES (1)"))
        raise ValueError("the caller's own error")
    with pytest.raises(IntegrityError), held_connection.begin(engine) as connection:
        connection.execute(text("INSERT INTO held_probe VALUES (2)"))
        connection.execute(text("INSERT INTO held_probe VALUES (2)"))  # unique key
    assert _keys(engine) == []  # both rolled back
    with held_connection.begin(engine) as connection:
        assert _dbapi(connection) is first  # kept through both
    with pytest.raises(DBAPIError), held_connection.begin(engine) as connection:
        connection.execute(text("SELECT no_such_column FROM held_probe"))
    with held_connection.begin(engine) as connection:
        assert _dbapi(connection) is not first  # given back, a fresh one checked out
        connection.execute(text("INSERT INTO held_probe VALUES (3)"))
    assert _keys(engine) == [3]
    assert _checked_out(engine) == 1


def test_a_transaction_left_open_on_the_held_connection_is_rolled_back_not_joined(
    engine: Engine,
) -> None:
    with held_connection.connect(engine) as connection:
        kept = connection
    kept.begin()  # something left a transaction open on it
    kept.execute(text("INSERT INTO held_probe VALUES (9)"))
    with held_connection.begin(engine) as connection:
        assert connection is not kept
        connection.execute(text("INSERT INTO held_probe VALUES (10)"))
    assert _keys(engine) == [10]


def test_the_store_still_reports_a_concurrent_opening_on_the_held_connection(
    engine: Engine,
) -> None:
    store = ContractStore(engine, bytes(range(32)))
    terms = OfferTerms(purposes=frozenset({"qa"}), orders=frozenset({"ORD-1"}))
    request = ContractRequest(
        "neg-h1:c0", "neg-h1", "sunarc", make_offer("o", "cellex", "a", terms), AT
    )
    n = open_negotiation(request, Role.PROVIDER)
    store.save_negotiation(None, n)
    with pytest.raises(ConcurrentUpdateError):
        store.save_negotiation(None, n)  # the same new id again: the unique key
    assert store.load_negotiation("neg-h1") == n


def test_a_postgresql_connection_the_server_dropped_is_replaced_before_use(
    engine: Engine,
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("a server-side disconnect is PostgreSQL's")
    pinged = create_engine(engine.url.render_as_string(hide_password=False), pool_pre_ping=True)
    held_connection.hold(pinged)
    try:
        with held_connection.connect(pinged) as connection:
            backend = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with engine.begin() as admin:
            admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
        with held_connection.begin(pinged) as connection:  # no error: pinged and replaced
            assert connection.execute(text("SELECT pg_backend_pid()")).scalar_one() != backend
            connection.execute(text("INSERT INTO held_probe VALUES (5)"))
        assert _keys(engine) == [5]
    finally:
        held_connection.release(pinged)
        pinged.dispose()
