"""``qdspace dsp negotiate | transfer | status | suspend | resume | terminate``.

Thin commands over a running node's operator API (``/v1/dsp``): trading with any
connector that speaks the Dataspace Protocol 2025-1 (an EDC, or another node's DSP
listener). The node holds the keys and the processes, so the CLI only names the node
(``--dir`` or ``--api-url``/``--token-file``), calls `OperatorClient.dsp` and prints the
answer; the client is imported when a command runs, so these start without the server
stack.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.console import Console

from qdspace.node.cli.connect import JsonOpt, Target, calls_node, print_json
from qdspace.node.cli.errors import clean_errors
from qdspace.node.cli.terms import FieldOpt, OrderOpt, RetentionOpt, ValidUntilOpt

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)
#: how long ``dsp negotiate --wait`` waits for the provider's answers
NEGOTIATION_WAIT_S = 60.0

dsp_app = typer.Typer(
    no_args_is_help=True, help="trade over the Dataspace Protocol 2025-1 (EDC and other nodes)"
)
FINAL = ("COMPLETED", "TERMINATED")


def _print(t: dict[str, Any]) -> None:
    console.print(
        f"[bold]{t['transfer_id']}[/bold] {t['state']} ({t['role']} with {t['peer'][:24]}): "
        f"{t['offset']} rows committed, {t['received']} received",
        soft_wrap=True,
    )
    if t.get("reason") and t["state"] in ("SUSPENDED", "TERMINATED"):
        console.print(f"  {t['state'].lower()}: {t['reason']}", soft_wrap=True)
    if t.get("waiting"):
        console.print(f"  waiting for {t['waiting']}", soft_wrap=True)
    if t.get("reconnects"):
        tries = t["reconnects"]
        console.print(f"  data plane opened again after a failure: {tries} tries", soft_wrap=True)
    if t.get("error"):
        console.print(f"  data plane stopped: {t['error']}", soft_wrap=True)


@dsp_app.command("negotiate")
@clean_errors
@calls_node
def negotiate(
    target: Target,
    provider_url: Annotated[str, typer.Argument(help="the provider's DSP address (https://)")],
    dataset: Annotated[str, typer.Argument(help="dataset id in its catalog")],
    purpose: Annotated[
        list[str] | None, typer.Option(help="narrow the offer to this purpose, repeatable")
    ] = None,
    order: OrderOpt = None,
    field: FieldOpt = None,
    retention_days: RetentionOpt = None,
    valid_until: ValidUntilOpt = None,
    wait: Annotated[
        bool, typer.Option(help=f"wait (up to {NEGOTIATION_WAIT_S:.0f} s) until it ends")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Negotiate a dataset on the offer the provider's catalog publishes, or on that offer
    narrowed (--purpose, then --order, --field, --retention-days, --valid-until)."""
    with target.client() as node:
        started = node.dsp.negotiate(
            provider_url,
            dataset,
            purposes=purpose,
            orders=order,
            fields=field,
            retention_days=retention_days,
            valid_until=valid_until,
        )
        nid = started["negotiation_id"]
        ended = _negotiation_end(node, nid, NEGOTIATION_WAIT_S) if wait else None
    if as_json:
        print_json({**started, **(ended or {})})
    elif ended is None:
        console.print(
            f"negotiation {nid} sent to {started['provider'][:24]} "
            f"(provider pid {started['provider_pid']}); see `qdspace contracts`"
        )
    elif ended["state"] == "FINALIZED":
        console.print(f"agreement [bold]{ended['agreement_id']}[/bold] with {ended['provider_id']}")
    else:
        err.print(f"negotiation {nid} {ended['state']}: {ended['reason'] or 'no answer yet'}")
    if ended is not None and ended["state"] != "FINALIZED":
        raise typer.Exit(1)


def _negotiation_end(node: Any, nid: str, wait: float) -> dict[str, Any]:
    """The negotiation once FINALIZED or TERMINATED, or as it stands after ``wait`` s."""
    deadline = time.monotonic() + wait
    found: dict[str, Any] = node.negotiation(nid)
    while found["state"] not in ("FINALIZED", "TERMINATED") and time.monotonic() < deadline:
        time.sleep(0.1)
        found = node.negotiation(nid)
    return found


@dsp_app.command("transfer")
@clean_errors
@calls_node
def transfer(
    target: Target,
    agreement: Annotated[str, typer.Argument(help="a DSP agreement id")],
    wait: Annotated[bool, typer.Option(help="wait until it completes or ends")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Ask the provider for a transfer; the node pulls it over the HTTP data plane."""
    with target.client() as node:
        found = node.dsp.transfer(agreement)
        while wait and found["state"] not in FINAL and not found.get("error"):
            time.sleep(0.2)
            found = node.dsp.transfer_status(found["transfer_id"])
    print_json(found) if as_json else _print(found)


@dsp_app.command("status")
@clean_errors
@calls_node
def status(
    target: Target,
    transfer_id: Annotated[str, typer.Argument(help="transfer id")],
    as_json: JsonOpt = False,
) -> None:
    """A DSP transfer's state and progress."""
    with target.client() as node:
        found = node.dsp.transfer_status(transfer_id)
    print_json(found) if as_json else _print(found)


def _control(verb: str, doc: str) -> None:
    @dsp_app.command(verb, help=doc)
    @clean_errors
    @calls_node
    def command(
        target: Target,
        transfer_id: Annotated[str, typer.Argument(help="transfer id")],
        reason: Annotated[str, typer.Option(help="told to the peer")] = "",
        as_json: JsonOpt = False,
    ) -> None:
        with target.client() as node:
            found = node.dsp.control(transfer_id, verb, reason)
        print_json(found) if as_json else _print(found)


_control("suspend", "Suspend a DSP transfer (its data-plane token is revoked).")
_control("resume", "Resume a suspended DSP transfer (the provider hands out a new token).")
_control("terminate", "Terminate a DSP transfer for good.")
