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
series for its version (for a subscription, the counts of changes of the copy held under
its agreement, `MirrorVersion`, one look-up by key; for a station, the lowest and highest
id of its inspections, two look-ups in ``ix_inspection_station``, and the inspections'
rewrite count) and sends a series' whole state again only when that changed. At
`spc_state.MAX_POINTS` per chart that is a few hundred kB at most per change, cheap next
to a browser's redraw.

An own station's chart is kept by the stream and fed (`spc_state.LiveChart`): it starts
from the station's newest `HISTORY` scores, in the order they were stored, and each
later tick reads only the scores stored since (``id > last``, from the same index). Read
and replayed whole on every change, a station's 500,000 scores took 4.5 s to read and
13 s to replay, ten times a second on a live line, and asking for the version alone
read every inspection (274 ms). A chart rebuilds from its history when rows it holds
may have gone (the lowest id moved: a purge) or changed (the inspections' rewrite
count, `connector.qdm.Rewrites`, moved: a verdict corrected or withdrawn, whose row
moved above the last id fed while its old value stayed on the chart). A subscription's
chart is kept the same way: built from the newest `HISTORY` rows held under its
agreement (a pull's rows too), then fed only the rows added since (``received_since``,
ids above the last one fed); it rebuilds when a held record was replaced, withdrawn or
erased (the version's ``rewrites`` moved). Read, decrypted and replayed whole on every
change, a subscription of 100,000 rows took 5.9 s a change (a supplier streams several a
second: a core kept busy, the chart ever further behind), and rows a pull brought did
not move its version.

The kept charts are the console's, not a stream's (`KeptCharts`): every stream that
follows a series (a second tab, a page reloaded, a second engineer) is sent the chart one
of them last brought up to date, and the first to see a new version feeds it for all. A
stream of its own built each chart anew from `HISTORY` rows when it opened, about a
second for a subscription of 20,000 rows held (read and decrypt ~0.4 s, replay ~0.55 s),
on every reload. A kept chart carries the event it was last sent as (the JSON
serialised once for every stream that shows it); the least recently shown go first
beyond `MAX_KEPT`.

A chart shown as X-bar-R (the page asks with ``xbar=<n>:<key>`` on the stream) gets the
same state plus an ``xbar`` part: the values replayed in subgroups of n through
`XbarRMonitor` (`qdspace.connector.spc_xbar`), limits from the same baseline values as
the individuals chart (``baseline_size // n`` subgroups, at least 2) or from the spec's
known centre and sigma. The Cpk panel stays on the individual values in either view.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Dialect, Select, String, func, select, type_coerce

from qdspace.connector import versions
from qdspace.connector.contract_store import MirrorVersion, ReceivedRow
from qdspace.connector.contract_store.common import result_processor
from qdspace.connector.qdm import Inspection
from qdspace.connector.spc import SpcSpec, characteristic_value
from qdspace.connector.spc_xbar import MAX_SUBGROUP, MIN_SUBGROUP
from qdspace.node.console.spc_state import LiveChart
from qdspace.node.context import NodeContext

#: own inspection scores: 0.5 is the verdict threshold (the default subscriptions use)
OWN_SCORE_SPEC = SpcSpec(usl=0.5, baseline_size=20, cpk_window=20)
#: the newest values a chart starts from: a station's scores, a subscription's rows
#: (later ones are added to it)
HISTORY = 20_000
#: how often the stream looks for new rows, seconds
TICK_S = 0.1
#: how many series one stream may follow, and the longest key
MAX_STREAM_SERIES = 32
#: how many charts (a series in one view) a console keeps for its streams
MAX_KEPT = 2 * MAX_STREAM_SERIES
MAX_KEY = 200


@dataclass(frozen=True)
class Series:
    key: str
    title: str
    source: str  # "subscribed" or "own"
    characteristic: str
    #: a subscription not streaming now: "reconnecting: why" or "ended: why" ("": live)
    status: str = ""


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
                    "" if sub.state in ("streaming", "connecting") else f"{sub.state}: {sub.error}",
                )
            )
    with ctx.store.engine.connect() as connection:
        stations = list(connection.execute(_scored_stations()).scalars())
    for station in stations:
        found.append(Series(f"own:{station}", f"score at {station} (own)", "own", "score"))
    return found


