"""Process data along an order's genealogy, read as a merge of index searches
(`connector.id_merge`), on a real SQLite file and PostgreSQL: the same rows, in the same
order and pages, as the one-statement read of the same scope it replaced, from any
cursor and at any page size; each search served by its index; a point in time's rows.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, delete, insert, or_, select

from qdspace.connector.id_merge import IdMerge, MergedScope
from qdspace.connector.paging import (
    MEASUREMENT_FIELDS,
    MEASUREMENT_TABLE,
    _genealogy_source,
    order_batches,
    process_along_genealogy,
    read_pages,
)
from qdspace.connector.qdm import Batch, GenealogyEdge
from qdspace.connector.storage import QualityStore

from .conftest import query_plan

pytestmark = pytest.mark.integration
T0 = datetime(2026, 6, 1, tzinfo=UTC)
M = MEASUREMENT_TABLE
FIELDS = sorted(MEASUREMENT_FIELDS)


def fill(engine: Engine, seed: int, rows: int = 600) -> None:
    """Readings of four orders' batches interleaved in id order (runs of a batch, as a
    tool writes them), some naming their order too, some only another order, some
    withdrawn; ORD-1's genealogy reaches WB-1 and WB-2 through CB-1."""
    rnd = random.Random(seed)
    batches = [f"CB-{i}" for i in range(8)] + ["WB-1", "WB-2", "WB-3"]
    with engine.begin() as conn:
        conn.execute(delete(M))
        conn.execute(
            insert(Batch.__table__),  # type: ignore[attr-defined]
            [
                {
                    "batch_id": b,
                    "material": "cell" if b.startswith("CB") else "wafer",
                    "kind": "made",
                    "producer": "cellex",
                    "quantity": 1.0,
                    "made_at": T0,
                    "order_id": f"ORD-{int(b[-1]) % 4}" if b.startswith("CB") else None,
                }
                for b in batches
            ],
        )
        conn.execute(
            insert(GenealogyEdge.__table__),  # type: ignore[attr-defined]
            [
                {"child_batch_id": "CB-1", "parent_batch_id": "WB-1"},
                {"child_batch_id": "WB-1", "parent_batch_id": "WB-2"},
                {"child_batch_id": "CB-2", "parent_batch_id": "WB-3"},
            ],
        )
        out: list[dict[str, Any]] = []
        batch = rnd.choice(batches)
        for n in range(rows):
            if rnd.random() < 0.15:  # a new run
                batch = rnd.choice(batches)
            order = rnd.choice([None, None, "ORD-1", "ORD-2"])
            out.append(
                {
                    "equipment": f"pecvd-{n % 3}",
                    "parameter": "temp",
                    "element_id": "E1",
                    "measured_at": T0 + timedelta(seconds=n),
                    "value": float(n),
                    "unit": "C",
                    "raw_value": str(n),
                    "raw_unit": "C",
                    "batch_id": None if rnd.random() < 0.1 else batch,
                    "order_id": order,
                    "withdrawn_at": T0 if rnd.random() < 0.05 else None,
                }
            )
        conn.execute(insert(M), out)


def one_statement(engine: Engine, order_id: str) -> Any:
    """The scope as one WHERE clause: what the read was before the merge."""
    batches = order_batches(engine, order_id)
    return or_(M.c.order_id == order_id, M.c.batch_id.in_(batches))


