"""Control-chart data for the SPC page: the series a node can chart, and each one's state.

Two kinds of series:

- ``sub:<subscription id>``: a characteristic streamed from a supplier under an
  agreement (the rows the subscription stored, in arrival order), judged with the
  subscription's own `SpcSpec`;
- ``own:<station>``: this member's own inspection scores at one station (the model's
  defect probability), judged with `OWN_SCORE_SPEC`.

A chart's state is computed by replaying the values through the same `SpcMonitor` the
subscription runs (`qdspace.connector.spc`): the centre line and sigma it settles on give
the control limits, the alerts it raises name the points each Western Electric / Nelson
rule fired on, and `cpk` over the last ``cpk_window`` values is the rolling Cpk. Nothing
here decides what a violation is.

The page learns of new rows by server-sent events (`stream`): every `TICK_S` it asks each
series for its version (a subscription's in-memory row count, or the highest id of the
station's inspections) and sends a series' whole state again only when that changed. At
`MAX_POINTS` per chart that is a few hundred kB at most per change, cheap next to a
browser's redraw; a change feed from the store would save the polling, later.

A chart shown as X-bar-R (the page asks with ``xbar=<n>:<key>`` on the stream) gets the
same state plus an ``xbar`` part: the values replayed in subgroups of n through
`XbarRMonitor` (`qdspace.connector.spc_xbar`), limits from the same baseline values as
the individuals chart (``baseline_size // n`` subgroups, at least 2) or from the spec's
known centre and sigma. The Cpk panel stays on the individual values in either view.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from qdspace.connector.contract_errors import SpcError
from qdspace.connector.qdm import Inspection
from qdspace.connector.spc import CPK_RULE, SpcMonitor, SpcSpec, cpk
from qdspace.connector.spc_xbar import (
    MAX_SUBGROUP,
    MIN_SUBGROUP,
    RANGE_RULE,
    XbarRMonitor,
    XbarRSpec,
)
from qdspace.node.context import NodeContext

#: own inspection scores: 0.5 is the verdict threshold (the default subscriptions use)
OWN_SCORE_SPEC = SpcSpec(usl=0.5, baseline_size=20, cpk_window=20)
#: the most points a chart shows (the newest); all of them are judged
MAX_POINTS = 5000
#: how often the stream looks for new rows, seconds
TICK_S = 0.1
#: how many series one stream may follow, and the longest key
MAX_STREAM_SERIES = 32
MAX_KEY = 200


@dataclass(frozen=True)
class Series:
    key: str
    title: str
    source: str  # "subscribed" or "own"
    characteristic: str


def list_series(ctx: NodeContext) -> list[Series]:
    """Every series this node can chart: its live subscriptions, then its own stations."""
    found = []
    if ctx.contract_client is not None:
        for sub in ctx.contract_client.subscriptions.values():
            found.append(
                Series(
                    f"sub:{sub.subscription_id}",
                    f"{sub.characteristic} from {sub.provider}",
                    "subscribed",
                    sub.characteristic,
                )
            )
    table = Inspection.__table__  # type: ignore[attr-defined]
    query = (
        select(table.c.station)
        .where(table.c.score.is_not(None), table.c.withdrawn_at.is_(None))
        .group_by(table.c.station)
        .order_by(table.c.station)
    )
    with ctx.store.engine.connect() as connection:
        stations = list(connection.execute(query).scalars())
    for station in stations:
        found.append(Series(f"own:{station}", f"score at {station} (own)", "own", "score"))
    return found


def check_keys(ctx: NodeContext, keys: list[str]) -> None:
    """The series a stream is asked for must be this node's (`list_series`): an unknown,
    over-long or excess key is refused before the stream starts (400 or 404)."""
    from starlette.exceptions import HTTPException

    if not keys or len(keys) > MAX_STREAM_SERIES:
        raise HTTPException(400, f"series: give 1 to {MAX_STREAM_SERIES} series keys")
    if any(len(k) > MAX_KEY or not k.isprintable() for k in keys):
        raise HTTPException(400, f"series: a key is 1 to {MAX_KEY} printable characters")
    known = {s.key for s in list_series(ctx)}
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise HTTPException(404, f"series: {unknown[0][:80]!r} is not a series of this node")


def check_views(keys: list[str], raw: list[str]) -> dict[str, int]:
    """The stream's ``xbar=<n>:<key>`` parameters as {key: n}; each key must be one the
    stream follows and n a subgroup size the X-bar-R chart has constants for (else 400)."""
    from starlette.exceptions import HTTPException

    views: dict[str, int] = {}
    if len(raw) > len(keys):
        raise HTTPException(400, "xbar: at most one per series")
    for item in raw:
        size, _, key = item.partition(":")
        if key not in keys:
            raise HTTPException(400, f"xbar: {key[:80]!r} is not one of the stream's series")
        fits = len(size) <= 2 and size.isascii() and size.isdigit()
        if not (fits and MIN_SUBGROUP <= int(size) <= MAX_SUBGROUP):
            bad = f"{MIN_SUBGROUP} to {MAX_SUBGROUP}, got {size[:8]!r}"
            raise HTTPException(400, f"xbar: subgroup size must be {bad}")
        views[key] = int(size)
    return views


def version(ctx: NodeContext, key: str) -> int | None:
    """A number that changes when the series gains rows; None for an unknown series."""
    source, _, name = key.partition(":")
    if source == "sub":
        sub = _subscription(ctx, name)
        return None if sub is None else sub.received
    if source == "own":
        table = Inspection.__table__  # type: ignore[attr-defined]
        query = select(func.max(table.c.id), func.count()).where(table.c.station == name)
        with ctx.store.engine.connect() as connection:
            top, count = connection.execute(query).one()
        return None if not count else int(top) * 1_000_003 + int(count)
    return None


def _subscription(ctx: NodeContext, subscription_id: str) -> Any:
    if ctx.contract_client is None:
        return None
    return ctx.contract_client.subscriptions.get(subscription_id)


def values_of(ctx: NodeContext, key: str) -> tuple[list[tuple[float, str]], SpcSpec] | None:
    """The series' values in order with their times, and the spec it is judged by."""
    source, _, name = key.partition(":")
    if source == "sub":
        sub = _subscription(ctx, name)
        if sub is None or ctx.contracts is None:
            return None
        values = []
        for row in ctx.contracts.store.received_rows(sub.agreement_id):
            record = json.loads(row.payload)
            value = record.get(sub.characteristic)
            # what the subscription's monitor skips, skipped here too (bool is no number)
            if isinstance(value, int | float) and not isinstance(value, bool):
                values.append((float(value), str(record.get("inspected_at") or "")))
        return values, sub.spec
    if source == "own":
        table = Inspection.__table__  # type: ignore[attr-defined]
        query = (
            select(table.c.score, table.c.inspected_at)
            .where(
                table.c.station == name,
                table.c.score.is_not(None),
                table.c.withdrawn_at.is_(None),
            )
            .order_by(table.c.inspected_at, table.c.id)
        )
        with ctx.store.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [(float(score), _iso(at)) for score, at in rows], OWN_SCORE_SPEC
    return None


