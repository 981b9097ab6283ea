"""The contract store's statements that go straight to the DBAPI driver (`DriverStatement`)
write and read exactly what SQLAlchemy Core does, on a SQLite file and on PostgreSQL
(when QDSPACE_TEST_PG_URL is set): times in Core's stored form and read back aware in
UTC, booleans, bytes; a unique key the driver runs into is SQLAlchemy's IntegrityError,
and the transaction it broke writes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, func, insert, select, text
from sqlalchemy.exc import IntegrityError

from qdspace.connector.contract_store import ContractStore
from qdspace.connector.contract_store.common import DriverStatement, column_types, message_table
from qdspace.connector.contract_store.negotiations import negotiation_table
from qdspace.connector.negotiation import ContractRequest, Negotiation, Role, open_negotiation
from qdspace.policies.codec import policy_to_json
from qdspace.policies.model import OfferTerms, make_offer

#: not UTC and with microseconds: the bind processor has to convert it
AT = datetime(2026, 5, 1, 12, 30, 45, 123456, tzinfo=timezone(timedelta(hours=2)))


@pytest.fixture
def engine(contract_engine: Engine) -> Engine:
    return contract_engine


def _request(nid: str) -> ContractRequest:
    terms = OfferTerms(purposes=frozenset({"qa"}), orders=frozenset({"ORD-1"}))
    return ContractRequest(f"{nid}:c0", nid, "sunarc", make_offer("o", "cellex", "a", terms), AT)


def test_what_the_driver_writes_core_reads_and_the_other_way_round(engine: Engine) -> None:
    store = ContractStore(engine, bytes(range(32)))
    n = open_negotiation(_request("neg-d1"), Role.PROVIDER)
    store.save_negotiation(None, n)  # through the driver
    table = negotiation_table
    with engine.connect() as connection:
        row = connection.execute(
            select(table.c.created_at, table.c.signed, table.c.offer_json).where(
                table.c.negotiation_id == "neg-d1"
            )
        ).one()
    assert row.created_at == AT and row.created_at.utcoffset() == timedelta(0)
    assert row.signed is True and bytes(row.offer_json) == policy_to_json(n.offer)
    if engine.dialect.name == "sqlite":  # the very text Core stores
        with engine.connect() as connection:
            stored = connection.execute(
                text("SELECT created_at FROM contract_negotiation WHERE negotiation_id = 'neg-d1'")
            ).scalar_one()
        assert stored == "2026-05-01 10:30:45.123456"
    # a row Core wrote reads back through the driver as the same negotiation
    values = {c.name: v for c, v in zip(table.columns, row_values(n, "neg-d2"), strict=True)}
    with engine.begin() as connection:
        connection.execute(insert(table).values(**values))
    loaded = store.load_negotiation("neg-d2")
    assert (loaded.created_at, loaded.updated_at, loaded.signed) == (AT, AT, True)
    assert loaded.created_at.tzinfo == UTC and loaded.offer == n.offer


def row_values(n: Negotiation, nid: str) -> list[object]:
    """A negotiation row in column order (as Core inserts it)."""
    return [
        nid,
        n.role.value,
        n.provider_id,
        n.consumer_id,
        n.asset_id,
        n.state.value,
        policy_to_json(n.offer),
        None,
        None,
        0,
        AT,
        AT,
        True,
    ]


def test_a_unique_key_from_the_driver_is_sqlalchemys_and_writes_nothing(engine: Engine) -> None:
    append = DriverStatement(
        "INSERT INTO contract_message (process_kind, process_id, message_id, sequence, "
        "fingerprint) VALUES (?, ?, ?, ?, ?)",
        column_types(
            message_table,
            ["process_kind", "process_id", "message_id", "sequence", "fingerprint"],
        ),
    )
    with engine.begin() as connection:
        append.execute(connection, ("negotiation", "neg-u", "m1", 0, "f" * 64))
    with pytest.raises(IntegrityError), engine.begin() as connection:
        append.execute(connection, ("negotiation", "neg-u", "m2", 1, "f" * 64))  # new
        append.execute(connection, ("negotiation", "neg-u", "m1", 2, "f" * 64))  # taken
    with engine.connect() as connection:
        count = connection.execute(
            select(func.count()).where(message_table.c.process_id == "neg-u")
        ).scalar_one()
    assert count == 1  # m2 went with the transaction the duplicate broke


@pytest.mark.parametrize(
    "text_value",
    [
        "2026-05-01 10:30:45.123456",  # as SQLAlchemy stores an aware time on SQLite
        "2026-05-01 10:30:45",  # whole seconds
        "2026-05-01 10:30:45.000001",
        "2026-05-01T10:30:45",
        "2026-05-01 10:30",
        "2026-05-01",  # a date alone: no offset can follow it
        "2026-05-01 10:30:45+02:00",  # an offset of its own
        "2026-05-01 10:30:45Z",
        "2026-05-01 10:30:4+00:00",  # 26 characters, an offset of its own
        "2026-05-01 10:30:4x",  # 19 characters, no time
        "2026-05-01 10:30:45.12345Z",
        "9999-12-31 23:59:59.999999",
        "0001-01-01 00:00:00",
    ],
)
def test_a_utc_time_read_from_sqlite_text_is_sqlalchemys(text_value: str) -> None:
    """`result_processor`'s parse of a stored UTC time on SQLite gives what SQLAlchemy's
    own does (the same aware time in UTC, or the same refusal), whatever the text's shape."""
    from sqlalchemy.dialects import sqlite
    from sqlmodel.sql.sqltypes import UTCDateTime

    from qdspace.connector.contract_store.common import result_processor

    dialect = sqlite.dialect()
    kind = UTCDateTime()
    slow = kind.dialect_impl(dialect).result_processor(dialect, None)
    fast = result_processor(kind, dialect)
    assert fast is not slow  # the fast path is the one under test
    try:
        want = slow(text_value)
    except ValueError as exc:
        with pytest.raises(type(exc)):
            fast(text_value)
        return
    got = fast(text_value)
    assert got == want and got.utcoffset() == timedelta(0) and repr(got) == repr(want)
