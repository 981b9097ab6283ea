"""Process data along an order's genealogy: how long a pull's read of the provider's
measurements takes (`connector.paging.read_pages` over `connector.id_merge`).

A supplier's PECVD tools log readings by batch; an OEM's pull of one order's process
data reads the readings of the order's batches and of every batch they were made from.
Here ``--rows`` readings (2M by default) go in through the node's own ingest, in runs
of one batch at a time, 2,000 readings a batch, the batches spread over 50 orders in
turn, so each order holds 2 % of the table; one order, the "large" one, holds a fifth of
the batches. Each order's cell batches are made from one wafer batch (genealogy).

Timed, per order (a small one and the large one), the whole read as a transfer does it
(500-row pages, raw rows): the merge of index searches, and in the same run on the same
rows the baseline, the read before `id_merge`: the same scope as one statement a page
(``order_id = ? OR batch_id IN (...)``) with the indexes put back as they were before
``0014_measurement_scope`` (on today's indexes SQLite would serve that OR from them,
gathering every remaining match for every page: 38 s for the large order). Both must
read the same rows.

    python bench/genealogy_read.py                   # 2M readings, SQLite
    python bench/genealogy_read.py --rows 500000 --postgres postgresql+psycopg://u:p@h/db
    python bench/genealogy_read.py --quick --out result.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import Engine, or_  # noqa: E402

from bench.support.stores import each_store  # noqa: E402
from qdspace.connector.ingest import BULK_BATCH_ROWS  # noqa: E402
from qdspace.connector.paging import (  # noqa: E402
    MEASUREMENT_FIELDS,
    MEASUREMENT_TABLE,
    _genealogy_source,
    order_batches,
    read_pages,
)
from qdspace.connector.storage import QualityStore  # noqa: E402

READINGS_PER_BATCH = 2_000
ORDERS = 50
LARGE = "PO-LARGE"
PAGE_ROWS = 500  # encoding.DEFAULT_BATCH_ROWS: a transfer's page
T0 = datetime(2026, 11, 1, tzinfo=UTC)
FIELDS = sorted(MEASUREMENT_FIELDS)


def order_of(batch: int) -> str:
    return LARGE if batch % 5 == 0 else f"PO-{batch % ORDERS:03d}"


def fill(store: QualityStore, rows: int) -> None:
    batches = max(1, rows // READINGS_PER_BATCH)
    with store.engine.begin() as conn:
        for table in ("qdm_measurement", "qdm_genealogy", "qdm_batch"):
            conn.exec_driver_sql(f"DELETE FROM {table}")

    def readings() -> Iterator[tuple[int, dict[str, Any]]]:
        for i in range(rows):
            b = i // READINGS_PER_BATCH
            yield (
                i + 1,
                {
                    "equipment": f"pecvd-{i % 3}",
                    "parameter": "pecvd_chamber_vacuum",
                    "value": 2.0 + (i % 97) / 1000,
                    "unit": "mbar",
                    "measured_at": (T0 + timedelta(milliseconds=i)).isoformat(),
                    "batch_id": f"CB-{b:05d}",
                },
            )

    cell_batches = (
        (
            b + 1,
            {
                "batch_id": f"CB-{b:05d}",
                "material": "PERC cell",
                "kind": "cell",
                "producer": "cellex",
                "quantity": 1000,
                "made_at": T0.isoformat(),
                "order_id": order_of(b),
            },
        )
        for b in range(batches)
    )
    wafer_batches = (
        (
            k + 1,
            {
                "batch_id": f"WB-{order}",
                "material": "p-type wafer",
                "kind": "wafer",
                "producer": "siliwafer",
                "quantity": 1000,
                "made_at": T0.isoformat(),
            },
        )
        for k, order in enumerate(sorted({order_of(b) for b in range(batches)}))
    )
    edges = (
        (b + 1, {"child_batch_id": f"CB-{b:05d}", "parent_batch_id": f"WB-{order_of(b)}"})
        for b in range(batches)
    )
    for kind, items in (
        ("batch", cell_batches),
        ("batch", wafer_batches),
        ("genealogy", edges),
        ("measurement", readings()),
    ):
        report = store.ingest_rows(kind, items, batch_size=BULK_BATCH_ROWS)
        if report.rejected:
            raise SystemExit(f"{kind}: {len(report.rejected)} rows refused: {report.rejected[:3]}")


def read_all(engine: Engine, where: Any) -> tuple[int, str]:
    digest, n = hashlib.sha256(), 0
    for page, _ in read_pages(engine, MEASUREMENT_TABLE, FIELDS, where, page_size=PAGE_ROWS):
        for row in page:
            digest.update(repr(tuple(row)).encode())
        n += len(page)
    return n, digest.hexdigest()


def timed(runs: int, engine: Engine, where: Any) -> dict[str, Any]:
    values, read = [], (0, "")
    for _ in range(runs):
        started = time.perf_counter()
        read = read_all(engine, where)
        values.append(time.perf_counter() - started)
    seconds = statistics.median(values)
    return {"seconds": seconds, "rows": read[0], "digest": read[1], "rows_per_s": read[0] / seconds}


#: the measurement indexes before and after 0014_measurement_scope
BEFORE = (
    "DROP INDEX ix_measurement_order",
    "DROP INDEX ix_measurement_batch",
    "CREATE INDEX ix_measurement_batch ON qdm_measurement (batch_id)",
)
AFTER = (
    "DROP INDEX ix_measurement_batch",
    "CREATE INDEX ix_measurement_batch ON qdm_measurement (batch_id, id)",
    "CREATE INDEX ix_measurement_order ON qdm_measurement (order_id, id)",
)


def indexes(engine: Engine, statements: tuple[str, ...]) -> None:
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE qdm_measurement")


def measure(engine: Engine, runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    orders = {"small": "PO-001", "large": LARGE}
    m = MEASUREMENT_TABLE.c
    for label, order in orders.items():
        _, merged, _ = _genealogy_source(engine, order)
        out[label] = {"order": order, "merged": timed(runs, engine, merged)}
    indexes(engine, BEFORE)  # the baseline runs on the schema it ran on
    try:
        for label, order in orders.items():
            one_statement = or_(m.order_id == order, m.batch_id.in_(order_batches(engine, order)))
            old, new = timed(runs, engine, one_statement), out[label]["merged"]
            if (new["rows"], new["digest"]) != (old["rows"], old["digest"]):
                raise SystemExit(f"{order}: the merge read other rows than the one statement")
            out[label]["one_statement"] = old
    finally:
        indexes(engine, AFTER)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="readings stored")
    parser.add_argument("--runs", type=int, default=3, help="timed reads per figure")
    parser.add_argument("--postgres", help="also on this PostgreSQL database (emptied!)")
    parser.add_argument("--quick", action="store_true", help="40k readings, 1 run (CI)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    rows, runs = (40_000, 1) if args.quick else (args.rows, args.runs)
    results: dict[str, Any] = {
        "rows": rows,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "figures": {},
    }

    def filled(store: QualityStore) -> str:
        fill(store, rows)
        return f"{rows:,} readings"

    results["figures"] = each_store(
        args.postgres, filled, lambda store: measure(store.engine, runs)
    )
    results["loadavg_1m"] = os.getloadavg()[0]
    print(f"genealogy_read.rows: {rows} readings")
    for name, figures in results["figures"].items():
        for label, f in figures.items():
            new, old = f["merged"], f["one_statement"]
            prefix = f"genealogy_read.{name}.{label}"
            print(f"{prefix}.rows: {new['rows']} rows")
            print(
                f"{prefix}.merged: {new['seconds'] * 1000:.0f} ms ({new['rows_per_s']:,.0f} rows/s)"
            )
            print(
                f"{prefix}.baseline_one_statement: {old['seconds'] * 1000:.0f} ms "
                f"({old['rows_per_s']:,.0f} rows/s)"
            )
            f["speedup"] = old["seconds"] / new["seconds"]
            print(f"{prefix}.speedup_over_baseline: {f['speedup']:.1f} ratio")
    print(f"genealogy_read.cpus: {results['cpus']} cores")
    print(f"genealogy_read.loadavg_1m: {results['loadavg_1m']:.2f} load")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
