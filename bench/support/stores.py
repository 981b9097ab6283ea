"""The node's own store for a benchmark: a fresh SQLite file, then (when given) a
PostgreSQL database, each filled by the benchmark and measured in turn.

Each store is the node's (`open_store`: its engine, pragmas and migrations), so what a
benchmark times is what a node runs; PostgreSQL gets ``ANALYZE`` after the fill, as its
autovacuum would give it statistics in a running node.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from qdspace.connector.storage import QualityStore, open_store  # noqa: E402


def each_store(
    postgres: str | None,
    fill: Callable[[QualityStore], str],
    measure: Callable[[QualityStore], dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """``measure`` of each store after ``fill`` (which says what it stored), by name
    (``sqlite``, ``postgresql``). The PostgreSQL database is the caller's: ``fill``
    empties what it fills."""
    figures: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="qdspace-bench-store-") as tmp:
        urls = {"sqlite": f"sqlite:///{Path(tmp) / 'node.db'}"}
        if postgres:
            urls["postgresql"] = postgres
        for name, url in urls.items():
            store = open_store(url)
            try:
                started = time.perf_counter()
                what = fill(store)
                print(f"# {name}: {what} in {time.perf_counter() - started:.1f} s", flush=True)
                if name == "postgresql":
                    with store.engine.connect() as conn:
                        conn.exec_driver_sql("ANALYZE")
                        conn.commit()
                figures[name] = measure(store)
            finally:
                store.close()
    return figures


def summary(values: list[float]) -> dict[str, float]:
    """p50, min and max of milliseconds measured."""
    return {"p50_ms": statistics.median(values), "min_ms": min(values), "max_ms": max(values)}


def timed(runs: int, call: Callable[[], Any]) -> dict[str, float]:
    """`summary` of ``runs`` calls, after one that warms the caches."""
    call()
    values = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        values.append((time.perf_counter() - started) * 1000)
    return summary(values)
