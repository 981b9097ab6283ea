"""The ``qdspace`` command line: thin commands over the node's wiring.

Importing this module (and the command groups it mounts) loads typer and rich and
nothing else of weight: each command imports what it needs when it runs. Every
command pays for the module-level imports of all of them, so the server stack
(uvicorn, FastAPI, gRPC, SQLAlchemy, web3, the federation room) at module level
made ``qdspace --help`` take seconds (issue 21); ``tests/unit/node/test_cli_imports.py``
keeps it out and ``bench/cli.py`` measures the start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qdspace.node.cli.authority import authority_app
from qdspace.node.cli.choices import QdmKind, Role
from qdspace.node.cli.connect import DbUrlOpt, JsonOpt, Target, calls_node, print_json
from qdspace.node.cli.contracts import mount as mount_contracts
from qdspace.node.cli.dictionary import dictionary_app
from qdspace.node.cli.dsp import dsp_app
from qdspace.node.cli.enrollment import mount as mount_enrollment
from qdspace.node.cli.enrollment import parse_peers
from qdspace.node.cli.errors import clean_errors
from qdspace.node.cli.federation import fl_app
from qdspace.node.cli.host import host_app
from qdspace.node.cli.inspection import mount as mount_inspection
from qdspace.node.cli.investigation import investigation_app
from qdspace.node.cli.ledger import ledger_app
from qdspace.node.cli.ledger import verify as ledger_verify
from qdspace.node.cli.linein import connect_app
from qdspace.node.cli.maintenance import mount as mount_maintenance
from qdspace.node.cli.trace import trace_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help="qdspace connector node")
node_app = typer.Typer(no_args_is_help=True, help="a member's connector node")
peer_app = typer.Typer(no_args_is_help=True, help="calls to other members")
app.add_typer(authority_app, name="authority")
app.add_typer(node_app, name="node")
app.add_typer(peer_app, name="peer")
app.add_typer(ledger_app, name="ledger")
app.add_typer(fl_app, name="fl")
app.add_typer(host_app, name="host")
app.add_typer(investigation_app, name="investigation")
app.add_typer(trace_app, name="trace")
app.add_typer(dsp_app, name="dsp")
app.add_typer(dictionary_app, name="dictionary")
app.add_typer(connect_app, name="connect")
app.command("verify")(ledger_verify)  # `qdspace verify PROOF.json --rpc URL`
mount_inspection(app)  # train, inspect run/models/activate/explain
mount_contracts(app)  # catalog, negotiate, transfer, subscribe, contracts, order close
mount_enrollment(node_app)  # node csr, install, renew
mount_maintenance(node_app)  # node backup

console = Console()
err = Console(stderr=True)

DirOpt = Annotated[Path, typer.Option("--dir", help="node directory")]


def setup_logging(level: str, logfile: Path | None = None, fmt: str = "text") -> None:
    from qdspace.node.logs import setup_logging as setup

    setup(level, logfile, fmt)


# -- node ----------------------------------------------------------------------------------


@node_app.command("init")
@clean_errors
def node_init(
    directory: DirOpt,
    name: Annotated[str, typer.Option(help="member name, unique in the data space")],
    role: Annotated[Role, typer.Option(help="the member's role")],
    authority: Annotated[Path, typer.Option(help="authority directory")],
    grpc_port: Annotated[int, typer.Option(help="peer gRPC port")] = 7443,
    api_port: Annotated[int, typer.Option(help="operator API port (TLS)")] = 8443,
    regulator_port: Annotated[int, typer.Option(help="regulator API port (TLS)")] = 9443,
    db_url: DbUrlOpt = "",
    peer: Annotated[list[str] | None, typer.Option(help="NAME=HOST:PORT, repeatable")] = None,
) -> None:
    """Create a member's keys, certificate and node directory."""
    from qdspace.node.init import init_node

    settings = init_node(
        directory,
        authority,
        name=name,
        role=role.value,
        grpc_port=grpc_port,
        api_port=api_port,
        regulator_port=regulator_port,
        db_url=db_url,
        peers=parse_peers(peer or []),
    )
    console.print(f"node [bold]{name}[/bold] ({role}) created in {settings.directory}")
    console.print(f"member id {settings.member_id}")


