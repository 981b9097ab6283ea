"""Sample data: the PECVD readings of Cellex's cell line, with the one excursion planted.

Every reading Cellex's two PECVD tools log in the sample data comes from
`pecvd_readings`, and only from there: the chamber vacuum of each cell batch and the
in-situ thickness of its anti-reflective coating. They reach Cellex's node either in its
CSV file (`sample.write_sample_files`) or, in the demo, over OPC UA from a simulated tool
(`node.demo.pecvd_tool`) serving these readings with their timestamps as its history.

A cell batch runs for one shift of eight hours, its wafers coated on both tools side by
side, and each tool logs its chamber vacuum every ten minutes. The readings are ordinary
plant data: each tool at its own base pressure, a slow wander of the pumps, white noise,
the odd single-reading glitch of a gauge in unaffected batches. Among them `EXCURSION`:
in the late shift of 4 November, while cell batch `sample.EXCURSION_BATCH` ran, a leak
raised PECVD-2's chamber pressure by some 35 Pa for three hours before the pump-down
brought it back; PECVD-1, coating the same batch in the same hours, was fine. That is
what a root-cause trace from SunArc's microcracked modules has to find: one tool, one
shift, one window. Deterministic: its own seeded generator, so the readings are the same
on every run whatever else the sample data draws.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from qdspace.connector.sample import (
    CELL_BATCHES,
    EXCURSION_BATCH,
    START,
    _iso,
    cell_batch,
    order_for,
)

#: the member whose PECVD line the sample plants the excursion in
MEMBER = "cellex"
TOOLS = ("PECVD-1", "PECVD-2")
BASE_PA = {"PECVD-1": 118.0, "PECVD-2": 120.0}  # each tool's own base pressure
ARC_NM = {"PECVD-1": 77.6, "PECVD-2": 78.0}
READINGS_PER_BATCH = 48  # every 10 minutes through the batch's shift
EVERY = timedelta(minutes=10)
SHIFT = timedelta(hours=8)
ARC_EVERY = 4  # the coating's thickness with every fourth vacuum reading
#: (tool, unaffected batch) -> the reading where its gauge glitched once
GLITCHES = {("PECVD-2", 3): 17, ("PECVD-1", 10): 40, ("PECVD-2", 11): 5}
GLITCH_PA = 9.0


@dataclass(frozen=True)
class Excursion:
    """Where and when the sample's PECVD vacuum excursion happened."""

    member: str
    tool: str
    parameter: str
    batch: str
    start: datetime  # the first reading of the leak
    end: datetime  # the last reading before the pressure was back
    shift: str  # as `connector.trace_data.shift_of` names the shift of `start`
    peak_pa: float

    @property
    def key(self) -> str:
        """The parameter as a trace names it (``equipment/parameter``)."""
        return f"{self.tool}/{self.parameter}"


def batch_start(n: int) -> datetime:
    """When the ``n``-th cell batch started: the beginning of a shift."""
    return START + n * SHIFT


_LEAK_FROM, _LEAK_TO = 12, 27  # reading indexes of the leak within the batch
_PEAK_PA = 36.0

EXCURSION = Excursion(
    member=MEMBER,
    tool="PECVD-2",
    parameter="pecvd_chamber_vacuum",
    batch=cell_batch(MEMBER, EXCURSION_BATCH),
    start=batch_start(EXCURSION_BATCH) + _LEAK_FROM * EVERY,
    end=batch_start(EXCURSION_BATCH) + (_LEAK_TO - 1) * EVERY,
    shift="late",
    peak_pa=_PEAK_PA,
)


def _leak(tool: str, n: int, k: int) -> float:
    """The leak's extra pressure at ``tool``'s reading ``k`` of batch ``n``: up in three
    readings, a plateau, down in three after the pump-down."""
    if tool != EXCURSION.tool or n != EXCURSION_BATCH or not _LEAK_FROM <= k < _LEAK_TO:
        return 0.0
    up = (k - _LEAK_FROM + 1) / 3
    down = (_LEAK_TO - k) / 3
    return _PEAK_PA * min(1.0, up, down)


def _rng() -> random.Random:
    seed = hashlib.sha256(f"{MEMBER}-pecvd".encode()).digest()[:8]
    return random.Random(int.from_bytes(seed, "big"))


def pecvd_readings(member: str = MEMBER) -> list[dict[str, Any]]:
    """Every PECVD reading of ``member``'s cell batches as QDM measurement rows, in time
    order (vacuum in mbar, every third in Pa, as the tools' two firmware versions log it)."""
    if member != MEMBER:
        raise ValueError(f"the sample data has PECVD readings of {MEMBER} only, not {member}")
    rng = _rng()
    order = order_for(member)
    rows: list[dict[str, Any]] = []
    wander = {tool: 0.0 for tool in TOOLS}
    for n in range(1, CELL_BATCHES + 1):
        batch = cell_batch(member, n)
        for tool in TOOLS:
            offset = rng.gauss(0.0, 0.8)  # the chamber's conditioning at the batch change
            for k in range(READINGS_PER_BATCH):
                wander[tool] = 0.9 * wander[tool] + rng.gauss(0.0, 0.3)  # the pumps
                pa = BASE_PA[tool] + offset + wander[tool] + rng.gauss(0.0, 1.2)
                pa += _leak(tool, n, k) + (GLITCH_PA if GLITCHES.get((tool, n)) == k else 0.0)
                at = batch_start(n) + k * EVERY
                in_mbar = k % 3 != 0
                value, unit = (pa / 100, "mbar") if in_mbar else (pa, "Pa")
                rows.append(_row(tool, "pecvd_chamber_vacuum", value, unit, at, batch, order))
                if k % ARC_EVERY == 0:
                    nm = rng.gauss(ARC_NM[tool], 1.2)
                    rows.append(_row(tool, "arc_thickness", nm, "nm", at, batch, order))
    rows.sort(key=lambda r: (r["measured_at"], r["equipment"], r["parameter"]))
    return rows


def _row(
    equipment: str,
    parameter: str,
    value: float,
    unit: str,
    at: datetime,
    batch: str,
    order: str,
) -> dict[str, Any]:
    return {
        "equipment": equipment,
        "parameter": parameter,
        "value": round(value, 4 if abs(value) < 10 else 2),
        "unit": unit,
        "measured_at": _iso(at),
        "batch_id": batch,
        "order_id": order,
    }
