"""Sample QDM data of the reference scenario, written as the files a plant would deliver.

SunArc Modules (OEM) buys mono cells from Cellex Mono (order PO-2026-0042) and poly
cells from PolyCell Works (order PO-2026-0043). Each supplier makes cell batches from
bought wafer batches, inspects cells with EL imaging, logs its PECVD chamber vacuum
and other process parameters, the climate of its hall and what its operators did.
SunArc makes module batches from those cells.

One defect story runs through the data: in cell batch `EXCURSION_BATCH` a vacuum leak
hit one of Cellex's PECVD tools for three hours of one shift (`sample_pecvd`, the only
place Cellex's PECVD readings are made), next to a decoy and calibration certificates
(`sample_cellex`); the module batch built from those cells shows a microcrack cluster in
SunArc's EL inspections (`cracked_module_batch`); the wafers behind them are clean
(`sample_wafers`). PolyCell's readings (`_process_rows`) keep the older, simpler
pattern: one tool, and a drift in its own batch `EXCURSION_BATCH`, which went into none
of SunArc's modules.

The files mix representations on purpose (mbar and Pa, %, fractions and grade codes,
"OK"/"NOK" verdicts) so the data dictionary has something to normalise; with
``bad_rows`` a few broken rows are added so ingest has something to refuse. Data
are deterministic: the same member always gets the same files.

This module holds the scenario's shared names and the cell suppliers' files; the OEM's
files are `sample_oem`, the wafer makers' `sample_wafers`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

START = datetime(2026, 11, 2, 6, 0, tzinfo=UTC)
OEM = "sunarc"
SUPPLIERS: dict[str, dict[str, str]] = {
    "cellex": {"prefix": "CX", "order": "PO-2026-0042", "cell": "mono", "wafers_from": "siliwafer"},
    "polycell": {"prefix": "PC", "order": "PO-2026-0043", "cell": "poly", "wafers_from": "ingotec"},
}
CELL_BATCHES = 12
EXCURSION_BATCH = 7  # the cell batch whose PECVD vacuum drifted
#: the supplier whose PECVD excursion SunArc's modules show (`sample_pecvd`, `sample_cellex`)
PLANTED = "cellex"
#: share of the modules made from the excursion batch's cells that show microcracks in EL
MICROCRACK_RATE = 0.12


def order_for(supplier: str) -> str:
    return SUPPLIERS[supplier]["order"]


def cell_batch(supplier: str, n: int) -> str:
    return f"{SUPPLIERS[supplier]['prefix']}-CB-26{n:04d}"


def wafer_batches(supplier: str) -> list[str]:
    """The wafer batches ``supplier`` bought (its genealogy's parents; the wafer maker
    ``SUPPLIERS[supplier]['wafers_from']`` sold them under these ids)."""
    return [f"{SUPPLIERS[supplier]['prefix']}-WB-26{n:04d}" for n in range(1, 2 * CELL_BATCHES + 1)]


def module_batch(n: int) -> str:
    """The ``n``-th (1-based) module batch of the OEM."""
    return f"SA-MB-26{n:04d}"


def module_cells(n: int) -> str:
    """Who made the cells of the ``n``-th module batch (its ``n``-th cell batch)."""
    return "cellex" if n % 2 else "polycell"


def cracked_module_batch() -> str:
    """The module batch whose EL images show the microcrack cluster: the one made from
    `PLANTED`'s excursion batch."""
    if module_cells(EXCURSION_BATCH) != PLANTED:
        raise ValueError("the excursion batch's cells went into no module batch")
    return module_batch(EXCURSION_BATCH)


def oem_inspection_window() -> tuple[datetime, datetime]:
    """From the first to after the last of the OEM's module EL inspections."""
    return START + timedelta(days=2), START + timedelta(days=5)


def sold_batch(producer: str, customer: str) -> str:
    """A cell batch ``producer`` sold to ``customer`` in the sample data."""
    if producer not in SUPPLIERS or customer != OEM:
        raise ValueError(f"the sample data has no batch that {producer} sold to {customer}")
    return cell_batch(producer, 1)


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _rng(member: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(member.encode()).digest()[:8], "big"))


def _write_csv(path: Path, rows: Iterable[dict[str, Any]], fields: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return path


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any] | str]) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def _orders() -> list[dict[str, Any]]:
    return [
        {
            "order_id": s["order"],
            "customer": OEM,
            "supplier": name,
            "product": f"{s['cell']} PERC cell M10",
            "quantity": 240000,
            "status": "open",
            "opened_at": _iso(START - timedelta(days=14)),
            "closed_at": None,
        }
        for name, s in SUPPLIERS.items()
    ]


