"""The outbox dispatcher's poll: how long one look for what is due takes as a node's sent
messages pile up (`connector.contract_store.outbox`).

A node keeps every protocol message it sent (DSP callbacks, notifications, receipts),
and its dispatcher polls for what is due twice a second on the event loop, where every
millisecond is one its peers and operators wait. The outbox here holds ``--sent``
messages already delivered to five peers and 200 not yet: 100 due, and 100 held behind
an earlier message of their process that failed and waits for its retry (a process's
messages go in order). The poll (``poll``: `OutboxStore.due_messages`, as the dispatcher
calls it) must return exactly the 100 due. What the operator's outbox view and the
console's network page read (``owed``: `OutboxStore.owed`, the undelivered by peer) is
timed beside it.

Baselines, in the same run on the same database: the floor of any poll, the 200
undelivered rows read by their primary keys with the driver (``floor``); and, on SQLite,
the poll as it read before migration 0027 (``scan``: the same conditions without the
held rule, the table read from start to end, as SQLite planned it when no index served:
``NOT INDEXED``), which grows with every message sent.

    python bench/outbox.py                  # 200k messages sent, SQLite
    python bench/outbox.py --sent 1000000 --postgres postgresql+psycopg://u:p@h/db
    python bench/outbox.py --quick --out result.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from bench.support.stores import each_store, timed  # noqa: E402
from qdspace.connector.contract_store import ContractStore, OutboxMessage  # noqa: E402
from qdspace.connector.storage import QualityStore  # noqa: E402

PEERS = [f"member-{i}" for i in range(5)]
DUE = 100
HELD = 100
T0 = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)
NOW = T0 + timedelta(hours=1)
#: the poll before 0027, the table read in full whatever it holds
SCAN = (
    "SELECT * FROM contract_outbox NOT INDEXED WHERE sent_at IS NULL AND refused_at IS NULL "
    "AND next_attempt_at <= :now ORDER BY id LIMIT 100"
)


def _message(i: int, process: str) -> OutboxMessage:
    return OutboxMessage(PEERS[i % len(PEERS)], "dsp", process, f"m-{i}", b"x" * 300)


def fill(store: QualityStore, sent: int) -> str:
    """`sent` delivered messages, then `DUE` due and `HELD` held behind a failed one."""
    contracts = ContractStore(store.engine, bytes(32))
    engine = store.engine
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM contract_outbox"))
    step = 50_000
    for start in range(0, sent, step):
        batch = [_message(i, f"p-{i}") for i in range(start, min(sent, start + step))]
        contracts.enqueue(batch, T0)
    with engine.begin() as connection:
        connection.execute(text("UPDATE contract_outbox SET sent_at = :t"), {"t": T0})
    # HELD processes: a first message that failed (retry later), a second one held by it
    failed = [_message(sent + i, f"h-{i}") for i in range(HELD)]
    contracts.enqueue(failed, T0)
    for pending in contracts.due_messages(NOW, limit=HELD):
        contracts.outbox.mark_failed(pending.id, "ConnectError", NOW + timedelta(minutes=1))
    held = [_message(sent + HELD + i, f"h-{i}") for i in range(HELD)]
    due = [_message(sent + 2 * HELD + i, f"d-{i}") for i in range(DUE)]
    contracts.enqueue([*held, *due], T0)
    return f"{sent:,} messages sent, {DUE} due, {2 * HELD} waiting"


def measure(store: QualityStore, runs: int) -> dict[str, Any]:
    contracts = ContractStore(store.engine, bytes(32))
    engine = store.engine
    due = [m.message.process_id for m in contracts.due_messages(NOW)]
    if due != [f"d-{i}" for i in range(DUE)]:
        raise SystemExit(f"the poll returned {len(due)} messages, not the {DUE} due")
    with engine.connect() as connection:
        unsent = [
            row[0]
            for row in connection.execute(
                text("SELECT id FROM contract_outbox WHERE sent_at IS NULL")
            )
        ]
    marks = ", ".join("?" if engine.dialect.name == "sqlite" else "%s" for _ in unsent)
    floor_sql = f"SELECT * FROM contract_outbox WHERE id IN ({marks})"

    def floor() -> None:
        with engine.connect() as connection:
            cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
            cursor.execute(floor_sql, unsent)
            cursor.fetchall()
            cursor.close()

    figures = {
        "poll": timed(runs, lambda: contracts.due_messages(NOW)),
        "owed": timed(runs, contracts.outbox.owed),
        "floor": timed(runs, floor),
    }
    if engine.dialect.name == "sqlite":

        def scan() -> None:
            with engine.connect() as connection:
                connection.execute(text(SCAN), {"now": NOW}).all()

        figures["scan"] = timed(max(3, runs // 3), scan)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sent", type=int, default=200_000, help="messages already sent")
    parser.add_argument("--runs", type=int, default=30, help="timed polls per figure")
    parser.add_argument("--postgres", help="also on this PostgreSQL database (emptied!)")
    parser.add_argument("--quick", action="store_true", help="10k sent, 5 runs (CI)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    sent, runs = (10_000, 5) if args.quick else (args.sent, args.runs)
    results: dict[str, Any] = {
        "sent": sent,
        "runs": runs,
        "cpus": os.cpu_count(),
        "loadavg_1m_start": os.getloadavg()[0],
        "python": platform.python_version(),
    }
    results["figures"] = each_store(
        args.postgres, lambda store: fill(store, sent), lambda store: measure(store, runs)
    )
    results["loadavg_1m"] = os.getloadavg()[0]
    print(f"outbox.sent: {sent} messages")
    for name, figures in results["figures"].items():
        for label, f in list(figures.items()):
            print(f"outbox.{name}.{label}_p50: {f['p50_ms']:.3f} ms")
        for label in ("poll", "owed"):
            ratio = figures[label]["p50_ms"] / figures["floor"]["p50_ms"]
            figures[f"{label}_over_floor"] = ratio
            print(f"outbox.{name}.{label}_over_baseline_floor: {ratio:.2f} ratio")
        if "scan" in figures:
            speedup = figures["scan"]["p50_ms"] / figures["poll"]["p50_ms"]
            figures["poll_speedup_over_scan"] = speedup
            print(f"outbox.{name}.poll_speedup_over_baseline_scan: {speedup:.1f} ratio")
    print(f"outbox.cpus: {results['cpus']} cores")
    print(f"outbox.loadavg_1m_start: {results['loadavg_1m_start']:.2f} load")
    print(f"outbox.loadavg_1m: {results['loadavg_1m']:.2f} load")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