@node_app.command("start")
@clean_errors
def node_start(
    directory: DirOpt,
    log_format: Annotated[
        str | None,
        typer.Option(
            "--log-format", help="text (default) or json lines on stdout; env QDSPACE_LOG_FORMAT"
        ),
    ] = None,
) -> None:
    """Run the node (peer gRPC, operator API and regulator API) until SIGTERM."""
    from qdspace.util.startup import collector_paused

    with collector_paused():  # the server stack, loaded once (util.startup)
        from qdspace.node.config import NodeSettings
        from qdspace.node.logs import log_format as chosen_format
        from qdspace.node.run import run_node

    settings = NodeSettings.load(directory)
    try:
        fmt = chosen_format(log_format)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--log-format") from None
    setup_logging(settings.log_level, settings.layout.node_log, fmt)
    run_node(directory)


@node_app.command("info")
@clean_errors
def node_info(directory: DirOpt) -> None:
    """Show a node's identity, configuration and database counts."""
    from qdspace.node.client_transport import read_runtime  # not node.run: the server stack
    from qdspace.node.config import NodeSettings
    from qdspace.node.disk_room import disk_line, disk_room
    from qdspace.node.identity.member import load_member_keys

    settings = NodeSettings.load(directory)
    ident = load_member_keys(settings.directory).identity
    runtime = read_runtime(settings.directory)
    console.print(f"[bold]{ident.name}[/bold] {ident.role} {ident.member_id}")
    console.print(f"certificate valid until {ident.not_after:%Y-%m-%d}, sha256 {ident.fingerprint}")
    console.print(f"running: {runtime or 'no'}")
    store = settings.open_store()
    try:
        for table, n in store.counts().items():
            console.print(f"  {table}: {n}")
        room = disk_room(store.engine, settings.min_free_disk_mib)
        if room is not None:  # on SQLite: what ingests and received rows leave room for
            console.print(disk_line(room.free(), room.min_free))
    finally:
        store.close()


@node_app.command("peer-add")
@clean_errors
def node_peer_add(
    directory: DirOpt,
    peer: Annotated[list[str], typer.Option(help="NAME=HOST:PORT, repeatable")],
) -> None:
    """Add peers to a node's directory of members."""
    from qdspace.node.init import add_peers

    settings = add_peers(directory, parse_peers(peer))
    console.print(f"peers of {settings.name}: {settings.peers}")


# -- ingest --------------------------------------------------------------------------------


