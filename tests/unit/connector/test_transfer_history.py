"""A node's transfer history at scale: the last completed pull of a scope found by index,
listings read together and a page at a time, and older transfers migrated."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, select, text

from qdspace.connector.contract_store import ContractStore
from qdspace.connector.contract_store.transfers import (
    scope_key,
    transfer_table,
    watermark,
)
from qdspace.connector.negotiation import Role
from qdspace.connector.storage import migrate
from qdspace.connector.transfer import TransferProcess, TransferState
from qdspace.connector.transfer_wire import MAX_VIEW_CURSOR, Checkpoint

KEK = b"k" * 32
T0 = datetime(2026, 6, 1, tzinfo=UTC)
FIELDS = (None, frozenset({"verdict"}), frozenset({"verdict", "score"}))
POSITIONS = ("10", "250", "999", "0", "", "abc", "²", "12a", "9" * 40, "007", str(2**63 - 1))


@pytest.fixture
def store(contract_engine: Engine) -> ContractStore:
    return ContractStore(contract_engine, KEK)


def _random_transfer(rnd: random.Random, n: int) -> TransferProcess:
    state = rnd.choice(list(TransferState))
    position = rnd.choice(POSITIONS)
    final = Checkpoint(n, b"d" * 32, position) if rnd.random() < 0.8 else None
    at = T0 + timedelta(seconds=rnd.randrange(50))  # equal times happen
    return TransferProcess(
        f"trf-{n:05d}",
        rnd.choice(("agr-1", "agr-2")),
        rnd.choice((Role.CONSUMER, Role.CONSUMER, Role.PROVIDER)),
        "cellex",
        "sunarc",
        state,
        Checkpoint(n, b"c" * 32, str(n)),
        at,
        at,
        final=final,
        seen=tuple((f"trf-{n}:m{i}", f"f{i}") for i in range(rnd.randrange(4))),
        purpose=rnd.choice(("qa", "spc", None)),
        order_id=rnd.choice(("PO-1", "PO-2", None)),
        fields=rnd.choice(FIELDS),
        since=rnd.choice(("", "5")),
    )


def _by_definition(
    transfers: list[TransferProcess], agreement: str, scope: tuple[Any, ...]
) -> set[str]:
    """The last completed pull as it reads: the consumer's completed pulls of the
    agreement with exactly this (order, fields, purpose) and a final position, the
    highest position (the row id it names; else 0) and the latest created of those."""
    found = [
        t
        for t in transfers
        if t.agreement_id == agreement
        and t.role is Role.CONSUMER
        and t.state is TransferState.COMPLETED
        and t.final is not None
        and (t.order_id, t.fields, t.purpose) == scope
    ]
    if not found:
        return set()
    assert all(t.final is not None for t in found)
    best = max(watermark(t.final.position) for t in found if t.final is not None)
    top = [t for t in found if t.final is not None and watermark(t.final.position) == best]
    latest = max(t.created_at for t in top)
    return {t.transfer_id for t in top if t.created_at == latest}


@pytest.mark.parametrize("seed", [1, 2])
def test_the_last_completed_pull_is_the_one_the_definition_picks(
    store: ContractStore, seed: int
) -> None:
    """Random transfers (both roles, every state, scopes differing in one part, hostile
    positions: empty, letters, a superscript two, 40 digits); for every agreement and
    scope the pull found is the one the definition picks (one of equal ones where two
    share a time), and each transfer reads back whole, its message history too."""
    rnd = random.Random(seed)
    made = [_random_transfer(rnd, n) for n in range(300)]
    for process in made:
        store.save_transfer(None, process)
    for agreement in ("agr-1", "agr-2", "agr-3"):
        for order in ("PO-1", "PO-2", None):
            for fields in FIELDS:
                for purpose in ("qa", "spc", None):
                    got = store.last_completed_pull(agreement, order, fields, purpose)
                    want = _by_definition(made, agreement, (order, fields, purpose))
                    assert (got is None) == (not want)
                    assert got is None or got.transfer_id in want
    assert store.transfers() == sorted(made, key=lambda t: (t.created_at, t.transfer_id))


def test_listings_filter_and_page_as_the_whole_list_does(store: ContractStore) -> None:
    rnd = random.Random(3)
    made = [_random_transfer(rnd, n) for n in range(120)]
    for process in made:
        store.save_transfer(None, process)
    every = store.transfers()
    assert every == [store.load_transfer(t.transfer_id) for t in every]
    assert store.count_transfers() == 120
    mine = store.transfers("agr-1")
    assert mine == [t for t in every if t.agreement_id == "agr-1"]
    assert store.count_transfers("agr-1") == len(mine)
    started = store.transfers(role=Role.CONSUMER, state=TransferState.STARTED)
    assert started == [
        t for t in every if t.role is Role.CONSUMER and t.state is TransferState.STARTED
    ]
    pages = [store.transfers(limit=50, offset=o) for o in (0, 50, 100)]
    assert [len(p) for p in pages] == [50, 50, 20]
    assert [t for p in pages for t in p] == every
    assert store.transfers(limit=7, newest_first=True) == every[::-1][:7]
    assert store.transfers("agr-9") == [] and store.count_transfers("agr-9") == 0


def test_a_pull_is_found_in_the_scope_index(store: ContractStore, contract_engine: Engine) -> None:
    """One search of ``ix_contract_transfer_pull``, not every transfer read (1.4 s at
    5,000 pulls before, growing with each)."""
    table = transfer_table
    query = (
        select(table.c.transfer_id)
        .where(
            table.c.agreement_id == "agr-1",
            table.c.scope_key == scope_key("qa", "PO-1", None),
            table.c.watermark.is_not(None),
            table.c.role == "consumer",
            table.c.state == "COMPLETED",
        )
        .order_by(table.c.watermark.desc(), table.c.created_at.desc())
        .limit(1)
    )
    sql = query.compile(dialect=contract_engine.dialect, compile_kwargs={"literal_binds": True})
    with contract_engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            plan = [str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")]
        else:
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan = [str(r[0]) for r in conn.exec_driver_sql(f"EXPLAIN {sql}")]
    assert any("ix_contract_transfer_pull" in step for step in plan), plan
    assert not [s for s in plan if "SCAN contract_transfer" in s or "Seq Scan" in s], plan


def test_a_watermark_is_the_row_id_a_position_names_else_0() -> None:
    assert watermark("12345") == 12345
    assert watermark("007") == 7
    assert watermark(str(MAX_VIEW_CURSOR)) == MAX_VIEW_CURSOR
    assert watermark("²") == 0  # a digit to str.isdigit, not to int()
    assert watermark("١٢") == 0  # Arabic-Indic digits: not the ASCII a store's ids are
    assert watermark("") == watermark("12a") == watermark("-3") == watermark(" 1") == 0
    assert watermark(str(MAX_VIEW_CURSOR + 1)) == watermark("9" * 256) == 0


def test_transfers_from_before_the_scope_key_are_migrated(tmp_path: Path) -> None:
    """A consumer's transfers stored at 0017 get their scope key and watermark at the
    upgrade; its next incremental pull finds the last completed one."""
    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate(engine, "0017_qdm_rewrites")
    columns = (
        "transfer_id, agreement_id, role, provider_id, consumer_id, state, scope_json, "
        "cursor_offset, cursor_digest, cursor_position, final_offset, final_digest, "
        "final_position, message_count, created_at, updated_at"
    )
    scope = '{"fields": null, "order_id": "PO-1", "purpose": "qa"}'
    with engine.begin() as conn:
        for n, position in enumerate(("40", "55", "2")):
            conn.execute(
                text(
                    f"INSERT INTO contract_transfer ({columns}) VALUES (:tid, 'agr-1', "
                    "'consumer', 'cellex', 'sunarc', 'COMPLETED', :scope, 3, zeroblob(32), :p, 3, "
                    "zeroblob(32), :p, 0, :at, :at)"
                ),
                {"tid": f"trf-{n}", "scope": scope, "p": position, "at": f"2026-06-0{n + 1}"},
            )
    migrate(engine)
    store = ContractStore(engine, KEK)
    found = store.last_completed_pull("agr-1", "PO-1", None, "qa")
    assert found is not None and found.transfer_id == "trf-1"
    assert store.last_completed_pull("agr-1", "PO-1", None, "spc") is None
    engine.dispose()
