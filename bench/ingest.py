"""Batch ingest of inspection records: rows/s into SQLite (and PostgreSQL when given).

For each size the rows are made first, as a plant delivers them (strings, mixed verdict
codes) and as a parsed file hands them on; then, per backend, three timings in the same
run on the same rows:

- ``qdspace``: ``QualityStore.ingest_rows`` (batch validation with unit and code
  normalisation, then ``executemany`` on SQLite or ``COPY`` on PostgreSQL, the node's
  rows per transaction for a file or upload (``BULK_BATCH_ROWS``, 50,000), conflicts
  counted as duplicates or corrections);
- ``rowwise``: the path before batch validation (``parse_row`` per row, SQLAlchemy's
  driver-level executemany with bind processors), for the before/after in one run;
- the bare baseline, the ceiling of the database itself on already-validated tuples:
  DBAPI ``executemany`` on SQLite with the store's own pragmas (same engine: WAL,
  synchronous=NORMAL, checkpoints every 256 MiB of WAL), ``COPY``
  with psycopg's ``write_row`` on PostgreSQL; and on PostgreSQL also ``copytext``, COPY
  of batches already encoded as COPY text (the server's own ceiling: nothing formatted
  on the clock).

Each path is warmed up on 2,000 rows first; sizes up to 20k are timed five times and
up to 200k three times, and the median is reported. Prints ``name: value unit`` lines,
the ratios, the cores and the load at start and end, and for the store path its CPU per
row (this process, all threads; on a local PostgreSQL also the server's processes),
which moves less with other people's load than rows/s.

    python bench/ingest.py       # 10k and 1M rows, SQLite (+ PostgreSQL if configured)
    python bench/ingest.py --sizes 10000 --out result.json
    QDSPACE_BENCH_PG_URL=postgresql+psycopg://u:p@host/db python bench/ingest.py
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import os.path
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sqlalchemy import create_engine, text

from qdspace.connector.bulk_insert import copy_text, insert_columns
from qdspace.connector.dictionary import default_dictionary
from qdspace.connector.ingest import BULK_BATCH_ROWS
from qdspace.connector.qdm import TABLES
from qdspace.connector.storage import normalise_url, open_store
from qdspace.connector.validate import parse_row
from qdspace.connector.versions import serialize_writes

#: the node's own transaction size for a file or an upload (all three paths use it, so
#: the bare baseline commits as often as the store path)
BATCH = BULK_BATCH_ROWS

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


#: CPU seconds per row of each timed ``bench_store`` run: (this process, the local
#: PostgreSQL server's processes or None), for the median run's figures
CPU: list[tuple[float, float | None]] = []


def server_cpu() -> float | None:
    """User + system CPU seconds of every local ``postgres`` process (None: none visible,
    e.g. a server on another host). Coarse (clock ticks), enough per 10k rows."""
    total, seen = 0, False
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        if stat[stat.index("(") + 1 : stat.rindex(")")] != "postgres":
            continue
        seen = True
        fields = stat[stat.rindex(")") + 2 :].split()
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK") if seen else None


def bench_store(url: str, rows: list[tuple[int, dict[str, Any]]]) -> float:
    """``QualityStore.ingest_rows``: batch validation, then executemany (SQLite) or COPY."""
    store = open_store(url)
    try:
        server = server_cpu() if store.backend == "postgresql" else None
        cpu = time.process_time()
        started = time.perf_counter()
        report = store.ingest_rows("inspection", iter(rows), batch_size=BATCH)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
        after = server_cpu() if server is not None else None
        assert report.accepted == len(rows) and not report.rejected, report
    finally:
        store.close()
    used = None if server is None or after is None else (after - server) / len(rows)
    CPU.append((cpu / len(rows), used))
    return len(rows) / elapsed


def bench_rowwise(url: str, rows: list[tuple[int, dict[str, Any]]]) -> float:
    """The path before batch validation, kept for a same-run comparison: ``parse_row`` per
    row, then SQLAlchemy's driver-level executemany with each column's bind processor."""
    store = open_store(url)
    d = store.dictionary
    table = TABLES["inspection"].__table__  # type: ignore[attr-defined]
    dialect = store.engine.dialect
    columns = [(c, table.c[c].type.bind_processor(dialect)) for c in insert_columns(table)]
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    sql = (
        f"INSERT INTO {table.name} ({', '.join(c for c, _ in columns)}) "
        f"VALUES ({', '.join([mark] * len(columns))}) ON CONFLICT DO NOTHING"
    )
    try:
        started = time.perf_counter()
        for start in range(0, len(rows), BATCH):
            batch = [parse_row("inspection", r, d) for _, r in rows[start : start + BATCH]]
            with store.engine.begin() as connection:
                serialize_writes(connection)
                params = [tuple(p(r[c]) if p else r[c] for c, p in columns) for r in batch]
                connection.exec_driver_sql(sql, params)
        elapsed = time.perf_counter() - started
    finally:
        store.close()
    return len(rows) / elapsed


def ready_tuples(n: int) -> list[tuple[Any, ...]]:
    """Validated rows as the driver takes them (times as text on SQLite, as sqlite3 writes
    them; datetimes for psycopg), prepared before the clock starts."""
    d = default_dictionary()
    out = []
    for _, r in delivered_rows(n, offset=10**8):
        row = parse_row("inspection", r, d)
        out.append(tuple(row.get(c) for c in COLUMNS))
    return out


def bench_bare(url: str, rows: list[tuple[int, dict[str, Any]]]) -> float:
    """The database's ceiling: validated tuples, no validation at all, BATCH rows per transaction.

    SQLite: DBAPI ``executemany`` on a connection of the store's own engine, so with the
    same pragmas (WAL, synchronous=NORMAL, cache) as the store. PostgreSQL: ``COPY``."""
    tuples = ready_tuples(len(rows))
    store = open_store(url)  # creates the schema; its engine sets the pragmas
    engine = store.engine
    raw = engine.raw_connection()
    names = ", ".join(COLUMNS)
    try:
        if engine.dialect.name == "sqlite":
            tuples = [
                tuple(v.isoformat(" ") if isinstance(v, datetime) else v for v in t) for t in tuples
            ]
            sql = (
                f"INSERT INTO qdm_inspection ({names}) "
                f"VALUES ({', '.join(['?'] * len(COLUMNS))}) ON CONFLICT DO NOTHING"
            )
            started = time.perf_counter()
            for start in range(0, len(tuples), BATCH):
                cursor = raw.cursor()
                cursor.executemany(sql, tuples[start : start + BATCH])
                raw.commit()
        else:
            driver = raw.driver_connection
            assert driver is not None
            started = time.perf_counter()
            for start in range(0, len(tuples), BATCH):
                cursor = driver.cursor()
                with cursor.copy(f"COPY qdm_inspection ({names}) FROM STDIN") as copy:
                    for t in tuples[start : start + BATCH]:
                        copy.write_row(t)
                cursor.close()
                driver.commit()
        elapsed = time.perf_counter() - started
    finally:
        raw.close()
        store.close()
    return len(rows) / elapsed


#: rows ingested once per path before it is timed (imports, caches, the connection pool)
WARM_UP = 2000


def repeats(n: int) -> int:
    """Runs per figure (the median is reported): short runs are noisy on shared cores."""
    return 5 if n <= 20_000 else 3 if n <= 200_000 else 1


def once(
    backend: str, pg_url: str | None, fn: Any, rows: list[tuple[int, dict[str, Any]]]
) -> float:
    """One timed run of ``fn`` on a fresh database of ``backend``."""
    tmp = tempfile.mkdtemp(prefix="qdspace-bench-")
    drop = None
    try:
        if backend == "sqlite":
            url = f"sqlite:///{tmp}/bench.db"
        else:
            assert pg_url is not None
            url, drop = pg_schema(pg_url)
        return float(fn(url, rows))
    finally:
        if drop:
            drop()
        shutil.rmtree(tmp, ignore_errors=True)


def bench_copy_text(url: str, rows: list[tuple[int, dict[str, Any]]]) -> float:
    """PostgreSQL's own ceiling: COPY of the batches already encoded as COPY text (no
    client-side formatting timed at all), BATCH rows per transaction."""
    tuples = ready_tuples(len(rows))
    texts = [copy_text(tuples[s : s + BATCH]) for s in range(0, len(tuples), BATCH)]
    store = open_store(url)
    raw = store.engine.raw_connection()
    try:
        driver = raw.driver_connection
        assert driver is not None
        started = time.perf_counter()
        for encoded in texts:
            cursor = driver.cursor()
            with cursor.copy(f"COPY qdm_inspection ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                copy.write(encoded)
            cursor.close()
            driver.commit()
        elapsed = time.perf_counter() - started
    finally:
        raw.close()
        store.close()
    return len(rows) / elapsed


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
    parser.add_argument(
        "--quick", action="store_true", help="2,000 rows, one timed run a path (CI)"
    )
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
    for n in sizes:
        rows = list(delivered_rows(n))  # delivered before the clock starts, like a parsed file
        # a file is read as a stream, so its rows are never all alive at once: keep the
        # collector from walking a million of them over and over (for every path alike)
        gc.freeze()
        for backend in backends:
            bare = "copy" if backend == "postgresql" else "executemany"
            paths: list[tuple[str, Any]] = [
                ("qdspace", bench_store),
                ("rowwise", bench_rowwise),
                (bare, bench_bare),
            ]
            if backend == "postgresql":
                paths.append(("copytext", bench_copy_text))
            for label, fn in paths:
                once(backend, args.pg_url, fn, rows[:WARM_UP])  # imports, caches, pool
                CPU.clear()
                runs = 1 if args.quick else repeats(n)  # --quick: every path, figures unjudged
                rates = [once(backend, args.pg_url, fn, rows) for _ in range(runs)]
                rate = statistics.median(rates)
                key = f"ingest_{backend}_{n}_{label}"
                figures[key] = round(rate, 1)
                print(f"{key}: {rate:,.0f} rows/s")
                if CPU:  # the store path: CPU per row of its median run
                    client, server = CPU[rates.index(rate)] if rate in rates else CPU[0]
                    figures[f"{key}_cpu_us_per_row"] = round(client * 1e6, 2)
                    print(f"{key}_cpu_us_per_row: {client * 1e6:.2f} us")
                    if server is not None:
                        figures[f"{key}_server_cpu_us_per_row"] = round(server * 1e6, 2)
                        print(f"{key}_server_cpu_us_per_row: {server * 1e6:.2f} us")
            for label in ("qdspace", "rowwise"):
                ratio = (
                    figures[f"ingest_{backend}_{n}_{label}"]
                    / figures[f"ingest_{backend}_{n}_{bare}"]
                )
                figures[f"ingest_{backend}_{n}_{label}_ratio"] = round(ratio, 3)
                print(f"ingest_{backend}_{n}_{label}_ratio_vs_bare_{bare}: {ratio:.2f} x")
            if backend == "postgresql":
                ratio = (
                    figures[f"ingest_{backend}_{n}_qdspace"]
                    / figures[f"ingest_{backend}_{n}_copytext"]
                )
                figures[f"ingest_{backend}_{n}_qdspace_ratio_copytext"] = round(ratio, 3)
                print(f"ingest_{backend}_{n}_qdspace_ratio_vs_copy_of_ready_text: {ratio:.2f} x")
            speedup = (
                figures[f"ingest_{backend}_{n}_qdspace"] / figures[f"ingest_{backend}_{n}_rowwise"]
            )
            figures[f"ingest_{backend}_{n}_speedup_vs_rowwise"] = round(speedup, 3)
            print(f"ingest_{backend}_{n}_speedup_vs_rowwise: {speedup:.2f} x")
        del rows
        gc.unfreeze()
    figures["loadavg_1m_end"] = os.getloadavg()[0]
    print(f"ingest_loadavg_1m_end: {figures['loadavg_1m_end']:.2f} load")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    main()
