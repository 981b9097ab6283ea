"""Demo, foundation: the wafer maker is a tenant of a managed host, and the trace reaches it.

SiliWafer runs no servers: Testhouse Hosting serves it from one ``qdspace host``
process (`node.localnet.hosting`). Its data were ingested through the host's listener
with SiliWafer's own operator token, like any member's through its node. Here Cellex
follows its genealogy one hop further than SunArc asked: the wafer batch its cell batch
was made from goes to ``siliwafer`` over mutual-TLS gRPC, lands on the tenant's own port
at the host, is checked against the tenant's own certificate and database, and is
answered with the ingots the wafers were sawn from. PolyCell asking the same is refused
(it did not buy that batch), and the host's own log shows the tenant served the call.

`trace_to_the_host(network, report)` runs inside the foundation's genealogy step (results
in ``report.wafer_trace``); `hosts_step` records the hosts as their operator sees them
(``tenant list`` over the host-management API); `print_hosting` shows both.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from qdspace.node.client import ClientError
from qdspace.node.demo.report import DemoReport

if TYPE_CHECKING:
    from qdspace.node.localnet.hosting import TenantMember
    from qdspace.node.localnet.network import LocalNetwork

TITLE = "the wafer maker on its managed host"
#: who asks the wafer maker (its customer), and a member that did not buy the wafers
CUSTOMER = "cellex"
STRANGER = "polycell"
LOG_WAIT_S = 10.0


def _served_line(tenant: TenantMember, caller: str) -> str:
    """The host log's line of the tenant serving ``caller``'s Upstream call ("" if none
    within a few seconds: the line is written just after the answer)."""
    needle = f"[{tenant.spec.name}] grpc /qdspace.v1.Trace/Upstream peer={caller} "
    deadline = time.monotonic() + LOG_WAIT_S
    while True:
        try:
            text = tenant.host.host_log.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        found = [line for line in text.splitlines() if needle in line]
        if found or time.monotonic() > deadline:
            return found[-1].strip() if found else ""
        time.sleep(0.1)


def trace_to_the_host(network: LocalNetwork, report: DemoReport) -> None:
    """Cellex asks the hosted wafer maker about the first wafer batch of the cell batch
    SunArc asked about (``report.trace``); PolyCell asks the same and is refused."""
    hosted = [p for p in report.trace.get("parents", []) if p["producer"] in network.tenants]
    if not hosted or CUSTOMER not in network.members:
        return  # a network without a hosted supplier of cellex
    wafer = hosted[0]
    tenant = network.tenants[wafer["producer"]]
    name = tenant.spec.name
    with network[CUSTOMER].operator() as client:
        answer = client.upstream(name, wafer["batch_id"])
    report.wafer_trace = {
        "asked_by": CUSTOMER,
        "answered_by": name,
        "host": tenant.host.name,
        "host_display_name": tenant.host.spec.display_name,
        "grpc": tenant.grpc_address,
        "batch": answer["batch"],
        "parents": answer["parents"],
        "host_log": _served_line(tenant, CUSTOMER),
    }
    if STRANGER in network.members:
        with network[STRANGER].operator() as client:
            try:
                client.upstream(name, wafer["batch_id"])
            except ClientError as exc:
                report.wafer_trace["refused"] = f"{STRANGER} asked too: {exc.detail}"
            else:
                report.wafer_trace["refused"] = f"{STRANGER} asked too: NOT REFUSED"


def hosts_step(network: LocalNetwork, report: DemoReport) -> None:
    """Each host as its operator sees it: where it runs, its files, its tenants (live)."""
    for name, host in network.hosts.items():
        described = host.describe()
        described["tenant_list"] = host.tenant_list()
        report.hosts[name] = described


def print_hosting(console: Console, report: DemoReport) -> None:
    for name, host in report.hosts.items():
        table = Table(
            title=f"managed host {host['display_name']} ({name}): its tenants",
            title_justify="left",
        )
        for col in ("tenant", "role", "member id", "gRPC (mTLS)", "status"):
            table.add_column(col)
        for t in host["tenant_list"]:
            grpc = host["tenants"].get(t["name"], {}).get("grpc", str(t["grpc_port"]))
            table.add_row(t["name"], t["role"], t["member_id"], grpc, t["status"])
        console.print(table)
        console.print(
            f"  one process (pid {host['pid']}) serves them all; its operator listener "
            f"{host['api']} (CA {host['ca_file']}) answers each tenant's staff by their token; "
            f"files in {host['dir']}, log {host['log']}",
            highlight=False,
            soft_wrap=True,
        )
    trace: dict[str, Any] = report.wafer_trace
    if not trace:
        return
    made_from = ", ".join(
        f"{p['batch_id']} ({p['kind']}, {p['producer']})" for p in trace["parents"]
    )
    console.print(
        f"genealogy, one hop further: {trace['asked_by']} asked {trace['answered_by']} "
        f"(hosted by {trace['host_display_name']}, gRPC {trace['grpc']}) about wafer batch "
        f"{trace['batch']['batch_id']}: made from {made_from}",
        highlight=False,
        soft_wrap=True,
    )
    if trace["host_log"]:
        line = escape(trace["host_log"])  # "[siliwafer]" is no markup
        console.print(f"  the host's log: {line}", highlight=False, soft_wrap=True)
    if "refused" in trace:
        console.print(f"  refused: {trace['refused']}", highlight=False, soft_wrap=True)
