"""What the inspection line page shows, as plain data.

Three sources, each read where the API or the line leaves it:

- the node's store: the verdicts the line wrote (`connector.qdm.Inspection`), giving the
  stations, the verdict rate, the frame-to-verdict latency quantiles, and which model
  version judged when (a hot swap is where the stored verdicts change version);
- the line's own status file (`node.runtime.line_status`, written by ``inspect run`` and
  ``inspect serve``): frames dropped before a verdict, the throughput and latency the
  line measured, its swaps, and the line's FPR/FNR over time with the drift thresholds;
  ``inspection/drift.json`` for the current rates by station (as ``/v1/inspection/drift``);
- the model registry (`inference.registry`): versions with their metrics, the active
  one, and the promotion gate's decisions (its promotion log, with the figures each
  decision rested on, `inference.gate.GateDecision.summary`).

Files a line wrote are read defensively: a missing or half-understood file shows as
"not reported", never as an error page.
"""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Connection, Select, case, func, select

from qdspace.connector import versions
from qdspace.connector.qdm import Inspection
from qdspace.inference.explain import read_index
from qdspace.inference.gate import GateDecision
from qdspace.inference.registry import ModelRegistry
from qdspace.node.api.inspection import ModelVersionPublic, _public, explanations_root
from qdspace.node.console.svg_chart import Limit, Line, line_chart
from qdspace.node.context import NodeContext

#: the newest verdicts the rate, latency and version history are computed over
RECENT = 5000
#: the verdict rate is counted over this many seconds before a station's newest verdict
RATE_WINDOW_S = 10.0
#: the top misjudgment groups shown with a heatmap
TOP_GROUPS = 5
#: a status file larger than this is not one the line wrote
MAX_STATUS_BYTES = 4 << 20


@dataclass(frozen=True)
class Station:
    name: str
    verdicts: int
    failed: int
    last_at: str
    rate: float | None  # verdicts per second before the newest one


@dataclass(frozen=True)
class VersionRun:
    """Consecutive stored verdicts judged by one model version."""

    version: str
    first_at: str
    last_at: str
    verdicts: int


@dataclass
class LineView:
    stations: list[Station] = field(default_factory=list)
    latency: dict[str, float | None] = field(default_factory=dict)
    runs: list[VersionRun] = field(default_factory=list)


def _iso(at: Any) -> str:
    return at.isoformat(timespec="seconds") if isinstance(at, datetime) else str(at or "")


#: a station's live verdicts, failed ones, and the newest one's time
Tally = tuple[int, int, Any]


def _by_station(after: int | None, top: int) -> Select[Any]:
    """The live verdicts of each station with ids in (``after``, ``top``]: what a count
    kept up to ``after`` lacks (None: every one up to ``top``)."""
    t = Inspection.__table__  # type: ignore[attr-defined]
    ids = t.c.id <= top if after is None else t.c.id.between(after + 1, top)
    return (
        select(
            t.c.station,
            func.count(),
            func.sum(case((t.c.verdict == "fail", 1), else_=0)),
            func.max(t.c.inspected_at),
        )
        .where(t.c.withdrawn_at.is_(None), ids)
        .group_by(t.c.station)
    )


def _newest(a: Any, b: Any) -> Any:
    return b if a is None or (b is not None and b > a) else a


@dataclass(frozen=True)
class _Counted:
    rewrites: int
    top: int
    stations: dict[str, Tally]


