"""``qdspace investigation open | list | show | overdue | ack | accept | decline | close | action``.

Thin commands over a running node's operator API (``/v1/investigations``): the node holds
the keys that sign each move and the outbox that delivers it, so the CLI only names the
node (``--dir`` or ``--api-url``/``--token-file``), calls `OperatorClient` and prints the
answer. Actions are given on ``open`` as ``KIND:OWNER:DUE[:TITLE]`` (``OWNER``: a member
name, this one's or the peer's; ``DUE``: an ISO date) and numbered A1, A2, ... The client
is imported when a command runs, so these commands start without the server stack.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Console

from qdspace.node.cli.connect import (
    JsonOpt,
    Target,
    calls_node,
    print_json,
)
from qdspace.node.cli.errors import clean_errors

console = Console(highlight=False)

investigation_app = typer.Typer(
    no_args_is_help=True, help="quality investigations and alerts with their action items"
)
NoteOpt = Annotated[str, typer.Option(help="a note signed with the move")]


def parse_action(spec: str, number: int) -> dict[str, Any]:
    """``KIND:OWNER:DUE[:TITLE]`` as the route's action body (id ``A<number>``)."""
    parts = spec.split(":", 3)
    if len(parts) < 3:
        raise typer.BadParameter(f"--action {spec!r}: expected KIND:OWNER:DUE[:TITLE]")
    kind, owner, due = parts[:3]
    title = parts[3] if len(parts) == 4 else ""
    return {
        "action_id": f"A{number}",
        "kind": kind.upper(),
        "owner": owner,
        "due": due,
        "title": title,
    }


def _print_case(case: dict[str, Any]) -> None:
    console.print(
        f"[bold]{case['case_id']}[/bold] {case['kind']} {case['severity']} "
        f"[bold]{case['state']}[/bold] ({case['role']}): {case['subject']}",
        soft_wrap=True,
    )
    console.print(f"  opener {case['opener_id']} -> receiver {case['receiver_id']}")
    for a in case.get("actions", []):
        console.print(
            f"  {a['action_id']} {a['kind']} owner {a['owner_id']} due {a['due']}: "
            f"{a['state']}{' OVERDUE' if a['overdue'] else ''} {a['title']}",
            soft_wrap=True,
        )


@investigation_app.command("open")
@clean_errors
@calls_node
def open_case(
    target: Target,
    peer: Annotated[str, typer.Argument(help="the member the case is opened with")],
    subject: Annotated[str, typer.Option(help="what is wrong, one line")],
    severity: Annotated[str, typer.Option(help="MINOR, MAJOR, CRITICAL, LIFE-THREATENING")],
    kind: Annotated[str, typer.Option(help="INVESTIGATION or ALERT")] = "INVESTIGATION",
    description: Annotated[str, typer.Option(help="details")] = "",
    batch: Annotated[list[str] | None, typer.Option(help="affected batch, repeatable")] = None,
    part: Annotated[list[str] | None, typer.Option(help="affected part, repeatable")] = None,
    trace_report: Annotated[str | None, typer.Option(help="trace report id")] = None,
    action: Annotated[
        list[str] | None, typer.Option(help="KIND:OWNER:DUE[:TITLE], repeatable")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Open a quality investigation (or alert) with a peer and send it."""
    body = {
        "peer": peer,
        "kind": kind.upper(),
        "severity": severity.upper(),
        "subject": subject,
        "description": description,
        "batch_ids": batch or [],
        "part_ids": part or [],
        "trace_report_id": trace_report,
        "actions": [parse_action(a, i + 1) for i, a in enumerate(action or [])],
    }
    with target.client() as node:
        case = node.investigations.open(body)
    print_json(case) if as_json else _print_case(case)


@investigation_app.command("list")
@clean_errors
@calls_node
def list_cases(
    target: Target,
    as_json: JsonOpt = False,
) -> None:
    """The investigations and alerts this member opened or received."""
    with target.client() as node:
        cases = node.investigations.list()
    if as_json:
        print_json(cases)
        return
    for case in cases:
        console.print(
            f"{case['case_id']} {case['kind']} {case['severity']} {case['state']} "
            f"({case['role']}, {case['open_actions']} open actions, "
            f"{case['overdue_actions']} overdue): {case['subject']}",
            soft_wrap=True,
        )


@investigation_app.command("show")
@clean_errors
@calls_node
def show(
    target: Target,
    case_id: Annotated[str, typer.Argument(help="case id")],
    as_json: JsonOpt = False,
) -> None:
    """One case: its terms, actions and signed events."""
    with target.client() as node:
        case = node.investigations.get(case_id)
    if as_json:
        print_json(case)
        return
    _print_case(case)
    for e in case["events"]:
        console.print(f"  #{e['seq']} {e['step']} by {e['author_id']} at {e['at']} {e['note']}")


@investigation_app.command("overdue")
@clean_errors
@calls_node
def overdue(
    target: Target,
    as_json: JsonOpt = False,
) -> None:
    """Actions in force past their due date and not done (exit 1 when there are any)."""
    with target.client() as node:
        late = node.investigations.overdue()
    if as_json:
        print_json(late)
    for a in [] if as_json else late:
        console.print(
            f"OVERDUE {a['case_id']} {a['action_id']} {a['kind']} owner {a['owner_id']} "
            f"due {a['due']} ({a['severity']}: {a['subject']})",
            soft_wrap=True,
        )
    if late:
        raise typer.Exit(1)


def _move(move: str, doc: str) -> None:
    @clean_errors
    @calls_node
    def command(
        target: Target,
        case_id: Annotated[str, typer.Argument(help="case id")],
        note: NoteOpt = "",
        as_json: JsonOpt = False,
    ) -> None:
        with target.client() as node:
            case = node.investigations.move(case_id, move, note)
        print_json(case) if as_json else _print_case(case)

    command.__doc__ = doc
    investigation_app.command(move)(command)


_move("ack", "Acknowledge a case received (the receiver).")
_move("accept", "Accept an acknowledged case and its actions (the receiver).")
_move("decline", "Decline an acknowledged case (the receiver).")
_move("close", "Close a case: declined, or accepted with every action done (the opener).")


@investigation_app.command("action")
@clean_errors
@calls_node
def action_done(
    target: Target,
    case_id: Annotated[str, typer.Argument(help="case id")],
    action_id: Annotated[str, typer.Argument(help="action id (A1, A2, ...)")],
    note: NoteOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Mark an action this member owns done."""
    with target.client() as node:
        case = node.investigations.action_done(case_id, action_id, note)
    print_json(case) if as_json else _print_case(case)
