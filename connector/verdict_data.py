"""Inspection verdicts as the SPC and the trace read them: by serial, order and batch.

The inspection tier writes every verdict with the serial, order and batch of the cell
it judged (from the frame's name, a sidecar or the MES context). A verdict that carries
only a serial is placed in its product's batch (``qdm_product``), the same way the
trace's `failed_batches` finds batches from serials, so the p-chart and the trace agree
on which batch a failed cell belongs to. Withdrawn verdicts are not read.

A batch's verdicts are found through indexes, never by reading every inspection: those
that name the batch, and those of the serials of the batch's products that name no
batch of their own (`in_batch`).

I/O only: the chart is `qdspace.connector.spc_defects`.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Engine, Select, and_, case, func, select, union_all

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


def in_batch(batch_id: str) -> ColumnElement[bool]:
    """A verdict is in ``batch_id`` when its batch (`_batch`: its own, else its serial's
    product's) is ``batch_id``, said as the ids of two index searches: the verdicts that
    name the batch, and those of the serials of the batch's products (``serial`` index)
    that name no other batch. ``coalesce(batch, product's batch) = ?`` can use neither
    index and read every inspection (1.3 s on SQLite, 1.5 s on PostgreSQL for a million,
    bench/verdicts.py); so does an OR of the two searches on PostgreSQL, which cannot
    turn an OR holding a subquery into index scans."""
    named, loose = _INSPECTION.alias("named"), _INSPECTION.alias("loose")
    products = select(_P.serial).where(_P.batch_id == batch_id, _P.withdrawn_at.is_(None))
    ids = union_all(
        select(named.c.id).where(named.c.batch_id == batch_id),
        select(loose.c.id).where(
            loose.c.serial.in_(products),
            func.coalesce(loose.c.batch_id, batch_id) == batch_id,
        ),
    )
    found: ColumnElement[bool] = _I.id.in_(ids)
    return found


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
        query = query.where(in_batch(f.batch_id))
    if f.order_id is not None:
        query = query.where(func.coalesce(_I.order_id, _P.order_id) == f.order_id)
    if f.serial is not None:
        query = query.where(_I.serial == f.serial)
    return query


def verdicts_query(f: VerdictFilter = VerdictFilter(), limit: int = 100) -> Select[Any]:
    """What `read_verdicts` runs: the newest ``limit`` verdicts matching ``f``."""
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
    return query.order_by(_I.inspected_at.desc(), _I.id.desc()).limit(
        max(1, min(limit, MAX_VERDICTS))
    )


def read_verdicts(
    engine: Engine, f: VerdictFilter = VerdictFilter(), limit: int = 100
) -> list[VerdictRow]:
    """The newest ``limit`` verdicts matching ``f`` (newest first), each with its batch."""
    with engine.connect() as conn:
        return [VerdictRow(*row) for row in conn.execute(verdicts_query(f, limit))]


@dataclass(frozen=True)
class BatchDefects:
    """The p-chart's subgroups (oldest batch first) and the verdicts left out of them:
    judged with neither a batch nor a serial whose product names one."""

    subgroups: list[DefectSubgroup]
    unbatched: int


def defect_queries(f: VerdictFilter = VerdictFilter()) -> tuple[Select[Any], Select[Any]]:
    """What `batch_defects` runs: per batch the cells judged, failed and first judged when;
    per batch and defect class the failed cells."""
    failed = case((_I.verdict == "fail", 1), else_=0)
    totals = _where(
        select(_batch, func.count(), func.sum(failed), func.min(_I.inspected_at)), f
    ).where(_I.verdict.in_(("pass", "fail")))
    classes = (
        _where(select(_batch, _I.defect_class, func.count()), f)
        .where(_I.verdict == "fail")
        .group_by(_batch, _I.defect_class)
    )
    return totals.group_by(_batch), classes


def batch_defects(
    engine: Engine, f: VerdictFilter = VerdictFilter(), max_batches: int = MAX_BATCHES
) -> BatchDefects:
    """Per batch: cells judged, cells failed (and per defect class), first judged when."""
    grouped, classes = defect_queries(f)
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
