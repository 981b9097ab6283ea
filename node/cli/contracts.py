"""``qdspace catalog | negotiate | transfer | subscribe | contracts | order close``.

Thin commands over a running node's operator API (``/v1/contracts``): the node
holds the keys, the contract store and the peer channels, so the CLI only
finds the node (``DIR/run/runtime.json``), authenticates with its operator
token, and prints what comes back. A refusal prints the peer's reason and
exits 1. Finding the node goes through :mod:`node.client`, not ``node.run``, so
these commands start without the server stack; the times they print are of the
request alone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qdspace.node.client import NodeNotRunning, operator_client

if TYPE_CHECKING:
    import httpx

console = Console()
err = Console(stderr=True)

DirOpt = Annotated[Path, typer.Option("--dir", help="node directory (the node must be running)")]
contracts_app = typer.Typer(help="agreements, transfers, deletion duties and receipts")
order_app = typer.Typer(no_args_is_help=True, help="orders this node supplies")


def _client(directory: Path, timeout: float = 300.0) -> httpx.Client:
    try:
        return operator_client(directory, timeout)
    except NodeNotRunning as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _timed_call(directory: Path, method: str, path: str, **kwargs: Any) -> tuple[Any, float]:
    """One request to the running node and the seconds the request itself took.

    A refusal or failure prints and exits 1. The time excludes start-up, the httpx
    import and client set-up, so a printed negotiation time is the node's, not the
    CLI's. httpx is imported here, not at module level: ``qdspace --help`` never needs it.
    """
    import httpx

    with _client(directory) as client:
        started = time.perf_counter()
        try:
            response = client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            err.print(f"[red]error:[/red] {escape(f'{path}: {exc}')}")
            raise typer.Exit(1) from None
        seconds = time.perf_counter() - started
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        err.print(f"[red]refused ({response.status_code}):[/red] {detail}", soft_wrap=True)
        raise typer.Exit(1)
    return response.json(), seconds


def _call(directory: Path, method: str, path: str, **kwargs: Any) -> Any:
    """One request to the running node (see `_timed_call`); returns the JSON body."""
    return _timed_call(directory, method, path, **kwargs)[0]


def catalog(
    directory: DirOpt,
    peer: Annotated[str, typer.Argument(help="provider member name")],
    kind: Annotated[str, typer.Option(help="only assets of this kind")] = "",
) -> None:
    """List the assets a provider offers us, with their offers."""
    assets = _call(directory, "GET", f"/v1/contracts/catalog/{peer}", params={"kind": kind})
    for a in assets:
        perm = a["offer"]["permission"][0]["constraint"]
        offered = next(
            (c["rightOperand"] for c in perm if c["leftOperand"] == "fields"), a["fields"]
        )
        console.print(f"[bold]{a['asset_id']}[/bold] ({a['kind']}): {a['title']}", soft_wrap=True)
        console.print(f"  fields offered: {', '.join(offered)}", soft_wrap=True, highlight=False)
        if a["pseudonymized"]:
            console.print(f"  pseudonymised: {', '.join(a['pseudonymized'])}", highlight=False)


def negotiate(
    directory: DirOpt,
    peer: Annotated[str, typer.Argument(help="provider member name")],
    asset: Annotated[str, typer.Argument(help="asset id from its catalog")],
    purpose: Annotated[list[str], typer.Option(help="purpose, repeatable")],
    order: Annotated[list[str] | None, typer.Option(help="order id, repeatable")] = None,
    field: Annotated[list[str] | None, typer.Option(help="field, repeatable")] = None,
    retention_days: Annotated[int | None, typer.Option(help="ask for shorter retention")] = None,
    valid_until: Annotated[
        str | None, typer.Option(help="ISO 8601 instant the agreement ends")
    ] = None,
) -> None:
    """Negotiate an agreement for an asset (request, counter-offer, signatures)."""
    body = {
        "peer": peer,
        "asset_id": asset,
        "purposes": purpose,
        "orders": order or None,
        "fields": field or None,
        "retention_days": retention_days,
        "valid_until": valid_until,
    }
    result, seconds = _timed_call(directory, "POST", "/v1/contracts/negotiations", json=body)
    ms = seconds * 1000
    if result["state"] != "FINALIZED":
        err.print(f"negotiation {result['negotiation_id']} {result['state']}: {result['reason']}")
        raise typer.Exit(1)
    console.print(
        f"agreement [bold]{result['agreement_id']}[/bold] with {peer} for {asset}: "
        f"signed by both parties ({result['messages']} messages, {ms:.0f} ms)"
    )


def transfer(
    directory: DirOpt,
    agreement: Annotated[str, typer.Argument(help="agreement id")],
    purpose: Annotated[str, typer.Option(help="purpose of this use")],
    order: Annotated[str | None, typer.Option(help="order id")] = None,
    field: Annotated[list[str] | None, typer.Option(help="field, repeatable")] = None,
    resume: Annotated[str | None, typer.Option(help="resume this transfer id instead")] = None,
    since_last: Annotated[
        bool, typer.Option(help="only what changed since the last completed pull of this scope")
    ] = False,
) -> None:
    """Pull data under an agreement; only what it allows leaves the provider.

    The copy held is a mirror: each record once, corrections replace, withdrawals remove."""
    if resume:
        result, seconds = _timed_call(directory, "POST", f"/v1/contracts/transfers/{resume}/resume")
    else:
        body = {
            "agreement_id": agreement,
            "purpose": purpose,
            "order_id": order,
            "fields": field or None,
            "since_last": since_last,
        }
        result, seconds = _timed_call(directory, "POST", "/v1/contracts/transfers", json=body)
    since = f" since position {result['since']}" if result.get("since") else ""
    console.print(
        f"transfer {result['transfer_id']} {result['state']}: {result['offset']} rows{since} "
        f"in {seconds:.1f} s, chained digest {result['digest'][:16]}..."
    )


def subscribe(
    directory: DirOpt,
    agreement: Annotated[str, typer.Argument(help="agreement id of a live stream")],
    purpose: Annotated[str, typer.Option(help="purpose of this use")] = "spc-monitoring",
    characteristic: Annotated[str, typer.Option(help="field watched by SPC")] = "score",
    usl: Annotated[float | None, typer.Option(help="upper spec limit")] = 0.5,
    watch: Annotated[float, typer.Option(help="print arrivals and alerts for N seconds")] = 0.0,
) -> None:
    """Subscribe to a live stream; the node runs SPC early warning on what arrives."""
    body = {
        "agreement_id": agreement,
        "purpose": purpose,
        "characteristic": characteristic,
        "usl": usl,
    }
    sub = _call(directory, "POST", "/v1/contracts/subscriptions", json=body)
    sid = sub["subscription_id"]
    console.print(f"subscription {sid} to {sub['provider']} running")
    deadline, shown = time.monotonic() + watch, 0
    while time.monotonic() < deadline:
        time.sleep(1.0)
        sub = _call(directory, "GET", f"/v1/contracts/subscriptions/{sid}")
        for alert in sub["alerts"][shown:]:
            console.print(f"[red]SPC alert[/red] {alert['description']} ({alert['station']})")
        shown = len(sub["alerts"])
        console.print(f"{sub['received']} records, p50 latency {sub['latency_ms_p50']} ms")


@contracts_app.callback(invoke_without_command=True)
def contracts(ctx: typer.Context, directory: DirOpt) -> None:
    """Agreements, transfers, deletion duties and receipts of this node."""
    ctx.obj = directory
    if ctx.invoked_subcommand is not None:
        return
    agreements = _call(directory, "GET", "/v1/contracts/agreements")
    table = Table("agreement", "role", "asset", "provider", "consumer", "active", "digest")
    for a in agreements:
        table.add_row(
            a["agreement_id"],
            a["role"],
            a["asset_id"],
            a["provider_id"],
            a["consumer_id"],
            "yes" if a["active"] else "no",
            a["digest"][:16],
        )
    console.print(table)
    transfers = _call(directory, "GET", "/v1/contracts/transfers")
    if transfers:
        table = Table("transfer", "agreement", "role", "state", "rows")
        for t in transfers:
            table.add_row(
                t["transfer_id"], t["agreement_id"], t["role"], t["state"], str(t["offset"])
            )
        console.print(table)
    duties = _call(directory, "GET", "/v1/contracts/duties")
    if duties:
        table = Table("deletion duty: agreement", "consumer", "order", "deadline", "status")
        for d in duties:
            table.add_row(
                d["agreement_id"],
                d["consumer_id"],
                d["order_id"] or "-",
                d["deadline"] or "-",
                d["status"],
            )
        console.print(table)
    _print_receipts(_call(directory, "GET", "/v1/contracts/receipts"))


def _print_receipts(receipts: list[dict[str, Any]]) -> None:
    if not receipts:
        return
    table = Table("receipt", "agreement", "order", "rows", "sha256", "deleted at")
    for r in receipts:
        table.add_row(
            r["receipt_id"],
            r["agreement_id"],
            r["order_id"],
            str(r["row_count"]),
            r["content_sha256"][:16],
            r["deleted_at"],
        )
    console.print(table)


@contracts_app.command("sweep")
def sweep(ctx: typer.Context) -> None:
    """Delete expired data now and send the signed deletion receipts."""
    result = _call(ctx.obj, "POST", "/v1/contracts/retention/sweep")
    console.print(f"{result['rows_deleted']} rows deleted")
    _print_receipts(result["receipts"])


@contracts_app.command("terminate")
def terminate(
    ctx: typer.Context,
    agreement: Annotated[str, typer.Argument(help="agreement id")],
    reason: Annotated[str, typer.Option(help="why")] = "terminated by the operator",
) -> None:
    """End an agreement; the other party is told and nothing more flows under it."""
    result = _call(
        ctx.obj, "POST", f"/v1/contracts/agreements/{agreement}/terminate", json={"reason": reason}
    )
    console.print(f"agreement {agreement} terminated at {result['terminated_at']}")


@contracts_app.command("show")
def show(
    ctx: typer.Context, agreement: Annotated[str, typer.Argument(help="agreement id")]
) -> None:
    """Print an agreement's canonical signed bytes and both signatures as JSON."""
    console.print_json(json.dumps(_call(ctx.obj, "GET", f"/v1/contracts/agreements/{agreement}")))


