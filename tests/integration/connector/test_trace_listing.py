"""The traces an OEM started are listed from ``ix_trace_report_started`` (0022_trace_listing),
a page at a time and without their reports, as reading each whole trace would list them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from qdspace.connector.storage import QualityStore
from qdspace.connector.trace_store import TraceStore, summary_query

from .conftest import query_plan

T0 = datetime(2026, 6, 1, tzinfo=UTC)


def test_traces_are_listed_a_page_at_a_time_as_their_whole_rows_list_them(
    store: QualityStore,
) -> None:
    traces = TraceStore(store.engine)
    for i in range(9):  # two start at each instant: the id breaks the tie
        trace_id = f"trc-{(i * 7) % 9}"
        traces.start(trace_id, {"batch": f"B-{i}"}, T0 + timedelta(minutes=i // 2))
        if i % 3 == 0:
            traces.finish(trace_id, b'{"ranking": []}' * (1 + i * 1000), T0 + timedelta(hours=1))
        elif i % 3 == 1:
            traces.fail(trace_id, "a producer did not answer", T0 + timedelta(hours=1))
    ids = sorted(
        (traces.get(f"trc-{n}") for n in range(9)), key=lambda t: (t.started_at, t.trace_id)
    )
    whole = [
        (t.trace_id, t.state, t.started_at, t.finished_at, t.selection, t.report_sha256, t.error)
        for t in ids
    ]
    assert len(whole) == 9

    def rows(**page: object) -> list[tuple[object, ...]]:
        return [
            (
                t.trace_id,
                t.state,
                t.started_at,
                t.finished_at,
                t.selection,
                t.report_sha256,
                t.error,
            )
            for t in traces.summaries(**page)  # type: ignore[arg-type]
        ]

    assert rows() == whole
    for limit in (1, 4, 9, 20):
        for offset in (0, 3, 8, 9):
            assert rows(limit=limit, offset=offset) == whole[offset : offset + limit]
            newest = whole[::-1]
            assert (
                rows(limit=limit, offset=offset, newest_first=True)
                == newest[offset : offset + limit]
            )
    plan = " ".join(query_plan(store.engine, summary_query(limit=100, newest_first=True)))
    assert "ix_trace_report_started" in plan, plan
    assert "TEMP B-TREE" not in plan and "Sort" not in plan, plan
