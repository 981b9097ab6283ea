"""Sample data: what else Cellex's files hold around the PECVD excursion.

The excursion itself is in `sample_pecvd`. Here is the rest of the cell maker's records
that a root-cause trace weighs against it:

- **a decoy**: the firing furnace's peak temperature. Cell batch `sample.EXCURSION_BATCH`
  ran some 4.5 °C hotter than usual (a zone set point nudged that afternoon), enough to
  catch the eye in a plain comparison of means, yet inside the spread the furnace shows
  from batch to batch anyway; and its thermocouple dropped out for single readings in
  that batch and in three unaffected ones alike. Its profiler's calibration certificate
  had expired two days before the batches were made.
- **calibration certificates** of the measuring equipment (`certificates`): both PECVD
  tools' gauges calibrated and valid (PECVD-2 recalibrated in August, its previous
  certificate expired), the furnace's profiler overdue. The trace's confidence in a
  finding shows it.
- **the operators' log with the batch each entry belongs to** (`operator_log`), so that
  shifts and operators are factors a trace can compare; operators float between shifts.

Deterministic, each part from its own seeded generator.
"""

from __future__ import annotations

import hashlib
import random
from datetime import datetime, timedelta
from typing import Any

from qdspace.connector.sample import CELL_BATCHES, EXCURSION_BATCH, START, _iso, cell_batch
from qdspace.connector.sample_pecvd import (
    EVERY,
    MEMBER,
    READINGS_PER_BATCH,
    SHIFT,
    TOOLS,
    batch_start,
    pecvd_readings,
)

FURNACE = "FIRING-1"
FIRING_C = 765.0
FIRING_EVERY = 4  # with every fourth PECVD vacuum reading's time
DECOY_HOT_C = 4.5  # how much hotter the excursion batch ran
DROPOUTS = (2, 5, EXCURSION_BATCH, 11)  # batches where the thermocouple dropped out once
DROPOUT_C = 11.0
OPERATORS = 6
LOG_ROWS = 200
LOG_EVERY = timedelta(minutes=37)


def _rng(part: str) -> random.Random:
    seed = hashlib.sha256(f"{MEMBER}-{part}".encode()).digest()[:8]
    return random.Random(int.from_bytes(seed, "big"))


def firing_readings(order: str) -> list[dict[str, Any]]:
    """The furnace's peak temperature per cell batch: the decoy (module docstring)."""
    rng = _rng("firing")
    rows = []
    for n in range(1, CELL_BATCHES + 1):
        offset = DECOY_HOT_C if n == EXCURSION_BATCH else rng.gauss(0.0, 2.0)
        dropout = rng.randrange(READINGS_PER_BATCH // FIRING_EVERY)
        for j in range(READINGS_PER_BATCH // FIRING_EVERY):
            value = FIRING_C + offset + rng.gauss(0.0, 2.0)
            if n in DROPOUTS and j == dropout:
                value += DROPOUT_C
            rows.append(
                {
                    "equipment": FURNACE,
                    "parameter": "firing_peak_temperature",
                    "value": round(value, 1),
                    "unit": "°C",
                    "measured_at": _iso(batch_start(n) + j * FIRING_EVERY * EVERY),
                    "batch_id": cell_batch(MEMBER, n),
                    "order_id": order,
                }
            )
    return rows


def measurements(order: str, *, pecvd: bool = True) -> list[dict[str, Any]]:
    """Cellex's process readings: its PECVD tools' (unless ``pecvd`` is False: a line
    connector delivers them) and its furnace's, in time order."""
    rows = (pecvd_readings(MEMBER) if pecvd else []) + firing_readings(order)
    return sorted(rows, key=lambda r: (r["measured_at"], r["equipment"], r["parameter"]))


def certificates() -> list[dict[str, Any]]:
    """Calibration certificates of Cellex's measuring equipment (module docstring)."""
    day = timedelta(days=1)

    def cert(cid: str, equipment: str, since: datetime, days: int, result: str) -> dict[str, Any]:
        return {
            "certificate_id": cid,
            "equipment": equipment,
            "valid_from": _iso(since),
            "valid_until": _iso(since + days * day),
            "result": result,
            "issuer": "DAkkS D-K-15073-01",
        }

    return [
        cert("CX-CAL-2025-0311", "PECVD-2", START - 446 * day, 365, "pass"),
        cert("CX-CAL-2026-0198", "PECVD-2", START - 81 * day, 365, "adjusted"),
        cert("CX-CAL-2026-0102", "PECVD-1", START - 152 * day, 365, "pass"),
        cert("CX-CAL-2025-0877", FURNACE, START - 367 * day, 365, "pass"),
    ]


def _batch_at(at: datetime) -> int | None:
    n = int((at - START) / SHIFT)
    return n if 1 <= n <= CELL_BATCHES else None


def operator_log(order: str) -> list[dict[str, Any]]:
    """What Cellex's operators did, each entry with the cell batch then running."""
    rng = _rng("operators")
    actions = ["start_batch", "adjust_parameter", "clean_chamber", "override_verdict", "end_shift"]
    operators = [
        f"op-{hashlib.sha256(f'{MEMBER}-{k}'.encode()).hexdigest()[:10]}" for k in range(OPERATORS)
    ]
    rows = []
    for i in range(LOG_ROWS):
        at = START + i * LOG_EVERY
        n = _batch_at(at)
        stations = (*TOOLS, FURNACE, "EL-1", "EL-2")
        rows.append(
            {
                "operator_id": rng.choice(operators),
                "logged_at": _iso(at),
                "action": actions[i % len(actions)],
                "station": rng.choice(stations),
                "order_id": order,
                "batch_id": cell_batch(MEMBER, n) if n else None,
                "note": None,
            }
        )
    return rows
