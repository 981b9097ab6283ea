"""A station's own scores as the SPC page's stream reads them from a real QDM (SQLite and
PostgreSQL; here for this suite's stores): the version from two index look-ups, a chart
kept and fed only what was stored since, the same chart as one built from every score,
a history bound, and a rebuild when stored rows went."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import delete, func, select

from qdspace.connector.qdm import Inspection
from qdspace.connector.storage import QualityStore, open_store
from qdspace.node.console import spc
from qdspace.node.console.spc_state import chart_state

from .conftest import query_plan

pytestmark = pytest.mark.integration
T0 = datetime(2026, 6, 1, 6, tzinfo=UTC)
_I = Inspection.__table__  # type: ignore[attr-defined]
KEY = "own:el-1"


def _verdicts(first: int, count: int, station: str = "el-1") -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for n in range(first, first + count):
        score = 0.1 + (n * 7919 % 97) / 400  # spread, with a drift late on
        rows.append(
            (
                n,
                {
                    "inspection_id": f"{station}-{n}",
                    "station": station,
                    "inspected_at": (T0 + timedelta(seconds=n)).isoformat(),
                    "verdict": "pass",
                    "defect_class": "none",
                    "score": score + (0.2 if n > 150 else 0.0),
                },
            )
        )
    return rows


@pytest.fixture
def store(store_url: str) -> Iterator[QualityStore]:
    opened = open_store(store_url)
    yield opened
    opened.close()


def _ingest(store: QualityStore, rows: list[tuple[int, dict[str, Any]]]) -> None:
    report = store.ingest_rows("inspection", rows)
    assert not report.rejected, report.rejected[:3]


def _ctx(store: QualityStore) -> Any:
    return SimpleNamespace(store=store, contract_client=None, contracts=None)


def _every_score(store: QualityStore) -> list[tuple[float, str]]:
    query = (
        select(_I.c.score, _I.c.inspected_at)
        .where(_I.c.station == "el-1", _I.c.score.is_not(None), _I.c.withdrawn_at.is_(None))
        .order_by(_I.c.id)
    )
    with store.engine.connect() as conn:
        return [(float(s), at.isoformat()) for s, at in conn.execute(query)]


def _state(events: list[bytes]) -> dict[str, Any]:
    import json

    assert len(events) == 1, events
    return dict(json.loads(events[0].split(b"data: ", 1)[1]))


def test_a_kept_chart_fed_tick_by_tick_is_the_chart_of_every_score(
    store: QualityStore,
) -> None:
    """Verdicts arrive between ticks (with other stations' and unscored ones between
    them); each tick feeds only what is new, and the chart sent is the one built from
    every stored score at once, the X-bar-R view included. An idle tick sends nothing."""
    ctx, seen, charts = _ctx(store), {}, spc.KeptCharts()
    _ingest(store, _verdicts(1, 40))
    first = _state(list(spc.changed(ctx, [KEY], seen, {KEY: 4}, charts=charts)))
    assert first["n"] == 40
    assert list(spc.changed(ctx, [KEY], seen, {KEY: 4}, charts=charts)) == []
    n = 41
    for count in (1, 6, 30, 2, 150):
        _ingest(store, _verdicts(n, count) + _verdicts(n, 3, "el-2"))
        unscored = dict(_verdicts(9000 + n, 1)[0][1], score=None)
        _ingest(store, [(1, unscored)])
        n += count
        sent = _state(list(spc.changed(ctx, [KEY], seen, {KEY: 4}, charts=charts)))
        assert sent == chart_state(KEY, _every_score(store), spc.OWN_SCORE_SPEC, 4)
    assert sent["n"] == n - 1 and sent["violations"], "the drift is judged"


def test_a_chart_starts_from_the_newest_history_and_rebuilds_after_a_purge(
    store: QualityStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream starts from the newest `HISTORY` scores; when the station's oldest rows
    go (a purge), the kept chart is built again from what is stored, not fed on."""
    monkeypatch.setattr(spc, "HISTORY", 50)
    ctx, seen, charts = _ctx(store), {}, spc.KeptCharts()
    _ingest(store, _verdicts(1, 120))
    opened = _state(list(spc.changed(ctx, [KEY], seen, charts=charts)))
    assert opened["n"] == 50
    assert opened == chart_state(KEY, _every_score(store)[-50:], spc.OWN_SCORE_SPEC)
    with store.engine.begin() as conn:
        oldest = conn.execute(select(func.min(_I.c.id))).scalar_one()
        conn.execute(delete(_I).where(_I.c.id < oldest + 100))
    _ingest(store, _verdicts(121, 5))
    rebuilt = _state(list(spc.changed(ctx, [KEY], seen, charts=charts)))
    assert rebuilt == chart_state(KEY, _every_score(store), spc.OWN_SCORE_SPEC)
    assert rebuilt["n"] == 25


