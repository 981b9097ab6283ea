"""Batch ingest of inspection records: rows/s into SQLite (and PostgreSQL when given).

For each backend and size it times ``QualityStore.ingest_rows`` (validation, unit
and code normalisation, ON CONFLICT insert in 5,000-row transactions) on rows as a
plant delivers them (strings, mixed verdict codes), and in the same run a bare
DBAPI ``executemany`` of the already-validated tuples into the same table: the
ceiling of the database itself. Prints ``name: value unit`` lines and the ratio.

    python bench/ingest.py       # 10k and 1M rows, SQLite (+ PostgreSQL if configured)
    python bench/ingest.py --sizes 10000 --out result.json
    QDSPACE_BENCH_PG_URL=postgresql+psycopg://u:p@host/db python bench/ingest.py
"""

from __future__ import annotations

import argparse
import json
import os
import os.path
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sqlalchemy import create_engine, text

from qdspace.connector.dictionary import default_dictionary
from qdspace.connector.storage import normalise_url, open_store
from qdspace.connector.validate import parse_row

COLUMNS = (
    "inspection_id", "station", "inspected_at", "verdict", "defect_class", "score", "model_version",
    "image_hash", "frame_id", "latency_ms", "order_id", "serial", "batch_id",
)  # fmt: skip


def delivered_rows(n: int, offset: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    for i in range(offset, offset + n):
        failed = i % 23 == 0
        yield (
            i + 1,
            {
                "inspection_id": f"EL-{i:09d}",
                "station": f"EL-{1 + i % 4}",
                "inspected_at": (
                    f"2026-11-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{(i // 60) % 60:02d}Z"
                ),
                "verdict": ("NOK" if failed else "OK") if i % 2 else ("fail" if failed else "pass"),
                "defect_class": "crack" if failed else "",
                "score": f"{(i % 1000) / 1000:.3f}",
                "model_version": "el-2026.11",
                "image_hash": f"{i:064x}",
                "frame_id": str(i),
                "latency_ms": "4.2",
                "order_id": "PO-2026-0042",
                "batch_id": f"CX-CB-26{i // 20000:04d}",
            },
        )


def bench_store(url: str, n: int) -> float:
    store = open_store(url)
    try:
        started = time.perf_counter()
        report = store.ingest_rows("inspection", delivered_rows(n), batch_size=5000)
        elapsed = time.perf_counter() - started
        assert report.accepted == n and not report.rejected, report
    finally:
        store.close()
    return n / elapsed


def bench_bare(url: str, n: int) -> float:
    """DBAPI executemany of pre-validated tuples, 5,000 per transaction (no validation at all)."""
    d = default_dictionary()
    rows = [parse_row("inspection", r, d) for _, r in delivered_rows(n, offset=10**8)]
    engine = create_engine(normalise_url(url))
    store = open_store(url)  # creates the schema
    store.close()
    placeholder = "?" if engine.dialect.name == "sqlite" else "%s"
    sql = (
        f"INSERT INTO qdm_inspection ({', '.join(COLUMNS)}) "
        f"VALUES ({', '.join([placeholder] * len(COLUMNS))}) ON CONFLICT DO NOTHING"
    )
    tuples = [tuple(r.get(c) for c in COLUMNS) for r in rows]
    if engine.dialect.name == "sqlite":
        tuples = [
            tuple(v.isoformat(" ") if hasattr(v, "isoformat") else v for v in t) for t in tuples
        ]
    raw = engine.raw_connection()
    try:
        started = time.perf_counter()
        for start in range(0, n, 5000):
            cursor = raw.cursor()
            cursor.executemany(sql, tuples[start : start + 5000])
            raw.commit()
        elapsed = time.perf_counter() - started
    finally:
        raw.close()
        engine.dispose()
    return n / elapsed


def pg_schema(base: str) -> tuple[str, Any]:
    schema = f"qdspace_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(normalise_url(base))
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))

    def drop() -> None:
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()

    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{schema}", drop


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,1000000", help="comma-separated row counts")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("QDSPACE_BENCH_PG_URL") or os.environ.get("QDSPACE_TEST_PG_URL"),
    )
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument("--quick", action="store_true", help="2,000 rows (CI)")
    args = parser.parse_args()
    if args.quick:
        args.sizes = "2000"
    sizes = [int(s) for s in args.sizes.split(",")]
    figures: dict[str, Any] = {
        "cores": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0],
        "machine": platform.machine(),
        "python": platform.python_version(),
    }
    print(f"ingest_cores: {os.cpu_count()} cores")
    print(f"ingest_loadavg_1m: {figures['loadavg_1m']:.2f} load")
    backends = ["sqlite"] + (["postgresql"] if args.pg_url else [])
    if not args.pg_url:
        print("postgresql: skipped (set QDSPACE_BENCH_PG_URL or --pg-url)")
    for backend in backends:
        for n in sizes:
            for label, fn in (("qdspace", bench_store), ("bare", bench_bare)):
                tmp = tempfile.mkdtemp(prefix="qdspace-bench-")
                drop = None
                try:
                    if backend == "sqlite":
                        url = f"sqlite:///{tmp}/bench.db"
                    else:
                        url, drop = pg_schema(args.pg_url)
                    rate = fn(url, n)
                finally:
                    if drop:
                        drop()
                    shutil.rmtree(tmp, ignore_errors=True)
                key = f"ingest_{backend}_{n}_{label}"
                figures[key] = round(rate, 1)
                print(f"{key}: {rate:,.0f} rows/s")
            ratio = figures[f"ingest_{backend}_{n}_qdspace"] / figures[f"ingest_{backend}_{n}_bare"]
            figures[f"ingest_{backend}_{n}_ratio"] = round(ratio, 3)
            print(f"ingest_{backend}_{n}_ratio_vs_bare: {ratio:.2f} x")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    main()