@contracts_app.command("changes")
def changes(
    ctx: typer.Context,
    agreement: Annotated[str | None, typer.Argument(help="agreement id")] = None,
) -> None:
    """Corrections and withdrawals received: record, version, hash and when."""
    query = {"agreement_id": agreement} if agreement else {}
    found = _call(ctx.obj, "GET", "/v1/contracts/received/changes", params=query)
    for c in found:
        change = "withdrawn" if c["withdrawn"] else "corrected"
        console.print(
            f"{c['received_at']} {c['agreement_id']} {c['record_key']} v{c['version']} "
            f"{change} (order {c['order_id']}, sha256 {c['content_sha256'][:16]}...)",
            soft_wrap=True,
            highlight=False,
        )
    if not found:
        console.print("no corrections or withdrawals received")


def withdraw(
    directory: DirOpt,
    kind: Annotated[str, typer.Option(help="QDM kind, e.g. inspection")],
    key: Annotated[
        list[str], typer.Option(help="natural key field=value, repeatable (inspection_id=...)")
    ],
) -> None:
    """Withdraw one of our QDM records; consumers holding a copy receive a tombstone."""
    fields: dict[str, str] = {}
    for item in key:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{item!r} is not field=value", param_hint="--key")
        fields[name] = value
    result = _call(
        directory, "POST", "/v1/contracts/withdrawals", json={"kind": kind, "key": fields}
    )
    console.print(
        f"{kind} {fields} withdrawn at {result['withdrawn_at']} (version {result['version']})"
    )


@order_app.command("close")
def order_close(directory: DirOpt, order: Annotated[str, typer.Argument(help="order id")]) -> None:
    """Close an order: its agreements' retention deadlines start; consumers are told."""
    result = _call(directory, "POST", f"/v1/contracts/orders/{order}/close")
    console.print(
        f"order {order} closed at {result['closed_at']}; "
        f"{len(result['agreements'])} agreements notified"
    )


def mount(app: typer.Typer) -> None:
    """Add the contract commands to the ``qdspace`` app."""
    for command in (catalog, negotiate, transfer, subscribe, withdraw):
        app.command(command.__name__)(command)
    app.add_typer(contracts_app, name="contracts")
    app.add_typer(order_app, name="order")
