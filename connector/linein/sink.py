"""The one ingest call every line connector makes, with the counts and reports it logs.

A connector collects what arrived as ``(source, row)`` pairs (``row`` may be a
``(field, reason)`` pair that mapping refused) and calls :meth:`MeasurementSink.put`,
which stores them through :meth:`QualityStore.ingest_rows` (validation through the
dictionary, one transaction per source, ``ON CONFLICT DO NOTHING`` on the natural
key) and only then returns: an MQTT message is acknowledged, a file moved, after it.
Every refused reading is logged as ``source:n: field: reason`` and kept in
:attr:`MeasurementSink.rejected` for status and tests.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from qdspace.connector.ingest import BadLine, RowError
from qdspace.connector.storage import QualityStore

log = logging.getLogger("qdspace.connector.linein")

Item = tuple[str, "dict[str, Any] | BadLine"]


@dataclass
class Totals:
    stored: int = 0
    duplicates: int = 0
    corrected: int = 0
    rejected: int = 0

    def __str__(self) -> str:
        return (
            f"{self.stored} stored, {self.duplicates} duplicates, "
            f"{self.corrected} corrected, {self.rejected} rejected"
        )


@dataclass
class MeasurementSink:
    store: QualityStore
    name: str
    kind: str = "measurement"
    totals: Totals = field(default_factory=Totals)
    rejected: list[RowError] = field(default_factory=list)
    _counters: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, items: Sequence[Item]) -> list[RowError]:
        """Store ``items``; returns the problems of the refused ones (also logged)."""
        groups: dict[str, list[tuple[int, Any]]] = {}
        with self._lock:
            for source, row in items:
                n = self._counters.get(source, 0) + 1
                self._counters[source] = n
                groups.setdefault(source, []).append((n, row))
            problems: list[RowError] = []
            for source, rows in groups.items():
                report = self.store.ingest_rows(self.kind, rows, source=source)
                self.totals.stored += report.accepted
                self.totals.duplicates += report.duplicates
                self.totals.corrected += report.corrected
                self.totals.rejected += len({e.line for e in report.rejected})
                problems.extend(report.rejected)
            for problem in problems:
                log.warning("%s: rejected %s", self.name, problem)
            self.rejected.extend(problems)
        if items:
            log.info("%s: %d readings: %s so far", self.name, len(items), self.totals)
        return problems

    def latest(self, equipment: str, element: str) -> datetime | None:
        """The newest stored reading of ``element`` on ``equipment`` (backfill start)."""
        name = self.store.dictionary.element(element).name
        return self.store.latest_measurement(equipment, name)
