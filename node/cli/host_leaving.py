"""``qdspace host tenant export | remove``: a tenant leaving its host.

A tenant leaves with its member (``export``: a standalone node directory with the same
identity, data and agreements) or for good (``remove``: purge, deliver its deletion
receipts, delete its files and keys). Both are here, registered on `node.cli.host`'s
``tenant`` group, so that file keeps the host's daily commands (init, start, add, list,
quota, suspend, resume, token, ledger). Light imports only, as there: each command
imports the host modules when it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from qdspace.node.cli.errors import clean_errors
from qdspace.node.cli.host import HostDirOpt, NameOpt, console, tenant_app


@tenant_app.command("export")
@clean_errors
def tenant_export(
    directory: HostDirOpt,
    name: NameOpt,
    out: Annotated[Path, typer.Option(help="the new node directory (must not exist, or be empty)")],
    grpc_port: Annotated[
        int | None, typer.Option(help="its gRPC port (default: the tenant's)")
    ] = None,
    api_port: Annotated[
        int | None, typer.Option(help="its operator API port (default: the node default)")
    ] = None,
    regulator_port: Annotated[
        int | None, typer.Option(help="its regulator API port (default: the tenant's)")
    ] = None,
    advertise_peer: Annotated[
        str | None, typer.Option(help="host:port members reach it at (default: the tenant's)")
    ] = None,
) -> None:
    """Export a tenant as a standalone node directory (same identity, data, agreements).

    The host must be stopped or the tenant suspended; it stays suspended here."""
    from qdspace.node.host.export import Ports, export_tenant

    ports = Ports(grpc_port, api_port, regulator_port, advertise_peer)
    done = export_tenant(directory, name, out, ports)
    console.print(f"tenant {name} ({done.member_id}) exported to {done.destination}")
    console.print(f"secret files unsealed (0600): {', '.join(done.unsealed) or 'none'}")
    if done.db_url_file is not None:
        console.print(
            f"its PostgreSQL database stays where it is: start it with "
            f"`QDSPACE_DB_URL_FILE={done.db_url_file} qdspace node start --dir {done.destination}`"
        )
    else:
        console.print(f"start it with `qdspace node start --dir {done.destination}`")
    console.print(
        f"the tenant stays in this host, suspended, until `qdspace host tenant remove --dir "
        f"{directory} --name {name} --yes` (never serve it from both places at once; removal "
        "deletes the host's copy only, nothing is purged)"
    )


@tenant_app.command("remove")
@clean_errors
def tenant_remove(
    directory: HostDirOpt,
    name: NameOpt,
    yes: Annotated[bool, typer.Option("--yes", help="confirm: this cannot be undone")] = False,
    wait_s: Annotated[
        float,
        typer.Option(help="how long to wait for the deletion receipts' delivery and anchoring"),
    ] = 120.0,
) -> None:
    """Remove a tenant: purge, deliver its deletion receipts, delete its files and keys.

    Needs the host running (its providers must receive the receipts); an exported
    tenant's removal deletes the host's copy only."""
    import time

    from qdspace.node.host.client import call_host, running_host
    from qdspace.node.host.errors import RemovalNotConfirmed, TenantBusy
    from qdspace.node.host.names import check_name
    from qdspace.node.host.registry import Registry

    check_name(name)
    if not yes:
        raise RemovalNotConfirmed(
            f"removing tenant {name} deletes its data and keys for good; add --yes"
        )
    record = Registry(directory.resolve()).get(name)
    host = running_host(directory)
    if host is None:  # the host's runtime, imported only here: the common case asks the host
        from qdspace.node.host.leaving import remove_offline

        removed: dict[str, Any] = remove_offline(directory, name).__dict__
    else:
        path = f"/host/v1/tenants/{name}"
        confirm = {"confirm": name}
        if not record.exported_to:
            counts = call_host(directory, host, "POST", f"{path}/purge", confirm)
            console.print(
                f"tenant {name}: purged: {counts['terminated']} agreements ended, "
                f"{counts['rows_deleted']} rows deleted, {counts['receipts']} receipts signed"
            )
            for failure in counts["failures"]:
                console.print(f"  not deleted: {failure}")
            deadline = time.monotonic() + wait_s
            owed = {"undelivered": int(counts["undelivered"]), "unanchored": 0}
            if not owed["undelivered"]:
                owed = call_host(directory, host, "GET", f"{path}/outbox")
            while owed["undelivered"] or owed["unanchored"]:
                left = (
                    f"{owed['undelivered']} messages to its providers undelivered, "
                    f"{owed['unanchored']} records not yet anchored"
                )
                if time.monotonic() > deadline:
                    raise TenantBusy(
                        f"tenant {name}: {left} after {wait_s:.0f}s; it was not removed "
                        "(remove again later)"
                    )
                console.print(f"  waiting: {left}")
                time.sleep(1.0)
                owed = call_host(directory, host, "GET", f"{path}/outbox")
        removed = call_host(directory, host, "POST", f"{path}/remove", confirm)
    if removed["purged"]:
        console.print(f"tenant {name} removed: receipts delivered, its files and keys deleted")
    else:
        console.print(f"tenant {name} removed from the host (exported: nothing purged)")
    if removed["database"]:
        console.print(
            f"its PostgreSQL database was not dropped: drop it yourself ({removed['database']})"
        )