ORDER_FIELDS = [
    "order_id",
    "customer",
    "supplier",
    "product",
    "quantity",
    "status",
    "opened_at",
    "closed_at",
]
CALIBRATION_FIELDS = [
    "certificate_id",
    "equipment",
    "valid_from",
    "valid_until",
    "result",
    "issuer",
]
BATCH_FIELDS = [
    "batch_id",
    "material",
    "kind",
    "producer",
    "quantity",
    "made_at",
    "customer",
    "order_id",
]


def _supplier_files(
    folder: Path, member: str, bad_rows: bool, pecvd: bool = True
) -> dict[str, Path]:
    s = SUPPLIERS[member]
    rng = _rng(member)
    prefix, order, cell = s["prefix"], s["order"], s["cell"]
    files: dict[str, Path] = {}
    files["order"] = _write_csv(
        folder / "orders.csv", [o for o in _orders() if o["supplier"] == member], ORDER_FIELDS
    )

    wafers = wafer_batches(member)
    batches: list[dict[str, Any]] = [
        {
            "batch_id": w,
            "material": f"{cell} Si wafer 182 mm",
            "kind": "wafers",
            "producer": s["wafers_from"],
            "quantity": 10000,
            "made_at": _iso(START - timedelta(days=7, hours=i)),
            "customer": member,
            "order_id": None,
        }
        for i, w in enumerate(wafers)
    ]
    edges: list[dict[str, Any]] = []
    for n in range(1, CELL_BATCHES + 1):
        batch_id = cell_batch(member, n)
        batches.append(
            {
                "batch_id": batch_id,
                "material": f"{cell} PERC cell M10",
                "kind": "cell",
                "producer": member,
                "quantity": 19600,
                "made_at": _iso(START + timedelta(hours=8 * n)),
                "customer": OEM,
                "order_id": order,
            }
        )
        for w in wafers[2 * (n - 1) : 2 * n]:
            edges.append({"child_batch_id": batch_id, "parent_batch_id": w, "quantity_used": 9800})
    files["batch"] = _write_csv(folder / "batches.csv", batches, BATCH_FIELDS)
    files["genealogy"] = _write_csv(
        folder / "genealogy.csv", edges, ["child_batch_id", "parent_batch_id", "quantity_used"]
    )

    inspections: list[dict[str, Any] | str] = []
    classes = ["crack", "microcrack", "finger_interruption", "dark_area"]
    for i in range(3000):
        n = 1 + i * CELL_BATCHES // 3000
        fail_rate = 0.18 if n == EXCURSION_BATCH else 0.04
        failed = rng.random() < fail_rate
        inspections.append(
            {
                "inspection_id": f"{prefix}-EL-{i:06d}",
                "station": f"EL-{1 + i % 2}",
                "inspected_at": _iso(START + timedelta(hours=8 * n, seconds=9 * i)),
                "verdict": ("NOK" if failed else "OK")
                if i % 5 == 0
                else ("fail" if failed else "pass"),
                "defect_class": rng.choice(classes) if failed else None,
                "score": round(rng.uniform(0.55, 0.99) if failed else rng.uniform(0.0, 0.4), 4),
                "model_version": "el-manual-2026.10",
                "image_hash": hashlib.sha256(f"{member}-{i}".encode()).hexdigest(),
                "frame_id": f"{i:06d}",
                "order_id": order,
                "batch_id": cell_batch(member, n),
            }
        )
    if bad_rows:
        inspections[10] = {**inspections[10], "score": 1.7}  # type: ignore[dict-item]
        inspections[20] = {**inspections[20], "verdict": "maybe"}  # type: ignore[dict-item]
        inspections[30] = {**inspections[30], "inspected_at": "2026-11-02 08:00:00"}  # type: ignore[dict-item]
        inspections.insert(40, '{"inspection_id": "CX-EL-broken", "station": ')
    files["inspection"] = _write_jsonl(folder / "el_inspections.jsonl", inspections)

    if member == PLANTED:  # the PECVD excursion, its decoy, certificates: sample_cellex
        from qdspace.connector import sample_cellex

        measurements = sample_cellex.measurements(order, pecvd=pecvd)
    else:
        measurements = _process_rows(member, rng)
    if bad_rows:
        measurements[5] = {**measurements[5], "unit": "psi"}
    files["measurement"] = _write_csv(
        folder / "process.csv",
        measurements,
        ["equipment", "parameter", "value", "unit", "measured_at", "batch_id", "order_id"],
    )
    files["environment"] = _environment(folder, rng, ["cell-hall", "pecvd-bay"])
    if member == PLANTED:
        files["operator_log"] = _write_jsonl(
            folder / "operators.jsonl", sample_cellex.operator_log(order)
        )
        files["calibration"] = _write_csv(
            folder / "calibration.csv", sample_cellex.certificates(), CALIBRATION_FIELDS
        )
    else:
        files["operator_log"] = _operators(folder, rng, member, order)
    return files


