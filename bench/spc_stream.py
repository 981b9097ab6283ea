"""The SPC page's live charts (a station's own scores, a subscription): what a stream
costs per tick.

The console's SPC stream (`node.console.spc`) asks every 0.1 s whether a followed
series changed and, when it did, sends the chart again. A line at 60 frames a second
changes it every tick. Each figure is one station of two, half the verdicts each,
scores drawn at random, stored through the node's own ingest; both timed on the same
database in the same run:

- as the stream works now: ``version`` (two look-ups in ``ix_inspection_station``), the
  chart built when the first stream starts (``open``: the newest `spc.HISTORY` scores
  read and replayed), a stream started while the console keeps the chart
  (``open_kept``: a second tab, a reload), an idle tick, and a tick after six new
  verdicts (one 60 fps tick), which reads and feeds only those;
- baseline, as it worked before: the version as the highest id and count of the
  station's inspections (one statement reading every inspection), and on every change
  all the station's scores read in time order and replayed into a new chart.

Then a subscription's chart (``sub:``) over as many rows received under one agreement
(a supplier's scores, stored through the consumer's mirror in deliveries of 500, sealed
and encrypted as a node stores them): its version (`MirrorVersion`, one look-up), the
chart built when the first stream starts (the newest `spc.HISTORY` rows held read,
decrypted and replayed), a stream started while the chart is kept, and a tick after a
stream event of six rows, which reads and feeds only those; baseline, as before: every
row held read, decrypted and replayed on each change.

    python bench/spc_stream.py                        # 200,000 verdicts, SQLite
    python bench/spc_stream.py --rows 1000000 --postgres postgresql+psycopg://u:p@h/db
    python bench/spc_stream.py --quick --out result.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nacl.signing import SigningKey  # noqa: E402
from sqlalchemy import delete, func, select  # noqa: E402

from bench.support.stores import each_store, summary, timed  # noqa: E402
from qdspace.connector.agreement import ContractAgreement, countersign, sign_agreement  # noqa: E402
from qdspace.connector.contract_store import ContractStore, IncomingRow  # noqa: E402
from qdspace.connector.ingest import BULK_BATCH_ROWS  # noqa: E402
from qdspace.connector.negotiation import Role  # noqa: E402
from qdspace.connector.qdm import Inspection  # noqa: E402
from qdspace.connector.spc import SpcSpec  # noqa: E402
from qdspace.connector.storage import QualityStore  # noqa: E402
from qdspace.node.console import spc  # noqa: E402
from qdspace.node.console.spc_state import chart_state  # noqa: E402
from qdspace.policies.canonical import canonical_json  # noqa: E402
from qdspace.policies.model import OfferTerms, make_offer, to_agreement  # noqa: E402

_I = Inspection.__table__  # type: ignore[attr-defined]
STATION = "el-1"
KEY = f"own:{STATION}"


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def fill(store: QualityStore, rows: int) -> None:
    rnd = random.Random(23)
    start = time.time() - rows / 120
    with store.engine.begin() as conn:
        conn.execute(delete(_I))

    def verdicts() -> Iterator[tuple[int, dict[str, Any]]]:
        for i in range(rows):
            score = rnd.betavariate(2, 8)
            yield (
                i + 1,
                {
                    "inspection_id": f"el-{i}",
                    "station": f"el-{1 + i % 2}",
                    "inspected_at": _utc(start + i / 120),
                    "verdict": "fail" if score > 0.5 else "pass",
                    "defect_class": "crack" if score > 0.5 else "none",
                    "score": score,
                    "serial": f"SN-{i:09d}",
                },
            )

    report = store.ingest_rows("inspection", verdicts(), batch_size=BULK_BATCH_ROWS)
    if report.rejected:
        raise SystemExit(f"{len(report.rejected)} verdicts refused: {report.rejected[:3]}")


def old_version(store: QualityStore) -> object:
    """The version before ix_inspection_station: highest id and count in one statement."""
    query = select(func.max(_I.c.id), func.count()).where(_I.c.station == STATION)
    with store.engine.connect() as conn:
        return conn.execute(query).one()


def old_chart(store: QualityStore) -> dict[str, Any]:
    """The chart before: every score of the station in time order, replayed whole."""
    query = (
        select(_I.c.score, _I.c.inspected_at)
        .where(_I.c.station == STATION, _I.c.score.is_not(None), _I.c.withdrawn_at.is_(None))
        .order_by(_I.c.inspected_at, _I.c.id)
    )
    with store.engine.connect() as conn:
        values = [(float(s), at.isoformat()) for s, at in conn.execute(query)]
    return chart_state(KEY, values, spc.OWN_SCORE_SPEC)


def measure(store: QualityStore, runs: int, baseline_runs: int) -> dict[str, Any]:
    ctx: Any = SimpleNamespace(store=store, contract_client=None, contracts=None)
    seen: dict[str, object] = {}
    charts = spc.KeptCharts()

    def open_stream(first: bool = True) -> None:
        nonlocal charts
        seen.clear()
        if first:
            charts = spc.KeptCharts()  # no chart kept: the stream of the first viewer
        if len(list(spc.changed(ctx, [KEY], seen, charts=charts))) != 1:
            raise SystemExit("the stream sent no chart")

    def idle_tick() -> None:
        if list(spc.changed(ctx, [KEY], seen, charts=charts)):
            raise SystemExit("an idle tick sent a chart")

    counter = iter(range(10**9))

    def tick_after_six() -> None:
        k = next(counter)
        new = [
            (
                i,
                {
                    "inspection_id": f"live-{k}-{i}",
                    "station": STATION,
                    "inspected_at": datetime.now(UTC).isoformat(),
                    "verdict": "pass",
                    "defect_class": "none",
                    "score": 0.1 + i / 100,
                },
            )
            for i in range(1, 7)
        ]
        store.ingest_rows("inspection", new)
        started = time.perf_counter()
        sent = list(spc.changed(ctx, [KEY], seen, charts=charts))
        ticks.append((time.perf_counter() - started) * 1000)
        if len(sent) != 1:
            raise SystemExit("a tick after new verdicts sent no chart")

    figures = {
        "version": timed(runs, lambda: spc.version(ctx, KEY)),
        "open": timed(max(3, runs // 5), open_stream),
        "open_kept": timed(runs, lambda: open_stream(first=False)),
        "idle_tick": timed(runs, idle_tick),
    }
    ticks: list[float] = []
    for _ in range(runs + 1):
        tick_after_six()
    figures["tick_after_six"] = summary(ticks[1:])  # the first one warms the caches
    chart = charts.chart(KEY)
    figures["points_judged"] = 0 if chart is None else chart.n
    figures["baseline_version"] = timed(runs, lambda: old_version(store))
    figures["baseline_change"] = timed(baseline_runs, lambda: old_chart(store))
    return figures


SUB = "sub:bench"
AGREEMENT = "agr-bench"


def _give_agreement(contracts: ContractStore) -> None:
    """A signed agreement under which this store is the consumer (any order, 180 days)."""
    provider, consumer = SigningKey(b"p" * 32), SigningKey(b"c" * 32)
    terms = OfferTerms(purposes=frozenset({"qa"}), retention_days=180)
    offer = make_offer("offer-bench", "cellex", "inspections", terms)
    now = datetime.now(UTC)
    agreement = ContractAgreement(
        AGREEMENT, "neg-bench", "cellex", "sunarc", "inspections",
        to_agreement(offer, AGREEMENT, "sunarc"), now, now,
    )  # fmt: skip
    signed = countersign(sign_agreement(agreement, provider), consumer, provider.verify_key)
    contracts.save_agreement(signed, Role.CONSUMER)


def _received(first: int, count: int, rnd: random.Random) -> list[IncomingRow]:
    at = datetime.now(UTC).isoformat()
    return [
        IncomingRow(
            n,
            "PO-1",
            canonical_json(
                {
                    "@key": f"rec-{n}",
                    "@v": 1,
                    "order_id": "PO-1",
                    "inspected_at": at,
                    "score": rnd.betavariate(2, 8),
                }
            ),
        )
        for n in range(first, first + count)
    ]


def measure_subscription(store: QualityStore, rows: int, runs: int, baseline_runs: int) -> Any:
    contracts = ContractStore(store.engine, b"k" * 32)
    _give_agreement(contracts)
    rnd = random.Random(29)
    started = time.perf_counter()
    for first in range(0, rows, 500):
        batch = _received(first, min(500, rows - first), rnd)
        contracts.store_received_rows(AGREEMENT, "stream-bench", batch, datetime.now(UTC))
    print(f"# subscription: {rows:,} rows received in {time.perf_counter() - started:.1f} s")
    spec = SpcSpec(usl=0.5, baseline_size=20, cpk_window=20)
    sub = SimpleNamespace(agreement_id=AGREEMENT, characteristic="score", spec=spec)
    ctx: Any = SimpleNamespace(
        store=store,
        contract_client=SimpleNamespace(subscriptions={SUB.removeprefix("sub:"): sub}),
        contracts=SimpleNamespace(store=contracts),
    )
    seen: dict[str, object] = {}
    charts = spc.KeptCharts()
    sent_at = iter(range(rows, 10**12, 6))

    def open_stream(first: bool = True) -> None:
        nonlocal charts
        seen.clear()
        if first:
            charts = spc.KeptCharts()  # no chart kept: the stream of the first viewer
        if len(list(spc.changed(ctx, [SUB], seen, charts=charts))) != 1:
            raise SystemExit("the stream sent no subscription chart")

    ticks: list[float] = []

    def tick_after_event() -> None:
        batch = _received(next(sent_at), 6, rnd)
        contracts.store_received_rows(AGREEMENT, "stream-bench", batch, datetime.now(UTC))
        begun = time.perf_counter()
        if len(list(spc.changed(ctx, [SUB], seen, charts=charts))) != 1:
            raise SystemExit("a tick after a stream event sent no chart")
        ticks.append((time.perf_counter() - begun) * 1000)

    def old_change() -> dict[str, Any]:
        values = []
        for row in contracts.received_rows(AGREEMENT):
            value = json.loads(row.payload).get("score")
            if isinstance(value, int | float) and not isinstance(value, bool):
                values.append((float(value), ""))
        return chart_state(SUB, values, spec)

    figures = {
        "version": timed(runs, lambda: spc.version(ctx, SUB)),
        "open": timed(max(3, runs // 5), open_stream),
        "open_kept": timed(runs, lambda: open_stream(first=False)),
    }
    for _ in range(runs + 1):
        tick_after_event()
    figures["tick_after_six"] = summary(ticks[1:])
    figures["baseline_change"] = timed(baseline_runs, old_change)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="verdicts stored")
    parser.add_argument("--runs", type=int, default=15, help="timed calls per figure")
    parser.add_argument("--postgres", help="also on this PostgreSQL database (emptied!)")
    parser.add_argument("--quick", action="store_true", help="20k verdicts, 3 runs (CI)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    rows, runs = (20_000, 3) if args.quick else (args.rows, args.runs)
    # as a node does once it serves (`node.run`): what is loaded at start lives as long as
    # the process and is moved out of the collector's view, so a full collection while a
    # chart is built walks what was made since, not every module's objects again
    gc.freeze()
    baseline_runs = 1 if args.quick else 3
    results: dict[str, Any] = {
        "rows": rows,
        "runs": runs,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }

    def filled(store: QualityStore) -> str:
        fill(store, rows)
        return f"{rows:,} verdicts"

    def both(store: QualityStore) -> dict[str, Any]:
        figures = measure(store, runs, baseline_runs)
        figures["subscription"] = measure_subscription(store, rows, runs, baseline_runs)
        return figures

    results["figures"] = each_store(args.postgres, filled, both)
    results["loadavg_1m"] = os.getloadavg()[0]
    print(f"spc_stream.rows: {rows} verdicts (half at the charted station)")
    for name, figures in results["figures"].items():
        for label in ("version", "open", "open_kept", "idle_tick", "tick_after_six"):
            print(f"spc_stream.{name}.{label}_p50: {figures[label]['p50_ms']:.2f} ms")
        print(f"spc_stream.{name}.points_judged: {figures['points_judged']} points")
        for label in ("version", "change"):
            f = figures[f"baseline_{label}"]
            print(f"spc_stream.{name}.baseline_{label}_p50: {f['p50_ms']:.2f} ms")
        version = figures["baseline_version"]["p50_ms"] / figures["version"]["p50_ms"]
        tick = figures["baseline_change"]["p50_ms"] / figures["tick_after_six"]["p50_ms"]
        figures["version_speedup"], figures["tick_speedup"] = version, tick
        print(f"spc_stream.{name}.version_speedup_over_baseline: {version:.1f} ratio")
        print(f"spc_stream.{name}.tick_speedup_over_baseline_change: {tick:.1f} ratio")
        sub = figures["subscription"]
        for label in ("version", "open", "open_kept", "tick_after_six", "baseline_change"):
            print(f"spc_stream.{name}.subscription.{label}_p50: {sub[label]['p50_ms']:.2f} ms")
        speedup = sub["baseline_change"]["p50_ms"] / sub["tick_after_six"]["p50_ms"]
        sub["tick_speedup"] = speedup
        print(f"spc_stream.{name}.subscription.tick_speedup_over_baseline: {speedup:.1f} ratio")
    print(f"spc_stream.cpus: {results['cpus']} cores")
    print(f"spc_stream.loadavg_1m: {results['loadavg_1m']:.2f} load")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
