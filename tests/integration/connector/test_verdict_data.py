"""Verdicts carrying serial / order / batch, read back from a real QDM (SQLite and
PostgreSQL): listed by serial and batch, counted per batch for the p-chart (a
serial-only verdict lands in its product's batch), and the same batches the trace
starts from."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from qdspace.connector.spc_defects import p_chart
from qdspace.connector.storage import QualityStore, open_store
from qdspace.connector.trace_data import failed_batches
from qdspace.connector.verdict_data import VerdictFilter, batch_defects, read_verdicts

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
