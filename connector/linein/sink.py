"""The one ingest call every line connector makes, with the counts and reports it logs.

A connector collects what arrived as ``(source, row)`` pairs (``row`` may be a
``(field, reason)`` pair that mapping refused) and calls :meth:`MeasurementSink.put`,
which stores them through :meth:`QualityStore.ingest_rows` (validation through the
dictionary, one transaction per source and ``LINE_BATCH`` readings, ``ON CONFLICT DO
NOTHING`` on the natural key) and only then returns: an MQTT message is acknowledged, a
file moved, after it.
Every refused reading is logged as ``source:n: field: reason`` and the newest
``KEEP_REJECTED`` are kept in :attr:`MeasurementSink.rejected` for status and tests.

Why a line source only adds readings (``corrections=False``): a reading that arrives
again with other content under a stored natural key (equipment, parameter, time) was,
like a file's row, stored as a correction, a new version of the record. But whoever may
publish to a topic is not whoever may rewrite the plant's history: a publisher (a tool
gone wrong, anything with the broker's password) could overwrite any stored reading by
sending its key with another value, and a retained message the broker delivers again
after an engineer withdrew a reading brought it back. So a line's reading that would
change a stored record is refused, with the field that differs, and the record stays as
it is; a correction comes from a file or the API, where a person answers for it.

Why bounded: a connector runs for months, and a line tool gone wrong sends the same bad
reading for days, to as many topics as it likes. So the sink keeps counts, not
histories: the refused readings it keeps are the newest few, each reason cut short
(a 60 kB value quoted whole in every reason was the audit's case), and it numbers the
readings of at most ``MAX_SOURCES`` sources apart (the rest share one count).

Why a reading that *breaks* the ingest is refused too: a reading no validation rule
foresaw (an exception the store did not turn into a refusal) must not end the
listener, or it ends again after every restart (the broker redelivers the message, the
file stays in the folder). The batch is then stored reading by reading and the one that
raises is refused with the exception as its reason; only a :class:`StorageError` (the
database itself) goes up, so that nothing is acknowledged and it is all retried.

Why the sink cuts a source's readings into calls of ``LINE_BATCH`` itself, each one
transaction: so that every reading is counted once, as stored, duplicate or refused. A
call that raises has stored nothing (its one transaction rolled back), so its readings
stored one by one on the retry are counted as what they are. Handed to the
store whole (a Sparkplug burst can bring far more than 5,000 readings of one topic),
the store commits them 5,000 at a time: a fault in a later batch came up after the
earlier ones were committed, and the retry reading by reading counted every one of
those as a duplicate of itself (5,002 readings arrived, 1 stored, 5,000 duplicates).
A retry is also bounded by it: ``LINE_BATCH`` transactions at most, not one per
reading of the whole burst.

Why the sink keeps each source's newest reading time stored (`MeasurementSink.newest`):
the OPC UA backfill after an outage starts after what *this* connector stored of a node
(`opcua_marks`); the store's newest reading of the parameter may be another source's.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from qdspace.connector.errors import StorageError
from qdspace.connector.ingest import BadLine, IngestReport, RowError
from qdspace.connector.storage import QualityStore

log = logging.getLogger("qdspace.connector.linein")

Item = tuple[str, "dict[str, Any] | BadLine"]

#: refused readings kept (the newest) for status and tests; the totals count them all
KEEP_REJECTED = 1000
#: a kept reason is cut to this many characters
REASON_MAX = 200
#: readings of one source stored per call of the store, in one transaction (its default)
LINE_BATCH = 5000
#: sources (topics, nodes) numbered apart at most; the rest share the count of OTHER
MAX_SOURCES = 1000
OTHER = "(other sources)"


def cut(problem: RowError) -> RowError:
    """``problem`` with its reason cut to ``REASON_MAX`` characters."""
    if len(problem.reason) <= REASON_MAX:
        return problem
    return replace(problem, reason=problem.reason[: REASON_MAX - 3] + "...")


@dataclass
class Totals:
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0

    def __str__(self) -> str:
        return f"{self.stored} stored, {self.duplicates} duplicates, {self.rejected} rejected"


@dataclass
class MeasurementSink:
    store: QualityStore
    name: str
    kind: str = "measurement"
    totals: Totals = field(default_factory=Totals)
    rejected: deque[RowError] = field(default_factory=lambda: deque(maxlen=KEEP_REJECTED))
    #: per source (``MAX_SOURCES`` at most): the newest time of a reading it delivered
    #: that is stored (stored now, or found stored: a duplicate)
    newest: dict[str, datetime] = field(default_factory=dict)
    _counters: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, items: Sequence[Item], more_refused: int = 0) -> list[RowError]:
        """Store ``items``; returns the problems of the refused ones (also logged).
        ``more_refused``: readings refused beyond one per refusal line in ``items`` (a
        Sparkplug B line may stand for thousands of metrics), counted once the items are
        stored (a store that fails stores nothing of them, and the broker sends them again)."""
        groups: dict[str, list[tuple[int, Any]]] = {}
        with self._lock:
            for source, row in items:
                groups.setdefault(source, []).append((self._number(source), row))
            problems: list[RowError] = []
            for source, rows in groups.items():
                for start in range(0, len(rows), LINE_BATCH):
                    chunk = rows[start : start + LINE_BATCH]
                    report = self._ingest(source, chunk)
                    problems.extend(self._count(report))
                    self._advance(source, chunk, report)
            self.totals.rejected += more_refused
        if items:
            log.info("%s: %d readings: %s so far", self.name, len(items), self.totals)
        return problems

    def _count(self, report: IngestReport) -> list[RowError]:
        """Add a committed call's report to the totals; its refusals, logged and kept."""
        self.totals.stored += report.accepted
        self.totals.duplicates += report.duplicates
        self.totals.rejected += report.refused_lines
        problems = [cut(p) for p in report.rejected]
        for problem in problems:
            log.warning("%s: rejected %s", self.name, problem)
        self.rejected.extend(problems)
        return problems

    def _advance(self, source: str, rows: list[tuple[int, Any]], report: IngestReport) -> None:
        """Move ``newest[source]`` to the newest reading of ``rows`` not refused (none
        where some refusals were not kept: which ones is not known then)."""
        if report.more or (source not in self.newest and len(self.newest) >= MAX_SOURCES):
            return
        refused = {p.line for p in report.rejected}
        times = [
            at
            for line, row in rows
            if line not in refused
            and isinstance(row, dict)
            and isinstance(at := row.get("measured_at"), datetime)
        ]
        if times and (source not in self.newest or max(times) > self.newest[source]):
            self.newest[source] = max(times)

    def _number(self, source: str) -> int:
        """The next reading number of ``source`` (shared with others past MAX_SOURCES)."""
        key = source if source in self._counters or len(self._counters) < MAX_SOURCES else OTHER
        n = self._counters.get(key, 0) + 1
        self._counters[key] = n
        return n

    def _ingest(self, source: str, rows: list[tuple[int, Any]]) -> IngestReport:
        """Up to ``LINE_BATCH`` readings of one source in one transaction; where that
        raises (and so stored none), one by one: the one that breaks it is refused."""
        try:
            return self.store.ingest_rows(
                self.kind, rows, source=source, batch_size=LINE_BATCH, corrections=False
            )
        except StorageError:
            raise
        except Exception:
            log.debug("%s: ingest of %s failed; reading by reading", self.name, source)
        report = IngestReport(kind=self.kind, source=source)
        for line, row in rows:
            try:
                one = self.store.ingest_rows(
                    self.kind, [(line, row)], source=source, corrections=False
                )
            except StorageError:
                raise
            except Exception as exc:
                reason = f"could not be stored: {type(exc).__name__}: {exc}"
                report.reject([RowError(source, line, "-", reason)])
                continue
            report.accepted += one.accepted
            report.duplicates += one.duplicates
            report.reject(one.rejected)
        return report

    def latest(
        self, equipment: str, element: str, not_after: datetime | None = None
    ) -> datetime | None:
        """The newest stored reading of ``element`` on ``equipment`` (backfill start), of
        those dated ``not_after`` at the latest."""
        name = self.store.dictionary.element(element).name
        return self.store.latest_measurement(equipment, name, not_after)
