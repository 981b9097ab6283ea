"""``qdspace host``: a managed host serving many members (`qdspace.node.host`).

``host init`` makes the host directory (settings, master key, host token, the operator
listener's certificate); ``host tenant add`` enrolls a tenant with the authority like any
member (by the authority's directory, or its URL and a one-time code); ``tenant list |
suspend | resume | renew | dsp | token | export | remove`` manage them; ``host start``
serves them all until SIGTERM.
Suspending and resuming go through the running host when there is one (so its streams
end at once), else they change the registry for the next start.

Light imports only at module level (``qdspace --help`` must stay quick): each command
imports the host modules when it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from qdspace.node.cli.choices import Role
from qdspace.node.cli.connect import JsonOpt, print_json
from qdspace.node.cli.errors import clean_errors

host_app = typer.Typer(no_args_is_help=True, help="a managed host: many members in one process")
tenant_app = typer.Typer(no_args_is_help=True, help="the tenants of a managed host")
host_app.add_typer(tenant_app, name="tenant")

console = Console()

HostDirOpt = Annotated[Path, typer.Option("--dir", help="host directory")]
NameOpt = Annotated[str, typer.Option("--name", help="tenant name (lowercase a-z, 0-9, -)")]
MaxRowsOpt = Annotated[
    str | None, typer.Option("--max-rows", help="rows it may store ('unlimited': none)")
]
MaxStorageOpt = Annotated[
    str | None,
    typer.Option(
        "--max-storage",
        help="its database and the files it keeps (model versions, job checkpoints), "
        "e.g. 2GiB, 500MB",
    ),
]
RpsOpt = Annotated[
    str | None, typer.Option("--rps", help="peer and API requests a second (burst: 2x)")
]
BurstOpt = Annotated[str | None, typer.Option("--burst", help="requests allowed at once")]
MaxStreamsOpt = Annotated[
    str | None, typer.Option("--max-streams", help="live subscriptions/transfers open at once")
]
MaxCallsOpt = Annotated[str | None, typer.Option("--max-calls", help="its calls in flight at once")]


def _quota_changes(
    max_rows: str | None,
    max_storage: str | None,
    rps: str | None,
    burst: str | None,
    max_streams: str | None,
    max_calls: str | None,
) -> dict[str, Any]:
    """The quota options given, parsed (each checked again as a whole quota)."""
    from qdspace.node.host.quotas import parse_count, parse_rate, parse_size

    changes: dict[str, Any] = {}
    if max_rows is not None:
        changes["max_rows"] = parse_count(max_rows, "max-rows")
    if max_storage is not None:
        changes["max_storage"] = parse_size(max_storage, "max-storage")
    if rps is not None:
        changes["rps"] = parse_rate(rps, "rps")
    if burst is not None:
        changes["burst"] = parse_count(burst, "burst")
    if max_streams is not None:
        changes["max_streams"] = parse_count(max_streams, "max-streams")
    if max_calls is not None:
        changes["max_calls"] = parse_count(max_calls, "max-calls")
    return changes


def _quota_text(quota: dict[str, Any]) -> str:
    from qdspace.node.host.quotas import show
    from qdspace.util.sizes import show_size

    if not quota:
        return ""
    return (
        f"rows {show(quota['max_rows'])}, storage {show_size(quota['max_storage'])}, "
        f"{show(quota['rps'])} rps (burst {show(quota['burst'])}), "
        f"streams {show(quota['max_streams'])}, calls {show(quota['max_calls'])}"
    )


@host_app.command("init")
@clean_errors
def host_init(
    directory: HostDirOpt,
    api_host: Annotated[str, typer.Option(help="operator listener address")] = "127.0.0.1",
    api_port: Annotated[int, typer.Option(help="operator listener port (HTTPS)")] = 8600,
    tenant_grpc_host: Annotated[str, typer.Option(help="tenants' gRPC address")] = "127.0.0.1",
    tenant_ports: Annotated[
        str, typer.Option(help="the tenants' gRPC ports, FIRST-LAST")
    ] = "7600-7699",
    tenant_regulator_ports: Annotated[
        str, typer.Option(help="ports for tenants' regulator APIs, FIRST-LAST (default: none)")
    ] = "",
    advertise_host: Annotated[
        str, typer.Option(help="host name members dial for a tenant (default: its address)")
    ] = "",
    hostname: Annotated[
        list[str] | None,
        typer.Option("--hostname", help="a name for the listener's certificate, repeatable"),
    ] = None,
) -> None:
    """Create a host directory: settings, master key, host token and listener TLS."""
    from pydantic import ValidationError

    from qdspace.node.host.config import HostSettings
    from qdspace.node.host.tenants import init_host

    try:
        settings = HostSettings(
            api_host=api_host,
            api_port=api_port,
            tenant_grpc_host=tenant_grpc_host,
            tenant_grpc_ports=tenant_ports,
            tenant_regulator_ports=tenant_regulator_ports,
            advertise_host=advertise_host,
            hostnames=hostname or ["localhost", "127.0.0.1"],
        )
    except ValidationError as exc:
        raise typer.BadParameter(exc.errors()[0]["msg"]) from None
    files = init_host(directory, settings)
    console.print(f"host created in {files.directory}")
    console.print(f"host token: {files.host_token} (0600); master key: {files.master_key}")


@host_app.command("start")
@clean_errors
def host_start(
    directory: HostDirOpt,
    log_format: Annotated[
        str | None, typer.Option("--log-format", help="text (default) or json")
    ] = None,
) -> None:
    """Serve every tenant (peer gRPC each, one operator listener) until SIGTERM."""
    from qdspace.util.startup import collector_paused

    with collector_paused():  # the server stack, loaded once (util.startup)
        from qdspace.node.host.config import HostSettings
        from qdspace.node.host.serve import run_host
        from qdspace.node.logs import log_format as chosen_format
        from qdspace.node.logs import setup_logging

    settings = HostSettings.load(directory.resolve())
    try:
        fmt = chosen_format(log_format)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--log-format") from None
    setup_logging(settings.log_level, directory.resolve() / "logs" / "host.log", fmt)
    run_host(directory)


@tenant_app.command("add")
@clean_errors
def tenant_add(
    directory: HostDirOpt,
    name: NameOpt,
    role: Annotated[Role, typer.Option(help="the member's role")],
    authority: Annotated[
        Path | None, typer.Option(help="the authority's directory (on this machine)")
    ] = None,
    authority_url: Annotated[str, typer.Option(help="the authority service's URL")] = "",
    code_file: Annotated[
        Path | None, typer.Option(help="a file holding the one-time enrollment code")
    ] = None,
    grpc_port: Annotated[
        int | None, typer.Option(help="the tenant's gRPC port (default: next free in range)")
    ] = None,
    regulator_port: Annotated[
        int | None,
        typer.Option(help="its regulator API's port (default: next free in range, if any)"),
    ] = None,
    dsp_port: Annotated[
        int | None,
        typer.Option(help="its Dataspace Protocol listener's port (default: no DSP)"),
    ] = None,
    db_url_file: Annotated[
        Path | None,
        typer.Option(help="a file holding its own database URL (default: SQLite); kept sealed"),
    ] = None,
    hostname: Annotated[
        list[str] | None,
        typer.Option("--hostname", help="a name for its certificate, repeatable"),
    ] = None,
    max_rows: MaxRowsOpt = None,
    max_storage: MaxStorageOpt = None,
    rps: RpsOpt = None,
    burst: BurstOpt = None,
    max_streams: MaxStreamsOpt = None,
    max_calls: MaxCallsOpt = None,
) -> None:
    """Enroll a new tenant (its own keys, certificate and member id); served at once by a
    running host, else from its next ``host start``. Quota options not given are the
    host's defaults."""
    from qdspace.node.host.tenants import Enrollment, add_tenant
    from qdspace.node.identity.files import read_file

    quota = _quota_changes(max_rows, max_storage, rps, burst, max_streams, max_calls)

    code = read_file(code_file, "enrollment code").decode().strip() if code_file else ""
    db_url = read_file(db_url_file, "database URL").decode().strip() if db_url_file else ""
    enrollment = Enrollment(
        authority_dir=authority, authority_url=authority_url, code=code, hostnames=hostname or ()
    )
    record = add_tenant(
        directory,
        name,
        role.value,
        enrollment,
        grpc_port=grpc_port,
        regulator_port=regulator_port,
        dsp_port=dsp_port,
        db_url=db_url,
        quota=quota,
    )
    console.print(f"tenant [bold]{record.name}[/bold] ({record.role}) added")
    dsp = f"; DSP port {record.dsp_port}" if record.dsp_port else ""
    console.print(f"member id {record.member_id}; gRPC port {record.grpc_port}{dsp}")
    _serve_if_running(directory, record.name)
    hint = f"qdspace host tenant token --dir {directory} --name {name} --out FILE"
    console.print(f"its operator token: `{hint}`")


