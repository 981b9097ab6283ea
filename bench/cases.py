"""Quality cases at scale: what the investigations listings cost once a node keeps many.

An OEM with many suppliers keeps thousands of quality cases a year (up to 10,000 per
peer). Here the store holds N cases between two members, each opened and sent, most
received, acknowledged and accepted with two actions, a fifth of the accepted with an
action past due, a third closed; both timed on the same database in the same run:

- as the node works now: ``page`` (the console's investigations page: the 50 most
  recently updated from their rows, with their overdue counts, and the count),
  ``overdue`` (``GET /v1/investigations/overdue``: the cases late today, found by index
  and folded);
- baseline, as it worked before: ``page_folded`` (every case's log read and folded, the
  first 50 taken), ``overdue_folded`` (every case folded, the late kept). Each pair must
  give the same answer.

    python bench/cases.py                        # 5,000 cases, SQLite
    python bench/cases.py --cases 20000 --postgres postgresql+psycopg://u:p@h/db
    python bench/cases.py --quick --out result.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nacl.signing import SigningKey  # noqa: E402

from bench.support.stores import each_store, timed  # noqa: E402
from qdspace.connector.contract_store import ContractStore  # noqa: E402
from qdspace.connector.contract_store.cases import (  # noqa: E402
    case_event_table,
    case_table,
    case_usage_table,
)
from qdspace.connector.investigation import (  # noqa: E402
    ActionItem,
    ActionKind,
    CaseEvent,
    CaseKind,
    CaseTerms,
    QualityCase,
    Severity,
    Step,
    apply,
    next_event,
    opening,
    overdue,
)
from qdspace.connector.investigation_wire import sign_event  # noqa: E402
from qdspace.connector.storage import QualityStore  # noqa: E402

OEM, SUP = "sunarc-0123456789ab", "cellex-0123456789ab"
KEYS = {OEM: SigningKey(b"o" * 32), SUP: SigningKey(b"s" * 32)}
T0 = datetime(2026, 1, 1, tzinfo=UTC)
TODAY = date(2026, 12, 5)
SHOWN = 50


def _log(i: int) -> list[CaseEvent]:
    at = T0 + timedelta(minutes=i)
    late = i % 15 == 0  # a fifth of the accepted (three in five) keep a past-due action
    due = TODAY - timedelta(days=3) if late else TODAY + timedelta(days=30)
    actions = (
        ActionItem("A1", ActionKind.CONTAINMENT, SUP, due, "quarantine the lot"),
        ActionItem("A2", ActionKind.CORRECTIVE_ACTION, SUP, due + timedelta(days=20), "fix"),
    )
    terms = CaseTerms(
        CaseKind.INVESTIGATION, OEM, SUP, Severity.MAJOR, f"EL cracks {i}", actions=actions
    )
    events = list(opening(f"qc-{i:06d}", terms, at))
    case: QualityCase | None = None
    for e in events:
        case = apply(case, e)
    steps = [(SUP, Step.RECEIVE, ""), (SUP, Step.ACKNOWLEDGE, ""), (SUP, Step.ACCEPT, "")]
    if i % 5 in (0, 1, 2):  # accepted
        if i % 3 == 0 and not late:
            steps += [(SUP, Step.ACTION_DONE, "A1"), (SUP, Step.ACTION_DONE, "A2")]
            steps += [(OEM, Step.CLOSE, "")]
    else:
        steps = steps[: 1 + i % 2]  # received, or acknowledged
    for author, step, action in steps:
        assert case is not None
        at += timedelta(seconds=1)
        event = next_event(case, author, step, at, action)
        case = apply(case, event)
        events.append(event)
    return events


def fill(store: QualityStore, count: int) -> str:
    """``count`` cases, as the module's docstring says."""
    contracts = ContractStore(store.engine, b"k" * 32)
    with contracts.engine.begin() as conn:  # a PostgreSQL database kept from a last run
        for table in (case_event_table, case_table, case_usage_table):
            conn.execute(table.delete())
    for i in range(count):
        contracts.cases.append([sign_event(e, KEYS[e.author_id]) for e in _log(i)], [], T0)
    return f"{count:,} cases"


def measure(store: QualityStore, runs: int) -> dict[str, Any]:
    contracts = ContractStore(store.engine, b"k" * 32)

    def page() -> list[tuple[str, int, int]]:
        rows = contracts.cases.case_rows(TODAY, limit=SHOWN)
        contracts.cases.count_cases()
        return [(r.case_id, r.open_actions, r.overdue_actions) for r in rows]

    def page_folded() -> list[tuple[str, int, int]]:
        every = contracts.cases.cases()
        return [(c.case_id, len(c.open_actions()), len(overdue(c, TODAY))) for c in every][:SHOWN]

    def late() -> list[str]:
        return sorted(c.case_id for c in contracts.cases.overdue_cases(TODAY))

    def late_folded() -> list[str]:
        return sorted(c.case_id for c in contracts.cases.cases() if overdue(c, TODAY))

    for new, old, what in ((page(), page_folded(), "the page"), (late(), late_folded(), "late")):
        if new != old:
            raise SystemExit(f"{what} differs read as now and as before")
    if not late():
        raise SystemExit("no case is late: the fill is wrong")
    baseline_runs = max(2, runs // 5)
    return {
        "page": timed(runs, page),
        "page_folded": timed(baseline_runs, page_folded),
        "overdue": timed(runs, late),
        "overdue_folded": timed(baseline_runs, late_folded),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cases", type=int, default=5_000, help="cases kept")
    parser.add_argument("--runs", type=int, default=10, help="timed calls per figure")
    parser.add_argument("--postgres", help="also on this PostgreSQL database (emptied!)")
    parser.add_argument("--quick", action="store_true", help="300 cases, 3 runs (CI)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    count, runs = (300, 3) if args.quick else (args.cases, args.runs)
    results: dict[str, Any] = {
        "cases": count,
        "runs": runs,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    results["figures"] = each_store(
        args.postgres, lambda store: fill(store, count), lambda store: measure(store, runs)
    )
    results["loadavg_1m"] = os.getloadavg()[0]
    print(f"cases.held: {count} cases")
    for name, figures in results["figures"].items():
        for label, f in list(figures.items()):
            print(f"cases.{name}.{label}_p50: {f['p50_ms']:.2f} ms")
        for label in ("page", "overdue"):
            ratio = figures[f"{label}_folded"]["p50_ms"] / figures[label]["p50_ms"]
            figures[f"{label}_speedup_over_folded"] = ratio
            print(f"cases.{name}.{label}_speedup_over_baseline_folded: {ratio:.1f} ratio")
    print(f"cases.cpus: {results['cpus']} cores")
    print(f"cases.loadavg_1m: {results['loadavg_1m']:.2f} load")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
