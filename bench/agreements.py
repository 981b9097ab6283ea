"""A node's agreements at scale: what its readers cost once it holds one per order.

A contract is one order's data, so a node holds an agreement per order and partner: an
OEM with fifty suppliers makes tens of thousands a year. Here the store holds N
agreements given as provider (one order each, a delete duty of 180 days, countersigned),
stored through the contract store, a tenth of their orders closed and half of those
answered by a receipt; both timed on the same database in the same run:

- as the node works now: ``newest_50`` (the console's list and its count), ``links``
  (the overview's network picture, counted in SQL), ``closure`` (an order closure's
  candidates, read by the order its scope names, each checked), ``duties`` (every
  deletion duty with its status, from the rows), ``duties_page`` (what the contracts
  page shows: the duties counted per status and the 50 needing someone first, in SQL);
- baseline, as it worked before: ``newest_50_loaded`` (every agreement read by id and
  parsed, then the newest 50 taken), ``links_loaded`` (every agreement parsed and
  counted), ``closure_loaded`` (every agreement given parsed and its scope checked),
  ``duties_loaded`` (every agreement given parsed, every receipt matched against each),
  ``duties_page_loaded`` (those duties counted and sorted in Python, the first 50 taken).
  Each pair must give the same answer.

    python bench/agreements.py                        # 10,000 agreements, SQLite
    python bench/agreements.py --agreements 50000 --postgres postgresql+psycopg://u:p@h/db
    python bench/agreements.py --quick --out result.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nacl.signing import SigningKey  # noqa: E402
from sqlalchemy import select  # noqa: E402

from bench.support.stores import each_store, timed  # noqa: E402
from qdspace.connector.agreement import (  # noqa: E402
    ContractAgreement,
    DeletionReceipt,
    countersign,
    sign_agreement,
    sign_receipt,
)
from qdspace.connector.contract_store import (  # noqa: E402
    ContractStore,
    DutyReport,
    OrderClosure,
    StoredAgreement,
)
from qdspace.connector.contract_store.agreements import agreement_table  # noqa: E402
from qdspace.connector.contract_store.closures import closure_table  # noqa: E402
from qdspace.connector.contract_store.receipts import receipt_table  # noqa: E402
from qdspace.connector.negotiation import Role  # noqa: E402
from qdspace.connector.storage import QualityStore  # noqa: E402
from qdspace.policies.evaluate import order_in_scope  # noqa: E402
from qdspace.policies.model import OfferTerms, make_offer, to_agreement  # noqa: E402
from qdspace.policies.retention import (  # noqa: E402
    ATTENTION_ORDER,
    DutyStatus,
    deletion_duty,
    duty_status,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PROVIDER, CONSUMERS = SigningKey(b"p" * 32), [SigningKey(bytes([i + 1]) * 32) for i in range(5)]
PROVIDER_ID = "cellex-0123456789ab"
CONSUMER_IDS = [f"oem{i}-0123456789ab" for i in range(5)]


def _contracts(store: QualityStore) -> ContractStore:
    return ContractStore(store.engine, b"k" * 32)


def fill(store: QualityStore, count: int) -> str:
    """``count`` agreements a minute apart, one order each, a tenth of the orders closed
    and half of those answered by a receipt."""
    contracts = _contracts(store)
    with contracts.engine.begin() as conn:  # a PostgreSQL database kept from a last run
        for table in (receipt_table, closure_table, agreement_table):
            conn.execute(table.delete())
    for i in range(count):
        consumer = i % len(CONSUMER_IDS)
        terms = OfferTerms(purposes=frozenset({"qa"}), orders=frozenset({f"PO-{i}"}))
        offer = make_offer(f"offer-{i}", PROVIDER_ID, "inspections", terms)
        at = T0 + timedelta(minutes=i)
        agreement = ContractAgreement(
            f"agr-{i:08d}", f"neg-{i}", PROVIDER_ID, CONSUMER_IDS[consumer], "inspections",
            to_agreement(offer, f"agr-{i:08d}", CONSUMER_IDS[consumer]), at, at,
        )  # fmt: skip
        signed = sign_agreement(agreement, PROVIDER)
        contracts.save_agreement(
            countersign(signed, CONSUMERS[consumer], PROVIDER.verify_key), Role.PROVIDER
        )
        if i % 10 == 0:
            closed = at + timedelta(days=30)
            contracts.record_order_closed(f"agr-{i:08d}", f"PO-{i}", closed)
            if i % 20 == 0:
                receipt = DeletionReceipt(
                    f"agr-{i:08d}", CONSUMER_IDS[consumer], 100, "ab" * 32,
                    closed + timedelta(days=10), f"PO-{i}",
                )  # fmt: skip
                contracts.record_receipt(sign_receipt(receipt, CONSUMERS[consumer]))
    return f"{count:,} agreements ({count // 10:,} orders closed)"


def loaded(contracts: ContractStore) -> list[StoredAgreement]:
    """Every agreement as the store listed them before: the ids, then each read."""
    table = agreement_table
    order = (table.c.agreed_at, table.c.agreement_id)
    with contracts.engine.connect() as conn:
        ids = list(conn.execute(select(table.c.agreement_id).order_by(*order)).scalars())
    return [contracts.agreement(i) for i in ids]


def links_loaded(contracts: ContractStore) -> Counter[tuple[str, str]]:
    return Counter(
        (a.signed.agreement.provider_id, a.signed.agreement.consumer_id) for a in loaded(contracts)
    )


def closure_loaded(contracts: ContractStore, order: str) -> list[str]:
    return [
        a.agreement_id
        for a in loaded(contracts)
        if a.role is Role.PROVIDER
        and a.signed.agreement.provider_id == PROVIDER_ID
        and a.signed.complete
        and order_in_scope(a.signed.agreement.policy, order)
    ]


def closure(contracts: ContractStore, order: str) -> list[str]:
    return [
        a.agreement_id
        for a in contracts.concerning_order(PROVIDER_ID, order)
        if order_in_scope(a.signed.agreement.policy, order)
    ]


def duties_loaded(contracts: ContractStore, now: datetime) -> list[DutyReport]:
    receipts = {
        (s.receipt.agreement_id, s.receipt.order_id): s.receipt for s in contracts.receipts()
    }
    closures: dict[str, list[OrderClosure]] = {}
    for c in contracts.closures():
        closures.setdefault(c.agreement_id, []).append(c)
    reports = []
    for stored in loaded(contracts):
        if stored.role is not Role.PROVIDER:
            continue
        closed: dict[str, datetime | None] = {
            c.order_id: c.closed_at for c in closures.get(stored.agreement_id, [])
        }
        for agreement_id, order_id in receipts:
            if agreement_id == stored.agreement_id:
                closed.setdefault(order_id, None)
        for order_id, closed_at in sorted(closed.items()) or [("", None)]:
            duty = deletion_duty(stored.signed.agreement.policy, closed_at, order_id)
            if duty is None:
                continue
            receipt = receipts.get((stored.agreement_id, order_id))
            deleted_at = None if receipt is None else receipt.deleted_at
            reports.append(DutyReport(duty, duty_status(duty, now, deleted_at), receipt))
    return reports


def page_loaded(
    contracts: ContractStore, now: datetime
) -> tuple[dict[DutyStatus, int], list[DutyReport]]:
    """The contracts page's duties as it made them before: every duty built, then counted
    and sorted (overdue, due by deadline, pending, fulfilled late, fulfilled)."""
    every = duties_loaded(contracts, now)
    counts = Counter(d.status for d in every)
    never = datetime.max.replace(tzinfo=UTC)
    first = sorted(every, key=lambda d: (ATTENTION_ORDER.index(d.status), d.duty.deadline or never))
    return {s: counts[s] for s in ATTENTION_ORDER}, first[:50]


def measure(store: QualityStore, count: int, runs: int) -> dict[str, Any]:
    contracts = _contracts(store)
    order, now = f"PO-{count // 2}", T0 + timedelta(days=365)

    def newest() -> tuple[list[StoredAgreement], int]:
        return contracts.agreements(limit=50, newest_first=True), contracts.count_agreements()

    def links() -> Counter[tuple[str, str]]:
        return Counter(
            {(k.provider_id, k.consumer_id): k.total for k in contracts.agreement_links()}
        )

    def page() -> tuple[dict[DutyStatus, int], list[DutyReport]]:
        first = contracts.deletion_duties(now, limit=50, attention_first=True)
        return contracts.count_duties(now), first

    checks = (
        (newest()[0], loaded(contracts)[::-1][:50], "the newest 50"),
        (links(), links_loaded(contracts), "the overview's counts"),
        (closure(contracts, order), closure_loaded(contracts, order), "an order's agreements"),
        (contracts.deletion_duties(now), duties_loaded(contracts, now), "the deletion duties"),
        (page(), page_loaded(contracts, now), "the contracts page's duties"),
    )
    for new, old, what in checks:
        if new != old:
            raise SystemExit(f"{what} differ read as now and as before")
    baseline_runs = max(2, runs // 5)
    return {
        "newest_50": timed(runs, newest),
        "newest_50_loaded": timed(baseline_runs, lambda: loaded(contracts)[::-1][:50]),
        "links": timed(runs, links),
        "links_loaded": timed(baseline_runs, lambda: links_loaded(contracts)),
        "closure": timed(runs, lambda: closure(contracts, order)),
        "closure_loaded": timed(baseline_runs, lambda: closure_loaded(contracts, order)),
        "duties": timed(max(3, runs // 3), lambda: contracts.deletion_duties(now)),
        "duties_loaded": timed(baseline_runs, lambda: duties_loaded(contracts, now)),
        "duties_page": timed(runs, page),
        "duties_page_loaded": timed(baseline_runs, lambda: page_loaded(contracts, now)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--agreements", type=int, default=10_000, help="agreements stored")
    parser.add_argument("--runs", type=int, default=10, help="timed calls per figure")
    parser.add_argument("--postgres", help="also on this PostgreSQL database (emptied!)")
    parser.add_argument("--quick", action="store_true", help="500 agreements, 3 runs (CI)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    count, runs = (500, 3) if args.quick else (args.agreements, args.runs)
    results: dict[str, Any] = {
        "agreements": count,
        "runs": runs,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    results["figures"] = each_store(
        args.postgres, lambda store: fill(store, count), lambda store: measure(store, count, runs)
    )
    results["loadavg_1m"] = os.getloadavg()[0]
    print(f"agreements.held: {count} agreements")
    for name, figures in results["figures"].items():
        for label, f in list(figures.items()):
            print(f"agreements.{name}.{label}_p50: {f['p50_ms']:.2f} ms")
        for label in ("newest_50", "links", "closure", "duties", "duties_page"):
            ratio = figures[f"{label}_loaded"]["p50_ms"] / figures[label]["p50_ms"]
            figures[f"{label}_speedup_over_loaded"] = ratio
            print(f"agreements.{name}.{label}_speedup_over_baseline_loaded: {ratio:.1f} ratio")
    print(f"agreements.cpus: {results['cpus']} cores")
    print(f"agreements.loadavg_1m: {results['loadavg_1m']:.2f} load")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