def _process_rows(member: str, rng: random.Random) -> list[dict[str, Any]]:
    """PolyCell's PECVD vacuum (drifting in batch `EXCURSION_BATCH`), firing temperature
    and ARC thickness, on one PECVD tool."""
    order = SUPPLIERS[member]["order"]
    measurements: list[dict[str, Any]] = []
    for i in range(CELL_BATCHES * 48):
        n = 1 + i // 48
        t = START + timedelta(hours=8 * n, minutes=10 * (i % 48))
        vacuum_pa = rng.gauss(120.0, 2.0) + (
            35.0 if n == EXCURSION_BATCH and 12 <= i % 48 < 30 else 0.0
        )
        in_mbar = i % 3 != 0
        measurements.append(
            {
                "equipment": "PECVD-2",
                "parameter": "pecvd_chamber_vacuum",
                "value": round(vacuum_pa / 100.0, 4) if in_mbar else round(vacuum_pa, 2),
                "unit": "mbar" if in_mbar else "Pa",
                "measured_at": _iso(t),
                "batch_id": cell_batch(member, n),
                "order_id": order,
            }
        )
        if i % 4 == 0:
            measurements.append(
                {
                    "equipment": "FIRING-1",
                    "parameter": "firing_peak_temperature",
                    "value": round(rng.gauss(765.0, 3.0), 1),
                    "unit": "°C",
                    "measured_at": _iso(t),
                    "batch_id": cell_batch(member, n),
                    "order_id": order,
                }
            )
            measurements.append(
                {
                    "equipment": "PECVD-2",
                    "parameter": "arc_thickness",
                    "value": round(rng.gauss(78.0, 1.5), 1),
                    "unit": "nm",
                    "measured_at": _iso(t),
                    "batch_id": cell_batch(member, n),
                    "order_id": order,
                }
            )
    return measurements


def _environment(
    folder: Path,
    rng: random.Random,
    locations: list[str],
    since: datetime = START,
    hours: int = 24 * 5,
) -> Path:
    rows = []
    for h in range(hours):
        for location in locations:
            as_fraction = h % 7 == 0
            humidity = rng.gauss(45.0, 3.0)
            rows.append(
                {
                    "location": location,
                    "measured_at": _iso(since + timedelta(hours=h)),
                    "temperature": round(rng.gauss(22.5, 0.6), 2),
                    "temperature_unit": "°C",
                    "humidity": round(humidity / 100.0, 4) if as_fraction else round(humidity, 1),
                    "humidity_unit": "fraction" if as_fraction else "%RH",
                }
            )
    fields = [
        "location",
        "measured_at",
        "temperature",
        "temperature_unit",
        "humidity",
        "humidity_unit",
    ]
    return _write_csv(folder / "environment.csv", rows, fields)


def _operators(
    folder: Path,
    rng: random.Random,
    member: str,
    order: str,
    stations: tuple[str, ...] = ("PECVD-2", "FIRING-1", "EL-1", "EL-2"),
    since: datetime = START,
) -> Path:
    actions = ["start_batch", "adjust_parameter", "clean_chamber", "override_verdict", "end_shift"]
    operators = [
        f"op-{hashlib.sha256(f'{member}-{k}'.encode()).hexdigest()[:10]}" for k in range(6)
    ]
    rows = [
        {
            "operator_id": rng.choice(operators),
            "logged_at": _iso(since + timedelta(minutes=37 * i)),
            "action": actions[i % len(actions)],
            "station": rng.choice(stations),
            "order_id": order,
            "note": None,
        }
        for i in range(200)
    ]
    return _write_jsonl(folder / "operators.jsonl", rows)


def write_sample_files(
    folder: Path, member: str, role: str, *, bad_rows: bool = False, pecvd: bool = True
) -> dict[str, Path]:
    """Write ``member``'s sample files into ``folder``; returns kind -> file, in ingest order.

    ``pecvd=False`` leaves Cellex's PECVD readings (`sample_pecvd`) out of its process
    file: the demo has them arrive over OPC UA instead, and once is enough."""
    from qdspace.connector.sample_oem import oem_files
    from qdspace.connector.sample_wafers import WAFER_MAKERS, wafer_maker_files

    folder.mkdir(parents=True, exist_ok=True)
    if member in WAFER_MAKERS:
        return wafer_maker_files(folder, member)
    if member in SUPPLIERS:
        return _supplier_files(folder, member, bad_rows, pecvd)
    if role == "oem":
        return oem_files(folder, member)
    return {}