@app.command("ingest")
@clean_errors
def ingest(
    kind: Annotated[QdmKind, typer.Option(help="QDM kind of the rows")],
    directory: Annotated[Path | None, typer.Option("--dir", help="node directory")] = None,
    file: Annotated[Path | None, typer.Argument(help=".csv or .jsonl file")] = None,
    template: Annotated[
        bool, typer.Option(help="show the columns KIND takes (units, allowed values) and exit")
    ] = False,
) -> None:
    """Validate and store a file of QDM rows; every problem of a bad row is reported by
    line and field. `--kind K --template` lists what a file of kind K may carry."""
    if template:
        print_template(kind.value)
        return
    if directory is None or file is None:
        raise typer.BadParameter("give --dir DIR and FILE (or --template)")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from qdspace.connector.ingest import count_lines, ingest_file
    from qdspace.node.config import NodeSettings

    settings = NodeSettings.load(directory)
    store = settings.open_store()
    try:
        total = count_lines(file) if file.is_file() else None
        with Progress(
            TextColumn("ingest {task.fields[name]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        ) as progress:
            task = progress.add_task("ingest", total=total, name=file.name)
            report = ingest_file(
                store,
                file,
                kind.value,
                on_progress=lambda done: progress.update(task, completed=done),
            )
    finally:
        store.close()
    for row_error in report.rejected:
        err.print(escape(str(row_error)), highlight=False, soft_wrap=True)
    if report.more:
        err.print(f"... and {report.more} more problems (the first {len(report.rejected)} shown)")
    console.print(
        f"{file}: {report.accepted} stored, {report.duplicates} already present, "
        f"{report.refused_lines} rejected ({report.problems} problems)"
        + (f", {report.corrected} corrected (new versions)" if report.corrected else ""),
        soft_wrap=True,
    )
    if report.rejected:
        raise typer.Exit(2)


def print_template(kind: str) -> None:
    """The columns of ``kind`` as a table, then a CSV header line to start a file from."""
    from qdspace.connector.dictionary import default_dictionary
    from qdspace.connector.row_template import parameters
    from qdspace.connector.row_template import template as columns_of

    d = default_dictionary()
    rows = columns_of(kind, d)
    table = Table("column", "required", "value", "units / allowed values", title=f"{kind} rows")
    for r in rows:
        table.add_row(r.name, r.required, r.kind, r.allowed)
    console.print(table)
    if kind == "measurement":
        params = Table("parameter", "unit (accepted units; range; grades)", "definition")
        for r in parameters(d):
            params.add_row(r.name, r.allowed, r.kind)
        console.print(params)
    console.print("CSV header:", highlight=False)
    console.print(",".join(r.name for r in rows), highlight=False, soft_wrap=True)


# -- peers ---------------------------------------------------------------------------------


@peer_app.command("hello")
@clean_errors
@calls_node
def peer_hello(
    target: Target,
    name: Annotated[str, typer.Argument(help="peer name")],
    as_json: JsonOpt = False,
) -> None:
    """Ask this node to authenticate to a peer over mutual TLS with its identity."""
    with target.client() as node:
        r = node.hello(name)
    if as_json:
        print_json(r)
        return
    console.print(
        f"{r['peer']} ({r['peer_role']}, {r['peer_member_id']}) sees us as {r['seen_as']} "
        f"({r['seen_as_role']}); {r['round_trip_ms']:.1f} ms"
    )


# -- demo ----------------------------------------------------------------------------------


demo_app = typer.Typer(
    help="a local data space: authority, OEM, two suppliers, a regulator, a hosted wafer maker"
)
app.add_typer(demo_app, name="demo")


@demo_app.callback(invoke_without_command=True)
@clean_errors
def demo(
    ctx: typer.Context,
    workdir: Annotated[Path, typer.Option(help="where the data space lives")] = Path(
        "qdspace-demo"
    ),
    keep_running: Annotated[
        bool, typer.Option(help="leave the nodes, the host and their chain running")
    ] = False,
    fresh: Annotated[bool, typer.Option(help="delete WORKDIR first")] = True,
    network_only: Annotated[
        bool,
        typer.Option(
            help="only the network: keys, chain, nodes, host, sample data, handshakes, "
            "genealogy hops (seconds; no trace, contracts, inspection, federation or ledger "
            "chapters)"
        ),
    ] = False,
) -> None:
    """Run a local data space: authority, OEM, two suppliers and a regulator, and the
    wafer maker as a tenant of a managed host.

    With --keep-running the nodes, the host and the chain stay up; `qdspace demo stop`
    ends them.
    """
    if ctx.invoked_subcommand is not None:
        return
    from qdspace.node.demo.story import run_demo

    run_demo(
        workdir,
        keep_running=keep_running,
        fresh=fresh,
        network_only=network_only,
        console=console,
    )


@demo_app.command("stop")
@clean_errors
def demo_stop(
    workdir: Annotated[Path, typer.Option(help="the demo's work directory")] = Path("qdspace-demo"),
) -> None:
    """Stop the nodes, hosts and chain a `qdspace demo --keep-running` left running."""
    from qdspace.node.localnet.left_running import stop_left_running

    outcome = stop_left_running(workdir.resolve())
    console.print(
        "stopped: " + ", ".join(f"{name} ({what})" for name, what in outcome.items()),
        highlight=False,
        soft_wrap=True,
    )


def main() -> None:
    """The ``qdspace`` script: only the command the call names is built (`dispatch`)."""
    import os
    import sys

    from qdspace.node.cli.dispatch import command_for
    from qdspace.util.consoles import widen_when_piped

    widen_when_piped(sys.stdout, os.environ)  # tables piped to a file keep their ids whole

    command_for(app, sys.argv[1:])(prog_name="qdspace")


if __name__ == "__main__":
    main()
