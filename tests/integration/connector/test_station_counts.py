"""The inspection page's verdict counts by station, kept between loads
(`node.console.inspection.StationCounts`), against every verdict grouped at once."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import case, func, select

from qdspace.connector.qdm import Inspection
from qdspace.connector.storage import QualityStore
from qdspace.node.console import inspection
from qdspace.node.console.inspection import StationCounts

from .conftest import query_plan

pytestmark = pytest.mark.integration
T0 = datetime(2026, 6, 1, 6, tzinfo=UTC)
_I = Inspection.__table__  # type: ignore[attr-defined]
STATIONS = ("el-1", "el-2", "vis-1")


def _row(n: int, rnd: random.Random, **changes: Any) -> dict[str, Any]:
    row = {
        "inspection_id": f"I-{n}",
        "station": rnd.choice(STATIONS),
        "inspected_at": (T0 + timedelta(seconds=rnd.randrange(100_000))).isoformat(),
        "verdict": "fail" if rnd.random() < 0.2 else "pass",
        "score": round(rnd.random(), 3),
    }
    row.update(changes)
    return row


def _every(store: QualityStore) -> dict[str, tuple[int, int, str]]:
    """Every live verdict grouped by station: what the page showed before."""
    query = (
        select(
            _I.c.station,
            func.count(),
            func.sum(case((_I.c.verdict == "fail", 1), else_=0)),
            func.max(_I.c.inspected_at),
        )
        .where(_I.c.withdrawn_at.is_(None))
        .group_by(_I.c.station)
    )
    with store.engine.connect() as conn:
        return {s: (n, int(f), inspection._iso(at)) for s, n, f, at in conn.execute(query)}


def _kept(store: QualityStore, counts: StationCounts) -> dict[str, tuple[int, int, str]]:
    with store.engine.connect() as conn:
        kept = counts.read(conn)
    return {s: (n, f, inspection._iso(at)) for s, (n, f, at) in kept.items()}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kept_counts_are_every_verdict_grouped_after_each_change(
    store: QualityStore, seed: int
) -> None:
    """Random steps (new verdicts, re-sent ones unchanged, corrections that move a
    verdict to another station or verdict, withdrawals, a withdrawn verdict sent again);
    after each, the kept counts equal every live verdict grouped, and every verdict is
    grouped again only after a step that rewrote one (fails when a load adds only what
    is above its last id regardless: a correction is then counted twice)."""
    rnd = random.Random(seed)
    counts = StationCounts()
    stored: dict[int, dict[str, Any]] = {}
    withdrawn: set[int] = set()
    next_n, rewrites, loads = 1, 0, 0
    for _ in range(60):
        step = rnd.choice(("new", "new", "new", "same", "correct", "withdraw", "back", "idle"))
        rewrote = False
        if step == "new" or not stored:
            rows = [_row(n, rnd) for n in range(next_n, next_n + rnd.randint(1, 40))]
            next_n += len(rows)
        elif step == "same":
            rows = [stored[n] for n in rnd.sample(sorted(stored), min(5, len(stored)))]
        elif step == "correct":
            n = rnd.choice(sorted(stored))
            rows = [dict(stored[n], station=rnd.choice(STATIONS), verdict="fail", score=0.99)]
            rewrote = True
        elif step == "withdraw" and set(stored) - withdrawn:
            n = rnd.choice(sorted(set(stored) - withdrawn))
            store.withdraw("inspection", {"inspection_id": f"I-{n}"}, T0)
            withdrawn.add(n)
            rows, rewrote = [], True
        elif step == "back" and withdrawn:
            n = rnd.choice(sorted(withdrawn))
            withdrawn.discard(n)
            rows, rewrote = [stored[n]], True
        else:
            rows = []
        if rows:
            report = store.ingest_rows("inspection", list(enumerate(rows, start=1)))
            assert not report.rejected, report.rejected
            for row in rows:
                n = int(row["inspection_id"][2:])
                rewrote = rewrote or (n in stored and stored[n] != row)
                stored[n] = row
        rewrites += rewrote
        if rnd.random() < 0.3:
            continue  # several changes between two loads
        assert _kept(store, counts) == _every(store), step
        loads += 1
        assert counts.whole_reads <= 1 + rewrites
    assert loads > 30 and counts.whole_reads < loads / 2


def test_a_load_reads_only_the_verdicts_above_the_last_one_counted(store: QualityStore) -> None:
    """The rows a load adds are a range of the primary key, not every verdict (grouping
    them all took 0.6 s on a million on SQLite, on every load)."""
    plan = query_plan(store.engine, inspection._by_station(1000, 1200))
    assert not [s for s in plan if s.startswith(("SCAN", "Seq Scan"))], plan
    assert any("PRIMARY KEY" in s or "_pkey" in s for s in plan), plan


def test_the_page_shows_the_kept_counts_with_rates_from_the_newest_verdicts(
    store: QualityStore,
) -> None:
    """`stored_line` with the console's kept counts shows what it shows reading them
    whole: the same stations, counts, newest times and rates, the later load too."""
    rnd = random.Random(7)
    ctx = SimpleNamespace(store=store)
    counts = StationCounts()
    for loads, first in enumerate((1, 200), start=1):
        rows = [_row(n, rnd) for n in range(first, first + 150)]
        store.ingest_rows("inspection", list(enumerate(rows, start=1)))
        kept = inspection.stored_line(ctx, counts)  # type: ignore[arg-type]
        whole = inspection.stored_line(ctx)  # type: ignore[arg-type]
        assert kept == whole
        assert [s.name for s in kept.stations] == sorted(STATIONS)
        assert sum(s.verdicts for s in kept.stations) == 150 * loads
    assert counts.whole_reads == 1
