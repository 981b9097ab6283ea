"""What a member reads from its own QDM to answer for its part of a trace.

For the implicated batches this finds comparable ones (the same kind, made here, the
nearest in time), reads their process readings, the environment readings of the line
while each batch was made, the operators' shifts and the equipment that made them, and
the calibration certificates and anchoring state that make up each parameter's
`DataConfidence`. It also walks the member's own genealogy down from the implicated
batches to the batches it bought, visiting each batch once (a cycle recorded in the
genealogy ends there) and no more than `MAX_WALK` batches.

I/O only: the analysis is `connector.rootcause` and `connector.confidence`. Withdrawn
records are not read.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select

from qdspace.connector.confidence import CalibrationBook, Certificate, confidence_by_key
from qdspace.connector.genealogy import BatchInfo
from qdspace.connector.qdm import (
    Batch,
    CalibrationCertificate,
    EnvironmentReading,
    GenealogyEdge,
    Inspection,
    OperatorLog,
    ProcessMeasurement,
    Product,
)
from qdspace.connector.rootcause import (
    DataConfidence,
    Finding,
    Observation,
    Reading,
    local_findings,
)
from qdspace.connector.trace import MAX_FINDINGS, MAX_LINKS, MAX_PARENTS, BatchLink, TierAnswer

#: comparable batches read at most (the nearest in time to the implicated ones)
COMPARABLE_LIMIT = 60
#: batches the genealogy walk visits at most
MAX_WALK = 2_000
_CHUNK = 500

_BATCH = Batch.__table__  # type: ignore[attr-defined]
_EDGE = GenealogyEdge.__table__  # type: ignore[attr-defined]
_MEAS = ProcessMeasurement.__table__  # type: ignore[attr-defined]
_ENV = EnvironmentReading.__table__  # type: ignore[attr-defined]
_OPS = OperatorLog.__table__  # type: ignore[attr-defined]
_CAL = CalibrationCertificate.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class LocalEvidence:
    readings: list[Reading]
    observations: list[Observation]
    confidence: dict[str, DataConfidence]


def _chunks(ids: Iterable[str]) -> Iterable[list[str]]:
    items = sorted(ids)
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def _info(row: Mapping[str, object]) -> BatchInfo:
    return BatchInfo(
        str(row["batch_id"]),
        str(row["material"]),
        str(row["kind"]),
        str(row["producer"]),
        float(row["quantity"]),  # type: ignore[arg-type]
    )


def batches(engine: Engine, ids: Iterable[str]) -> dict[str, Mapping[str, object]]:
    """The live batch rows of `ids` that exist here."""
    out: dict[str, Mapping[str, object]] = {}
    with engine.connect() as conn:
        for chunk in _chunks(ids):
            rows = conn.execute(
                select(_BATCH).where(_BATCH.c.batch_id.in_(chunk), _BATCH.c.withdrawn_at.is_(None))
            )
            out.update({r.batch_id: r._mapping for r in rows})
    return out


def comparable_batches(
    engine: Engine, implicated: Mapping[str, Mapping[str, object]], producer: str
) -> frozenset[str]:
    """Batches of the implicated ones' kinds made by `producer`, not implicated, the
    `COMPARABLE_LIMIT` nearest to them in time."""
    kinds = {str(r["kind"]) for r in implicated.values()}
    times = sorted(r["made_at"] for r in implicated.values())  # type: ignore[type-var]
    if not times:
        return frozenset()
    center: datetime = times[len(times) // 2]  # type: ignore[assignment]
    with engine.connect() as conn:
        rows = conn.execute(
            select(_BATCH.c.batch_id, _BATCH.c.made_at).where(
                _BATCH.c.kind.in_(sorted(kinds)),
                _BATCH.c.producer == producer,
                _BATCH.c.withdrawn_at.is_(None),
            )
        ).all()
    others = [(abs((at - center).total_seconds()), b) for b, at in rows if b not in implicated]
    others.sort()
    return frozenset(b for _, b in others[:COMPARABLE_LIMIT])


def shift_of(at: datetime) -> str:
    """The shift a time falls in (06-14 early, 14-22 late, 22-06 night, UTC)."""
    hour = at.hour
    return "early" if 6 <= hour < 14 else "late" if 14 <= hour < 22 else "night"


def _measurements(
    engine: Engine, ids: frozenset[str]
) -> tuple[
    list[Reading], dict[str, str], dict[str, tuple[datetime, datetime]], set[tuple[str, str]]
]:
    readings: list[Reading] = []
    equipment_of: dict[str, str] = {}
    spans: dict[str, tuple[datetime, datetime]] = {}
    tools: set[tuple[str, str]] = set()
    m = _MEAS.c
    with engine.connect() as conn:
        for chunk in _chunks(ids):
            rows = conn.execute(
                select(m.id, m.equipment, m.parameter, m.measured_at, m.value, m.batch_id).where(
                    m.batch_id.in_(chunk), m.withdrawn_at.is_(None)
                )
            )
            for rid, equipment, parameter, at, value, batch_id in rows:
                key = f"{equipment}/{parameter}"
                readings.append(Reading(key, batch_id, at, value, f"qdm_measurement:{rid}"))
                equipment_of[key] = equipment
                tools.add((batch_id, equipment))
                low, high = spans.get(batch_id, (at, at))
                spans[batch_id] = (min(low, at), max(high, at))
    return readings, equipment_of, spans, tools


def _environment(
    engine: Engine, spans: Mapping[str, tuple[datetime, datetime]]
) -> tuple[list[Reading], dict[str, str]]:
    """Environment readings attributed to the batch being made at that time."""
    if not spans:
        return [], {}
    first = min(s for s, _ in spans.values())
    last = max(e for _, e in spans.values())
    e = _ENV.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(e.id, e.location, e.measured_at, e.temperature_c, e.humidity_rh)
            .where(e.measured_at >= first, e.measured_at <= last, e.withdrawn_at.is_(None))
            .order_by(e.measured_at)
        ).all()
    times = [r.measured_at for r in rows]
    out: list[Reading] = []
    sensors: dict[str, str] = {}
    for batch_id, (start, end) in spans.items():
        for r in rows[bisect_left(times, start) : bisect_right(times, end)]:
            for name, value in (("temperature", r.temperature_c), ("humidity", r.humidity_rh)):
                if value is not None:
                    key = f"{r.location}/{name}"
                    sensors[key] = r.location
                    out.append(
                        Reading(key, batch_id, r.measured_at, value, f"qdm_environment:{r.id}")
                    )
    return out, sensors


def _operators(engine: Engine, ids: frozenset[str]) -> list[Observation]:
    o = _OPS.c
    out: list[Observation] = []
    with engine.connect() as conn:
        for chunk in _chunks(ids):
            rows = conn.execute(
                select(o.id, o.operator_id, o.logged_at, o.batch_id).where(
                    o.batch_id.in_(chunk), o.withdrawn_at.is_(None)
                )
            )
            for rid, operator, at, batch_id in rows:
                evidence = f"qdm_operator_log:{rid}"
                out.append(Observation("operator", batch_id, operator, evidence))
                out.append(Observation("shift", batch_id, shift_of(at), evidence))
    return out


def certificates(engine: Engine, equipment: Iterable[str]) -> list[Certificate]:
    c = _CAL.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(c.certificate_id, c.equipment, c.valid_from, c.valid_until, c.result).where(
                c.equipment.in_(sorted(set(equipment))), c.withdrawn_at.is_(None)
            )
        ).all()
    return [Certificate(*r) for r in rows]


def read_evidence(
    engine: Engine, ids: frozenset[str], anchored_through: Mapping[str, int]
) -> LocalEvidence:
    """Readings, observations and per-key confidence over the batches `ids`."""
    readings, equipment_of, spans, tools = _measurements(engine, ids)
    environment, sensors = _environment(engine, spans)
    observations = _operators(engine, ids)
    observations += [
        Observation("equipment", b, tool, f"equipment:{tool}") for b, tool in sorted(tools)
    ]
    every = readings + environment
    book = CalibrationBook(certificates(engine, {*equipment_of.values(), *sensors.values()}))
    confidence = confidence_by_key(every, ids, {**equipment_of, **sensors}, book, anchored_through)
    return LocalEvidence(every, observations, confidence)


def _within_bounds(parents: list[BatchInfo], me: str) -> list[BatchInfo]:
    """A link's parents as its customer takes them: at most `MAX_PARENTS`, the bought
    ones first (they name the producers the trace goes on to)."""
    if len(parents) <= MAX_PARENTS:
        return parents
    bought = [p for p in parents if p.producer not in (me, "unknown")]
    rest = [p for p in parents if p.producer in (me, "unknown")]
    return (bought + rest)[:MAX_PARENTS]


def walk_genealogy(
    engine: Engine, roots: Sequence[str], me: str
) -> tuple[list[BatchLink], dict[str, set[str]]]:
    """Links of the batches made here, from `roots` down; and the bought batches the
    walk reached, by producer (each batch visited once; at most `MAX_WALK`).

    The answer stays within what its customer accepts (`connector.trace.check_answer`):
    at most `MAX_LINKS` links, nearest first, each with at most `MAX_PARENTS` parents.
    Beyond them a customer refused the whole answer, and an honest supplier with a
    large genealogy showed as a missing tier."""
    links: list[BatchLink] = []
    bought: dict[str, set[str]] = defaultdict(set)
    seen: set[str] = set(roots)
    frontier = list(roots)
    with engine.connect() as conn:
        while frontier and len(seen) <= MAX_WALK and len(links) < MAX_LINKS:
            edges: dict[str, list[str]] = defaultdict(list)
            for chunk in _chunks(frontier):
                for child, parent in conn.execute(
                    select(_EDGE.c.child_batch_id, _EDGE.c.parent_batch_id).where(
                        _EDGE.c.child_batch_id.in_(chunk), _EDGE.c.withdrawn_at.is_(None)
                    )
                ):
                    edges[child].append(parent)
            rows = batches(engine, {*frontier, *(p for ps in edges.values() for p in ps)})
            nxt: list[str] = []
            for child in frontier:
                if child not in rows or len(links) >= MAX_LINKS:
                    continue
                parents = sorted(set(edges.get(child, [])))
                infos = tuple(
                    _within_bounds(
                        [
                            _info(rows[p]) if p in rows else BatchInfo(p, "", "", "unknown", 0.0)
                            for p in parents
                        ],
                        me,
                    )
                )
                links.append(BatchLink(_info(rows[child]), infos))
                for p in infos:
                    if p.batch_id in seen:
                        continue
                    seen.add(p.batch_id)
                    if p.producer == me:
                        nxt.append(p.batch_id)
                    elif p.producer != "unknown":
                        bought[p.producer].add(p.batch_id)
            frontier = nxt
    return links, dict(bought)


def failed_batches(
    engine: Engine,
    *,
    batch_id: str | None = None,
    serials: Sequence[str] = (),
    since: datetime | None = None,
    until: datetime | None = None,
    defect_class: str | None = None,
    limit: int = 500,
) -> frozenset[str]:
    """The batches a trace starts from, in the OEM's own QDM: one batch, the batches of
    some serials, or the batches with failed inspections in a time window (optionally of
    one defect class); at most `limit`. Unknown ids simply find nothing."""
    found: set[str] = set()
    with engine.connect() as conn:
        if batch_id is not None:
            found |= set(
                conn.execute(
                    select(_BATCH.c.batch_id).where(
                        _BATCH.c.batch_id == batch_id, _BATCH.c.withdrawn_at.is_(None)
                    )
                ).scalars()
            )
        if serials:
            product = Product.__table__  # type: ignore[attr-defined]
            for chunk in _chunks(serials):
                found |= {
                    b
                    for b in conn.execute(
                        select(product.c.batch_id).where(product.c.serial.in_(chunk))
                    ).scalars()
                    if b
                }
        if since is not None and until is not None:
            i = Inspection.__table__.c  # type: ignore[attr-defined]
            query = select(i.batch_id, i.serial).where(
                i.inspected_at >= since,
                i.inspected_at < until,
                i.verdict == "fail",
                i.withdrawn_at.is_(None),
            )
            if defect_class is not None:
                query = query.where(i.defect_class == defect_class)
            rows = conn.execute(query).all()
            found |= {b for b, _ in rows if b}
            loose = [s for b, s in rows if not b and s]
            if loose:
                found |= failed_batches(engine, serials=loose[:limit], limit=limit)
    return frozenset(sorted(found)[:limit])


def tier_genealogy(
    engine: Engine, ids: frozenset[str], me: str
) -> tuple[dict[str, Mapping[str, object]], list[BatchLink], dict[str, set[str]]]:
    """The first, quick part of a member's answer: which of `ids` exist here, their
    genealogy, and the batches bought, by producer (whom to ask in turn)."""
    rows = batches(engine, ids)
    links, bought = walk_genealogy(engine, sorted(rows), me)
    return rows, links, bought


def tier_findings(
    engine: Engine, rows: Mapping[str, Mapping[str, object]], me: str, anchored: Mapping[str, int]
) -> tuple[int, list[Finding]]:
    """The second part: the findings over the implicated batches `rows` against the
    comparable ones (how many were compared, the findings ranked)."""
    comparable = comparable_batches(engine, rows, me)
    evidence = read_evidence(engine, frozenset(rows) | comparable, anchored)
    findings = (
        local_findings(
            evidence.readings,
            frozenset(rows),
            comparable,
            observations=evidence.observations,
            confidence=evidence.confidence,
        )
        if rows
        else []
    )
    return len(comparable), findings[:MAX_FINDINGS]


def local_tier(
    engine: Engine, ids: frozenset[str], me: str, anchored: Mapping[str, int]
) -> tuple[TierAnswer, dict[str, set[str]]]:
    """One member's part of a trace over its own QDM, before any producer is asked: its
    findings and genealogy for `ids`, and the batches it bought, by producer."""
    rows, links, bought = tier_genealogy(engine, ids, me)
    comparable_n, findings = tier_findings(engine, rows, me, anchored)
    answer = TierAnswer(
        member=me,
        implicated=tuple(sorted(rows)),
        comparable_n=comparable_n,
        links=tuple(links),
        findings=tuple(findings),
    )
    return answer, bought
