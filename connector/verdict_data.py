"""Inspection verdicts as the SPC and the trace read them: by serial, order and batch.

The inspection tier writes every verdict with the serial, order and batch of the cell
it judged (from the frame's name, a sidecar or the MES context). A verdict that carries
only a serial is placed in its product's batch (``qdm_product``), the same way the
trace's `failed_batches` finds batches from serials, so the p-chart and the trace agree
on which batch a failed cell belongs to. Withdrawn verdicts are not read.

A batch's verdicts are found through indexes, never by reading every inspection: those
that name the batch, and those of the serials of the batch's products that name no
batch of their own (`in_batches`).

The p-chart charts the batches judged most recently (`CHART_BATCHES` unless asked for
up to `MAX_BATCHES`), each counted over all its verdicts. Counting every verdict and
keeping the newest batches afterwards cost 1.4 s on SQLite for a million verdicts and
grew with every frame a line judged (two lines at 60 fps store 70 million a year). So a
large store is walked instead: its verdicts are read newest first through the time
index, a step at a time, until that many batches have appeared (`newest_batches`), and
only those batches are counted, through the batch indexes; the chart then costs the
verdicts it shows. Walking costs several times more per verdict than one pass of the
whole table, so a store of up to `COUNT_ALL_ROWS` verdicts is still counted in one pass
(bench/verdicts.py measures both). So is the chart of an order of up to that many
verdicts, found through the order and serial indexes (`in_order`): walking the store
newest first for a rare order's few verdicts read every one.

I/O only: the chart is `qdspace.connector.spc_defects`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    and_,
    func,
    or_,
    select,
    union_all,
)

from qdspace.connector.qdm import Inspection, Product
from qdspace.connector.spc_defects import DefectSubgroup

#: batches a p-chart shows unless asked for more (the most recently judged)
CHART_BATCHES = 100
#: batches a p-chart may be asked for
MAX_BATCHES = 2_000
#: verdicts read a step while looking for the most recently judged batches
WALK_STEP = 5_000
#: stores of up to this many verdicts (by id span) are counted in one pass, not walked
COUNT_ALL_ROWS = 250_000
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


def in_batches(batch_ids: Collection[str]) -> ColumnElement[bool]:
    """A verdict is in one of ``batch_ids`` when its batch (`_batch`: its own, else its
    serial's product's) is, said as the ids of two index searches (`_own_or_products`).
    ``coalesce(batch, product's batch) IN (...)`` can use neither index and read every
    inspection (1.3 s on SQLite, 1.5 s on PostgreSQL for a million, bench/verdicts.py);
    so does an OR of the two searches on PostgreSQL, which cannot turn an OR holding a
    subquery into index scans."""
    return _own_or_products("batch_id", batch_ids)


def in_order(order_id: str) -> ColumnElement[bool]:
    """A verdict is of ``order_id`` when its order (its own, else its serial's product's)
    is, said as the ids of two index searches (`_own_or_products`), as a batch is."""
    return _own_or_products("order_id", (order_id,))


def _own_or_products(column: str, values: Collection[str]) -> ColumnElement[bool]:
    """A verdict whose ``column`` (its own, else its serial's product's) is one of
    ``values``, as the ids of two index searches: the verdicts that name one of them
    (the column's index), and those of the serials of the products that name one
    (``serial`` index) whose own value, if any, is the product's."""
    wanted = sorted(set(values))
    named, loose = _INSPECTION.alias("named"), _INSPECTION.alias("loose")
    made = _PRODUCT.alias("made")  # its own alias: never correlated with a query's join
    ids = union_all(
        select(named.c.id).where(named.c[column].in_(wanted)),
        # from the products to their serials' verdicts; the verdict's own value is a
        # filter there, not a search (``IS NULL`` would search the column's index for
        # every serial-only verdict)
        select(loose.c.id)
        .select_from(made.join(loose, loose.c.serial == made.c.serial))
        .where(
            made.c[column].in_(wanted),
            made.c.withdrawn_at.is_(None),
            func.coalesce(loose.c[column], made.c[column]) == made.c[column],
        ),
    )
    found: ColumnElement[bool] = _I.id.in_(ids)
    return found


def _where(query: Select[Any], f: VerdictFilter, *, searched: bool = False) -> Select[Any]:
    """``query`` over the live verdicts ``f`` picks, each joined to its product. With
    ``searched``, an order is found by index searches (`in_order`: the verdicts counted
    are then as many as the order has), else by each verdict's order as it is read (a
    listing of the newest reads verdicts newest first and stops at its limit)."""
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
        query = query.where(in_batches((f.batch_id,)))
    if f.order_id is not None and searched:
        query = query.where(in_order(f.order_id))
    elif f.order_id is not None:
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
    judged with neither a batch nor a serial whose product names one, since the first
    verdict of the oldest batch charted (all of them where no batch is)."""

    subgroups: list[DefectSubgroup]
    unbatched: int


#: the verdicts a p-chart counts: a cell judged good or bad (not unsure, not skipped)
_JUDGED = _I.verdict.in_(("pass", "fail"))


def walk_query(f: VerdictFilter, after: int | None = None) -> Select[Any]:
    """One step of `newest_batches`: the batch and id of the next `WALK_STEP` verdicts
    matching ``f``, newest first, past verdict ``after`` (older, or as old with a
    smaller id) where given. Batch and id only, and the database looks up ``after``'s
    time itself: turning each time into a datetime here cost more than reading the row."""
    walk = _where(select(_batch, _I.id), f).where(_JUDGED)
    if after is not None:
        at = select(_INSPECTION.c.inspected_at).where(_INSPECTION.c.id == after).scalar_subquery()
        walk = walk.where(_I.inspected_at <= at, or_(_I.inspected_at < at, _I.id < after))
    return walk.order_by(_I.inspected_at.desc(), _I.id.desc()).limit(WALK_STEP)


def newest_batches(conn: Connection, f: VerdictFilter, count: int) -> list[str]:
    """The ``count`` batches judged most recently (by verdicts matching ``f``), newest
    first: the verdicts are read newest first through the time index, `WALK_STEP` at a
    time (`walk_query`), until that many batches have appeared or the verdicts end."""
    seen: dict[str, None] = {}
    after: int | None = None
    while True:
        rows = conn.execute(walk_query(f, after)).all()
        for batch, _ in rows:
            if batch is not None and batch not in seen:
                seen[batch] = None
                if len(seen) == count:
                    return list(seen)
        if len(rows) < WALK_STEP:
            return list(seen)
        after = rows[-1][1]


def defects_query(
    f: VerdictFilter = VerdictFilter(),
    batch_ids: Collection[str] | None = None,
    *,
    searched: bool = False,
) -> Select[Any]:
    """What `batch_defects` counts, in one pass: per batch, verdict and defect class the
    cells and the first and last judged when; of ``batch_ids`` only, where given; an
    order found by index searches with ``searched`` (`_where`). (A query for the totals
    and one for the classes took a quarter longer than this one.)"""
    query = _where(
        select(
            _batch,
            _I.verdict,
            _I.defect_class,
            func.count(),
            func.min(_I.inspected_at),
            func.max(_I.inspected_at),
        ),
        f,
        searched=searched,
    ).where(_JUDGED)
    if batch_ids is not None:
        query = query.where(in_batches(batch_ids))
    return query.group_by(_batch, _I.verdict, _I.defect_class)


def unbatched_query(f: VerdictFilter = VerdictFilter(), *, searched: bool = False) -> Select[Any]:
    """The verdicts a p-chart counts that have no batch (`batch_defects`)."""
    query = _where(select(func.count()), f, searched=searched)
    return query.where(_JUDGED, _batch.is_(None))


@dataclass
class _Tally:
    judged: int
    failed: dict[str, int]
    first: datetime
    last: datetime


def _tallies(rows: Iterable[Sequence[Any]]) -> dict[str | None, _Tally]:
    """Per batch (None: the verdicts without one), the rows of `defects_query` added up."""
    found: dict[str | None, _Tally] = {}
    for batch, verdict, defect, count, first, last in rows:
        tally = found.get(batch)
        if tally is None:
            tally = found[batch] = _Tally(0, {}, first, last)
        tally.judged += int(count)
        tally.first, tally.last = min(tally.first, first), max(tally.last, last)
        if verdict == "fail":
            kind = defect or "unknown"
            tally.failed[kind] = tally.failed.get(kind, 0) + int(count)
    return found


def _id_span(conn: Connection) -> int:
    """How many verdicts the store holds at most: the span of their ids (two index
    look-ups; a count would read them all)."""
    # each its own statement: SQLite reads max or min from the index only when it is
    # the query's one aggregate (``max(id) - min(id)`` read every row: 160 ms a million)
    highest = conn.execute(select(func.max(_I.id))).scalar_one()
    lowest = conn.execute(select(func.min(_I.id))).scalar_one()
    return 0 if highest is None or lowest is None else int(highest) - int(lowest) + 1


def _small_order(conn: Connection, order_id: str) -> bool:
    """Whether the verdicts naming ``order_id`` are at most `COUNT_ALL_ROWS` (counted in
    ``ix_inspection_order``, stopping past that many)."""
    named = select(_INSPECTION.c.id).where(_INSPECTION.c.order_id == order_id)
    some = named.limit(COUNT_ALL_ROWS + 1).subquery()
    return int(conn.execute(select(func.count()).select_from(some)).scalar_one()) <= COUNT_ALL_ROWS


def batch_defects(
    engine: Engine, f: VerdictFilter = VerdictFilter(), batches: int = CHART_BATCHES
) -> BatchDefects:
    """The ``batches`` batches judged most recently, oldest first by when each was first
    judged, with per batch the cells judged, the cells failed (and per defect class) and
    the first judged when, counted over all their verdicts; the verdicts without a batch
    since the first of them."""
    if not 1 <= batches <= MAX_BATCHES:
        raise ValueError(f"batches: {batches} is not between 1 and {MAX_BATCHES}")
    with engine.connect() as conn:
        # one batch asked for is counted in one pass whatever the store's size: its
        # filter is already index searches (a walk would read every verdict newest
        # first to find its few: 235 ms on SQLite for a million); so is an order of no
        # more verdicts than a small store holds (a walk for a rare one read them all)
        counted_all = (
            f.batch_id is not None
            or _id_span(conn) <= COUNT_ALL_ROWS
            or (f.order_id is not None and _small_order(conn, f.order_id))
        )
        if counted_all:
            every = _tallies(conn.execute(defects_query(f, searched=True)))
            loose = every.pop(None, None)  # the verdicts without a batch, all of them
            newest = sorted(every, key=lambda b: (every[b].last, b))[-batches:]
            found = {b: every[b] for b in newest if b is not None}
        else:
            chosen = newest_batches(conn, f, batches)
            # a large order's chosen batches are filtered by order as they are read,
            # not intersected with every verdict of the order
            walked = _tallies(conn.execute(defects_query(f, chosen))) if chosen else {}
            found = {b: t for b, t in walked.items() if b is not None}
        if not found:
            if counted_all:  # every verdict was counted: those without a batch too
                return BatchDefects([], 0 if loose is None else loose.judged)
            return BatchDefects([], int(conn.execute(unbatched_query(f)).scalar_one()))
        start = min(t.first for t in found.values())
        if counted_all and (loose is None or loose.first >= start):
            unbatched = 0 if loose is None else loose.judged  # all since the chart's start
        else:
            since = start if f.since is None else max(start, f.since)
            left_out = unbatched_query(replace(f, since=since), searched=counted_all)
            unbatched = int(conn.execute(left_out).scalar_one())
    subgroups = [
        DefectSubgroup(
            batch,
            t.judged,
            sum(t.failed.values()),
            t.first,
            tuple(sorted(t.failed.items())),
        )
        for batch, t in sorted(found.items(), key=lambda bt: (bt[1].first, bt[0]))
    ]
    return BatchDefects(subgroups, unbatched)