def _iso(at: datetime | str | None) -> str:
    return at.isoformat() if isinstance(at, datetime) else str(at or "")


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def chart_state(
    key: str, values: list[tuple[float, str]], spec: SpcSpec, subgroup: int | None = None
) -> dict[str, Any]:
    """The JSON a chart draws: points, limits, rule hits by point, rolling Cpk; with a
    ``subgroup`` size, the X-bar-R view of the same values too."""
    values = [(v, a) for v, a in values if math.isfinite(v)]
    monitor = SpcMonitor(spec)
    hits: dict[int, list[str]] = {}
    descriptions: dict[str, str] = {}
    start = datetime(1970, 1, 1)
    for value, _at in values:
        for alert in monitor.add(value, start):
            if alert.rule == CPK_RULE:
                continue
            descriptions[alert.rule] = alert.description
            for point in alert.points:
                hits.setdefault(point.index, []).append(alert.rule)
    first = max(0, len(values) - MAX_POINTS)
    shown = values[first:]
    centre, sigma = monitor.centre, monitor.sigma
    window = [v for v, _ in values[-spec.cpk_window :]]
    rolling = None
    if len(window) >= spec.cpk_window and (spec.lsl is not None or spec.usl is not None):
        rolling = _finite(cpk(window, spec.lsl, spec.usl))
    return {
        "key": key,
        "n": len(values),
        "first": first,
        "y": [v for v, _ in shown],
        "at": [a for _, a in shown],
        "centre": centre,
        "ucl": None if centre is None or sigma is None else centre + 3 * sigma,
        "lcl": None if centre is None or sigma is None else centre - 3 * sigma,
        "usl": spec.usl,
        "lsl": spec.lsl,
        "baseline": spec.baseline_size,
        "violations": [
            {"i": i, "rules": rules, "value": values[i][0], "at": values[i][1]}
            for i, rules in sorted(hits.items())
            if i >= first
        ],
        "rules": descriptions,
        "cpk": rolling,
        "cpk_window": spec.cpk_window,
        "cpk_threshold": spec.cpk_threshold,
        "cpk_low": rolling is not None and rolling < spec.cpk_threshold,
        "xbar": None if subgroup is None else xbar_state(values, spec, subgroup),
    }