def _scored_stations() -> Select[tuple[str]]:
    """The stations with a scored, live verdict, in order: the distinct stations found by
    seeking ``ix_inspection_station`` once each (a recursive query: the least station
    after the last one found), each kept when a row of it has a score. Grouping every
    verdict by station read them all (1.2-1.9 s on a million), on every SPC page and
    every stream the page opens."""
    table = Inspection.__table__  # type: ignore[attr-defined]
    station = table.c.station
    found = select(func.min(station).label("station")).cte("stations", recursive=True)
    following = select(func.min(station)).where(station > found.c.station).scalar_subquery()
    found = found.union_all(select(following).where(found.c.station.is_not(None)))
    scored = (
        select(table.c.id)
        .where(station == found.c.station, table.c.score.is_not(None))
        .where(table.c.withdrawn_at.is_(None))
        .exists()
    )
    query = select(found.c.station).where(found.c.station.is_not(None), scored)
    return query.order_by(found.c.station)


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


def _station_ids(ctx: NodeContext, station: str) -> tuple[int, int, int] | None:
    """The lowest and highest id of the station's inspections (two index look-ups: SQLite
    reads a min or max from an index only as a statement's one aggregate) and the
    inspections' rewrite count (`connector.qdm.Rewrites`, one look-up by key)."""
    table = Inspection.__table__  # type: ignore[attr-defined]
    ids = table.c.id
    with ctx.store.engine.connect() as connection:
        rewrites = versions.rewrites(connection, "inspection")
        top = connection.execute(select(func.max(ids)).where(table.c.station == station))
        highest = top.scalar_one()
        low = connection.execute(select(func.min(ids)).where(table.c.station == station))
        lowest = low.scalar_one()
    if highest is None or lowest is None:
        return None
    return int(lowest), int(highest), rewrites


def version(ctx: NodeContext, key: str) -> object:
    """A value that changes when the series gains (or loses) rows; None for an unknown
    series or a station without inspections."""
    source, _, name = key.partition(":")
    if source == "sub":
        sub = _subscription(ctx, name)
        if sub is None or ctx.contracts is None:
            return None
        return ctx.contracts.store.mirror_version(sub.agreement_id)
    if source == "own":
        return _station_ids(ctx, name)
    return None


def _subscription(ctx: NodeContext, subscription_id: str) -> Any:
    if ctx.contract_client is None:
        return None
    return ctx.contract_client.subscriptions.get(subscription_id)


def _sub_points(rows: list[ReceivedRow], characteristic: str) -> Iterator[tuple[float, str]]:
    """The subscription's values of `rows`, with their times: what its monitor judges."""
    for row in rows:
        try:  # every held row passed orjson at arrival (`transfer_wire.record_meta`)
            record = orjson.loads(row.payload)
        except orjson.JSONDecodeError:
            record = json.loads(row.payload)
        value = characteristic_value(record, characteristic)
        if value is not None:
            yield value, str(record.get("inspected_at") or "")


def _rewrites(version: object) -> int | None:
    """The rewrites a subscription's version counts (none before its first delivery)."""
    if version is None:
        return 0
    return version.rewrites if isinstance(version, MirrorVersion) else None


def _sub_chart(
    ctx: NodeContext, subscription_id: str, was: Watched | None, now: object, subgroup: int | None
) -> tuple[LiveChart, int] | None:
    """A subscription's chart (`_fed`); it is built anew when a held record was
    rewritten (replaced, withdrawn, erased) since. None for an unknown subscription."""
    sub = _subscription(ctx, subscription_id)
    if sub is None or ctx.contracts is None:
        return None
    store = ctx.contracts.store

    def read(after: int | None) -> tuple[Iterator[tuple[float, str]], int | None]:
        if after is None:
            rows = store.received_newest(sub.agreement_id, HISTORY)
        else:
            rows = store.received_since(sub.agreement_id, after)
        return _sub_points(rows, sub.characteristic), rows[-1].id if rows else None

    rewrites = _rewrites(now)
    keep = rewrites is not None and was is not None and _rewrites(was.version) == rewrites
    return _fed(was, keep, sub.spec, subgroup, read)