def test_a_kept_chart_is_built_again_after_a_verdict_is_corrected_or_withdrawn(
    store: QualityStore,
) -> None:
    """A verdict corrected (a new score) or withdrawn moves above the last id the chart
    was fed, its old score still on the chart: the chart sent is built again from what
    is stored, as the whole chart would be (fails when only a row gone from below makes
    a chart rebuild: the old score stays, the corrected one comes twice)."""
    ctx, seen, charts = _ctx(store), {}, spc.KeptCharts()
    _ingest(store, _verdicts(1, 60))
    assert _state(list(spc.changed(ctx, [KEY], seen, charts=charts)))["n"] == 60
    _ingest(store, [(1, dict(_verdicts(20, 1)[0][1], score=0.97))])
    corrected = _state(list(spc.changed(ctx, [KEY], seen, charts=charts)))
    assert corrected == chart_state(KEY, _every_score(store), spc.OWN_SCORE_SPEC)
    assert corrected["n"] == 60
    store.withdraw("inspection", {"inspection_id": "el-1-30"}, T0 + timedelta(days=1))
    withdrawn = _state(list(spc.changed(ctx, [KEY], seen, charts=charts)))
    assert withdrawn == chart_state(KEY, _every_score(store), spc.OWN_SCORE_SPEC)
    assert withdrawn["n"] == 59
    _ingest(store, _verdicts(61, 3))  # then fed again
    assert _state(list(spc.changed(ctx, [KEY], seen, charts=charts)))["n"] == 62


def test_the_version_and_the_new_scores_are_read_from_the_station_index(
    store: QualityStore,
) -> None:
    """Ten times a second per chart: the version's look-ups and the read of what is new
    search ``ix_inspection_station``; none scans the inspections (the old version read
    every one: 274 ms on a million)."""
    _ingest(store, _verdicts(1, 30))
    station = _I.c.station == "el-1"
    queries = {
        "highest": select(func.max(_I.c.id)).where(station),
        "lowest": select(func.min(_I.c.id)).where(station),
        "new": select(_I.c.id, _I.c.score).where(station, _I.c.id > 7).order_by(_I.c.id),
    }
    for name, query in queries.items():
        plan = query_plan(store.engine, query)
        assert any("ix_inspection_station" in step for step in plan), (name, plan)
        assert not [s for s in plan if s.startswith(("SCAN", "Seq Scan"))], (name, plan)
    assert spc.version(_ctx(store), KEY) == spc.version(_ctx(store), KEY) is not None
    assert spc.version(_ctx(store), "own:nowhere") is None


def test_the_stations_charted_are_those_with_a_scored_live_verdict(store: QualityStore) -> None:
    """The SPC page lists a station once, in order, when one of its verdicts has a score
    and is not withdrawn, found by seeking the station index (no scan of the
    inspections: grouping them all took 1.2-1.9 s on a million)."""
    _ingest(store, _verdicts(1, 5) + _verdicts(10, 3, "A-0") + _verdicts(20, 2, "el-3"))
    unscored = [(n, dict(row, score=None)) for n, row in _verdicts(30, 4, "el-2")]
    _ingest(store, unscored)
    store.withdraw("inspection", {"inspection_id": "el-3-20"}, T0 + timedelta(days=1))
    store.withdraw("inspection", {"inspection_id": "el-3-21"}, T0 + timedelta(days=1))
    keys = [s.key for s in spc.list_series(_ctx(store))]
    assert keys == ["own:A-0", "own:el-1"]
    plan = query_plan(store.engine, spc._scored_stations())
    assert not [s for s in plan if s.startswith(("SCAN qdm_inspection", "Seq Scan"))], plan


