"""``qdspace demo``'s story: a local data space on loopback, told as the reference scenario.

SunArc Modules (OEM) buys cells from Cellex Mono and PolyCell Works; Cellex buys its
wafers from SiliWafer, a small supplier hosted by Testhouse Hosting; a regulator
watches. Every self-hosted member is a real node process with its own keys and
database, the wafer maker a tenant of one ``qdspace host`` process (its own member
id, keys and database there); the demo ingests each member's sample QDM data, has
every pair of members authenticate over mutual-TLS gRPC, follows the genealogy from
a cell batch to the wafer maker at its host, and prints where everything lives.
Later capabilities add their chapter here (a module of this package: its step
and its printer go into ``STEPS`` and ``CHAPTER_PRINTERS``).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.panel import Panel
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from qdspace.connector.sample import write_sample_files
from qdspace.node.client import ClientError
from qdspace.node.demo import contracts as demo_contracts
from qdspace.node.demo import federation as demo_federation
from qdspace.node.demo import hosting as demo_hosting
from qdspace.node.demo import inspection as demo_inspection
from qdspace.node.demo import ledger as demo_ledger
from qdspace.node.demo import line as demo_line
from qdspace.node.demo import trace as demo_trace
from qdspace.node.demo import trace_print as demo_trace_print
from qdspace.node.demo.report import DemoReport, Printer, Step
from qdspace.node.localnet.left_running import processes_file, stop_left_running
from qdspace.node.localnet.network import REFERENCE_HOSTS, LocalNetwork


def _ingest_member(network: LocalNetwork, name: str, report: DemoReport) -> None:
    """Through the member's own operator API: its node's, or a tenant's at its host."""
    member = network.participants[name]
    folder = network.workdir / "sample-data" / name
    # cellex's PECVD readings come over OPC UA instead (`demo.line`)
    files = write_sample_files(
        folder, name, member.spec.role, bad_rows=(name == "cellex"), pecvd=(name != "cellex")
    )
    report.ingest[name] = {}
    with member.operator() as client:
        for kind, path in files.items():
            result = client.ingest_file(kind, path)
            report.ingest[name][kind] = {
                "stored": result["accepted"],
                "duplicates": result["duplicates"],
                "rejected": len(result["rejected"]),
            }
            report.rejected_examples.extend(
                f"{name}: {e['source']}:{e['line']}: {e['field']}: {e['reason']}"
                for e in result["rejected"]
            )
        report.counts[name] = client.qdm_counts()


def _handshakes(network: LocalNetwork, report: DemoReport) -> None:
    everyone = network.participants
    for name, member in everyone.items():
        report.handshakes[name] = {}
        with member.operator() as client:
            for other in everyone:
                if other == name:
                    continue
                try:
                    body = client.hello(other)
                except ClientError as exc:
                    report.handshakes[name][other] = f"FAILED {exc.detail}"
                else:
                    report.handshakes[name][other] = f"ok {body['round_trip_ms']:.0f} ms"


def _trace(network: LocalNetwork, report: DemoReport) -> None:
    from qdspace.connector.sample import sold_batch

    batch_id = sold_batch("cellex", "sunarc")
    with network["sunarc"].operator() as client:
        report.trace = client.upstream("cellex", batch_id)
    with network["regulator"].operator() as client:
        try:
            client.upstream("cellex", batch_id)
        except ClientError as exc:
            report.refusal = exc.detail
        else:
            report.refusal = "NOT REFUSED"
    demo_hosting.trace_to_the_host(network, report)


# the network itself: what `qdspace demo --network-only` stops after
FOUNDATION_STEPS: list[tuple[str, Step]] = [
    ("mutual-TLS handshakes between every pair", _handshakes),
    ("genealogy hops (to the hosted wafer maker) and refusals", _trace),
    (demo_hosting.TITLE, demo_hosting.hosts_step),
]
STEPS: list[tuple[str, Step]] = [
    *FOUNDATION_STEPS,
    # later chapters append (title, step) here; a step stores its results in
    # report.chapters[<name>] and its printer below shows them in the summary
    # (the trace runs before the contracts chapter closes the orders it is scoped to)
    (demo_trace.TITLE, demo_trace.trace_step),
    (demo_contracts.TITLE, demo_contracts.contracts_step),
    (demo_inspection.TRAIN_TITLE, demo_inspection.train_step),  # the lines' own models
    ("federated learning: suppliers and OEM", demo_federation.federation_step),
    (demo_inspection.TITLE, demo_inspection.inspection_chapter),  # hot-swaps the federated
    (demo_ledger.TITLE, demo_ledger.ledger_step),  # keep last: verifies what others anchored
]

