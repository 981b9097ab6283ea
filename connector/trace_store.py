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
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)
from sqlmodel.sql.sqltypes import UTCDateTime

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

    def all(self) -> list[StoredTrace]:
        with self.engine.connect() as conn:
            ids = (
                conn.execute(select(trace_table.c.trace_id).order_by(trace_table.c.started_at))
                .scalars()
                .all()
            )
        return [self.get(i) for i in ids]
