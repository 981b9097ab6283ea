"""Sample QDM data of the wafer maker: SiliWafer grows ingots and saws the wafers Cellex buys.

SiliWafer is the small supplier of the reference scenario that runs no servers: a
managed host keeps its data (``qdspace host``). Its files are the other end of
Cellex's genealogy: the wafer batches it sold Cellex under Cellex's order carry the
very ids Cellex's genealogy names as parents (`sample.wafer_batches`), and each was
sawn from one of its Czochralski ingots, so one genealogy hop from Cellex reaches
SiliWafer and is answered with the ingots.

Its process data are a wafer maker's: pull rate at the pullers, resistivity along each
ingot (gallium segregates, so it rises from seed to tail), minority-carrier lifetime,
wire-saw tension, as-cut thickness and total thickness variation at the sorter, the
sorter's verdicts, the climate of its halls and what its operators did. All of it is
ordinary noise around stable set points: no excursion anywhere, in particular none in
the wafers of Cellex's drifting cell batch (`sample.EXCURSION_BATCH`). A trace from a
cell defect back to the wafers must find this supplier's data clean.

Representations are mixed here too (Ω·cm and ohm·cm, µs and ms, µm and mm) for the
data dictionary to normalise. Deterministic: the same files on every run.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from qdspace.connector.sample import (
    BATCH_FIELDS,
    ORDER_FIELDS,
    START,
    SUPPLIERS,
    _environment,
    _iso,
    _operators,
    _rng,
    _write_csv,
    _write_jsonl,
    wafer_batches,
)

#: wafer makers of the sample data: who buys their wafers, under which order
WAFER_MAKERS: dict[str, dict[str, str]] = {
    "siliwafer": {
        "display_name": "SiliWafer",
        "prefix": "SW",
        "customer": "cellex",
        "order": "PO-CX-2026-0118",
    },
}
WAFER_BATCHES_PER_INGOT = 2
PULLERS = 4  # Czochralski pullers, one ingot at a time each
GROWTH = timedelta(hours=32)  # body growth of one ingot (logged every 2 h)
CYCLE = timedelta(hours=40)  # growth, cool-down and recharge of a puller
WAFERS_PER_BATCH = 10000  # as the customer records them
SORTED_PER_BATCH = 20  # wafers of each batch the sorter reports one by one
SORTER = "WAFER-SORTER-1"
MEASURE_FIELDS = ["equipment", "parameter", "value", "unit", "measured_at", "batch_id", "order_id"]


def wafer_order(maker: str) -> str:
    """The order under which ``maker`` sold its customer the wafers."""
    return WAFER_MAKERS[maker]["order"]


def ingot_of(maker: str, wafer_index: int) -> str:
    """The ingot the ``wafer_index``-th (0-based) wafer batch was sawn from."""
    n = 1 + wafer_index // WAFER_BATCHES_PER_INGOT
    return f"{WAFER_MAKERS[maker]['prefix']}-IG-26{n:04d}"


def _made_at(index: int) -> datetime:
    """When the customer's records say the ``index``-th wafer batch was made."""
    return START - timedelta(days=7, hours=index)