# printers of the later chapters, called in order after the foundation's summary
CHAPTER_PRINTERS: list[Printer] = [
    demo_line.print_opcua,
    demo_trace_print.print_trace,
    demo_contracts.print_contracts,
    demo_inspection.print_inspection,
    demo_federation.federation_printer,
    demo_ledger.print_ledger,
]


def _log_to(path: Path, console: Console) -> None:
    """The demo process's own log (Ray driver, chapters): all of it to ``demo.log``,
    warnings (alarms, retries) also on the console, above the progress bars."""
    path.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(path)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    to_console = RichHandler(console=console, show_path=False, show_time=False)
    to_console.setLevel(logging.WARNING)
    # the console shows the level itself; without a formatter of its own, basicConfig
    # gives it logging's default one and every line read "WARNING  WARNING:inference:..."
    to_console.setFormatter(logging.Formatter("%(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[to_file, to_console], force=True)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def run_demo(
    workdir: Path,
    *,
    keep_running: bool = False,
    fresh: bool = True,
    network_only: bool = False,
    console: Console | None = None,
) -> DemoReport:
    """Run the demo in ``workdir``; ``network_only`` stops after the foundation steps.

    With ``keep_running`` the nodes and the chain are left running (also when a
    chapter fails, so the operator can look) and recorded for ``qdspace demo stop``.
    """
    console = console or Console()
    started = time.monotonic()
    if processes_file(workdir).exists():  # a network an earlier --keep-running left
        _print_stopped(console, stop_left_running(workdir))
    if fresh and workdir.exists():
        shutil.rmtree(workdir)
    network = LocalNetwork(workdir, hosts=REFERENCE_HOSTS)
    report = DemoReport(workdir=str(network.workdir), kept_running=keep_running)
    _log_to(network.workdir / "demo.log", console)
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    names = [s.name for s in network.specs] + [
        t.name for h in network.host_specs for t in h.tenants
    ]
    try:
        with progress:
            task = progress.add_task("authority and member keys", total=1)
            network.create()
            progress.advance(task)
            task = progress.add_task("starting node processes and the host", total=1)
            network.start()
            progress.advance(task)
            task = progress.add_task("ingesting sample QDM data", total=len(names))
            for name in names:
                _ingest_member(network, name, report)
                progress.advance(task)
            task = progress.add_task(demo_line.TITLE, total=1)
            demo_line.opcua_step(network, report)
            progress.advance(task)
            for title, step in FOUNDATION_STEPS if network_only else STEPS:
                task = progress.add_task(title, total=1)
                step(network, report)
                progress.advance(task)
        report.members = _members(network)
        report.seconds = time.monotonic() - started
        (network.workdir / "summary.json").write_text(json.dumps(report.__dict__, indent=2))
        network.write_manifest()
        print_summary(console, network, report)
    finally:
        if keep_running:  # also after a failed chapter: the operator can look, then stop it
            network.leave_running()
            print_left_running(console, network)
        else:
            codes = network.stop()
            console.print(
                "nodes stopped: " + ", ".join(f"{n} (exit {c})" for n, c in codes.items())
            )
    return report


def _members(network: LocalNetwork) -> dict[str, dict[str, Any]]:
    """Every member for ``summary.json``: self-hosted nodes, and tenants with their host."""
    members: dict[str, dict[str, Any]] = network.describe()["members"]  # type: ignore[assignment]
    for name, t in network.tenants.items():
        members[name] = {
            "role": t.spec.role,
            "hosted_by": t.host.name,
            "member_id": t.member_id,
            "dir": str(t.directory),
            "grpc": t.grpc_address,
            "api": t.api_url,
            "ca_file": str(t.host.ca_file),
        }
    return members


def print_left_running(console: Console, network: LocalNetwork) -> None:
    """What keeps running after ``--keep-running``, and the one command that stops it."""
    table = Table(title="left running", title_justify="left")
    for col in ("process", "pid", "address"):
        table.add_column(col)
    if network.chain is not None and network.chain.pid is not None:
        table.add_row("chain (JSON-RPC)", str(network.chain.pid), network.chain.url)
    for name, m in network.members.items():
        pid = "-" if m.process is None else str(m.process.pid)
        table.add_row(f"{name} operator API", pid, f"{m.api_url}/openapi.json")
        table.add_row(f"{name} regulator API", pid, f"{m.regulator_url}/openapi.json")
        table.add_row(f"{name} web console", pid, f"{m.api_url}/console/")
    for name, line in network.line.items():  # the simulated PECVD line and its connector
        table.add_row(name, "-" if line.process is None else str(line.process.pid), line.marker)
    for name, h in network.hosts.items():
        pid = "-" if h.process is None else str(h.process.pid)
        table.add_row(f"{name} host: operator listener (tenants by token)", pid, h.api_url)
        for tenant, t in h.tenants.items():
            table.add_row(f"  {tenant} (tenant) gRPC", pid, t.grpc_address)
    console.print(table)
    console.print(
        f"operator tokens: {network.workdir}/nodes/<member>/operator.token\n"
        "web console: open a member's console URL and log in with its operator token "
        f"(cat {network.workdir}/nodes/<member>/operator.token); the browser will ask to "
        "trust the space CA's certificate\n"
        f"TLS: the APIs present certificates of the space CA, "
        f"{network.workdir}/nodes/<member>/ca.crt (curl --cacert)\n"
        + "".join(
            f"host {n}: CA {h.ca_file}; a tenant's token: qdspace host tenant token "
            f"--dir {h.directory} --name <tenant> --out FILE\n"
            for n, h in network.hosts.items()
        )
        + f"stop nodes, hosts and chain with: qdspace demo stop --workdir {network.workdir}",
        highlight=False,
        soft_wrap=True,
    )


def _print_stopped(console: Console, outcome: dict[str, str]) -> None:
    console.print(
        "stopped what the demo left running: "
        + ", ".join(f"{name} ({what})" for name, what in outcome.items()),
        highlight=False,
        soft_wrap=True,
    )


def print_summary(console: Console, network: LocalNetwork, report: DemoReport) -> None:
    members = Table(title="members of the data space", title_justify="left")
    for col in ("member", "role"):
        members.add_column(col)
    for col in ("member id", "gRPC (mTLS)", "operator API", "regulator API"):
        members.add_column(col, overflow="fold")  # where to reach them: whole, if folded
    for name, m in network.members.items():
        runtime = json.loads(m.layout.runtime.read_text())
        members.add_row(
            name,
            m.spec.role,
            str(runtime["member_id"]),
            m.grpc_address,
            m.api_url,
            m.regulator_url,
        )
    for name, t in network.tenants.items():
        members.add_row(
            name,
            t.spec.role,
            t.member_id,
            t.grpc_address,
            f"{t.api_url} (at host {t.host.name}, by its token)",
            "-",
        )
    console.print(members)

    kinds = sorted({k for c in report.counts.values() for k in c})
    rows = Table(title="rows per member (QDM tables)", title_justify="left")
    rows.add_column("table")
    for name in report.counts:
        rows.add_column(name, justify="right")
    for kind in kinds:
        rows.add_row(kind, *(str(report.counts[n].get(kind, 0)) for n in report.counts))
    console.print(rows)
    if report.rejected_examples:
        console.print(
            f"[yellow]{len(report.rejected_examples)} bad rows reported and not stored:[/yellow]"
        )
        for line in report.rejected_examples[:5]:
            console.print(f"  {line}", highlight=False)

    matrix = Table(title="mutual-TLS gRPC: caller (row) -> callee (column)", title_justify="left")
    matrix.add_column("")
    for name in network.participants:
        matrix.add_column(name)
    for caller, results in report.handshakes.items():
        matrix.add_row(caller, *(results.get(c, "-") for c in network.participants))
    console.print(matrix)

    if report.trace:
        parents = ", ".join(f"{p['batch_id']} ({p['producer']})" for p in report.trace["parents"])
        console.print(
            f"genealogy: sunarc asked cellex about cell batch {report.trace['batch']['batch_id']}: "
            f"made from {parents}"
        )
    console.print(f"regulator asking for genealogy was refused: {report.refusal}", highlight=False)
    demo_hosting.print_hosting(console, report)
    for printer in CHAPTER_PRINTERS:
        printer(console, report)

    where = [
        f"authority (CA, register, CRL): {network.authority_dir}",
        *(
            f"{n}: {m.directory} (node.db SQLite/WAL, logs/, keys)"
            for n, m in network.members.items()
        ),
        *(
            f"host {n} ({h.spec.display_name}): {h.directory} (host.json, tenants.json, "
            f"logs/host.log; tenants/<name>/: node.db, sealed keys; tls/ca.crt)"
            for n, h in network.hosts.items()
        ),
    ]
    work = network.workdir
    optional = [
        (work / "demo.log", "the demo process's log (line alarms, Ray)"),
        (work / "chain", "embedded EVM chain (state, chain.log)"),
        (work / "ledger", "proof and passport files for `qdspace verify`"),
        *(
            (path, f"{n}'s {what}")
            for n, m in network.members.items()
            for path, what in (
                (m.layout.models, "model versions (ONNX by content hash, manifest.json)"),
                (m.layout.explanations, "heatmaps of misjudged cells (PNG)"),
                (m.layout.federation, "federated job data, checkpoints and signed versions"),
            )
        ),
    ]
    where += [f"{what}: {path}" for path, what in optional if path.exists()]
    where.append(f"summary: {work / 'summary.json'}")
    console.print(Panel("\n".join(where), title="where to look", expand=False))
    console.print(f"done in {report.seconds:.1f} s")
