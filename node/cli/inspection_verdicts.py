"""``qdspace inspect verdicts | defects``: what the line judged, by serial, order and batch.

``verdicts`` lists the stored verdicts (newest first) with the serial, order and batch
each carries; ``defects`` counts them per batch and draws the p-chart of the fraction
defective (limits per batch size, Western Electric / Nelson rules): the batches it flags
are where a trace starts. Both read the node's QDM only: no model, no Ray, no
onnxruntime, and the database layer is imported only once a command runs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from qdspace.node.cli.connect import JsonOpt, print_json
from qdspace.node.cli.errors import clean_errors, fail

console = Console()

DirOpt = Annotated[Path, typer.Option("--dir", help="node directory")]
SinceOpt = Annotated[
    str | None, typer.Option(help="from this time on (ISO 8601; UTC unless a zone is given)")
]
UntilOpt = Annotated[str | None, typer.Option(help="before this time (ISO 8601)")]
StationOpt = Annotated[str | None, typer.Option(help="one station's verdicts")]
BatchOpt = Annotated[str | None, typer.Option("--batch", help="one batch")]
OrderOpt = Annotated[str | None, typer.Option("--order", help="one order")]
SerialOpt = Annotated[str | None, typer.Option("--serial", help="one serial")]


def _when(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise fail(f"{option} {text!r}: not an ISO 8601 time (e.g. 2026-06-01T06:00)") from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


def _filter(**given: Any) -> Any:
    from qdspace.connector.verdict_data import VerdictFilter

    since, until = _when(given.pop("since"), "--since"), _when(given.pop("until"), "--until")
    if since is not None and until is not None and since >= until:
        raise fail("--since must be before --until")
    return VerdictFilter(since=since, until=until, **given)


def _store(directory: Path) -> Any:
    from qdspace.node.config import NodeSettings

    return NodeSettings.load(directory).open_store()


@clean_errors
def verdicts(
    directory: DirOpt,
    since: SinceOpt = None,
    until: UntilOpt = None,
    station: StationOpt = None,
    batch: BatchOpt = None,
    order: OrderOpt = None,
    serial: SerialOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="newest N")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """Stored inspection verdicts, newest first, with serial, order and batch."""
    from qdspace.connector.verdict_data import read_verdicts

    f = _filter(
        since=since, until=until, station=station, batch_id=batch, order_id=order, serial=serial
    )
    store = _store(directory)
    try:
        rows = read_verdicts(store.engine, f, limit)
    finally:
        store.close()
    if as_json:
        print_json([vars(r) for r in rows])
        return
    table = Table("judged at", "station", "verdict", "defect", "score", "serial", "order", "batch")
    for r in rows:
        table.add_row(
            r.inspected_at.isoformat(timespec="seconds"),
            r.station,
            r.verdict,
            r.defect_class or "",
            "" if r.score is None else f"{r.score:.3f}",
            r.serial or "",
            r.order_id or "",
            r.batch_id or "",
        )
    console.print(table)
    console.print(f"{len(rows)} verdicts (newest first; --limit {limit})")


@clean_errors
def defects(
    directory: DirOpt,
    since: SinceOpt = None,
    until: UntilOpt = None,
    station: StationOpt = None,
    order: OrderOpt = None,
    standard: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="a standard fraction defective p0 (default: p-bar)"),
    ] = None,
    batches: Annotated[
        int, typer.Option(min=1, max=2_000, help="chart the N batches judged most recently")
    ] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Failed cells per batch and the p-chart of the fraction defective, of the batches
    judged most recently."""
    from qdspace.connector.contract_errors import SpcError
    from qdspace.connector.spc_defects import p_chart
    from qdspace.connector.verdict_data import batch_defects

    f = _filter(since=since, until=until, station=station, order_id=order)
    store = _store(directory)
    try:
        found = batch_defects(store.engine, f, batches)
    finally:
        store.close()
    if not found.subgroups:
        raise fail(f"no verdicts with a batch in this window ({found.unbatched} without one)")
    try:
        chart = p_chart(found.subgroups, standard=standard)
    except SpcError as exc:
        raise fail(str(exc)) from None
    if as_json:
        print_json(chart_json(chart, found.unbatched))
        return
    table = Table("batch", "first judged", "judged", "failed", "p", "LCL", "UCL", "rules")
    for p in chart.points:
        style = "bold red" if p.rules else None
        table.add_row(
            p.batch_id,
            p.at.isoformat(timespec="minutes"),
            str(p.inspected),
            str(p.defective),
            f"{p.fraction:.4f}",
            f"{p.lcl:.4f}",
            f"{p.ucl:.4f}",
            ", ".join(p.rules),
            style=style,
        )
    console.print(table)
    kind = "standard p0" if chart.standard else "p-bar"
    console.print(
        f"{kind} = {chart.centre:.4f} over the {len(chart.points)} batches judged most "
        f"recently (--batches {batches}); {len(chart.alerts)} alerts; "
        f"{found.unbatched} verdicts without a batch left out"
    )
    for alert in chart.alerts:
        console.print(
            f"  {alert.description} (batch {chart.points[alert.points[-1].index].batch_id})"
        )


def chart_json(chart: Any, unbatched: int) -> dict[str, Any]:
    """The p-chart as plain JSON (the CLI's ``--json``)."""
    return {
        "centre": chart.centre,
        "standard": chart.standard,
        "unbatched": unbatched,
        "points": [
            {
                "batch_id": p.batch_id,
                "at": p.at.isoformat(),
                "inspected": p.inspected,
                "defective": p.defective,
                "fraction": p.fraction,
                "lcl": p.lcl,
                "ucl": p.ucl,
                "rules": list(p.rules),
                "by_class": dict(p.by_class),
            }
            for p in chart.points
        ],
        "alerts": [
            {
                "rule": a.rule,
                "description": a.description,
                "batches": [chart.points[pt.index].batch_id for pt in a.points],
            }
            for a in chart.alerts
        ],
    }