def _counting_reads(monkeypatch: pytest.MonkeyPatch, pause: float = 0.0) -> list[int | None]:
    """Every read of a station's scores, by ``after`` (None: the newest `HISTORY`)."""
    reads: list[int | None] = []
    read = spc.station_scores

    def counted(ctx: Any, station: str, after: int | None = None) -> Any:
        reads.append(after)
        if after is None:
            time.sleep(pause)
        return read(ctx, station, after)

    monkeypatch.setattr(spc, "station_scores", counted)
    return reads


def test_a_second_stream_is_sent_the_kept_chart_without_reading_it_again(
    store: QualityStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two streams of one console (a second tab, a reload) follow one station: the second
    opens on the chart the first built, byte for byte, without reading the history; after
    new verdicts one of them feeds the chart, the other is sent it as fed. Another view
    (X-bar-R) is a chart of its own. Fails when each stream builds its own charts."""
    _ingest(store, _verdicts(1, 80))
    ctx, charts = _ctx(store), spc.KeptCharts()
    reads = _counting_reads(monkeypatch)
    first, second = {}, {}
    (opened,) = spc.changed(ctx, [KEY], first, charts=charts)
    assert reads == [None]
    assert list(spc.changed(ctx, [KEY], second, charts=charts)) == [opened]
    assert reads == [None]
    _ingest(store, _verdicts(81, 6))
    (fed,) = spc.changed(ctx, [KEY], second, charts=charts)
    assert list(spc.changed(ctx, [KEY], first, charts=charts)) == [fed]
    assert len(reads) == 2 and reads[1] is not None  # the six new ones, read once
    assert _state([fed]) == chart_state(KEY, _every_score(store), spc.OWN_SCORE_SPEC)
    (xbar,) = spc.changed(ctx, [KEY], {}, {KEY: 4}, charts=charts)
    assert reads[2:] == [None] and len(charts) == 2
    assert _state([xbar]) == chart_state(KEY, _every_score(store), spc.OWN_SCORE_SPEC, 4)


def test_streams_that_open_at_once_build_the_chart_once(
    store: QualityStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streams run on the server's worker threads: four opening one chart at the same
    moment (the history read made slow) build it once and are all sent it."""
    _ingest(store, _verdicts(1, 50))
    ctx, charts = _ctx(store), spc.KeptCharts()
    reads = _counting_reads(monkeypatch, pause=0.2)
    start = threading.Barrier(4)

    def stream() -> list[bytes]:
        start.wait()
        return list(spc.changed(ctx, [KEY], {}, charts=charts))

    with ThreadPoolExecutor(4) as pool:
        sent = list(pool.map(lambda _: stream(), range(4)))
    assert reads == [None]
    assert len({tuple(events) for events in sent}) == 1 and len(sent[0]) == 1


def test_a_console_keeps_its_most_recently_shown_charts(
    store: QualityStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond its limit a console drops the chart shown longest ago; asked for again, it
    is built again from the history."""
    stations = ["el-1", "el-2", "el-3"]
    for i, station in enumerate(stations):
        _ingest(store, _verdicts(100 * i + 1, 20, station))
    ctx, charts = _ctx(store), spc.KeptCharts(limit=2)
    reads = _counting_reads(monkeypatch)
    for station in stations:
        assert len(list(spc.changed(ctx, [f"own:{station}"], {}, charts=charts))) == 1
    assert len(charts) == 2 and charts.chart("own:el-1") is None
    assert charts.chart("own:el-3") is not None
    assert len(list(spc.changed(ctx, ["own:el-3"], {}, charts=charts))) == 1
    assert reads == [None, None, None]  # el-3 was kept
    assert len(list(spc.changed(ctx, ["own:el-1"], {}, charts=charts))) == 1
    assert reads == [None, None, None, None]  # el-1 was not
