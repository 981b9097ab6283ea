"""``qdspace contracts show | explain | odrl``: one agreement, read three ways.

Its canonical signed bytes with both signatures (what a regulator or a partner checks),
the decision report of a request under it (each rule, constraint and duty, as the
provider's gate would decide it), and its policy as a DSP 2025-1 ODRL Agreement. Each is
one call to the node's operator API; the commands hang off the ``contracts`` group
(:mod:`node.cli.contracts` mounts them), which may name the node before them.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console

from qdspace.node.cli.connect import subcommand_target
from qdspace.node.cli.errors import clean_errors

console = Console()


@clean_errors
def show(
    ctx: typer.Context, agreement: Annotated[str, typer.Argument(help="agreement id")]
) -> None:
    """Print an agreement's canonical signed bytes and both signatures as JSON."""
    with subcommand_target(ctx).client() as node:
        console.print_json(json.dumps(node.agreement(agreement)))


@clean_errors
def explain(
    ctx: typer.Context,
    agreement: Annotated[str, typer.Argument(help="agreement id")],
    action: Annotated[str, typer.Option(help="use, read, stream or distribute")] = "read",
    purpose: Annotated[str | None, typer.Option(help="the purpose to ask for")] = None,
    order: Annotated[str | None, typer.Option(help="the order to ask for")] = None,
    field: Annotated[list[str] | None, typer.Option(help="a field to ask for (repeat)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Explain what the agreement decides for a request: each rule, constraint and duty."""
    body = {"action": action, "purpose": purpose, "order_id": order, "fields": field or None}
    with subcommand_target(ctx).client() as node:
        report = node.explain(agreement, body)
    if as_json:
        console.print_json(json.dumps(report))
        return
    for line in report_lines(report):
        console.print(line, markup=False, highlight=False)


@clean_errors
def odrl(
    ctx: typer.Context, agreement: Annotated[str, typer.Argument(help="agreement id")]
) -> None:
    """Print the agreement's policy as DSP 2025-1 JSON-LD (an ODRL Agreement)."""
    with subcommand_target(ctx).client() as node:
        console.print_json(json.dumps(node.agreement_odrl(agreement)))


def report_lines(report: dict[str, Any]) -> list[str]:
    """The report the API returns, one line per rule, constraint and duty."""
    out = [f"{report['policy']} {report['action']}: {report['outcome']} ({report['reason']})"]
    out.append(f"conflict strategy: {report['conflict']}")

    def constraint(item: dict[str, Any], indent: str) -> None:
        state, why = item["state"], item["why"]
        out.append(f"{indent}{item['path']} {item['constraint']}: {state} ({why})")
        for inner in item.get("items", []):
            constraint(inner, indent + "  ")

    def duty(item: dict[str, Any], indent: str) -> None:
        head = f"{indent}{item['path']} duty {item['action']} ({item['timing']})"
        out.append(f"{head}: {item['state']} ({item['why']})")
        for inner in item["constraints"]:
            constraint(inner, indent + "  ")

    for rule in report["rules"]:
        flags = "active" if rule["active"] else "inactive"
        if rule["kind"] == "permission":
            flags += ", satisfied" if rule["satisfied"] else ", not satisfied"
        out.append(f"{rule['path']} {rule['kind']} {rule['action']}: {flags} ({rule['why']})")
        for item in rule["constraints"]:
            constraint(item, "  ")
        for item in rule["duties"]:
            duty(item, "  ")
    for item in report["obligations"]:
        duty(item, "")
    return out


def mount(group: typer.Typer) -> None:
    """Add ``show``, ``explain`` and ``odrl`` to the ``contracts`` group."""
    for command in (show, explain, odrl):
        group.command(command.__name__)(command)
