"""How far a producer's own records behind a finding can be trusted (`DataConfidence`).

A finding is only as good as the readings it was computed from. Three things about
those readings are knowable from the producer's own QDM, and each lowers or raises
the weight a trace gives the finding (`rootcause.DataConfidence.score`):

- **completeness**: of the readings a batch of this kind usually has for a parameter
  (the median count over the batches that have any), how many are there, over every
  batch compared (a batch without any reading counts as empty, not as absent);
- **anchoring**: the share of the readings whose records were already anchored on the
  ledger when the question came (a record anchored before the defect was known cannot
  have been tidied up for the trace);
- **calibration**: the share of readings taken while the measuring equipment held a
  certificate valid at that moment with a result other than ``fail`` (None when no
  certificate is known for the equipment at all: unknown is not the same as expired).

Pure functions over plain values: the node reads certificates, cursors and readings,
the bench's central baseline hands in the same from its one database.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from statistics import median

from qdspace.connector.rootcause import DataConfidence, Reading
from qdspace.util.numbers import decimal

#: certificate results that do not make readings calibrated
FAILED_RESULTS = frozenset({"fail"})


@dataclass(frozen=True)
class Certificate:
    """A calibration certificate as the QDM holds it (``qdm_calibration``)."""

    certificate_id: str
    equipment: str
    valid_from: datetime
    valid_until: datetime
    result: str = "pass"


class CalibrationBook:
    """The certificates per piece of equipment, to ask "calibrated at that moment?"."""

    def __init__(self, certificates: Iterable[Certificate]) -> None:
        by_equipment: dict[str, list[Certificate]] = defaultdict(list)
        for c in certificates:
            if c.result not in FAILED_RESULTS and c.valid_until > c.valid_from:
                by_equipment[c.equipment].append(c)
        self._known = frozenset(c.equipment for c in certificates)
        self._starts: dict[str, list[datetime]] = {}
        self._certs: dict[str, list[Certificate]] = {}
        for equipment, certs in by_equipment.items():
            certs.sort(key=lambda c: c.valid_from)
            self._certs[equipment] = certs
            self._starts[equipment] = [c.valid_from for c in certs]

    def knows(self, equipment: str) -> bool:
        """Whether any certificate (even a failed one) names the equipment."""
        return equipment in self._known

    def valid_at(self, equipment: str, at: datetime) -> bool:
        certs = self._certs.get(equipment)
        if not certs:
            return False
        index = bisect_right(self._starts[equipment], at)
        # certificates may overlap (renewed early): any started by `at` may still hold
        return any(c.valid_until >= at for c in certs[:index])


def calibrated_share(
    readings: Sequence[Reading], equipment: str, book: CalibrationBook
) -> float | None:
    """Share of `readings` taken by `equipment` while it was calibrated; None: no
    certificate is known for it (or there are no readings)."""
    if not readings or not book.knows(equipment):
        return None
    good = sum(1 for r in readings if book.valid_at(equipment, r.at))
    return good / len(readings)


def completeness(readings: Sequence[Reading], batches: Collection[str]) -> float:
    """Readings present over readings expected across `batches` (see the module docstring)."""
    if not batches:
        return 0.0
    counts = Counter(r.batch_id for r in readings if r.batch_id in batches)
    if not counts:
        return 0.0
    expected = median(counts.values())
    present = sum(min(n, expected) for n in counts.values())
    return min(1.0, present / (expected * len(batches)))


def anchored_share(readings: Sequence[Reading], anchored_through: Mapping[str, int]) -> float:
    """Share of readings whose record (``table:id`` evidence) is covered by an anchored
    ledger leaf: `anchored_through` maps a table to the highest record id anchored."""
    if not readings:
        return 0.0
    anchored = 0
    for r in readings:
        table, _, number = r.evidence_id.rpartition(":")
        through = anchored_through.get(table)
        record = decimal(number)
        if through is not None and record is not None and record <= through:
            anchored += 1
    return anchored / len(readings)


def confidence_by_key(
    readings: Iterable[Reading],
    batches: Collection[str],
    equipment_of: Mapping[str, str],
    book: CalibrationBook,
    anchored_through: Mapping[str, int],
) -> dict[str, DataConfidence]:
    """The `DataConfidence` of every parameter key in `readings`, over `batches`.

    `equipment_of` names the measuring equipment behind a key (a key without one, such as
    an operator's shift, has unknown calibration)."""
    by_key: dict[str, list[Reading]] = defaultdict(list)
    for r in readings:
        if r.batch_id in batches:
            by_key[r.key].append(r)
    out = {}
    for key, mine in by_key.items():
        equipment = equipment_of.get(key)
        out[key] = DataConfidence(
            completeness=round(completeness(mine, batches), 4),
            anchored=round(anchored_share(mine, anchored_through), 4),
            calibrated=None
            if equipment is None
            else _rounded(calibrated_share(mine, equipment, book)),
        )
    return out


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