def pages(engine: Engine, where: Any, after: int, size: int) -> list[list[tuple[Any, ...]]]:
    return [
        [tuple(r) for r in page]
        for page, _ in read_pages(engine, M, FIELDS, where, after=after, page_size=size)
    ]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_merge_reads_the_pages_the_one_statement_read(store: QualityStore, seed: int) -> None:
    engine = store.engine
    fill(engine, seed)
    assert order_batches(engine, "ORD-1") == {"CB-1", "CB-5", "WB-1", "WB-2"}
    for order in ("ORD-1", "ORD-2", "ORD-9"):
        _, scope, _ = _genealogy_source(engine, order)
        assert isinstance(scope, MergedScope)
        before = one_statement(engine, order)
        every = [r for page in pages(engine, before, 0, 1000) for r in page]
        assert order == "ORD-9" or len(every) > 50, order
        ids = [r[-1] for r in every]
        for size in (1, 7, 64, 1000):
            for after in (0, *ids[:: max(1, len(ids) // 4)]):
                assert pages(engine, scope, after, size) == pages(engine, before, after, size), (
                    order,
                    size,
                    after,
                )
        # the asset's reader (dict rows, the order attributed) reads the same rows
        rows = list(process_along_genealogy(engine, order, set(FIELDS)))
        assert [cursor for cursor, _ in rows] == ids
        assert {row["order_id"] for _, row in rows} <= {order}


def test_small_chunks_and_a_row_found_by_two_searches_come_out_once(
    store: QualityStore,
) -> None:
    engine = store.engine
    fill(engine, 4)
    _, scope, _ = _genealogy_source(engine, "ORD-1")
    assert isinstance(scope, MergedScope)
    expected = [
        r[-1] for page in pages(engine, one_statement(engine, "ORD-1"), 0, 1000) for r in page
    ]
    with engine.connect() as conn:
        both = conn.execute(
            select(M.c.id).where(M.c.order_id == "ORD-1", M.c.batch_id.in_(["CB-1", "CB-5"]))
        ).all()
    assert both, "the data has readings found by two searches"
    for chunk in (1, 2, 5):
        merge, got = IdMerge(M, scope, 0, chunk=chunk), []
        with engine.connect() as conn:
            while page := merge.next_ids(conn, 3):
                got += page
                if len(page) < 3:
                    break
        assert got == expected, chunk


LATE = {
    "equipment": "pecvd-9",
    "parameter": "temp",
    "element_id": "E1",
    "measured_at": T0 + timedelta(days=9),
    "value": 1.0,
    "unit": "C",
    "raw_value": "1",
    "raw_unit": "C",
    "batch_id": "CB-1",
    "order_id": "ORD-1",
}


def test_a_read_is_of_one_point_in_time_and_a_purged_row_does_not_end_it(
    store: QualityStore,
) -> None:
    """A reading stored while a read is under way (of the order, in one of its batches)
    is left for the next pull, even by streams still reading; a row purged between the
    merge giving its id and its page being read is missing from that page, and the read
    goes on to the end."""
    engine = store.engine
    fill(engine, 5)
    table, scope, _ = _genealogy_source(engine, "ORD-1")
    assert isinstance(scope, MergedScope)
    before = [r[-1] for page in pages(engine, scope, 0, 10) for r in page]
    merge = IdMerge(M, scope, 0, chunk=2)  # streams far from finished when the row lands
    with engine.connect() as conn:
        got = merge.next_ids(conn, 10)
    with engine.begin() as conn:
        conn.execute(insert(M), [LATE])
    with engine.connect() as conn:
        while page := merge.next_ids(conn, 10):
            got += page
    assert got == before
    now = [r[-1] for page in pages(engine, scope, 0, 10) for r in page]
    assert now[:-1] == before and now[-1] > before[-1]  # the next read has it

    read = read_pages(engine, table, FIELDS, scope, page_size=10)
    first, _ = next(read)
    with engine.begin() as conn:
        conn.execute(delete(M).where(M.c.id == before[15]))  # in the second page
    rest = [[r[-1] for r in page] for page, _ in read]
    assert len(rest[0]) == 9
    assert [r[-1] for r in first] + [i for page in rest for i in page] == [
        i for i in now if i != before[15]
    ]


def test_each_search_reads_its_index_in_id_order(store: QualityStore) -> None:
    """Each stream's statement is an index range in id order: no scan of the readings
    and no sort (PostgreSQL told to avoid scans still plans one where no index serves)."""
    engine = store.engine
    fill(engine, 6)
    by = {"order": M.c.order_id == "ORD-1", "batch": M.c.batch_id == "CB-1"}
    for name, term in by.items():
        statement = select(M.c.id).where(term, M.c.id > 5, M.c.id <= 500).order_by(M.c.id).limit(10)
        plan = query_plan(engine, statement)
        index = f"ix_measurement_{name}"
        assert any(index in step for step in plan), (name, plan)
        steps = [step.lstrip("-> ") for step in plan]
        bad = ("SCAN", "USE TEMP B-TREE", "Seq Scan", "Sort", "Incremental Sort")
        assert [step for step in steps if step.startswith(bad)] == [], (name, plan)