def _serve_if_running(directory: Path, name: str) -> None:
    """A running host serves the new tenant now (no restart of the others)."""
    shown = _on_running_host(directory, name, "start", "added")
    if shown is None:
        console.print("served from the host's next start (`qdspace host start`)")
        return
    console.print(f"served now by the running host ({shown['status']}, port {shown['grpc_port']})")


def _on_running_host(directory: Path, name: str, verb: str, done: str) -> dict[str, Any] | None:
    """The running host's answer to ``verb`` (``start``, ``reopen``) for tenant ``name``,
    None when no host runs; a tenant that does not serve after it is a `HostError`."""
    from qdspace.node.host.client import call_host, running_host
    from qdspace.node.host.errors import HostError

    host = running_host(directory)
    if host is None:
        return None
    shown: dict[str, Any] = call_host(directory, host, "POST", f"/host/v1/tenants/{name}/{verb}")
    if shown["status"] == "failed":
        raise HostError(f"tenant {name} was {done} but does not serve: {shown['error']}")
    return shown


def _tenants(directory: Path) -> list[dict[str, Any]]:
    from qdspace.node.host.client import call_host, running_host
    from qdspace.node.host.registry import Registry

    record = running_host(directory)
    if record is not None:
        listed: list[dict[str, Any]] = call_host(directory, record, "GET", "/host/v1/tenants")
        return listed
    from qdspace.node.host.config import HostSettings

    defaults = HostSettings.load(directory.resolve()).quota
    return [
        {
            **r.model_dump(mode="json"),
            "status": f"{r.state.value} (host not running)",
            "own_quota": r.quota is not None,
            "quota": (r.quota or defaults).model_dump(mode="json"),
        }
        for r in Registry(directory.resolve()).tenants()
    ]


