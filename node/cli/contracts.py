"""``qdspace catalog | negotiate | transfer | subscribe | unsubscribe | contracts | order close``.

Thin commands over a running node's operator API (``/v1/contracts``): the node
holds the keys, the contract store and the peer channels, so the CLI only names
the node (``--dir DIR`` on this machine, or ``--api-url``/``--token-file`` anywhere; see
:mod:`node.cli.connect`), calls it through :class:`node.client.OperatorClient` and
prints what comes back. A refusal is a ``ClientError`` naming the route, the status
and the peer's reason; the CLI's error handler prints it on one line. The client is
imported when a command runs, so these commands start without the server stack;
the times they print are of the request alone. Listing commands take ``--json``.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from qdspace.node.cli.agreement import mount as mount_agreement
from qdspace.node.cli.connect import (
    ApiUrlOpt,
    CaFileOpt,
    DirOpt,
    JsonOpt,
    Target,
    TokenFileOpt,
    calls_node,
    print_json,
    subcommand_target,
)
from qdspace.node.cli.connect import target as name_target
from qdspace.node.cli.errors import clean_errors
from qdspace.node.cli.terms import FieldOpt, OrderOpt, RetentionOpt, ValidUntilOpt

console = Console()
err = Console(stderr=True)
#: the newest transfers, agreements and receipts `qdspace contracts` lists, and how many
#: deletion duties (a node keeps one of each per order and partner)
TRANSFERS_SHOWN = 20
AGREEMENTS_SHOWN = 20
RECEIPTS_SHOWN = 20
DUTIES_SHOWN = 20
#: `policies.retention.ATTENTION_ORDER`, spelt as the API does (not imported: this module
#: stays light; a test keeps the two alike)
DUTY_ATTENTION = ("overdue", "due", "pending", "fulfilled_late", "fulfilled")

contracts_app = typer.Typer(help="agreements, transfers, deletion duties and receipts")
order_app = typer.Typer(no_args_is_help=True, help="orders this node supplies")


@clean_errors
@calls_node
def catalog(
    target: Target,
    peer: Annotated[str, typer.Argument(help="provider member name")],
    kind: Annotated[str, typer.Option(help="only assets of this kind")] = "",
    as_json: JsonOpt = False,
) -> None:
    """List the assets a provider offers us, with their offers."""
    with target.client() as node:
        assets = node.catalog(peer, kind)
    if as_json:
        print_json(assets)
        return
    for a in assets:
        perm = a["offer"]["permission"][0]["constraint"]
        offered = next(
            (c["rightOperand"] for c in perm if c["leftOperand"] == "fields"), a["fields"]
        )
        console.print(f"[bold]{a['asset_id']}[/bold] ({a['kind']}): {a['title']}", soft_wrap=True)
        console.print(f"  fields offered: {', '.join(offered)}", soft_wrap=True, highlight=False)
        if a["pseudonymized"]:
            console.print(f"  pseudonymised: {', '.join(a['pseudonymized'])}", highlight=False)


@clean_errors
@calls_node
def negotiate(
    target: Target,
    peer: Annotated[str, typer.Argument(help="provider member name")],
    asset: Annotated[str, typer.Argument(help="asset id from its catalog")],
    purpose: Annotated[list[str], typer.Option(help="purpose, repeatable")],
    order: OrderOpt = None,
    field: FieldOpt = None,
    retention_days: RetentionOpt = None,
    valid_until: ValidUntilOpt = None,
) -> None:
    """Negotiate an agreement for an asset (request, counter-offer, signatures)."""
    with target.client() as node:
        started = time.perf_counter()
        result = node.negotiate(
            peer,
            asset,
            purpose,
            orders=order,
            fields=field,
            retention_days=retention_days,
            valid_until=valid_until,
        )
        ms = (time.perf_counter() - started) * 1000
    if result["state"] != "FINALIZED":
        err.print(f"negotiation {result['negotiation_id']} {result['state']}: {result['reason']}")
        raise typer.Exit(1)
    console.print(
        f"agreement [bold]{result['agreement_id']}[/bold] with {peer} for {asset}: "
        f"signed by both parties ({result['messages']} messages, {ms:.0f} ms)"
    )


@clean_errors
@calls_node
def transfer(
    target: Target,
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
    with target.client() as node:
        started = time.perf_counter()
        if resume:
            result = node.resume_transfer(resume)
        else:
            result = node.transfer(
                agreement, purpose, order_id=order, fields=field, since_last=since_last
            )
        seconds = time.perf_counter() - started
    since = f" since position {result['since']}" if result.get("since") else ""
    console.print(
        f"transfer {result['transfer_id']} {result['state']}: {result['offset']} rows{since} "
        f"in {seconds:.1f} s, chained digest {result['digest'][:16]}..."
    )


@clean_errors
@calls_node
def subscribe(
    target: Target,
    agreement: Annotated[str, typer.Argument(help="agreement id of a live stream")],
    purpose: Annotated[str, typer.Option(help="purpose of this use")] = "spc-monitoring",
    characteristic: Annotated[str, typer.Option(help="field watched by SPC")] = "score",
    usl: Annotated[float | None, typer.Option(help="upper spec limit")] = 0.5,
    watch: Annotated[float, typer.Option(help="print arrivals and alerts for N seconds")] = 0.0,
) -> None:
    """Subscribe to a live stream; the node runs SPC early warning on what arrives."""
    with target.client() as node:
        sub = node.subscribe(agreement, purpose, characteristic=characteristic, usl=usl)
        sid = sub["subscription_id"]
        console.print(f"subscription {sid} to {sub['provider']} running")
        deadline, shown = time.monotonic() + watch, 0
        while time.monotonic() < deadline:
            time.sleep(1.0)
            sub = node.subscription(sid)
            # the answer carries the newest alerts; those raised since the last look
            newest, total = sub["alerts"], sub["alerts_total"]
            for alert in newest[max(0, len(newest) - (total - shown)) :]:
                console.print(f"[red]SPC alert[/red] {alert['description']} ({alert['station']})")
            shown = total
            console.print(f"{sub['received']} records, p50 latency {sub['latency_ms_p50']} ms")


@clean_errors
@calls_node
def unsubscribe(
    target: Target,
    subscription: Annotated[str, typer.Argument(help="subscription id")],
) -> None:
    """End a live subscription for good: its stream stops and no restart resumes it."""
    with target.client() as node:
        node.end_subscription(subscription)
    console.print(f"subscription {subscription} ended")


@contracts_app.callback(invoke_without_command=True)
@clean_errors
def contracts(
    ctx: typer.Context,
    directory: DirOpt = None,
    api_url: ApiUrlOpt = None,
    token_file: TokenFileOpt = None,
    ca_file: CaFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The newest 20 agreements, transfers and receipts of this node, and its deletion
    duties (how many in each status; the 20 that need someone first). Every one of them:
    GET /v1/contracts/agreements, /transfers, /receipts, /duties, a page at a time."""
    if ctx.invoked_subcommand is not None and directory is None and not api_url:
        ctx.obj = None  # the subcommand names the node itself, or fails saying how
        return
    ctx.obj = name_target(directory, api_url, token_file, ca_file)
    if ctx.invoked_subcommand is not None:
        return
    with ctx.obj.client() as node:
        # the newest (a node keeps an agreement per order and partner, a consumer
        # pulling every few minutes a transfer per pull: thousands)
        agreements = node.agreements(limit=AGREEMENTS_SHOWN + 1, newest_first=True)
        transfers = node.transfers(limit=TRANSFERS_SHOWN + 1, newest_first=True)
        duties = node.duties(limit=DUTIES_SHOWN + 1, attention_first=True)
        counts = node.duty_counts()
        receipts = node.receipts(limit=RECEIPTS_SHOWN + 1, newest_first=True)
    more = {
        "agreements": len(agreements) > AGREEMENTS_SHOWN,
        "transfers": len(transfers) > TRANSFERS_SHOWN,
        "receipts": len(receipts) > RECEIPTS_SHOWN,
        "duties": len(duties) > DUTIES_SHOWN,
    }
    agreements = agreements[:AGREEMENTS_SHOWN]
    transfers = transfers[:TRANSFERS_SHOWN]
    receipts = receipts[:RECEIPTS_SHOWN]
    summary = duty_summary(counts)
    duties = duties[:DUTIES_SHOWN]
    if as_json:
        print_json(
            {
                "agreements": agreements,
                "transfers": transfers,
                "duties": duties,
                "receipts": receipts,
            }
        )
        return
    table = Table(
        "agreement (newest first)", "role", "asset", "provider", "consumer", "active", "digest"
    )
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
    _more(more["agreements"], f"the newest {AGREEMENTS_SHOWN}", "agreements")
    if transfers:
        table = Table("transfer (newest first)", "agreement", "role", "state", "rows")
        for t in transfers:
            table.add_row(
                t["transfer_id"], t["agreement_id"], t["role"], t["state"], str(t["offset"])
            )
        console.print(table)
        _more(more["transfers"], f"the newest {TRANSFERS_SHOWN}", "transfers")
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
        console.print(f"deletion duties: {summary}")
        _more(more["duties"], f"the {DUTIES_SHOWN} that need someone first", "duties")
    _print_receipts(receipts)
    _more(more["receipts"], f"the newest {RECEIPTS_SHOWN}", "receipts")


