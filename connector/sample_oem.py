"""Sample data: the OEM's files, SunArc Modules assembling PV modules from bought cells.

The scenario's shared names (members, orders, batch ids, `sample.EXCURSION_BATCH`) and
the suppliers' files are in `sample`; the wafer makers' in `sample_wafers`, Cellex's
PECVD excursion in `sample_pecvd` and what surrounds it in `sample_cellex`. Here is the
other end of the chain, split from `sample` so each member's data reads on its own: the
OEM's module batches made from the suppliers' cell batches, its modules' EL inspections
with the microcrack cluster in the module batch built from the excursion's cells
(`sample.cracked_module_batch`), and its own process readings in mixed representations
(void rate as %, fraction or grade; lamination temperature in °C or K) for the data
dictionary to normalise. Deterministic: the same member always gets the same files.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from qdspace.connector.sample import (
    BATCH_FIELDS,
    CELL_BATCHES,
    MICROCRACK_RATE,
    OEM,
    ORDER_FIELDS,
    START,
    SUPPLIERS,
    _environment,
    _iso,
    _operators,
    _orders,
    _rng,
    _write_csv,
    _write_jsonl,
    cell_batch,
    cracked_module_batch,
    module_batch,
    module_cells,
)


def oem_files(folder: Path, member: str) -> dict[str, Path]:
    """The OEM's files: the cells it bought, its module batches and their genealogy, its
    modules, their EL inspections (with the microcrack cluster), its stringer's and
    laminator's readings, its hall's climate and its operators' log."""
    rng = _rng(member)
    files: dict[str, Path] = {}
    files["order"] = _write_csv(folder / "orders.csv", _orders(), ORDER_FIELDS)
    batches: list[dict[str, Any]] = []
    edges: list[dict[str, Any]] = []
    for supplier, s in SUPPLIERS.items():
        for n in range(1, CELL_BATCHES + 1):
            batches.append(
                {
                    "batch_id": cell_batch(supplier, n),
                    "material": f"{s['cell']} PERC cell M10",
                    "kind": "cell",
                    "producer": supplier,
                    "quantity": 19600,
                    "made_at": _iso(START + timedelta(hours=8 * n)),
                    "customer": member,
                    "order_id": s["order"],
                }
            )
    modules = [module_batch(n) for n in range(1, CELL_BATCHES + 1)]
    for n, module in enumerate(modules, start=1):
        batches.append(
            {
                "batch_id": module,
                "material": "PV module 144 half-cut",
                "kind": "module",
                "producer": member,
                "quantity": 270,
                "made_at": _iso(START + timedelta(days=2, hours=8 * n)),
                "customer": None,
                "order_id": None,
            }
        )
        supplier = module_cells(n)
        edges.append(
            {
                "child_batch_id": module,
                "parent_batch_id": cell_batch(supplier, n),
                "quantity_used": 19440,
            }
        )
    files["batch"] = _write_csv(folder / "batches.csv", batches, BATCH_FIELDS)
    files["genealogy"] = _write_csv(
        folder / "genealogy.csv", edges, ["child_batch_id", "parent_batch_id", "quantity_used"]
    )
    products = [
        {
            "serial": f"SA26{n:06d}",
            "product_type": "SA-M10-144H",
            "order_id": None,
            "batch_id": modules[n % CELL_BATCHES],
            "made_at": _iso(START + timedelta(days=2, minutes=3 * n)),
        }
        for n in range(1200)
    ]
    files["product"] = _write_csv(
        folder / "modules.csv",
        products,
        ["serial", "product_type", "order_id", "batch_id", "made_at"],
    )
    inspections = [
        {
            "inspection_id": f"SA-EL-{n:06d}",
            "station": "EL-M1",
            "inspected_at": _iso(START + timedelta(days=2, minutes=3 * n, seconds=40)),
            "verdict": "fail" if (failed := rng.random() < 0.03) else "pass",
            "defect_class": "crack" if failed else None,
            "score": round(rng.uniform(0.6, 0.98) if failed else rng.uniform(0.0, 0.3), 4),
            "model_version": "el-module-2026.09",
            "serial": p["serial"],
            "batch_id": p["batch_id"],
        }
        for n, p in enumerate(products)
    ]
    files["inspection"] = _write_jsonl(
        folder / "el_inspections.jsonl", _microcracks(inspections, cracked_module_batch())
    )
    measurements = []
    for n in range(600):
        t = START + timedelta(days=2, minutes=6 * n)
        void = max(0.0, rng.gauss(0.06, 0.02))
        form = n % 3
        measurements.append(
            {
                "equipment": "STRINGER-1",
                "parameter": "solder_void_rate",
                "value": round(void * 100, 2)
                if form == 0
                else (round(void, 4) if form == 1 else _grade(void)),
                "unit": "%" if form == 0 else ("fraction" if form == 1 else "grade"),
                "measured_at": _iso(t),
                "batch_id": modules[n % CELL_BATCHES],
            }
        )
        measurements.append(
            {
                "equipment": "LAMINATOR-1",
                "parameter": "lamination_temperature",
                "value": round(rng.gauss(148.0, 1.0) + (273.15 if n % 4 == 0 else 0.0), 2),
                "unit": "K" if n % 4 == 0 else "°C",
                "measured_at": _iso(t),
                "batch_id": modules[n % CELL_BATCHES],
            }
        )
    files["measurement"] = _write_csv(
        folder / "process.csv",
        measurements,
        ["equipment", "parameter", "value", "unit", "measured_at", "batch_id"],
    )
    files["environment"] = _environment(folder, rng, ["module-hall"])
    files["operator_log"] = _operators(folder, rng, member, "")
    return files


def _microcracks(inspections: list[dict[str, Any]], batch: str) -> list[dict[str, Any]]:
    """The cluster SunArc sees: of the modules of ``batch`` (made from the cells of the
    PECVD excursion), a share fails EL with microcracks; an own generator, so the rest of
    SunArc's data are what they were without it."""
    rng = _rng(f"{OEM}-microcracks")
    out = []
    for row in inspections:
        if row["batch_id"] == batch and rng.random() < MICROCRACK_RATE:
            row = row | {
                "verdict": "fail",
                "defect_class": "microcrack",
                "score": round(rng.uniform(0.7, 0.97), 4),
            }
        out.append(row)
    return out


def _grade(void: float) -> str:
    return "A" if void <= 0.05 else "B" if void <= 0.15 else "C" if void <= 0.25 else "D"
