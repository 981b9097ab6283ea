"""Inspection verdicts by batch and by serial: how long one batch's or one unit's read
takes on a line's worth of verdicts (`connector.verdict_data`).

Two lines at 60 frames a second leave a million verdicts in under five days.
``qdspace inspect verdicts --batch`` and ``--serial`` read them with `read_verdicts`;
`batch_defects` (the p-chart's counts) takes the same filter. Half of the
verdicts here name their batch, half only their serial (their product names the batch),
as a line without MES context writes them; batches of 500 cells, a product per
serial-only verdict, 3 % failed. The rows go in through the node's own ingest
(``QualityStore.ingest_rows``; its speed is ``ingest.py``'s).

Baseline, in the same run on the same database: the batch filter as it was before
``in_batches`` (``coalesce(own batch, product's batch) = ?``, which no index can serve),
and the newest 100 verdicts unfiltered (the time index; the floor of any listing). The
batch read is of the oldest batch, which a scan in time order reaches last.

The p-chart with no filter (``qdspace inspect defects``, ``/v1/inspection/defects``) is
timed as the node reads it (``chart``: counted in one pass up to `COUNT_ALL_ROWS`
verdicts, walked above), walked whatever the size (``chart_walked``), and against the
way it was counted before (baseline ``chart_all_counted``): every verdict grouped by
batch, the newest batches kept afterwards, which grows with every verdict stored. All
three must give the same chart of the 100 batches judged most recently. The chart of an
order with one verdict in a thousand (``chart_rare_order``: found through the order and
serial indexes) is timed against the walk a large store took for it before (baseline
``chart_rare_order_walked``: every verdict read newest first); both must agree.

The inspection page's verdict counts by station (``page_counts``: kept by the console
between loads, `StationCounts`, each load adding what was stored since) are timed at a
load after each second of the two lines (120 new verdicts, stored untimed) against every
verdict grouped by station, as each load read them before (baseline
``page_counts_grouped``); both must agree at every load.

    python bench/verdicts.py                          # 1M verdicts, SQLite
    python bench/verdicts.py --rows 200000 --postgres postgresql+psycopg://u:p@h/db
    python bench/verdicts.py --quick --out result.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import Engine, delete, func, select  # noqa: E402

from bench.support.stores import each_store, summary, timed  # noqa: E402
from qdspace.connector import verdict_data  # noqa: E402
from qdspace.connector.ingest import BULK_BATCH_ROWS  # noqa: E402
from qdspace.connector.qdm import Inspection, Product  # noqa: E402
from qdspace.connector.storage import QualityStore  # noqa: E402
from qdspace.connector.verdict_data import (  # noqa: E402
    CHART_BATCHES,
    COUNT_ALL_ROWS,
    VerdictFilter,
    batch_defects,
    defects_query,
    read_verdicts,
    verdicts_query,
)
from qdspace.node.console.inspection import StationCounts, _by_station  # noqa: E402

BATCH_CELLS = 500
#: an order with one verdict in a thousand (the rest are PO-1's)
RARE_ORDER = "PO-RARE"
_I = Inspection.__table__  # type: ignore[attr-defined]
_P = Product.__table__  # type: ignore[attr-defined]


def batch_of(i: int) -> str:
    return f"B-{i // BATCH_CELLS:06d}"


def fill(store: QualityStore, rows: int) -> None:
    """``rows`` verdicts, every other one naming only its serial (with a product)."""
    rnd = random.Random(19)
    start = time.time() - rows / 120  # two lines at 60 fps
    with store.engine.begin() as conn:
        conn.execute(delete(_I))
        conn.execute(delete(_P))

    def verdicts() -> Iterator[tuple[int, dict[str, Any]]]:
        for i in range(rows):
            failed = rnd.random() < 0.03
            row = {
                "inspection_id": f"el-{i}",
                "station": f"el-{1 + i % 2}",
                "inspected_at": _utc(start + i / 120),
                "verdict": "fail" if failed else "pass",
                "defect_class": "microcrack" if failed else "none",
                "score": 0.5,
                "order_id": RARE_ORDER if i % 1000 == 500 else "PO-1",
                "serial": f"SN-{i:09d}",
            }
            if i % 2 == 0:
                row["batch_id"] = batch_of(i)
            yield i + 1, row

    products = (
        (
            i + 1,
            {
                "serial": f"SN-{i:09d}",
                "product_type": "cell",
                "batch_id": batch_of(i),
                "made_at": _utc(start + i / 120),
            },
        )
        for i in range(1, rows, 2)
    )
    for kind, items in (("product", products), ("inspection", verdicts())):
        report = store.ingest_rows(kind, items, batch_size=BULK_BATCH_ROWS)
        if report.rejected:
            raise SystemExit(f"{kind}: {len(report.rejected)} rows refused: {report.rejected[:3]}")


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def chart_all_counted(engine: Engine) -> list[tuple[str, int, int, datetime]]:
    """The unfiltered chart as it was counted before: every verdict grouped by batch, the
    newest `CHART_BATCHES` by first judged kept afterwards."""
    per_batch: dict[str, tuple[int, int, datetime]] = {}
    with engine.connect() as conn:
        for batch, verdict, _, count, at, _ in conn.execute(defects_query(VerdictFilter())):
            if batch is not None:
                n, d, first = per_batch.get(batch, (0, 0, at))
                failed = count if verdict == "fail" else 0
                per_batch[batch] = (n + count, d + failed, min(first, at))
    ordered = sorted(per_batch.items(), key=lambda kv: (kv[1][2], kv[0]))
    return [(b, n, d, at) for b, (n, d, at) in ordered[-CHART_BATCHES:]]


def chart(
    engine: Engine, f: VerdictFilter = VerdictFilter()
) -> list[tuple[str, int, int, datetime]]:
    found = batch_defects(engine, f).subgroups
    return [(s.batch_id, s.inspected, s.defective, s.at) for s in found]


def chart_walked(
    engine: Engine, f: VerdictFilter = VerdictFilter()
) -> list[tuple[str, int, int, datetime]]:
    """The chart read by walking the verdicts, whatever the store's size (an order's
    too, whatever its number of verdicts: as a large store's was read before)."""
    small = verdict_data._small_order
    verdict_data._small_order = lambda conn, order: False
    verdict_data.COUNT_ALL_ROWS = 0
    try:
        return chart(engine, f)
    finally:
        verdict_data._small_order = small
        verdict_data.COUNT_ALL_ROWS = COUNT_ALL_ROWS