def station_scores(
    ctx: NodeContext, station: str, after: int | None = None
) -> list[tuple[int, float, str]]:
    """A station's scores (id, score, time) in the order they were stored: those stored
    after id ``after``, or with None the newest `HISTORY`; from ``ix_inspection_station``."""
    table = Inspection.__table__  # type: ignore[attr-defined]
    # the time as the driver gives it (SQLite's stored text), written by `iso_time`
    stored = type_coerce(table.c.inspected_at, String())
    query = select(table.c.id, table.c.score, stored).where(
        table.c.station == station,
        table.c.score.is_not(None),
        table.c.withdrawn_at.is_(None),
    )
    if after is None:
        query = query.order_by(table.c.id.desc()).limit(HISTORY)
    else:
        query = query.where(table.c.id > after).order_by(table.c.id)
    engine = ctx.store.engine
    iso = iso_time(table.c.inspected_at.type, engine.dialect)
    with engine.connect() as connection:
        rows = [(int(i), float(score), iso(at)) for i, score, at in connection.execute(query)]
    return rows[::-1] if after is None else rows


#: a time as SQLAlchemy stores one on SQLite (UTC, six fractional digits)
_STORED_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", re.ASCII)


def iso_time(kind: Any, dialect: Dialect) -> Callable[[Any], str]:
    """A stored time of column type ``kind``, as the driver gives it, in ISO 8601 as the
    charts show it: what reading it as SQLAlchemy does and ``isoformat()`` give. SQLite's
    stored text (``YYYY-MM-DD HH:MM:SS.ffffff``, UTC) is rewritten as text once it is
    that exactly (~0.5 us against ~4.5: the parse, the UTC ``replace`` and an aware
    ``isoformat`` a point of a chart's 20,000); any other value goes SQLAlchemy's way."""
    slow = result_processor(kind, dialect)
    parse = datetime.fromisoformat
    stored_form = _STORED_TIME.fullmatch

    def read(value: Any) -> str:
        # exactly the text SQLAlchemy stores (no offset, ``Z`` or week date), and a time
        if value.__class__ is str and stored_form(value):
            try:
                parse(value)
            except ValueError:
                pass
            else:
                fraction = "" if value.endswith(".000000") else value[19:]
                return f"{value[:10]}T{value[11:19]}{fraction}+00:00"
        return _iso(value if value is None or slow is None else slow(value))

    return read


def _iso(at: datetime | str | None) -> str:
    return at.isoformat() if isinstance(at, datetime) else str(at or "")


@dataclass
class Watched:
    """A kept chart (`KeptCharts`): the version of the series it was fed up to, the chart,
    the id of the last row (a station's score, a subscription's received row) fed to it,
    and the event it is sent as (None: no chart, e.g. a station without scores)."""

    version: object
    chart: LiveChart | None = None
    after: int = 0
    event: bytes | None = None


class KeptCharts:
    """The charts a console keeps for its SPC streams, by series and view (its X-bar-R
    subgroup size), up to `MAX_KEPT`, the least recently shown dropped first.

    Streams ask from the server's worker threads: one lock per chart, so that two streams
    that find it behind do not feed it at once (the second waits, then finds it current),
    and one for the table itself."""

    def __init__(self, limit: int = MAX_KEPT) -> None:
        self.limit = limit
        self._kept: OrderedDict[tuple[str, int | None], Watched] = OrderedDict()
        self._feeding: dict[tuple[str, int | None], threading.Lock] = {}
        self._guard = threading.Lock()

    def __len__(self) -> int:
        return len(self._kept)

    def chart(self, key: str, subgroup: int | None = None) -> LiveChart | None:
        """The chart kept for ``key`` in that view, if one is."""
        with self._guard:
            kept = self._kept.get((key, subgroup))
        return None if kept is None else kept.chart

    def event(self, ctx: NodeContext, key: str, now: object, subgroup: int | None) -> bytes | None:
        """The chart event of ``key`` (in the view ``subgroup``) at version ``now``: the
        kept one when it was fed up to ``now``, else the kept one fed what it lacks (or one
        built anew, `_updated`); None where the series has no chart."""
        slot = (key, subgroup)
        with self._guard:
            lock = self._feeding.setdefault(slot, threading.Lock())
        with lock:
            with self._guard:
                was = self._kept.get(slot)
            if was is None or was.version != now:
                was = _updated(ctx, key, was, now, subgroup)
            with self._guard:
                self._kept[slot] = was
                self._kept.move_to_end(slot)
                while len(self._kept) > self.limit:
                    gone, _ = self._kept.popitem(last=False)
                    self._feeding.pop(gone, None)
            return was.event


