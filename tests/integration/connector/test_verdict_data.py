"""Verdicts carrying serial / order / batch, read back from a real QDM (SQLite and
PostgreSQL): listed by serial and batch, counted per batch for the p-chart (a
serial-only verdict lands in its product's batch), and the same batches the trace
starts from."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from qdspace.connector import verdict_data
from qdspace.connector.spc_defects import p_chart
from qdspace.connector.storage import QualityStore, open_store
from qdspace.connector.trace_data import failed_batches
from qdspace.connector.verdict_data import (
    MAX_BATCHES,
    VerdictFilter,
    batch_defects,
    defects_query,
    newest_batches,
    read_verdicts,
    unbatched_query,
    verdicts_query,
    walk_query,
)

from .conftest import query_plan

pytestmark = pytest.mark.integration
T0 = datetime(2026, 6, 1, 6, tzinfo=UTC)
#: batch -> (cells judged, cells failed); B-07 has an excursion
BATCHES = {f"B-{i:02d}": (40, 2 if i != 7 else 14) for i in range(1, 13)}


def verdict(n: int, batch: str | None, serial: str, fail: bool, at: datetime) -> dict[str, Any]:
    row: dict[str, Any] = {
        "inspection_id": f"el-1-{n}",
        "station": "el-1",
        "inspected_at": at.isoformat(),
        "verdict": "fail" if fail else "pass",
        "defect_class": "microcrack" if fail else "none",
        "score": 0.9 if fail else 0.1,
        "serial": serial,
        "order_id": "PO-1",
    }
    if batch is not None:
        row["batch_id"] = batch
    return row


@pytest.fixture
def store(store_url: str) -> Iterator[QualityStore]:
    """A QDM with 12 batches of verdicts, on SQLite and on PostgreSQL (conftest)."""
    store = open_store(store_url)
    rows: list[dict[str, Any]] = []
    products: list[dict[str, Any]] = []
    n = 0
    for b, (batch, (judged, failed)) in enumerate(BATCHES.items()):
        for k in range(judged):
            n += 1
            serial = f"S-{batch}-{k:03d}"
            at = T0 + timedelta(hours=b, seconds=k)
            # every fifth cell's verdict names only its serial: the product names the batch
            loose = k % 5 == 0
            rows.append(verdict(n, None if loose else batch, serial, k < failed, at))
            products.append(
                {"serial": serial, "product_type": "cell", "batch_id": batch, "made_at": at}
            )
    rows.append(verdict(n + 1, None, "S-NOWHERE", True, T0 + timedelta(days=1)))
    report = store.ingest_rows("product", enumerate(products, 1))
    assert not report.rejected
    report = store.ingest_rows("inspection", enumerate(rows, 1))
    assert not report.rejected, report.rejected[:3]
    yield store
    store.close()


def test_defects_per_batch_make_a_p_chart_that_flags_the_excursion(store: QualityStore) -> None:
    found = batch_defects(store.engine)
    assert [s.batch_id for s in found.subgroups] == list(BATCHES)
    assert {s.batch_id: (s.inspected, s.defective) for s in found.subgroups} == BATCHES
    assert found.subgroups[6].by_class == (("microcrack", 14),)
    assert found.unbatched == 1  # S-NOWHERE: no batch, no product
    chart = p_chart(found.subgroups)
    assert [p.batch_id for p in chart.points if "WE1" in p.rules] == ["B-07"]
    # a window and a station narrow it (the bounds fall exactly on stored verdicts: the
    # lower one is in, the upper one out; see also test_time_bounds.py)
    window = VerdictFilter(since=T0 + timedelta(hours=6), until=T0 + timedelta(hours=8))
    assert [s.batch_id for s in batch_defects(store.engine, window).subgroups] == ["B-07", "B-08"]
    assert batch_defects(store.engine, VerdictFilter(station="el-9")).subgroups == []


def test_verdicts_list_with_their_batch_newest_first(store: QualityStore) -> None:
    rows = read_verdicts(store.engine, VerdictFilter(batch_id="B-03"), limit=500)
    assert len(rows) == 40 and {r.batch_id for r in rows} == {"B-03"}
    assert rows[0].inspected_at > rows[-1].inspected_at
    one = read_verdicts(store.engine, VerdictFilter(serial="S-B-03-005"))
    assert [(r.serial, r.batch_id, r.order_id) for r in one] == [("S-B-03-005", "B-03", "PO-1")]
    assert len(read_verdicts(store.engine, limit=7)) == 7


def test_the_trace_starts_from_the_same_failed_batches(store: QualityStore) -> None:
    chart_batches = {s.batch_id for s in batch_defects(store.engine).subgroups if s.defective}
    traced = failed_batches(store.engine, since=T0, until=T0 + timedelta(days=2))
    assert traced == frozenset(chart_batches)


def test_a_verdict_naming_its_own_batch_is_that_batchs_whatever_its_product_says(
    store: QualityStore,
) -> None:
    """The batch filter reaches serial-only verdicts through the batch's products, but a
    verdict that names a batch of its own stays in it; a withdrawn product places none."""
    moved = verdict(9001, "B-02", "S-B-03-001", True, T0 + timedelta(days=2))
    loose = verdict(9002, None, "S-GONE", True, T0 + timedelta(days=2, seconds=1))
    gone = {"serial": "S-GONE", "product_type": "cell", "batch_id": "B-03", "made_at": T0}
    assert not store.ingest_rows("product", [(1, gone)]).rejected
    assert not store.ingest_rows("inspection", [(1, moved), (2, loose)]).rejected
    in_b03 = read_verdicts(store.engine, VerdictFilter(batch_id="B-03"), limit=500)
    assert {r.inspection_id for r in in_b03} >= {"el-1-9002"}
    assert "el-1-9001" not in {r.inspection_id for r in in_b03}
    in_b02 = {
        r.inspection_id: r.batch_id
        for r in read_verdicts(store.engine, VerdictFilter(batch_id="B-02"), limit=500)
    }
    assert in_b02["el-1-9001"] == "B-02" and len(in_b02) == 41
    defects = batch_defects(store.engine, VerdictFilter(batch_id="B-03")).subgroups
    assert [(s.batch_id, s.inspected, s.defective) for s in defects] == [("B-03", 41, 3)]
    store.withdraw("product", {"serial": "S-GONE"}, T0 + timedelta(days=3))
    in_b03 = read_verdicts(store.engine, VerdictFilter(batch_id="B-03"), limit=500)
    assert "el-1-9002" not in {r.inspection_id for r in in_b03} and len(in_b03) == 40


def test_a_batch_or_a_serial_is_looked_up_without_reading_every_verdict(
    store: QualityStore,
) -> None:
    """The plans of the batch and serial filters search indexes: no step scans the
    inspections (the old ``coalesce`` filter did: 1.3 s on a million verdicts)."""
    by_batch = VerdictFilter(batch_id="B-03")
    queries = {
        "list by batch": verdicts_query(by_batch),
        "defects by batch": defects_query(by_batch),
        "defects of the chart's batches": defects_query(VerdictFilter(), ["B-03", "B-11"]),
        "list by serial": verdicts_query(VerdictFilter(serial="S-B-03-005")),
    }
    scan = ("SCAN", "Seq Scan on qdm_inspection")
    for name, query in queries.items():
        plan = query_plan(store.engine, query)
        assert [step for step in plan if step.startswith(scan)] == [], (name, plan)
        assert any("ix_inspection_serial" in step for step in plan), (name, plan)
    # the unfiltered listing still walks the time index (newest first), as before
    assert any("ix_inspection_time" in step for step in query_plan(store.engine, verdicts_query()))


@pytest.mark.parametrize("walked", [False, True], ids=["counted-in-one-pass", "walked"])
def test_the_chart_shows_the_batches_judged_most_recently_each_counted_in_full(
    store: QualityStore, monkeypatch: pytest.MonkeyPatch, walked: bool
) -> None:
    """``batches=N`` charts the N batches judged most recently, oldest first by when each
    was first judged, each with all its verdicts (also those judged long before the ones
    that made it recent); verdicts without a batch count from the oldest one's first.
    The same whether the store is counted in one pass or walked (a large one; here the
    limit is lowered, and the walk's step too, so that it takes several)."""
    if walked:
        monkeypatch.setattr(verdict_data, "COUNT_ALL_ROWS", 0)
        monkeypatch.setattr(verdict_data, "WALK_STEP", 16)
    late = verdict(9001, None, "S-B-02-004", True, T0 + timedelta(days=3))  # B-02 again
    early = verdict(9002, None, "S-NONE-EARLY", True, T0 + timedelta(minutes=30))
    assert not store.ingest_rows("inspection", [(1, late), (2, early)]).rejected
    found = batch_defects(store.engine, batches=3)
    assert [(s.batch_id, s.inspected, s.defective) for s in found.subgroups] == [
        ("B-02", 41, 3),
        ("B-11", 40, 2),
        ("B-12", 40, 2),
    ]
    assert found.subgroups[0].at == T0 + timedelta(hours=1)
    assert found.unbatched == 1  # S-NOWHERE; S-NONE-EARLY is before B-02's first verdict
    every = batch_defects(store.engine, batches=MAX_BATCHES)
    assert [s.batch_id for s in every.subgroups] == list(BATCHES)
    assert every.unbatched == 2
    # a window bounds the walk: B-02's late verdict is outside it, so is its first
    window = VerdictFilter(until=T0 + timedelta(days=2))
    assert [s.batch_id for s in batch_defects(store.engine, window, 2).subgroups] == [
        "B-11",
        "B-12",
    ]
    with pytest.raises(ValueError, match="batches"):
        batch_defects(store.engine, batches=0)


def test_walking_and_counting_in_one_pass_give_the_same_chart(
    store: QualityStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whichever way the store is read, each filter and chart size gives the same chart:
    the same batches, counts, classes, first judged and verdicts left out."""
    late = verdict(9001, None, "S-B-02-004", True, T0 + timedelta(days=3))
    assert not store.ingest_rows("inspection", [(1, late)]).rejected
    filters = [
        VerdictFilter(),
        VerdictFilter(since=T0 + timedelta(hours=3), until=T0 + timedelta(hours=9)),
        VerdictFilter(order_id="PO-1"),
        VerdictFilter(batch_id="B-02"),
        VerdictFilter(station="el-9"),
    ]
    charts = {
        (i, n): batch_defects(store.engine, f, n)
        for i, f in enumerate(filters)
        for n in (1, 3, 12, 100)
    }
    assert [s.batch_id for s in charts[0, 3].subgroups] == ["B-02", "B-11", "B-12"]
    assert charts[4, 100].subgroups == [] and charts[3, 1].subgroups[0].inspected == 41
    monkeypatch.setattr(verdict_data, "COUNT_ALL_ROWS", 0)
    monkeypatch.setattr(verdict_data, "WALK_STEP", 9)
    for (i, n), chart in charts.items():
        assert batch_defects(store.engine, filters[i], n) == chart, (filters[i], n)


@pytest.mark.parametrize("step", [1, 2, 7, 40, 10_000])
def test_the_walk_to_the_newest_batches_reads_every_verdict_once_in_order(
    store: QualityStore, monkeypatch: pytest.MonkeyPatch, step: int
) -> None:
    """Read a step at a time, the walk finds the batches in the order of their newest
    verdicts, also where verdicts share a time across a step's end (older or as old
    with a smaller id): an off-by-one there skips or repeats a batch."""
    same = T0 + timedelta(days=4)
    tied = [verdict(9100 + k, f"B-{k % 3 + 1:02d}", f"S-T-{k}", False, same) for k in range(6)]
    assert not store.ingest_rows("inspection", enumerate(tied, 1)).rejected
    monkeypatch.setattr(verdict_data, "WALK_STEP", step)
    with store.engine.connect() as conn:
        newest = newest_batches(conn, VerdictFilter(), 12)
        first_two = newest_batches(conn, VerdictFilter(), 2)
    # the tied verdicts, newest first by id: B-03 (k=5), B-02 (k=4), B-01 (k=3), ...
    assert newest == ["B-03", "B-02", "B-01"] + [f"B-{i:02d}" for i in range(12, 3, -1)]
    assert first_two == ["B-03", "B-02"]


def test_the_chart_reads_its_batches_through_indexes(store: QualityStore) -> None:
    """The walk to the newest batches (a later step too) and the count of verdicts
    without a batch search the time index; the counts of the chosen batches search the
    batch and serial indexes: no step scans the inspections (counting every verdict and
    keeping the newest batches took 1.4 s on a million)."""
    since = VerdictFilter(since=T0 + timedelta(hours=10))
    queries = {
        "walk": walk_query(VerdictFilter()),
        "a later step": walk_query(VerdictFilter(), after=7),
        "unbatched": unbatched_query(since),
    }
    scan = ("SCAN", "Seq Scan on qdm_inspection")
    for name, query in queries.items():
        plan = query_plan(store.engine, query)
        # the first step walks the time index newest first and stops at its limit
        scans = [s for s in plan if s.startswith(scan) and "ix_inspection_time" not in s]
        assert scans == [], (name, plan)
        assert any("ix_inspection_time" in step for step in plan), (name, plan)


def _order_rows(store: QualityStore) -> None:
    """Order PO-2's verdicts: five naming only a serial of a PO-2 product of batch B-20,
    two naming PO-2 and batch B-21 themselves, and one of a PO-2 product that names
    order PO-3 (its own order wins: not PO-2's)."""
    at = T0 + timedelta(days=2)
    products = [
        {"serial": f"S-PO2-{k}", "product_type": "cell", "batch_id": "B-20", "order_id": "PO-2",
         "made_at": at.isoformat()}
        for k in range(6)
    ]  # fmt: skip
    assert not store.ingest_rows("product", enumerate(products, 1)).rejected
    rows = []
    for k in range(6):
        row = verdict(9300 + k, None, f"S-PO2-{k}", k == 1, at + timedelta(seconds=k))
        del row["order_id"]
        if k == 5:
            row["order_id"] = "PO-3"
        rows.append(row)
    for k in range(2):
        row = verdict(9310 + k, "B-21", f"S-B21-{k}", True, at + timedelta(minutes=1, seconds=k))
        row["order_id"] = "PO-2"
        rows.append(row)
    assert not store.ingest_rows("inspection", enumerate(rows, 1)).rejected


@pytest.mark.parametrize("walked", [False, True], ids=["searched", "walked"])
def test_an_orders_verdicts_are_its_own_else_their_products(
    store: QualityStore, monkeypatch: pytest.MonkeyPatch, walked: bool
) -> None:
    """An order's chart counts the verdicts that name it and those whose product names
    it and that name no other: the same whether the order's verdicts are found through
    the order and serial indexes (an order of few verdicts) or the store is walked."""
    _order_rows(store)
    if walked:
        monkeypatch.setattr(verdict_data, "_small_order", lambda conn, order: False)
        monkeypatch.setattr(verdict_data, "COUNT_ALL_ROWS", 0)
        monkeypatch.setattr(verdict_data, "WALK_STEP", 3)
    chart = batch_defects(store.engine, VerdictFilter(order_id="PO-2"))
    assert [(s.batch_id, s.inspected, s.defective) for s in chart.subgroups] == [
        ("B-20", 5, 1),
        ("B-21", 2, 2),
    ]
    third = batch_defects(store.engine, VerdictFilter(order_id="PO-3"))
    assert [(s.batch_id, s.inspected) for s in third.subgroups] == [("B-20", 1)]
    assert batch_defects(store.engine, VerdictFilter(order_id="PO-9")).subgroups == []


def test_an_orders_chart_is_counted_through_indexes(store: QualityStore) -> None:
    """The chart of an order of few verdicts searches the order and serial indexes, and
    so does its count of verdicts without a batch: no step scans the inspections (the
    walk for a rare order read every verdict newest first)."""
    _order_rows(store)
    by_order = VerdictFilter(order_id="PO-2")
    queries = {
        "defects": defects_query(by_order, searched=True),
        "unbatched": unbatched_query(by_order, searched=True),
    }
    scan = ("SCAN", "Seq Scan on qdm_inspection")
    for name, query in queries.items():
        plan = query_plan(store.engine, query)
        assert [step for step in plan if step.startswith(scan)] == [], (name, plan)
        assert any("ix_inspection_order" in step for step in plan), (name, plan)
        assert any("ix_inspection_serial" in step for step in plan), (name, plan)