def page_counts(store: QualityStore, runs: int) -> dict[str, dict[str, float]]:
    """The page's counts kept and grouped whole, at each of ``runs`` loads a second of
    verdicts apart (`StationCounts`; the first load, which groups every verdict, untimed)."""
    counts = StationCounts()
    with store.engine.connect() as conn:
        counts.read(conn)
    kept: list[float] = []
    grouped: list[float] = []
    rnd = random.Random(5)
    for run in range(runs):
        at = _utc(time.time())
        new = [
            (
                i + 1,
                {
                    "inspection_id": f"el-page-{run}-{i}",
                    "station": f"el-{1 + i % 2}",
                    "inspected_at": at,
                    "verdict": "fail" if rnd.random() < 0.03 else "pass",
                    "score": 0.5,
                },
            )
            for i in range(120)
        ]
        store.ingest_rows("inspection", new)
        with store.engine.connect() as conn:
            started = time.perf_counter()
            got = counts.read(conn)
            kept.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            top = conn.execute(select(func.max(_I.c.id))).scalar_one()
            every = {s: (n, f, t) for s, n, f, t in conn.execute(_by_station(None, top))}
            grouped.append((time.perf_counter() - started) * 1000)
        if got != every:
            raise SystemExit(f"load {run}: kept counts {got} differ from every verdict's {every}")
    return {"page_counts": summary(kept), "page_counts_grouped": summary(grouped)}


