"""Received rows stored under an older schema, after the migrations of the row index.

0011_received_cursor (the source cursor in a row of its own) and
0012_received_agreement_no (the unique key (agreement number, record key) instead of
(agreement id, record key)) change how the consumer's copy is indexed, not what it
holds: rows written in the old form, by the old statements' columns, must read, page,
keep once, take corrections and purge as before. And the key stays per agreement: the
same record key under two agreements is two records, whatever arrives for one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, inspect, select

from qdspace.connector.agreement import REASON_LEAVING, deletion_digest_of_bytes
from qdspace.connector.contract_store import (
    ContractStore,
    IncomingRow,
    MirrorVersion,
    OutboxMessage,
    received_agreement_table,
    received_row_table,
)
from qdspace.connector.contract_store.data_keys import DataKeys, row_aad
from qdspace.connector.contract_store.received_pages import Pages
from qdspace.connector.negotiation import Role
from qdspace.connector.retention_sweep import shred_and_sign
from qdspace.connector.storage import migrate
from qdspace.connector.transfer_wire import record_meta, tombstone_bytes

from .test_contract_store import KEK, at, rec
from .test_retention import C_KEY, give_agreement_before_0019, signed_agreement

#: the row index's columns before 0012 (what the old statements wrote)
_NUMBER = (received_agreement_table.c.agreement_no, received_agreement_table.c.agreement_id)
_COUNTS = (received_agreement_table.c.revision, received_agreement_table.c.rewrites)
OLD_COLUMNS = tuple(c for c in received_row_table.c if c.name != "agreement_no")


def legacy_index(
    connection: Connection,
    place: tuple[str, str, str],
    received_at: datetime,
    page: int | None,
    keys: Sequence[str],
    seqs: Sequence[int],
    version: int = 1,
    withdrawn: bool = False,
) -> None:
    """Index rows as the code before 0012 did: no agreement number (a tombstone: no page)."""
    agreement_id, order_id, source_id = place
    connection.execute(
        received_row_table.insert(),
        [
            {
                "agreement_id": agreement_id,
                "order_id": order_id,
                "source_id": source_id,
                "seq": seq,
                "nonce": b"",
                "ciphertext": b"",
                "received_at": received_at,
                "record_key": key,
                "version": version,
                "withdrawn": withdrawn,
                "page_id": page,
                "slot": None if page is None else slot,
            }
            for slot, (key, seq) in enumerate(zip(keys, seqs, strict=True))
        ],
    )


def own_ciphertext_row(
    connection: Connection, keys: DataKeys, agreement_id: str, payload: bytes, seq: int
) -> None:
    """A row as stored before 0009_received_pages: its own ciphertext, no page."""
    cipher = keys.key_in(connection, agreement_id, "ORD-1", True, at(1))
    nonce = os.urandom(12)
    sealed = cipher.encrypt(nonce, payload, row_aad(agreement_id, "ORD-1", "tx-0", seq))
    connection.execute(
        received_row_table.insert().values(
            agreement_id=agreement_id,
            order_id="ORD-1",
            source_id="tx-0",
            seq=seq,
            nonce=nonce,
            ciphertext=sealed,
            received_at=at(1),
            record_key=rec_key(payload),
        )
    )


def rec_key(payload: bytes) -> str:
    return record_meta(payload).key


def test_rows_stored_under_0010_read_and_keep_their_cursor_after_0011(
    bare_engine: Engine,
) -> None:
    """0011_received_cursor drops the (source, seq) index of received rows and keeps
    each source's position in a row of its own: the migration fills it from the rows
    held (own-ciphertext and paged alike), which read as before; later deliveries move
    it forward, never back."""
    engine = bare_engine
    migrate(engine, "0010_sqlite_time_text")
    store = ContractStore(engine, KEK)
    agr, keys = "agr-neg-1", DataKeys(engine, KEK)
    with engine.begin() as connection:
        give_agreement_before_0019(connection, signed_agreement(agr, 180), Role.CONSUMER)
    old, paged = rec("k-old", verdict="pass"), [rec(f"k{i}") for i in range(3)]
    with engine.begin() as connection:
        own_ciphertext_row(connection, keys, agr, old, 3)
        cipher = keys.key_in(connection, agr, "ORD-1", True, at(1))
        place = (agr, "ORD-1", "sub-1")
        page = Pages(keys, received_row_table).insert(
            connection, cipher, place, [7, 9, 8], paged, at(2)
        )
        legacy_index(connection, place, at(2), page, ["k0", "k1", "k2"], [7, 9, 8])
    migrate(engine)
    assert "ix_contract_received_row_source" not in {
        i["name"] for i in inspect(engine).get_indexes("contract_received_row")
    }
    assert (store.last_received_seq("tx-0"), store.last_received_seq("sub-1")) == (3, 9)
    assert store.last_received_seq("sub-2") is None
    assert sorted(r.payload for r in store.received_rows(agr)) == sorted([old, *paged])
    # a delivery of copies only still moves its source on; an older one does not move it back
    store.store_received_rows(agr, "sub-1", [IncomingRow(12, "ORD-1", paged[0])], at(3))
    store.store_received_rows(agr, "sub-1", [IncomingRow(5, "ORD-1", rec("k5"))], at(3))
    assert store.last_received_seq("sub-1") == 12
    assert store.count_received(agr) == 5


def _held(store: ContractStore, agreement_id: str) -> dict[str, tuple[int, bytes]]:
    return {r.record_key: (r.version, r.payload) for r in store.received_rows(agreement_id)}


def _index(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        found = connection.execute(select(*OLD_COLUMNS).order_by(received_row_table.c.id))
        return [tuple(row) for row in found]


def test_rows_stored_under_0011_read_keep_once_and_purge_after_0012(
    bare_engine: Engine,
) -> None:
    """0012_received_agreement_no numbers the agreements and re-keys every row by its
    agreement's number: the rows (ids, places, keys, versions, pages, slots) stay as
    they were, read and page as before, a re-delivery is kept once, a correction or a
    withdrawal reaches only its own agreement's record, and a purge deletes exactly
    one agreement's order with the receipt's count and digest of what it held."""
    engine = bare_engine
    migrate(engine, "0011_received_cursor")
    store = ContractStore(engine, KEK)
    with engine.begin() as connection:
        for agreement_id in ("agr-b", "agr-a", "agr-c"):
            signed = signed_agreement(agreement_id, 180)
            give_agreement_before_0019(connection, signed, Role.CONSUMER)
    keys = DataKeys(engine, KEK)
    a_rows = [rec(f"k{i}", verdict="pass", by="a") for i in range(3)]
    b_rows = [rec("k0", verdict="fail", by="b"), rec("k9", by="b")]  # k0 as in agr-a
    a2, old = rec("k3", by="a"), rec("k-old", by="a")
    with engine.begin() as connection:
        own_ciphertext_row(connection, keys, "agr-a", old, 3)
        for place, rows, seqs in (
            (("agr-a", "ORD-1", "tx-a"), a_rows, [10, 11, 12]),
            (("agr-b", "ORD-1", "tx-b"), b_rows, [4, 5]),
            (("agr-a", "ORD-2", "tx-a"), [a2], [13]),
        ):
            cipher = keys.key_in(connection, place[0], place[1], True, at(1))
            page = Pages(keys, received_row_table).insert(
                connection, cipher, place, seqs, rows, at(2)
            )
            legacy_index(connection, place, at(2), page, [rec_key(r) for r in rows], seqs)
        legacy_index(connection, ("agr-b", "ORD-1", "tx-b"), at(3), None, ["k8"], [6], 2, True)
    before = _index(engine)
    migrate(engine)

    # every row as it was, each given its own agreement's number (in agreement id order)
    assert _index(engine) == before
    with engine.connect() as connection:
        numbers = dict(connection.execute(select(*_NUMBER)).all())
        counts = connection.execute(select(*_COUNTS)).all()
        pairs = connection.execute(
            select(received_row_table.c.agreement_no, received_row_table.c.agreement_id)
        ).all()
    assert numbers == {1: "agr-a", 2: "agr-b"}
    assert counts == [(0, 0), (0, 0)]  # 0016: changes are counted from the upgrade on
    assert all(numbers[no] == agreement_id for no, agreement_id in pairs)
    uniques = inspect(engine).get_unique_constraints("contract_received_row")
    assert [u["column_names"] for u in uniques] == [["agreement_no", "record_key"]]

    # read and paged as before
    a_held = {"k0": (1, a_rows[0]), "k1": (1, a_rows[1]), "k2": (1, a_rows[2])}
    a_held |= {"k3": (1, a2), "k-old": (1, old)}
    assert _held(store, "agr-a") == a_held
    assert _held(store, "agr-b") == {"k0": (1, b_rows[0]), "k9": (1, b_rows[1])}
    assert (store.count_received("agr-a"), store.count_received(), store.count_received("x")) == (
        5,
        7,
        0,
    )
    whole = store.received_rows("agr-a")
    first = store.received_rows("agr-a", limit=2)
    rest = store.received_rows("agr-a", after_id=first[-1].id)
    assert first + rest == whole and len(first) == 2
    assert [r.record_key for r in store.received_rows("agr-a", "ORD-2")] == ["k3"]

    # kept once per agreement: a re-delivery changes nothing; the same key and bytes
    # under the other agreement are that agreement's record, not a copy of this one
    again = [IncomingRow(20 + i, "ORD-1", row) for i, row in enumerate(a_rows)]
    assert store.store_received_rows("agr-a", "tx-a", again, at(4)).unchanged == 3
    assert store.store_received_rows("agr-c", "tx-c", again, at(4)).added == 3
    # a correction and a withdrawal reach their own agreement's record only
    fixed = rec("k0", 2, verdict="pass", by="b")
    gone = tombstone_bytes("k1", 2)
    withdrawn = store.store_received_rows("agr-c", "tx-c", [IncomingRow(30, "ORD-1", gone)], at(5))
    assert withdrawn.withdrawn == 1
    assert set(_held(store, "agr-c")) == {"k0", "k2"}
    result = store.store_received_rows("agr-b", "tx-b", [IncomingRow(7, "ORD-1", fixed)], at(5))
    assert result.replaced == 1
    assert _held(store, "agr-b")["k0"] == (2, fixed)
    assert _held(store, "agr-a") == a_held
    with engine.connect() as connection:
        numbers = dict(connection.execute(select(*_NUMBER)).all())
    assert numbers == {1: "agr-a", 2: "agr-b", 3: "agr-c"}  # a new one gets the next
    assert store.mirror_version("agr-b") == MirrorVersion(1, 1)  # k0 replaced

    # the purge: one agreement's order, the receipt over exactly what it held
    now = at(6) + timedelta(days=1)
    store.terminate_agreement("agr-a", "leaving", now)
    signed = shred_and_sign(store, "agr-a", "ORD-1", C_KEY, now, _outbox, reason=REASON_LEAVING)
    assert signed is not None
    assert (signed.receipt.row_count, signed.receipt.content_sha256) == deletion_digest_of_bytes(
        [r.payload for r in whole if r.order_id == "ORD-1"]
    )
    assert signed.receipt.row_count == 4  # k0, k1, k2 and the own-ciphertext k-old
    assert _held(store, "agr-a") == {"k3": (1, a2)}
    assert set(_held(store, "agr-b")) == {"k0", "k9"}
    assert set(_held(store, "agr-c")) == {"k0", "k2"}


def _outbox(signed: Any, provider: str) -> list[OutboxMessage]:
    rid = signed.receipt.receipt_id
    return [OutboxMessage(provider, "notification", rid, f"receipt:{rid}", b"x")]


def test_rows_stored_under_0020_read_the_same_from_the_agreement_index_after_0021(
    bare_engine: Engine,
) -> None:
    """0021_received_by_agreement indexes the rows by (agreement number, id): rows stored
    before it (two agreements, two orders, a withdrawal) are in the index after the
    upgrade and read, page, and come newest-first exactly as before it."""
    engine = bare_engine
    migrate(engine, "0020_case_listing")
    with engine.begin() as connection:  # today's write path counts rows (0024, which keeps it)
        connection.exec_driver_sql(
            "ALTER TABLE contract_received_source ADD COLUMN delivered BIGINT NOT NULL DEFAULT 0"
        )
    store = ContractStore(engine, KEK)
    for agreement_id in ("agr-a", "agr-b"):
        store.save_agreement(signed_agreement(agreement_id, 180), Role.CONSUMER)
    for n in range(3):
        for agreement_id in ("agr-a", "agr-b"):
            rows = [IncomingRow(10 * n + i, f"ORD-{i % 2}", rec(f"k{n}-{i}")) for i in range(4)]
            store.store_received_rows(agreement_id, f"tx-{agreement_id}", rows, at(n))
    withdrawn = tombstone_bytes("k1-2", 2)
    store.store_received_rows("agr-a", "tx-agr-a", [IncomingRow(99, "ORD-0", withdrawn)], at(4))

    def reads() -> list[object]:
        def ids(rows: Sequence[Any]) -> list[tuple[int, bytes]]:
            return [(r.id, r.payload) for r in rows]

        return [
            ids(store.received_rows("agr-a")),
            ids(store.received_rows("agr-a", "ORD-1", after_id=3, limit=2)),
            ids(store.received_newest("agr-a", 5)),
            ids(store.received_since("agr-b", 6)),
            store.count_received("agr-a"),
        ]

    before = reads()
    assert len(before[0]) == 11  # type: ignore[arg-type]
    migrate(engine)
    index = {i["name"]: i for i in inspect(engine).get_indexes("contract_received_row")}
    assert index["ix_contract_received_row_agreement"]["column_names"] == ["agreement_no", "id"]
    assert reads() == before