def _more(more: bool, shown: str, what: str) -> None:
    """Where the rest of a list is, when it was cut."""
    if more:
        console.print(
            f"({shown}; every one: GET /v1/contracts/{what}, a page at a time with limit "
            "and cursor)"
        )


def duty_summary(counts: dict[str, Any]) -> str:
    """How many duties stand in each status (the API's counts), in the order they are
    listed: overdue, due, pending, fulfilled late, fulfilled."""
    found = [f"{counts[s]} {s.replace('_', ' ')}" for s in DUTY_ATTENTION if counts.get(s)]
    return ", ".join(found) or "none"


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
@clean_errors
def sweep(ctx: typer.Context) -> None:
    """Delete expired data now and send the signed deletion receipts."""
    with subcommand_target(ctx).client() as node:
        result = node.sweep()
    console.print(f"{result['rows_deleted']} rows deleted")
    _print_receipts(result["receipts"])


@contracts_app.command("purge")
@clean_errors
def purge(
    ctx: typer.Context,
    directory: DirOpt = None,
    api_url: ApiUrlOpt = None,
    token_file: TokenFileOpt = None,
    ca_file: CaFileOpt = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="confirm: this deletes the data and cannot be undone")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Leave the data space: end every agreement as consumer, delete all data received
    under them now, and send each provider a signed deletion receipt."""
    if not yes:
        raise typer.BadParameter(
            "a purge deletes everything received under agreements, for good; add --yes",
            param_hint="--yes",
        )
    with subcommand_target(ctx, directory, api_url, token_file, ca_file).client() as node:
        result = node.purge(node.healthz()["member_id"])
    if as_json:
        print_json(result)
        return
    console.print(
        f"{len(result['terminated'])} agreements ended, {result['rows_deleted']} rows deleted, "
        f"{len(result['receipts'])} receipts issued "
        f"({result['already_answered']} answered before)"
    )
    _print_receipts(result["receipts"])
    for f in result["failures"]:
        where = f"agreement {f['agreement_id']} order {f['order_id']!r}"
        err.print(f"not deleted: {where}: {f['error']}", highlight=False)
    if result["undelivered"]:
        err.print(f"{result['undelivered']} messages to providers not delivered yet (retried)")
    if result["failures"]:
        raise typer.Exit(1)


@contracts_app.command("terminate")
@clean_errors
def terminate(
    ctx: typer.Context,
    agreement: Annotated[str, typer.Argument(help="agreement id")],
    reason: Annotated[str, typer.Option(help="why")] = "terminated by the operator",
) -> None:
    """End an agreement; the other party is told and nothing more flows under it."""
    with subcommand_target(ctx).client() as node:
        result = node.terminate(agreement, reason)
    console.print(f"agreement {agreement} terminated at {result['terminated_at']}")


@contracts_app.command("outbox")
@clean_errors
def outbox(
    ctx: typer.Context,
    retry: Annotated[
        str | None,
        typer.Option(
            metavar="PEER",
            help="queue again the messages set aside after this peer refused them",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """What this node owes its peers (terminations, receipts, closures, alerts, DSP
    callbacks), by peer: how many, since when, the next try and the last error, and the
    messages set aside after a peer refused them again and again."""
    with subcommand_target(ctx).client() as node:
        if retry is not None:
            retried = node.retry_outbox(retry)
        owed = node.outbox()
    if retry is not None and not as_json:
        console.print(f"{retried['requeued']} message(s) to {retry} queued again")
    if as_json:
        print_json(owed)
        return
    if not owed["peers"]:
        console.print("nothing owed: every message was delivered")
        return
    table = Table("peer", "undelivered", "oldest queued", "next try", "tries", "set aside")
    for p in owed["peers"]:
        tries = f"{p['attempts']}{' (delivering)' if p['delivering'] else ''}"
        table.add_row(
            p["peer_id"], str(p["undelivered"]), p["oldest_queued_at"] or "-",
            p["next_attempt_at"] or "-", tries, str(p["refused"]),
        )  # fmt: skip
    console.print(table)
    console.print(f"{owed['undelivered']} message(s) owed to {len(owed['peers'])} peer(s)")
    for p in owed["peers"]:  # whole, on lines of their own: an error is a sentence or two
        if p["last_error"]:
            line = f"{p['peer_id']}: last error: {p['last_error']}"
            console.print(line, soft_wrap=True, highlight=False, markup=False)
    for p in owed["peers"]:
        if p["refused"]:
            line = (
                f"{p['peer_id']}: {p['refused']} set aside after its refusals "
                f"(qdspace contracts outbox --retry {p['peer_id']}): {p['refused_error']}"
            )
            console.print(line, soft_wrap=True, highlight=False, markup=False)


@contracts_app.command("changes")
@clean_errors
def changes(
    ctx: typer.Context,
    agreement: Annotated[str | None, typer.Argument(help="agreement id")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Corrections and withdrawals received: record, version, hash and when."""
    with subcommand_target(ctx).client() as node:
        found = node.received_changes(agreement)
    if as_json:
        print_json(found)
        return
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


@clean_errors
@calls_node
def withdraw(
    target: Target,
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
    with target.client() as node:
        result = node.withdraw(kind, fields)
    console.print(
        f"{kind} {fields} withdrawn at {result['withdrawn_at']} (version {result['version']})"
    )


@order_app.command("close")
@clean_errors
@calls_node
def order_close(
    target: Target,
    order: Annotated[str, typer.Argument(help="order id")],
) -> None:
    """Close an order: its agreements' retention deadlines start; consumers are told."""
    with target.client() as node:
        result = node.close_order(order)
    console.print(
        f"order {order} closed at {result['closed_at']}; "
        f"{len(result['agreements'])} agreements notified"
    )


def mount(app: typer.Typer) -> None:
    """Add the contract commands to the ``qdspace`` app."""
    mount_agreement(contracts_app)
    for command in (catalog, negotiate, transfer, subscribe, unsubscribe, withdraw):
        app.command(command.__name__)(command)
    app.add_typer(contracts_app, name="contracts")
    app.add_typer(order_app, name="order")
