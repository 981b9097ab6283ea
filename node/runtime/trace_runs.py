"""The OEM's side of a root-cause trace: start it, follow it, read its report.

`TraceRuns.start` resolves what the operator named (a module batch, serials, or failed
inspections in a time window) to the implicated batches in the node's own QDM, records
the trace as running and returns its id at once; the trace itself runs as a task: our
own part and our producers' answers (`TraceRoom.tier`, the same computation every tier
does), ranked into a report (`connector.trace_report`), stored with its SHA-256 and
queued for anchoring as ledger kind ``trace_report`` (a no-op without a chain), so a
regulator can later check that the report was not changed. `run` does the same and
waits (the bench and the tests that want the report in hand). Ranking and encoding run
in a worker thread: a report over many tiers takes a while, and the event loop serves
the node's calls meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime

from qdspace.connector.trace import MAX_BATCHES, TierAnswer, TraceError, check_id
from qdspace.connector.trace_data import failed_batches
from qdspace.connector.trace_report import TraceReport, build_report, report_bytes
from qdspace.connector.trace_seal import TraceNonce
from qdspace.connector.trace_store import DONE, StoredTrace, TraceStore
from qdspace.node.runtime.trace_producer import TraceRoom

logger = logging.getLogger("node.trace")

#: the ledger leaf kind of a finished report
REPORT_KIND = "trace_report"
#: how long the tiers below the OEM may take, all together
TRACE_DEADLINE_S = 20.0
MAX_SERIALS = 2_000


@dataclass(frozen=True)
class Selection:
    """What a trace starts from: one of a batch, serials or a time window."""

    batch: str | None = None
    serials: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    defect_class: str | None = None

    def check(self) -> None:
        given = [self.batch is not None, bool(self.serials), self.since is not None]
        if sum(given) != 1:
            raise TraceError("a trace starts from exactly one of: a batch, serials, a window")
        if self.batch is not None:
            check_id(self.batch, "batch")
        if len(self.serials) > MAX_SERIALS:
            raise TraceError(f"a trace starts from at most {MAX_SERIALS} serials")
        for s in self.serials:
            check_id(s, "serial")
        if self.since is not None and (self.until is None or self.until <= self.since):
            raise TraceError("a window needs an end after its start")

    def to_json(self) -> dict[str, object]:
        doc = {k: v for k, v in asdict(self).items() if v not in (None, ())}
        for k in ("since", "until"):
            if k in doc:
                doc[k] = doc[k].isoformat()
        if "serials" in doc:
            doc["serials"] = list(self.serials)
        return doc


def _report(
    trace_id: str,
    selection: Mapping[str, object],
    root: TierAnswer,
    at: datetime,
    finished: datetime,
    timings: Mapping[str, float],
) -> tuple[TraceReport, bytes]:
    report = build_report(trace_id, selection, root, at, finished, timings)
    return report, report_bytes(report)


class TraceRuns:
    def __init__(
        self,
        room: TraceRoom,
        store: TraceStore,
        now: Callable[[], datetime],
        record: Callable[[str, str, bytes], None],
    ) -> None:
        self.room = room
        self.store = store
        self.now = now
        self.record = record
        self._tasks: dict[str, asyncio.Task[StoredTrace]] = {}

    def _resolve(self, selection: Selection) -> frozenset[str]:
        selection.check()
        ids = failed_batches(
            self.room.engine,
            batch_id=selection.batch,
            serials=selection.serials,
            since=selection.since,
            until=selection.until,
            defect_class=selection.defect_class,
            limit=MAX_BATCHES,
        )
        if not ids:
            raise TraceError("no batch here matches what the trace was started from")
        return ids

    async def start(self, selection: Selection) -> str:
        """Record a trace and run it in the background; its id."""
        started = time.perf_counter()
        ids = await asyncio.to_thread(self._resolve, selection)
        trace_id = f"tr-{uuid.uuid4().hex[:20]}"
        at = self.now()
        await asyncio.to_thread(self.store.start, trace_id, selection.to_json(), at)
        resolve_ms = (time.perf_counter() - started) * 1000
        task = asyncio.create_task(self._run(trace_id, ids, selection, at, resolve_ms, started))
        self._tasks[trace_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(trace_id, None))
        return trace_id

    async def run(self, selection: Selection) -> StoredTrace:
        """Start a trace and wait for its report."""
        trace_id = await self.start(selection)
        task = self._tasks.get(trace_id)
        return await task if task is not None else self.store.get(trace_id)

    async def _run(
        self,
        trace_id: str,
        ids: frozenset[str],
        selection: Selection,
        at: datetime,
        resolve_ms: float,
        started: float,
    ) -> StoredTrace:
        try:
            # the report's id is the one every tier signs its level under, with a fresh nonce
            nonce = TraceNonce(trace_id, secrets.token_hex(16))
            root = await self.room.tier(ids, (self.room.me,), 0, TRACE_DEADLINE_S, nonce)
            timings: dict[str, float] = {"resolve": resolve_ms}
            for depth, tier in root.walk():
                timings[f"tier{depth}:{tier.member}"] = tier.elapsed_ms
            timings["total"] = (time.perf_counter() - started) * 1000
            report, data = await asyncio.to_thread(
                _report, trace_id, selection.to_json(), root, at, self.now(), timings
            )
            digest = await asyncio.to_thread(self.store.finish, trace_id, data, self.now())
            self.record(REPORT_KIND, trace_id, data)
            logger.info("trace %s: %d causes, report %s", trace_id, len(report.causes), digest)
        except Exception as exc:  # the trace fails, the node does not
            logger.exception("trace %s failed", trace_id)
            await asyncio.to_thread(
                self.store.fail, trace_id, str(exc) or type(exc).__name__, self.now()
            )
        return await asyncio.to_thread(self.store.get, trace_id)

    def get(self, trace_id: str) -> StoredTrace:
        return self.store.get(trace_id)

    def report_record(self, trace_id: str) -> bytes | None:
        """The stored bytes of a finished report (for the regulator's proof route)."""
        try:
            stored = self.store.get(trace_id)
        except LookupError:
            return None
        return stored.report if stored.state == DONE else None

    def timings(self, stored: StoredTrace) -> Mapping[str, float]:
        doc = stored.report_json()
        timings: Mapping[str, float] = doc.get("timings_ms", {})
        return timings