def _updated(
    ctx: NodeContext, key: str, was: Watched | None, now: object, subgroup: int | None
) -> Watched:
    """The kept chart of ``key`` brought to version ``now`` (`_own_chart`, `_sub_chart`),
    with the event it is sent as."""
    source, _, name = key.partition(":")
    kept: tuple[LiveChart, int] | None = None
    if source == "own" and now is not None:
        kept = _own_chart(ctx, name, was, now, subgroup)
    elif source == "sub":
        kept = _sub_chart(ctx, name, was, now, subgroup)
    if kept is None:
        return Watched(now)
    chart, after = kept
    return Watched(now, chart, after, sse("chart", chart.state(key)))


def _kept_rows(version: object) -> object:
    """What must stay for a station's kept chart to stand (`_station_ids`): its lowest id
    (a row gone from below) and the rewrite count (a record corrected or withdrawn: its
    old value is on the chart, its row moved above)."""
    return (version[0], version[2]) if isinstance(version, tuple) else None


def _own_chart(
    ctx: NodeContext, station: str, was: Watched | None, now: object, subgroup: int | None
) -> tuple[LiveChart, int]:
    """The station's chart (`_fed`); built anew when rows it holds may have gone or
    changed (`_kept_rows`)."""

    def read(after: int | None) -> tuple[Iterator[tuple[float, str]], int | None]:
        rows = station_scores(ctx, station, after)
        return ((score, at) for _, score, at in rows), rows[-1][0] if rows else None

    keep = was is not None and _kept_rows(was.version) == _kept_rows(now)
    return _fed(was, keep, OWN_SCORE_SPEC, subgroup, read)


def _fed(
    was: Watched | None,
    keep: bool,
    spec: SpcSpec,
    subgroup: int | None,
    read: Callable[[int | None], tuple[Iterator[tuple[float, str]], int | None]],
) -> tuple[LiveChart, int]:
    """A kept chart fed what it has not seen, and the id of the last row fed: the stream's
    chart fed the rows after its last id when it has one and may ``keep`` it, else a new
    one (of ``spec``; X-bar-R in ``subgroup``s where given) fed the newest `HISTORY`
    rows. ``read(after)`` gives the values of the rows after id ``after`` (None: the
    newest `HISTORY`) and the id of the last row read (None: none)."""
    if keep and was is not None and was.chart is not None:
        chart, after = was.chart, was.after
        values, last = read(after)
    else:
        chart, after = LiveChart(spec, subgroup), 0
        values, last = read(None)
    chart.extend(values)
    return chart, after if last is None else last


def changed(
    ctx: NodeContext,
    keys: list[str],
    seen: dict[str, object],
    views: dict[str, int] | None = None,
    *,
    charts: KeptCharts,
) -> Iterator[bytes]:
    """The events for the series whose version moved since the one this stream last
    sent (``seen``, updated in place), from the console's kept ``charts``; a key in
    ``views`` is sent with its X-bar-R state in subgroups of that size."""
    for key in keys:
        now = version(ctx, key)
        if key in seen and seen[key] == now:
            continue
        seen[key] = now
        event = charts.event(ctx, key, now, (views or {}).get(key))
        if event is not None:
            yield event


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event (the JSON on one ``data:`` line: orjson writes no newline).

    orjson, not the standard library: a chart of 5,000 points is ~320 kB of JSON, 5 ms
    to write by ``json.dumps`` and under 1 ms by orjson (once per change, bench
    spc_stream). And the standard library writes a limit that overflowed (values near
    1e308 from a provider give a sigma of inf) as ``Infinity``, which is no JSON: the
    browser's ``JSON.parse`` threw and the chart stopped; orjson writes ``null`` (no
    line drawn)."""
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