@tenant_app.command("list")
@clean_errors
def tenant_list(directory: HostDirOpt, as_json: JsonOpt = False) -> None:
    """The tenants, their member ids, ports and state (live when the host runs)."""
    tenants = _tenants(directory)
    if as_json:
        print_json(tenants)
        return
    table = Table("name", "role", "member id", "ports", "status", "quota", "note")
    for t in tenants:
        note = t.get("error") or t.get("reason") or ""
        quota = _quota_text(t.get("quota") or {})
        quota += "" if t.get("own_quota") else " (host default)"
        ports = f"{t['grpc_port']}" + (f" DSP {t['dsp_port']}" if t.get("dsp_port") else "")
        table.add_row(t["name"], t["role"], t["member_id"], ports, t["status"], quota, note)
    console.print(table)


@tenant_app.command("quota")
@clean_errors
def tenant_quota(
    directory: HostDirOpt,
    name: NameOpt,
    max_rows: MaxRowsOpt = None,
    max_storage: MaxStorageOpt = None,
    rps: RpsOpt = None,
    burst: BurstOpt = None,
    max_streams: MaxStreamsOpt = None,
    max_calls: MaxCallsOpt = None,
    reset: Annotated[
        bool, typer.Option("--reset", help="back to the host's default quota")
    ] = False,
) -> None:
    """Change a tenant's quota: live through the running host, else for the next start."""
    from qdspace.node.host.client import call_host, running_host
    from qdspace.node.host.config import HostSettings
    from qdspace.node.host.errors import QuotaValueRefused
    from qdspace.node.host.names import check_name
    from qdspace.node.host.quotas import QuotaSettings
    from qdspace.node.host.registry import Registry

    check_name(name)
    changes = _quota_changes(max_rows, max_storage, rps, burst, max_streams, max_calls)
    if reset == bool(changes):
        raise QuotaValueRefused("give one or more quota options, or --reset (not both)")
    host = running_host(directory)
    if host is not None:
        body = {"changes": changes, "reset": reset}
        shown = call_host(directory, host, "PUT", f"/host/v1/tenants/{name}/quota", body)
        console.print(f"tenant {name}: quota {_quota_text(shown['quota'])} (host running)")
        return
    registry = Registry(directory.resolve())
    record = registry.get(name)
    defaults = HostSettings.load(directory.resolve()).quota
    chosen = (
        None
        if reset
        else QuotaSettings.of((record.quota or defaults).quota().with_changes(changes))
    )
    registry.set_quota(name, chosen)
    quota = (chosen or defaults).model_dump(mode="json")
    console.print(f"tenant {name}: quota {_quota_text(quota)} from the next host start")


def _set_state(directory: Path, name: str, action: str, reason: str = "") -> None:
    from qdspace.node.host.client import call_host, running_host
    from qdspace.node.host.names import check_name
    from qdspace.node.host.registry import Registry, TenantState

    check_name(name)
    record = running_host(directory)
    if record is not None:
        body = {"reason": reason} if action == "suspend" else None
        call_host(directory, record, "POST", f"/host/v1/tenants/{name}/{action}", body)
        done = "suspended" if action == "suspend" else "resumed"
        console.print(f"tenant {name}: {done} (host running)")
        return
    state = TenantState.SUSPENDED if action == "suspend" else TenantState.ACTIVE
    Registry(directory.resolve()).set_state(name, state, reason)
    console.print(f"tenant {name}: {state.value} from the next host start")