def _grown_at(k: int, ingots: int, wafers: int) -> datetime:
    """When the ``k``-th ingot finished growing: the pullers work in rounds, each ingot
    done 12 h before the first wafer batch is sawn."""
    rounds = (ingots - 1) // PULLERS
    last = _made_at(wafers - 1) - timedelta(hours=12)
    first = last - rounds * CYCLE - (PULLERS - 1) * timedelta(hours=3)
    return first + (k // PULLERS) * CYCLE + (k % PULLERS) * timedelta(hours=3)


def _batches(maker: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ingots and the wafer batches sold, and the wafer -> ingot genealogy."""
    m = WAFER_MAKERS[maker]
    customer = m["customer"]
    cell = SUPPLIERS[customer]["cell"]
    wafers = wafer_batches(customer)
    ingots = sorted({ingot_of(maker, i) for i in range(len(wafers))})
    batches: list[dict[str, Any]] = [
        {
            "batch_id": ingot,
            "material": "mono Si ingot p-type Ga-doped 182 mm",
            "kind": "ingot",
            "producer": maker,
            "quantity": 380,  # kg
            "made_at": _iso(_grown_at(k, len(ingots), len(wafers))),
            "customer": None,
            "order_id": None,
        }
        for k, ingot in enumerate(ingots)
    ]
    edges = []
    for i, wafer in enumerate(wafers):
        batches.append(
            {
                "batch_id": wafer,
                "material": f"{cell} Si wafer 182 mm",  # the customer's words for them
                "kind": "wafers",
                "producer": maker,
                "quantity": WAFERS_PER_BATCH,
                "made_at": _iso(_made_at(i)),
                "customer": customer,
                "order_id": m["order"],
            }
        )
        edges.append(
            {"child_batch_id": wafer, "parent_batch_id": ingot_of(maker, i), "quantity_used": 118}
        )
    return batches, edges


def _row(
    equipment: str,
    parameter: str,
    value: float,
    unit: str,
    at: datetime,
    batch: str,
    order: str | None,
) -> dict[str, Any]:
    return {
        "equipment": equipment,
        "parameter": parameter,
        "value": value,
        "unit": unit,
        "measured_at": _iso(at),
        "batch_id": batch,
        "order_id": order,
    }


def _ingot_rows(k: int, ingot: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    """The ``k``-th ingot: pull rate while it grew, resistivity seed to tail, lifetime."""
    grown = datetime.fromisoformat(ingot["made_at"])
    batch = ingot["batch_id"]
    puller = f"CZ-PULLER-{1 + k % PULLERS}"
    rows = [  # body growth, every 2 h
        _row(
            puller,
            "crystal_pull_rate",
            round(rng.gauss(1.32, 0.025), 3),
            "mm/min",
            grown - GROWTH + timedelta(hours=2 * step),
            batch,
            None,
        )
        for step in range(16)
    ]
    for position in range(8):  # four-point probe, seed end to tail end
        ideal = 0.85 + 0.45 * (position / 7) ** 1.6  # gallium segregates towards the tail
        value = round(max(0.3, rng.gauss(ideal, 0.03)), 3)
        unit = "Ω·cm" if position % 2 else "ohm·cm"
        at = grown + timedelta(hours=3, minutes=10 * position)
        rows.append(_row("4PP-1", "ingot_resistivity", value, unit, at, batch, None))
    for sample in range(4):
        lifetime_us = max(50.0, rng.gauss(420.0, 25.0))
        in_ms = sample == 3
        value = round(lifetime_us / 1000, 4) if in_ms else round(lifetime_us, 1)
        at = grown + timedelta(hours=4, minutes=15 * sample)
        unit = "ms" if in_ms else "µs"
        rows.append(_row("QSSPC-1", "minority_carrier_lifetime", value, unit, at, batch, None))
    return rows


def _wafer_rows(
    i: int, wafers: dict[str, Any], order: str, rng: random.Random
) -> list[dict[str, Any]]:
    """The ``i``-th wafer batch: wire tension while sawn, thickness and TTV at the sorter."""
    sawn = datetime.fromisoformat(wafers["made_at"])
    batch = wafers["batch_id"]
    saw = f"DWS-{1 + i % 2}"
    rows = [  # the same saw every 2 h: its batch's points within the hour before
        _row(
            saw,
            "wire_saw_tension",
            round(rng.gauss(22.0, 0.3), 2),
            "N",
            sawn - timedelta(minutes=80 - 20 * step),
            batch,
            order,
        )
        for step in range(4)
    ]
    for sample in range(8):
        at = sawn + timedelta(minutes=20 + 5 * sample)
        thickness = rng.gauss(150.0, 1.2)
        in_mm = sample % 4 == 0
        value = round(thickness / 1000, 5) if in_mm else round(thickness, 1)
        unit = "mm" if in_mm else "µm"
        rows.append(_row(SORTER, "wafer_thickness", value, unit, at, batch, order))
        ttv = round(max(1.0, rng.gauss(6.5, 0.9)), 2)
        rows.append(_row(SORTER, "total_thickness_variation", ttv, "µm", at, batch, order))
    return rows


def _measurements(
    maker: str, batches: list[dict[str, Any]], rng: random.Random
) -> list[dict[str, Any]]:
    """Puller, resistivity and lifetime per ingot; saw and sorter per wafer batch."""
    order = WAFER_MAKERS[maker]["order"]
    ingots = [b for b in batches if b["kind"] == "ingot"]
    wafers = [b for b in batches if b["kind"] == "wafers"]
    rows = [r for k, b in enumerate(ingots) for r in _ingot_rows(k, b, rng)]
    return rows + [r for i, b in enumerate(wafers) for r in _wafer_rows(i, b, order, rng)]


def _sorter(
    maker: str, batches: list[dict[str, Any]], rng: random.Random
) -> list[dict[str, Any] | str]:
    """The wafer sorter's verdicts: a steady ~1 % of chipped or stained wafers."""
    order = WAFER_MAKERS[maker]["order"]
    prefix = WAFER_MAKERS[maker]["prefix"]
    rows: list[dict[str, Any] | str] = []
    for b in (x for x in batches if x["kind"] == "wafers"):
        sawn = datetime.fromisoformat(b["made_at"])
        for j in range(SORTED_PER_BATCH):
            failed = rng.random() < 0.01
            rows.append(
                {
                    "inspection_id": f"{prefix}-WS-{len(rows):06d}",
                    "station": SORTER,
                    "inspected_at": _iso(sawn + timedelta(minutes=20, seconds=7 * j)),
                    "verdict": "NOK" if failed else "OK",
                    "defect_class": rng.choice(["crack", "contamination", "other"])
                    if failed
                    else None,
                    "model_version": "sorter-rules-3.2",
                    "order_id": order,
                    "batch_id": b["batch_id"],
                }
            )
    return rows


def wafer_maker_files(folder: Path, maker: str) -> dict[str, Path]:
    """Write ``maker``'s sample files into ``folder``; returns kind -> file, in ingest order."""
    m = WAFER_MAKERS[maker]
    rng = _rng(maker)
    folder.mkdir(parents=True, exist_ok=True)
    batches, edges = _batches(maker)
    first = min(datetime.fromisoformat(b["made_at"]) for b in batches) - GROWTH
    order = {
        "order_id": m["order"],
        "customer": m["customer"],
        "supplier": maker,
        "product": f"{SUPPLIERS[m['customer']]['cell']} Si wafer 182 mm",
        "quantity": WAFERS_PER_BATCH * len(wafer_batches(m["customer"])),
        "status": "open",
        "opened_at": _iso(first - timedelta(days=14)),
        "closed_at": None,
    }
    files = {
        "order": _write_csv(folder / "orders.csv", [order], ORDER_FIELDS),
        "batch": _write_csv(folder / "batches.csv", batches, BATCH_FIELDS),
        "genealogy": _write_csv(
            folder / "genealogy.csv", edges, ["child_batch_id", "parent_batch_id", "quantity_used"]
        ),
        "inspection": _write_jsonl(folder / "sorter.jsonl", _sorter(maker, batches, rng)),
        "measurement": _write_csv(
            folder / "process.csv", _measurements(maker, batches, rng), MEASURE_FIELDS
        ),
    }
    hours = int((START - first) / timedelta(hours=1)) - 24 * 6  # to the last wafer batch
    halls = ["crystal-hall", "saw-hall"]
    files["environment"] = _environment(folder, rng, halls, since=first, hours=hours)
    stations = (*(f"CZ-PULLER-{n}" for n in range(1, PULLERS + 1)), "DWS-1", "DWS-2")
    files["operator_log"] = _operators(folder, rng, maker, m["order"], stations, since=first)
    return files
