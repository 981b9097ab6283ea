"""``qdspace trace start | status | report``: root-cause traces over a running node.

Thin commands over the node's operator API (``/v1/traces``): the node holds the
agreements under which its producers are asked, so the CLI only names the node
(``--dir`` or ``--api-url``/``--token-file``), calls `OperatorClient` and prints the
answer. The client is imported when a command runs, so these start without the server
stack. Everything in a report but our own layout came from peers (member names, keys,
reasons): it is printed escaped (`_plain`), never read as Rich markup.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from qdspace.node.cli.connect import (
    JsonOpt,
    Target,
    calls_node,
    print_json,
)
from qdspace.node.cli.errors import clean_errors

console = Console(highlight=False)

trace_app = typer.Typer(
    no_args_is_help=True, help="root-cause traces across tiers, under traceability agreements"
)


def _plain(value: object) -> str:
    """A value from a peer or the node, as text Rich shows as it is."""
    return escape(str(value))


def _print_trace(t: dict[str, Any]) -> None:
    console.print(
        f"[bold]{_plain(t['trace_id'])}[/bold] {_plain(t['state'])} "
        f"started {_plain(t['started_at'])}"
    )
    if t.get("report_sha256"):
        console.print(f"  report sha256 {_plain(t['report_sha256'])}")
    if t.get("error"):
        console.print(f"  error: {_plain(t['error'])}", soft_wrap=True)


@trace_app.command("start")
@clean_errors
@calls_node
def start(
    target: Target,
    batch: Annotated[str | None, typer.Option(help="a module batch that failed")] = None,
    serials: Annotated[str | None, typer.Option(help="failed serials, comma-separated")] = None,
    window: Annotated[
        str | None, typer.Option(help="FROM/TO (ISO times): failed inspections in it")
    ] = None,
    defect_class: Annotated[
        str | None, typer.Option(help="with --window: only this defect class")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a trace from a batch, serials or a window; prints its id at once."""
    body: dict[str, Any] = {}
    if batch:
        body["batch"] = batch
    if serials:
        body["serials"] = [s.strip() for s in serials.split(",") if s.strip()]
    if window:
        since, sep, until = window.partition("/")
        if not sep:
            raise typer.BadParameter(f"--window {window!r}: expected FROM/TO")
        body["since"], body["until"] = since, until
    if defect_class:
        body["defect_class"] = defect_class
    with target.client() as node:
        started = node.start_trace(body)
    print_json(started) if as_json else _print_trace(started)


@trace_app.command("status")
@clean_errors
@calls_node
def status(
    target: Target,
    trace_id: Annotated[str, typer.Argument(help="trace id")],
    as_json: JsonOpt = False,
) -> None:
    """A trace's state (RUNNING, DONE, FAILED)."""
    with target.client() as node:
        found = node.trace(trace_id)
    print_json(found) if as_json else _print_trace(found)


@trace_app.command("report")
@clean_errors
@calls_node
def report(
    target: Target,
    trace_id: Annotated[str, typer.Argument(help="trace id")],
    as_json: JsonOpt = False,
) -> None:
    """A finished trace's ranked causes, paths, confidence and responsibility shares."""
    with target.client() as node:
        found = node.trace_report(trace_id)
    if as_json:
        print_json(found)
        return
    doc = found["report"]
    partial = " PARTIAL" if doc["partial"] else ""
    console.print(
        f"[bold]{_plain(doc['trace_id'])}[/bold]{partial} sha256 {_plain(found['report_sha256'])}"
    )
    for m in doc["missing"]:
        said = f" (reported by {m['reported_by']})" if m.get("reported_by") else ""
        console.print(_plain(f"  missing tier {m['member']}: {m['reason']}{said}"), soft_wrap=True)
    for c in doc["causes"]:
        path = " -> ".join(
            f"{s['member']}:{s['level']}:{','.join(s['ids'][:3])}" for s in c["path"]
        )
        mark = "" if c["significant"] else " (not significant)"
        said = f" (reported by {c['reported_by']})" if c.get("reported_by") else ""
        console.print(
            _plain(
                f"  {c['rank']}. {c['member']}{said} {c['key']} score {c['score']:.3f} "
                f"p {c['adjusted_p']:.2g} confidence {c['confidence']['score']}{mark}"
            ),
            soft_wrap=True,
        )
        console.print(_plain(f"     {path}"), soft_wrap=True)
    shares = ", ".join(f"{k} {v:.0%}" for k, v in doc["responsibility"].items())
    console.print(_plain(f"  responsibility: {shares}"))
    total = doc["timings_ms"].get("total")
    if total is not None:
        console.print(f"  took {total:.0f} ms")