def measure(store: QualityStore, rows: int, runs: int) -> dict[str, Any]:
    engine = store.engine
    oldest = batch_of(1)
    by_batch = VerdictFilter(batch_id=oldest)
    serial = f"SN-{rows // 3:09d}"
    before = func.coalesce(_I.c.batch_id, _P.c.batch_id) == oldest  # the old filter

    def coalesce_listing() -> list[Any]:
        with engine.connect() as conn:
            return conn.execute(verdicts_query(VerdictFilter(), 100).where(before)).all()

    found = read_verdicts(engine, by_batch, 1000)
    scanned = coalesce_listing()
    if {r.batch_id for r in found} != {oldest} or len(found) != BATCH_CELLS:
        raise SystemExit(f"batch {oldest}: read {len(found)} verdicts, expected {BATCH_CELLS}")
    if [r[0] for r in scanned] != [r.inspection_id for r in found[:100]]:
        raise SystemExit("the old and the new batch filter read different verdicts")
    if not chart(engine) == chart_walked(engine) == chart_all_counted(engine):
        raise SystemExit("the chart, the walked chart and every verdict counted differ")
    rare = VerdictFilter(order_id=RARE_ORDER)
    if chart(engine, rare) != chart_walked(engine, rare) or not chart(engine, rare):
        raise SystemExit("the rare order's chart differs searched and walked, or is empty")
    return {
        "by_batch": timed(runs, lambda: read_verdicts(engine, by_batch, 100)),
        "by_batch_coalesce": timed(runs, coalesce_listing),
        "defects_by_batch": timed(runs, lambda: batch_defects(engine, by_batch)),
        "by_serial": timed(runs, lambda: read_verdicts(engine, VerdictFilter(serial=serial))),
        "newest": timed(runs, lambda: read_verdicts(engine, VerdictFilter(), 100)),
        "chart": timed(runs, lambda: chart(engine)),
        "chart_walked": timed(runs, lambda: chart_walked(engine)),
        "chart_all_counted": timed(runs, lambda: chart_all_counted(engine)),
        "chart_rare_order": timed(runs, lambda: chart(engine, rare)),
        "chart_rare_order_walked": timed(max(3, runs // 5), lambda: chart_walked(engine, rare)),
        **page_counts(store, runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="verdicts stored")
    parser.add_argument("--runs", type=int, default=15, help="timed reads per figure")
    parser.add_argument("--postgres", help="also on this PostgreSQL database (emptied!)")
    parser.add_argument("--quick", action="store_true", help="20k verdicts, 3 runs (CI)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    rows, runs = (20_000, 3) if args.quick else (args.rows, args.runs)
    results: dict[str, Any] = {
        "rows": rows,
        "runs": runs,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "figures": {},
    }

    def filled(store: QualityStore) -> str:
        fill(store, rows)
        return f"{rows:,} verdicts"

    results["figures"] = each_store(args.postgres, filled, lambda store: measure(store, rows, runs))
    results["loadavg_1m"] = os.getloadavg()[0]
    print(f"verdicts.rows: {rows} verdicts")
    for name, figures in results["figures"].items():
        for label, f in figures.items():
            print(f"verdicts.{name}.{label}_p50: {f['p50_ms']:.2f} ms")
        speedup = figures["by_batch_coalesce"]["p50_ms"] / figures["by_batch"]["p50_ms"]
        floor = figures["by_batch"]["p50_ms"] / figures["newest"]["p50_ms"]
        figures["by_batch_speedup_over_coalesce"] = speedup
        figures["by_batch_over_newest"] = floor
        print(f"verdicts.{name}.by_batch_speedup_over_baseline_coalesce: {speedup:.1f} ratio")
        print(f"verdicts.{name}.by_batch_over_baseline_newest: {floor:.2f} ratio")
        chart = figures["chart_all_counted"]["p50_ms"] / figures["chart"]["p50_ms"]
        figures["chart_speedup_over_all_counted"] = chart
        print(f"verdicts.{name}.chart_speedup_over_baseline_all_counted: {chart:.1f} ratio")
        rare = figures["chart_rare_order_walked"]["p50_ms"] / figures["chart_rare_order"]["p50_ms"]
        figures["chart_rare_order_speedup_over_walked"] = rare
        print(f"verdicts.{name}.chart_rare_order_speedup_over_baseline_walked: {rare:.1f} ratio")
        page = figures["page_counts_grouped"]["p50_ms"] / figures["page_counts"]["p50_ms"]
        figures["page_counts_speedup_over_grouped"] = page
        print(f"verdicts.{name}.page_counts_speedup_over_baseline_grouped: {page:.1f} ratio")
    print(f"verdicts.cpus: {results['cpus']} cores")
    print(f"verdicts.loadavg_1m: {results['loadavg_1m']:.2f} load")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
