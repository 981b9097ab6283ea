"""A consumer's transfer history: what an incremental pull's start and a listing cost
once a node has pulled many times.

A consumer that pulls an order every few minutes keeps one transfer per pull, tens of
thousands a month. Before every incremental pull (``since_last``) the node finds the
last completed pull of the same scope, whose final position it continues from; the
API's ``GET /v1/contracts/transfers`` and the console's contracts page list them. Here
one agreement holds N completed pulls (of two scopes, alternating: the one looked up,
and another), each with three messages in its history, stored through the contract
store; both timed on the same database in the same run:

- as the node works now: ``last_pull`` (`ContractStore.last_completed_pull`: one search
  of ``ix_contract_transfer_pull``), ``first_page`` (the API's first page of 100, read
  a page at a time), ``newest_50`` (what the console lists);
- baseline, as it worked before: ``last_pull_loaded`` (every transfer of the agreement
  loaded, two queries each, and scanned for the scope's highest position) and
  ``first_page_loaded`` (every transfer loaded, then the page sliced from them). Each
  pair must find the same transfers.

    python bench/transfer_history.py                  # 20,000 pulls, SQLite
    python bench/transfer_history.py --pulls 50000 --postgres postgresql+psycopg://u:p@h/db
    python bench/transfer_history.py --quick --out result.json
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

from sqlalchemy import select  # noqa: E402

from bench.support.stores import each_store, timed  # noqa: E402
from qdspace.connector.contract_store import ContractStore  # noqa: E402
from qdspace.connector.contract_store.common import message_table  # noqa: E402
from qdspace.connector.contract_store.transfers import transfer_table, watermark  # noqa: E402
from qdspace.connector.negotiation import Role  # noqa: E402
from qdspace.connector.storage import QualityStore  # noqa: E402
from qdspace.connector.transfer import TransferProcess, TransferState  # noqa: E402
from qdspace.connector.transfer_wire import Checkpoint  # noqa: E402

AGREEMENT = "agr-bench"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
SCOPES = (("qa", "PO-1", None), ("spc", "PO-1", frozenset({"verdict", "score"})))


def fill(store: QualityStore, pulls: int) -> str:
    """``pulls`` completed pulls a minute apart, the two scopes alternating."""
    contracts = _contracts(store)
    with contracts.engine.begin() as conn:  # a PostgreSQL database kept from a last run
        conn.execute(transfer_table.delete())
        conn.execute(message_table.delete().where(message_table.c.process_kind == "transfer"))
    for i in range(pulls):
        at = T0 + timedelta(minutes=i)
        purpose, order, fields = SCOPES[i % 2]
        done = Checkpoint(100 + i, b"d" * 32, str(1000 + i))
        contracts.save_transfer(
            None,
            TransferProcess(
                f"trf-{i:08d}", AGREEMENT, Role.CONSUMER, "cellex", "sunarc",
                TransferState.COMPLETED, done, at, at, final=done,
                seen=tuple((f"trf-{i:08d}:m{k}", f"fp{k}") for k in range(3)),
                purpose=purpose, order_id=order, fields=fields,
            ),
        )  # fmt: skip
    return f"{pulls:,} completed pulls"


def _loaded(contracts: ContractStore) -> list[TransferProcess]:
    """Every transfer as the store listed them before: the ids, then each loaded."""
    table = transfer_table
    with contracts.engine.connect() as conn:
        ids = list(conn.execute(select(table.c.transfer_id).order_by(table.c.created_at)).scalars())
    return [contracts.load_transfer(i) for i in ids]


def last_pull_loaded(contracts: ContractStore) -> TransferProcess | None:
    purpose, order, fields = SCOPES[0]
    latest: TransferProcess | None = None
    for p in _loaded(contracts):
        if (
            p.agreement_id == AGREEMENT
            and p.role is Role.CONSUMER
            and p.state is TransferState.COMPLETED
            and p.final is not None
            and (p.order_id, p.fields, p.purpose) == (order, fields, purpose)
        ):
            mark = watermark(p.final.position)
            if latest is None or latest.final is None or mark >= watermark(latest.final.position):
                latest = p
    return latest


def _contracts(store: QualityStore) -> ContractStore:
    return ContractStore(store.engine, b"k" * 32)


def measure(store: QualityStore, runs: int) -> dict[str, Any]:
    contracts = _contracts(store)
    purpose, order, fields = SCOPES[0]

    def last_pull() -> TransferProcess | None:
        return contracts.last_completed_pull(AGREEMENT, order, fields, purpose)

    found, before = last_pull(), last_pull_loaded(contracts)
    if found is None or before is None or found.transfer_id != before.transfer_id:
        raise SystemExit(f"the last pull differs: {found} against {before}")
    page = contracts.transfers(limit=100)
    if page != _loaded(contracts)[:100]:
        raise SystemExit("the first page differs read a page at a time and sliced")
    baseline_runs = max(3, runs // 5)
    return {
        "last_pull": timed(runs, last_pull),
        "last_pull_loaded": timed(baseline_runs, lambda: last_pull_loaded(contracts)),
        "first_page": timed(runs, lambda: contracts.transfers(limit=100)),
        "first_page_loaded": timed(baseline_runs, lambda: _loaded(contracts)[:100]),
        "newest_50": timed(runs, lambda: contracts.transfers(limit=50, newest_first=True)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pulls", type=int, default=20_000, help="completed pulls stored")
    parser.add_argument("--runs", type=int, default=15, help="timed calls per figure")
    parser.add_argument("--postgres", help="also on this PostgreSQL database (emptied!)")
    parser.add_argument("--quick", action="store_true", help="1,000 pulls, 3 runs (CI)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    pulls, runs = (1_000, 3) if args.quick else (args.pulls, args.runs)
    results: dict[str, Any] = {
        "pulls": pulls,
        "runs": runs,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    results["figures"] = each_store(
        args.postgres, lambda store: fill(store, pulls), lambda store: measure(store, runs)
    )
    results["loadavg_1m"] = os.getloadavg()[0]
    print(f"transfer_history.pulls: {pulls} pulls")
    for name, figures in results["figures"].items():
        for label, f in list(figures.items()):
            print(f"transfer_history.{name}.{label}_p50: {f['p50_ms']:.2f} ms")
        last = figures["last_pull_loaded"]["p50_ms"] / figures["last_pull"]["p50_ms"]
        page = figures["first_page_loaded"]["p50_ms"] / figures["first_page"]["p50_ms"]
        figures["last_pull_speedup_over_loaded"] = last
        figures["first_page_speedup_over_loaded"] = page
        print(f"transfer_history.{name}.last_pull_speedup_over_baseline_loaded: {last:.1f} ratio")
        print(f"transfer_history.{name}.first_page_speedup_over_baseline_loaded: {page:.1f} ratio")
    print(f"transfer_history.cpus: {results['cpus']} cores")
    print(f"transfer_history.loadavg_1m: {results['loadavg_1m']:.2f} load")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
