"""Inspection verdicts as the SPC and the trace read them: by serial, order and batch.

The inspection tier writes every verdict with the serial, order and batch of the cell
it judged (from the frame's name, a sidecar or the MES context). A verdict that carries
only a serial is placed in its product's batch (``qdm_product``), the same way the
trace's `failed_batches` finds batches from serials, so the p-chart and the trace agree
on which batch a failed cell belongs to. Withdrawn verdicts are not read.

I/O only: the chart is `qdspace.connector.spc_defects`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Select, and_, case, func, select

from qdspace.connector.qdm import Inspection, Product
from qdspace.connector.spc_defects import DefectSubgroup

#: batches a p-chart reads at most (the newest)
MAX_BATCHES = 2_000
#: verdicts a listing returns at most
MAX_VERDICTS = 10_000

_I = Inspection.__table__.c  # type: ignore[attr-defined]
_P = Product.__table__.c  # type: ignore[attr-defined]
_PRODUCT = Product.__table__  # type: ignore[attr-defined]
_INSPECTION = Inspection.__table__  # type: ignore[attr-defined]
#: a verdict's batch: its own, else its serial's product's
_batch = func.coalesce(_I.batch_id, _P.batch_id)


@dataclass(frozen=True)
class VerdictFilter:
    """Which verdicts: a time window [since, until), a station, a batch, an order, a serial."""

    since: datetime | None = None
    until: datetime | None = None
    station: str | None = None
    batch_id: str | None = None
    order_id: str | None = None
    serial: str | None = None


@dataclass(frozen=True)
class VerdictRow:
    inspection_id: str
    station: str
    inspected_at: datetime
    verdict: str
    defect_class: str | None
    score: float | None
    model_version: str | None
    serial: str | None
    order_id: str | None
    batch_id: str | None


def _where(query: Select[Any], f: VerdictFilter) -> Select[Any]:
    query = query.select_from(
        _INSPECTION.outerjoin(_PRODUCT, and_(_P.serial == _I.serial, _P.withdrawn_at.is_(None)))
    ).where(_I.withdrawn_at.is_(None))
    if f.since is not None:
        query = query.where(_I.inspected_at >= f.since)
    if f.until is not None:
        query = query.where(_I.inspected_at < f.until)
    if f.station is not None:
        query = query.where(_I.station == f.station)
    if f.batch_id is not None:
        query = query.where(_batch == f.batch_id)
    if f.order_id is not None:
        query = query.where(func.coalesce(_I.order_id, _P.order_id) == f.order_id)
    if f.serial is not None:
        query = query.where(_I.serial == f.serial)
    return query


def read_verdicts(
    engine: Engine, f: VerdictFilter = VerdictFilter(), limit: int = 100
) -> list[VerdictRow]:
    """The newest ``limit`` verdicts matching ``f`` (newest first), each with its batch."""
    query = _where(
        select(
            _I.inspection_id,
            _I.station,
            _I.inspected_at,
            _I.verdict,
            _I.defect_class,
            _I.score,
            _I.model_version,
            _I.serial,
            func.coalesce(_I.order_id, _P.order_id),
            _batch,
        ),
        f,
    )
    query = query.order_by(_I.inspected_at.desc(), _I.id.desc()).limit(
        max(1, min(limit, MAX_VERDICTS))
    )
    with engine.connect() as conn:
        return [VerdictRow(*row) for row in conn.execute(query)]


@dataclass(frozen=True)
class BatchDefects:
    """The p-chart's subgroups (oldest batch first) and the verdicts left out of them:
    judged with neither a batch nor a serial whose product names one."""

    subgroups: list[DefectSubgroup]
    unbatched: int


def batch_defects(
    engine: Engine, f: VerdictFilter = VerdictFilter(), max_batches: int = MAX_BATCHES
) -> BatchDefects:
    """Per batch: cells judged, cells failed (and per defect class), first judged when."""
    failed = case((_I.verdict == "fail", 1), else_=0)
    totals = _where(
        select(_batch, func.count(), func.sum(failed), func.min(_I.inspected_at)), f
    ).where(_I.verdict.in_(("pass", "fail")))
    grouped = totals.group_by(_batch)
    classes = (
        _where(select(_batch, _I.defect_class, func.count()), f)
        .where(_I.verdict == "fail")
        .group_by(_batch, _I.defect_class)
    )
    with engine.connect() as conn:
        rows = conn.execute(grouped).all()
        by_class: dict[str, dict[str, int]] = defaultdict(dict)
        for batch, defect, count in conn.execute(classes):
            if batch is not None:
                by_class[batch][defect or "unknown"] = int(count)
    unbatched = sum(int(n) for batch, n, _, _ in rows if batch is None)
    batched = sorted((r for r in rows if r[0] is not None), key=lambda r: (r[3], r[0]))
    subgroups = [
        DefectSubgroup(
            str(batch),
            int(n),
            int(d or 0),
            first,
            tuple(sorted(by_class.get(batch, {}).items())),
        )
        for batch, n, d, first in batched[-max_batches:]
    ]
    return BatchDefects(subgroups, unbatched)