def xbar_state(values: list[tuple[float, str]], spec: SpcSpec, n: int) -> dict[str, Any]:
    """The X-bar and R charts of ``values`` in subgroups of ``n`` (complete ones only)."""
    monitor = XbarRMonitor(
        XbarRSpec(
            subgroup_size=n,
            baseline_subgroups=max(2, spec.baseline_size // n),
            centre=spec.centre,
            sigma=spec.sigma,
        )
    )
    means: list[float] = []
    ranges: list[float] = []
    hits: dict[int, list[str]] = {}
    r_hits: dict[int, list[str]] = {}
    descriptions: dict[str, str] = {}
    start = datetime(1970, 1, 1)
    for value, _at in values:
        try:
            alerts = monitor.add(value, start)
        except SpcError:  # a subgroup whose range overflows: refused whole, not drawn
            continue
        if monitor.last is not None and monitor.last.index == len(means):
            means.append(monitor.last.mean)
            ranges.append(monitor.last.range)
        for alert in alerts:
            descriptions[alert.rule] = alert.description
            into = r_hits if alert.rule == RANGE_RULE else hits
            for point in alert.points:
                into.setdefault(point.index, []).append(alert.rule)
    first = max(0, len(means) - MAX_POINTS)
    limits = monitor.limits

    def marks(found: dict[int, list[str]], ys: list[float]) -> list[dict[str, Any]]:
        return [
            {"i": i, "rules": rules, "value": ys[i]}
            for i, rules in sorted(found.items())
            if i >= first
        ]

    return {
        "n": n,
        "groups": len(means),
        "pending": monitor.pending,
        "first": first,
        "x": means[first:],
        "r": ranges[first:],
        "baseline": monitor.spec.baseline_subgroups,
        "centre": None if limits is None else limits.grand_mean,
        "ucl": None if limits is None else limits.x_ucl,
        "lcl": None if limits is None else limits.x_lcl,
        "r_centre": None if limits is None else limits.rbar,
        "r_ucl": None if limits is None else limits.r_ucl,
        "r_lcl": None if limits is None else limits.r_lcl,
        "violations": marks(hits, means),
        "r_violations": marks(r_hits, ranges),
        "rules": descriptions,
    }


def state_of(ctx: NodeContext, key: str, subgroup: int | None = None) -> dict[str, Any] | None:
    found = values_of(ctx, key)
    return None if found is None else chart_state(key, *found, subgroup)


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event (the JSON on one ``data:`` line: it holds no newline)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def changed(
    ctx: NodeContext,
    keys: list[str],
    seen: dict[str, int | None],
    views: dict[str, int] | None = None,
) -> Iterator[bytes]:
    """The events for the series whose version moved since ``seen`` (updated in place);
    a key in ``views`` is sent with its X-bar-R state in subgroups of that size."""
    for key in keys:
        now = version(ctx, key)
        if key in seen and seen[key] == now:
            continue
        seen[key] = now
        state = state_of(ctx, key, (views or {}).get(key))
        if state is not None:
            yield sse("chart", state)
