"""The traces an OEM's node started: their state and finished reports (``trace_report``).

One row per trace: ``RUNNING`` while its tiers are asked, then ``DONE`` with the report's
canonical bytes and their SHA-256 (what the ledger anchors as kind ``trace_report``), or
``FAILED`` with the reason. A report is written once; the bytes shown later are the bytes
stored, so a regulator's hash of them either matches the anchored leaf or shows a change.
The table comes with migration ``0007_trace``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    Index,
    LargeBinary,
    MetaData,
    Select,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)
from sqlmodel.sql.sqltypes import UTCDateTime

from qdspace.connector.contract_store.common import listing
from qdspace.connector.errors import ConnectorError

RUNNING, DONE, FAILED = "RUNNING", "DONE", "FAILED"

TRACE_METADATA = MetaData()
trace_table = Table(
    "trace_report",
    TRACE_METADATA,
    Column("trace_id", String(64), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime(), nullable=True),
    Column("selection", Text(), nullable=False),
    Column("report", LargeBinary(), nullable=True),
    Column("report_sha256", String(64), nullable=True),
    Column("error", Text(), nullable=True),
    # the listings read the newest traces by it, not every row with its report
    # (0022_trace_listing)
    Index("ix_trace_report_started", "started_at", "trace_id"),
)


class UnknownTrace(ConnectorError, LookupError):
    """No trace with that id here."""


class TraceNotFinished(ConnectorError):
    """The trace has no report (yet, or it failed)."""


@dataclass(frozen=True)
class StoredTrace:
    trace_id: str
    state: str
    started_at: datetime
    finished_at: datetime | None
    selection: dict[str, Any]
    report: bytes | None
    report_sha256: str | None
    error: str | None

    def report_json(self) -> dict[str, Any]:
        if self.report is None:
            raise TraceNotFinished(f"trace {self.trace_id} is {self.state}: no report")
        doc: dict[str, Any] = json.loads(self.report)
        return doc


def summary_query(
    *, limit: int | None = None, offset: int = 0, newest_first: bool = False
) -> Select[Any]:
    """What `TraceStore.summaries` reads: every column but the report, by
    ``ix_trace_report_started``."""
    t = trace_table
    columns = [c for c in t.c if c.name != "report"]
    order = (t.c.started_at, t.c.trace_id)
    return listing(select(*columns), order, limit=limit, offset=offset, newest_first=newest_first)


@dataclass(frozen=True)
class TraceSummary:
    """A trace as listings show it: a `StoredTrace` without its report."""

    trace_id: str
    state: str
    started_at: datetime
    finished_at: datetime | None
    selection: dict[str, Any]
    report_sha256: str | None
    error: str | None


class TraceStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def start(self, trace_id: str, selection: Mapping[str, Any], at: datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                insert(trace_table).values(
                    trace_id=trace_id,
                    state=RUNNING,
                    started_at=at,
                    selection=json.dumps(dict(selection), sort_keys=True),
                )
            )

    def finish(self, trace_id: str, report: bytes, at: datetime) -> str:
        digest = hashlib.sha256(report).hexdigest()
        self._move(trace_id, state=DONE, finished_at=at, report=report, report_sha256=digest)
        return digest

    def fail(self, trace_id: str, error: str, at: datetime) -> None:
        self._move(trace_id, state=FAILED, finished_at=at, error=error[:2000])

    def _move(self, trace_id: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(trace_table)
                .where(trace_table.c.trace_id == trace_id, trace_table.c.state == RUNNING)
                .values(**values)
            )

    def get(self, trace_id: str) -> StoredTrace:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(trace_table).where(trace_table.c.trace_id == trace_id[:64])
            ).first()
        if row is None:
            raise UnknownTrace(f"no trace {trace_id[:64]!r} here")
        m = row._mapping
        return StoredTrace(
            m["trace_id"],
            m["state"],
            m["started_at"],
            m["finished_at"],
            json.loads(m["selection"]),
            m["report"],
            m["report_sha256"],
            m["error"],
        )

    def summaries(
        self, *, limit: int | None = None, offset: int = 0, newest_first: bool = False
    ) -> list[TraceSummary]:
        """The traces started here in the order they were started (``newest_first``: the
        other way), ``limit`` from ``offset`` (None: all), without their reports: the
        listings (``GET /v1/traces``, the console's traces page) read these, not every
        trace with its report (a statement and the whole report each, for a page that
        shows the newest 100)."""
        statement = summary_query(limit=limit, offset=offset, newest_first=newest_first)
        with self.engine.connect() as conn:
            rows = conn.execute(statement).all()
        return [
            TraceSummary(
                r.trace_id,
                r.state,
                r.started_at,
                r.finished_at,
                json.loads(r.selection),
                r.report_sha256,
                r.error,
            )
            for r in rows
        ]
