"""Root-cause trace across three tiers: start -> ranked report, against one central database.

Three members' QDMs as SQLite files (OEM: module batches and 1M EL inspections; cell
maker and wafer maker: 200k process records each, with a planted PECVD vacuum excursion
in the cells of the failed modules and a noisy decoy parameter). The data-space trace
runs each member's part over its own database (`connector.trace_data.local_tier`: the
same code a node runs behind ``Trace/Investigate``), passes each answer through its wire
encoding and back (what crosses the border) and ranks the report. The baseline, in the
same run, is the same analysis done centrally on ONE database holding everyone's rows
(what a data space replaces). Peers are called in-process here: the gRPC hop itself is
measured by bench/negotiation.py and bench/transfer.py, and covered by the integration
tests. Accuracy: over generated cases with a planted cause (random tier, parameter, window,
length and size of 4-8 sigma; a noisy decoy parameter and an unspecific excursion of
another parameter as decoys, see `accuracy_case`) the share in which the planted cause is
ranked first.

    python bench/trace.py                # 1M inspections, 200k records per producer
    python bench/trace.py --quick --out r.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from qdspace.connector.rootcause import Reading, local_findings
from qdspace.connector.storage import QualityStore, open_store
from qdspace.connector.trace import TierAnswer
from qdspace.connector.trace_data import failed_batches, local_tier
from qdspace.connector.trace_report import build_report, rank_causes
from qdspace.node.rpc.trace_serde import answer_from_proto, answer_to_proto

T0 = datetime(2026, 9, 1, tzinfo=UTC)
PARAMS = {
    "cellex": [
        ("PECVD-1", "pecvd_chamber_vacuum", 120.0, 1.0, "Pa"),
        ("FIRE-1", "firing_peak_temperature", 780.0, 15.0, "°C"),
        ("PECVD-1", "silane_flow", 900.0, 5.0, "sccm"),
        ("ARC-1", "arc_thickness", 75.0, 0.5, "nm"),
    ],
    "siwafer": [
        ("SAW-1", "wafer_thickness", 160.0, 2.0, "µm"),
        ("SAW-2", "wafer_thickness", 161.0, 2.0, "µm"),
    ],
}


def iso(at: datetime) -> str:
    return at.isoformat()


def rows_for(
    member: str, batches: int, records: int, bad: set[int]
) -> Iterator[tuple[int, dict[str, Any]]]:
    rng = random.Random(member)
    per = max(4, records // (batches * len(PARAMS[member])))
    line = 0
    for i in range(batches):
        start = T0 + timedelta(hours=2 * i)
        prefix = "CB" if member == "cellex" else "WB"
        for equipment, parameter, mean, sd, unit in PARAMS[member]:
            for k in range(per):
                value = rng.gauss(mean, sd)
                if (
                    member == "cellex"
                    and parameter == "pecvd_chamber_vacuum"
                    and i in bad
                    and per // 3 <= k < per // 3 + 3
                ):
                    value += 25 * sd
                line += 1
                yield (
                    line,
                    {
                        "equipment": f"{equipment}",
                        "parameter": parameter,
                        "value": value,
                        "unit": unit,
                        "measured_at": iso(start + timedelta(seconds=7 * k)),
                        "batch_id": f"{prefix}-{i:05d}",
                    },
                )


def batch_rows(n: int, prefix: str, kind: str, producer: str, customer: str, parent: str | None):
    for i in range(n):
        yield (
            i,
            {
                "batch_id": f"{prefix}-{i:05d}",
                "material": kind,
                "kind": kind,
                "producer": producer,
                "quantity": 1,
                "made_at": iso(T0 + timedelta(hours=2 * i)),
                "customer": customer,
                "order_id": "PO-1",
            },
        )
    if parent:
        pass


def genealogy(n: int, child: str, parent: str):
    return (
        (i, {"child_batch_id": f"{child}-{i:05d}", "parent_batch_id": f"{parent}-{i:05d}"})
        for i in range(n)
    )


def inspections(n: int, batches: int, bad: set[int]):
    per = n // batches
    for i in range(n):
        b = i // per if i // per < batches else batches - 1
        fail = b in bad and i % 3 == 0
        yield (
            i,
            {
                "inspection_id": f"EL-{i:07d}",
                "station": "EL-1",
                "inspected_at": iso(T0 + timedelta(days=60, seconds=i)),
                "verdict": "fail" if fail else "pass",
                "defect_class": "microcrack" if fail else "none",
                "batch_id": f"MB-{b:05d}",
            },
        )


def fill(
    stores: dict[str, QualityStore],
    central: QualityStore,
    n: int,
    inspections_n: int,
    records: int,
    bad: set[int],
) -> None:
    plan = {
        "sunarc": [
            ("batch", lambda: batch_rows(n, "MB", "module", "sunarc", "", None)),
            ("batch", lambda: batch_rows(n, "CB", "cell", "cellex", "sunarc", None)),
            ("genealogy", lambda: genealogy(n, "MB", "CB")),
            ("inspection", lambda: inspections(inspections_n, n, bad)),
        ],
        "cellex": [
            ("batch", lambda: batch_rows(n, "CB", "cell", "cellex", "sunarc", None)),
            ("batch", lambda: batch_rows(n, "WB", "wafer", "siwafer", "cellex", None)),
            ("genealogy", lambda: genealogy(n, "CB", "WB")),
            ("measurement", lambda: rows_for("cellex", n, records, bad)),
        ],
        "siwafer": [
            ("batch", lambda: batch_rows(n, "WB", "wafer", "siwafer", "cellex", None)),
            ("measurement", lambda: rows_for("siwafer", n, records, bad)),
        ],
    }
    for member, steps in plan.items():
        for kind, rows in steps:
            stores[member].ingest_rows(kind, rows(), batch_size=20_000)
            central.ingest_rows(kind, rows(), batch_size=20_000)


def window() -> tuple[datetime, datetime]:
    return T0 + timedelta(days=59), T0 + timedelta(days=80)


def wire(answer: TierAnswer) -> TierAnswer:
    data = answer_to_proto(answer).SerializeToString()
    from qdspace.protocols.v1 import trace_pb2

    return answer_from_proto(trace_pb2.TierAnswer.FromString(data), answer.member)


def trace(engines: dict[str, Any], over_wire: bool) -> tuple[float, Any]:
    started = time.perf_counter()
    since, until = window()
    ids = failed_batches(engines["sunarc"], since=since, until=until)
    tiers: list[TierAnswer] = []
    member, asked = "sunarc", ids
    while asked:
        answer, bought = local_tier(engines[member], frozenset(asked), member, {})
        tiers.append(wire(answer) if over_wire else answer)
        if not bought:
            break
        member, asked = next(iter(bought.items()))
        asked = set(asked)
    root = tiers[-1]
    for tier in reversed(tiers[:-1]):
        root = TierAnswer(
            tier.member, tier.implicated, tier.comparable_n, tier.links, tier.findings, (root,)
        )
    report = build_report("bench", {}, root, T0, T0, {})
    return (time.perf_counter() - started) * 1000, report


def accuracy_case(rng: random.Random) -> bool:
    """A planted excursion in a random tier, parameter, window, length and size, among
    two decoys: a parameter ten times as noisy as the others everywhere (P0), and in
    every tier an excursion of another parameter as large as the planted one that hits
    as many batches, but comparable (unaffected) ones as often as implicated ones."""
    tiers = ["oem", "cell", "wafer"]
    planted_tier = rng.choice(tiers)
    params = [f"P{i}" for i in range(6)]
    planted = rng.choice(params[1:])  # P0 is the noisy decoy, never the cause
    size = rng.uniform(4.0, 8.0)  # sigmas of the parameter's own short-term variation
    length = rng.randint(2, 5)  # readings of an excursion
    answers = []
    for tier in tiers:
        readings = []
        batches = [f"{tier}-{i}" for i in range(40)]
        bad = set(batches[:6])
        unspecific = rng.choice([p for p in params[1:] if p != planted])
        struck = set(rng.sample(batches, 6))  # the unspecific excursion's batches
        for b_i, b in enumerate(batches):
            start = T0 + timedelta(hours=2 * b_i)
            at = rng.randrange(0, 24 - length)  # the batch's excursion window
            for p in params:
                sd = 10.0 if p == "P0" else 1.0
                for k in range(24):
                    v = rng.gauss(100, sd)
                    inside = at <= k < at + length
                    if inside and tier == planted_tier and p == planted and b in bad:
                        v += size
                    if inside and p == unspecific and b in struck:
                        v += size
                    readings.append(
                        Reading(
                            f"{tier}/{p}",
                            b,
                            start + timedelta(minutes=5 * k),
                            v,
                            f"r:{len(readings)}",
                        )
                    )
        findings = local_findings(readings, frozenset(bad), frozenset(batches) - bad)
        answers.append(TierAnswer(tier, tuple(sorted(bad)), 34, (), tuple(findings[:40])))
    root = TierAnswer(
        answers[0].member,
        answers[0].implicated,
        34,
        (),
        answers[0].findings,
        (
            TierAnswer(
                answers[1].member, answers[1].implicated, 34, (), answers[1].findings, (answers[2],)
            ),
        ),
    )
    causes = rank_causes(root)
    return bool(causes) and causes[0].key == f"{planted_tier}/{planted}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inspections", type=int, default=1_000_000)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true", help="small sizes (CI)")
    args = parser.parse_args()
    if args.quick:
        args.inspections, args.records, args.batches, args.runs, args.cases = (
            20_000,
            10_000,
            60,
            2,
            10,
        )
    bad = set(range(4))
    with tempfile.TemporaryDirectory(prefix="qdspace-bench-trace-") as tmp:
        stores = {m: open_store(f"sqlite:///{tmp}/{m}.db") for m in ("sunarc", "cellex", "siwafer")}
        central = open_store(f"sqlite:///{tmp}/central.db")
        t = time.perf_counter()
        fill(stores, central, args.batches, args.inspections, args.records, bad)
        print(f"setup_s: {time.perf_counter() - t:.1f} s")
        engines = {m: s.engine for m, s in stores.items()}
        one = {m: central.engine for m in stores}
        spaced, centred = [], []
        report = None
        for _ in range(args.runs):
            ms, report = trace(engines, over_wire=True)
            spaced.append(ms)
            ms, _ = trace(one, over_wire=False)
            centred.append(ms)
        for s in (*stores.values(), central):
            s.close()
    assert report is not None
    top = report.causes[0] if report.causes else None
    rng = random.Random(7)
    hits = sum(accuracy_case(rng) for _ in range(args.cases))
    figures = {
        "trace_ms": statistics.median(spaced),
        "central_ms": statistics.median(centred),
        "ratio": statistics.median(spaced) / statistics.median(centred),
        "top_cause_is_planted": bool(top and top.key == "PECVD-1/pecvd_chamber_vacuum"),
        "accuracy": hits / args.cases,
        "cases": args.cases,
        "inspections": args.inspections,
        "records_per_producer": args.records,
        "cores": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
    }
    print(f"trace_start_to_report: {figures['trace_ms']:.0f} ms")
    print(f"central_baseline: {figures['central_ms']:.0f} ms")
    print(f"ratio: {figures['ratio']:.2f} x")
    print(f"planted_cause_first: {figures['accuracy'] * 100:.1f} % of {args.cases} cases")
    print(f"bench_top_cause_is_planted: {int(figures['top_cause_is_planted'])}")
    print(f"cores: {figures['cores']}")
    print(f"load_avg_1m: {figures['load_avg_1m']:.2f}")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