class StationCounts:
    """Each station's live verdicts, failed ones and newest time, kept between page loads.

    Grouping every verdict by station on each load took 0.6 s on a line's million
    verdicts (SQLite), and a line adds a million in days. So the counts are kept with
    the highest id they cover and the inspections' rewrite count (`connector.qdm.Rewrites`)
    they were made under; a load adds only the verdicts stored above that id (a range of
    the primary key). A correction or withdrawal moves its record's row above every other
    and leaves its old content counted below, so when the rewrite count moved (or the
    highest id fell: a restored store) the counts are made again from every verdict. The
    rewrite count is read before the rows: a rewrite between the two is found at the
    next load. One instance serves a console's page loads, one at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: _Counted | None = None
        #: how many times every verdict was grouped (the first load, after a rewrite)
        self.whole_reads = 0

    def read(self, connection: Connection) -> dict[str, Tally]:
        """The counts by station, read from ``connection`` as far as they are not kept."""
        t = Inspection.__table__  # type: ignore[attr-defined]
        with self._lock:
            rewrites = versions.rewrites(connection, "inspection")
            top = int(connection.execute(select(func.max(t.c.id))).scalar_one() or 0)
            kept = self._kept
            if kept is not None and kept.rewrites == rewrites and kept.top <= top:
                counts, after = dict(kept.stations), kept.top
            else:
                counts, after = {}, None
                self.whole_reads += 1
            if after != top:
                for name, n, failed, last in connection.execute(_by_station(after, top)):
                    was_n, was_failed, was_last = counts.get(name, (0, 0, None))
                    failed = was_failed + int(failed or 0)
                    counts[name] = (was_n + n, failed, _newest(was_last, last))
            self._kept = _Counted(rewrites, top, counts)
            return dict(counts)


def stored_line(ctx: NodeContext, counts: StationCounts | None = None) -> LineView:
    """Stations, rates, latency quantiles and version runs from the stored verdicts; the
    stations' counts kept in ``counts`` (the console's) or, without it, read whole."""
    t = Inspection.__table__  # type: ignore[attr-defined]
    recent = (
        select(t.c.station, t.c.inspected_at, t.c.latency_ms, t.c.model_version)
        .where(t.c.withdrawn_at.is_(None))
        .order_by(t.c.inspected_at.desc(), t.c.id.desc())
        .limit(RECENT)
    )
    with ctx.store.engine.connect() as connection:
        by_station = (counts or StationCounts()).read(connection)
        rows = list(reversed(connection.execute(recent).all()))
    view = LineView()
    for name in sorted(by_station):
        n, failed, last = by_station[name]
        times = [at for station, at, _, _ in rows if station == name and isinstance(at, datetime)]
        rate = None
        if times:
            newest = max(times)
            window = [at for at in times if (newest - at).total_seconds() <= RATE_WINDOW_S]
            span = (newest - min(window)).total_seconds()
            rate = len(window) / span if span > 0 else None
        view.stations.append(Station(name, n, failed, _iso(last), rate))
    latencies = np.array(
        [float(ms) for _, _, ms, _ in rows if ms is not None and math.isfinite(ms)], np.float64
    )
    if latencies.size:
        p50, p90, p99 = (float(v) for v in np.percentile(latencies, (50, 90, 99)))
        view.latency = {"count": float(latencies.size), "p50": p50, "p90": p90, "p99": p99}
    for _, at, _, version in rows:
        name = str(version or "-")
        if view.runs and view.runs[-1].version == name:
            last_run = view.runs[-1]
            view.runs[-1] = VersionRun(name, last_run.first_at, _iso(at), last_run.verdicts + 1)
        else:
            view.runs.append(VersionRun(name, _iso(at), _iso(at), 1))
    return view


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object a line wrote, or None when it is missing, too large or not one."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_STATUS_BYTES:
            return None
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(value) else None


def drift_chart(status: dict[str, Any] | None) -> str:
    """The line's FPR and FNR at each status write, against their thresholds."""
    points = [p for p in (status or {}).get("drift", []) if isinstance(p, dict)]
    if not points:
        return ""
    thresholds = (status or {}).get("thresholds") or {}
    limits = [
        Limit(f"max FPR {v:g}", "fpr", v)
        for v in [_number(thresholds.get("max_fpr"))]
        if v is not None
    ] + [
        Limit(f"max FNR {v:g}", "fnr", v)
        for v in [_number(thresholds.get("max_fnr"))]
        if v is not None
    ]
    fpr = Line("FPR", "fpr", [(float(i), _number(p.get("fpr"))) for i, p in enumerate(points)])
    fnr = Line("FNR", "fnr", [(float(i), _number(p.get("fnr"))) for i, p in enumerate(points)])
    first, last = str(points[0].get("at", ""))[:19], str(points[-1].get("at", ""))[:19]
    return line_chart(
        "FPR and FNR of the line over time, with their drift thresholds",
        [fpr, fnr],
        limits,
        (0.0, 1.0),
        (first, last),
        css="drift-chart",
    )


def registry_view(directory: Path) -> dict[str, Any]:
    """Versions with metrics, newest first, and the gate's decisions, newest first."""
    registry = ModelRegistry(directory)
    active = registry.active()
    versions: list[ModelVersionPublic] = [_public(v, active) for v in registry.versions()]
    versions.reverse()
    decisions = []
    for entry in reversed(registry.promotions()):
        raw = entry.get("decision")
        summary = "no audit set: the gate was not applied"
        if isinstance(raw, dict):
            try:
                summary = GateDecision.from_dict(raw).summary()
            except (TypeError, KeyError, ValueError):
                summary = "figures in a form this node does not read"
        decisions.append({**entry, "summary": summary})
    return {"versions": versions, "active_model": active, "decisions": decisions}


def heatmap_groups(directory: Path, active: str | None) -> tuple[str | None, list[dict[str, Any]]]:
    """The top misjudgment groups of the active version's explanations (or the newest)."""
    root = explanations_root(directory)
    indexes = [i for f in sorted(root.iterdir()) if (i := read_index(f))] if root.is_dir() else []
    index = next((i for i in indexes if i.get("model_version") == active), None)
    if index is None and indexes:
        index = max(indexes, key=lambda i: str(i.get("created_at", "")))
    if index is None:
        return None, []
    return str(index["model_version"]), list(index.get("groups", []))[:TOP_GROUPS]