@tenant_app.command("suspend")
@clean_errors
def tenant_suspend(
    directory: HostDirOpt,
    name: NameOpt,
    reason: Annotated[str, typer.Option(help="shown to peers and the tenant")] = "",
) -> None:
    """Suspend a tenant: its streams end, peers get UNAVAILABLE, its API 423."""
    _set_state(directory, name, "suspend", reason)


@tenant_app.command("resume")
@clean_errors
def tenant_resume(directory: HostDirOpt, name: NameOpt) -> None:
    """Resume a suspended tenant."""
    _set_state(directory, name, "resume")


@tenant_app.command("renew")
@clean_errors
def tenant_renew(
    directory: HostDirOpt,
    name: NameOpt,
    authority: Annotated[
        Path | None,
        typer.Option(help="the authority's directory (default: the service the tenant joined)"),
    ] = None,
) -> None:
    """Renew a tenant's member certificate (a new TLS key, the same member id); a running
    host serves it at once (the tenant is opened again), else from its next start."""
    from qdspace.node.host.renewal import renew_tenant

    done = renew_tenant(directory, name, authority)
    console.print(
        f"tenant {name} ({done.member_id}): certificate renewed, serial {done.serial:x}, "
        f"valid until {done.not_after}"
    )
    _reopen_if_running(directory, name, "served with it")


def _reopen_if_running(directory: Path, name: str, what: str) -> None:
    """A running host opens the tenant again from its changed files (the others serve on)."""
    shown = _on_running_host(directory, name, "reopen", "changed")
    if shown is None:
        console.print(f"{what} from the host's next start (`qdspace host start`)")
        return
    console.print(f"{what} now: the running host opened tenant {name} again ({shown['status']})")


@tenant_app.command("dsp")
@clean_errors
def tenant_dsp(
    directory: HostDirOpt,
    name: NameOpt,
    port: Annotated[int | None, typer.Option(help="its Dataspace Protocol listener's port")] = None,
    off: Annotated[bool, typer.Option("--off", help="no DSP listener")] = False,
) -> None:
    """Give a tenant a DSP listener on a port of its own (or none, with --off); a running
    host opens the tenant again, so it serves (and publishes) it at once."""
    from qdspace.node.host.tenants import set_tenant_dsp

    if (port is None) == (not off):
        raise typer.BadParameter("give --port N or --off")
    record = set_tenant_dsp(directory, name, None if off else port)
    shown = f"DSP port {record.dsp_port}" if record.dsp_port else "no DSP listener"
    console.print(f"tenant {name}: {shown}")
    _reopen_if_running(directory, name, "served")


@tenant_app.command("token")
@clean_errors
def tenant_token_cmd(
    directory: HostDirOpt,
    name: NameOpt,
    out: Annotated[Path, typer.Option(help="write the token to this file (0600)")],
) -> None:
    """Hand a tenant's operator token to its staff, as a file (never on a command line)."""
    from qdspace.node.host.tenants import tenant_token
    from qdspace.util.files import write_atomic

    write_atomic(out, tenant_token(directory, name).encode() + b"\n", mode=0o600)
    console.print(f"tenant {name}: operator token written to {out} (0600)")


@tenant_app.command("ledger")
@clean_errors
def tenant_ledger(
    directory: HostDirOpt,
    name: NameOpt,
    rpc_url: Annotated[str, typer.Option(help="the chain's JSON-RPC URL")],
    contract: Annotated[str, typer.Option(help="the anchor contract's address")],
    chain_id: Annotated[int, typer.Option(help="the chain id the node must find there")],
    key_file: Annotated[
        Path, typer.Option(help="a file holding the tenant's chain account key (hex)")
    ],
) -> None:
    """Give a tenant a chain account: its key sealed like its other secrets, its records,
    agreements and deletion receipts anchored from then on (a running host opens the
    tenant again; else from its next start)."""
    from qdspace.node.host.anchoring import set_tenant_ledger
    from qdspace.util.redact import redact_url

    address = set_tenant_ledger(directory, name, rpc_url, contract, chain_id, key_file)
    console.print(  # the URL as stored, shown without the API key a hosted one carries
        f"tenant {name}: anchors to {redact_url(rpc_url)} at {contract} as {address} (key sealed; "
        f"{key_file} may be shredded)"
    )
    _reopen_if_running(directory, name, "anchoring")


# the leaving commands (export, remove) register on `tenant_app` in their own module
from qdspace.node.cli import host_leaving  # noqa: E402, F401
