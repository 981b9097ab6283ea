"""The demo's line data: Cellex's PECVD readings arrive over OPC UA, not in a file.

Cellex's sample process file leaves its PECVD readings out (`sample.write_sample_files`
with ``pecvd=False``); instead its simulated PECVD line (`pecvd_tool`, an asyncua
server on loopback, its own process) serves them as OPC UA variables with source
timestamps and history, and the line connector (``qdspace connect opcua``, its own
process, against Cellex's node directory) subscribes and backfills them from that
history into Cellex's QDM, each with the batch its tool was running then.
The trace chapter then finds the planted leak in these rows. Both processes stop with
the nodes, or are left running with them (``--keep-running``, ``qdspace demo stop``).

`opcua_step` waits until Cellex's node holds every reading the tool published, so a
connector that stored fewer (or none) stops the demo here, with its log.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from qdspace.connector.sample import START
from qdspace.connector.sample_pecvd import MEMBER
from qdspace.node.demo import pecvd_tool
from qdspace.node.demo.report import DemoReport
from qdspace.node.errors import NodeError
from qdspace.node.localnet.line import LineProcess
from qdspace.node.localnet.network import LocalNetwork
from qdspace.util.ports import free_port

TITLE = "Cellex's PECVD tool over OPC UA into its QDM"
CHAPTER = "opcua"
TOOL, CONNECTOR = "pecvd-tool", "cellex-opcua"
READY_TIMEOUT_S = 30.0
STORED_TIMEOUT_S = 60.0


def _wait_for(line: LineProcess, check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if not line.running:
            tail = line.log_tail()
            raise NodeError(f"{line.name} exited before {what}; log {line.log_path}:\n{tail}")
        time.sleep(0.05)
    tail = line.log_tail()
    raise NodeError(f"{line.name}: no {what} in {timeout:.0f} s; log {line.log_path}:\n{tail}")


def _start_tool(network: LocalNetwork, base: Path, port: int) -> LineProcess:
    directory = base / TOOL
    argv = ["-m", "qdspace.node.demo.pecvd_tool", "--dir", str(directory), "--port", str(port)]
    tool = LineProcess(TOOL, [network.python, *argv], base / f"{TOOL}.log", str(directory))
    network.line[TOOL] = tool
    tool.spawn(network.env)
    return tool


def _tool_ready(tool: LineProcess) -> dict[str, Any]:
    """What the tool serves, once it does (its ``tool.json``)."""
    ready = Path(tool.marker) / pecvd_tool.READY_FILE

    def info() -> dict[str, Any] | None:
        if not ready.exists():
            return None
        data: dict[str, Any] = json.loads(ready.read_text())
        return data

    found: dict[str, Any] = _wait_for(tool, info, READY_TIMEOUT_S, "OPC UA endpoint")
    return found


def _connector_config(port: int, path: Path) -> Path:
    """The connector's mapping: each tool variable -> its dictionary element, unit,
    equipment, and the tool's batch and order variables as context."""
    reach = datetime.now(UTC) - START + timedelta(days=1)  # back to the sample's first shift
    config = {
        "endpoint": pecvd_tool.endpoint(port),
        "publishing_interval_ms": 200,
        "reconnect_s": 0.5,  # started with the tool: it connects once the tool serves
        "history": True,
        "backfill_max_s": reach.total_seconds(),
        "nodes": pecvd_tool.mapped_nodes(),
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def opcua_step(network: LocalNetwork, report: DemoReport) -> None:
    """The chapter: see the module docstring."""
    clock = time.monotonic()
    cellex = network[MEMBER]
    base = network.workdir / "line"
    base.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = _connector_config(port, base / f"{CONNECTOR}.json")
    tool = _start_tool(network, base, port)
    with cellex.operator() as client:
        before = client.qdm_counts().get("measurement", 0)
    argv = ["-m", "qdspace", "connect", "opcua", "--dir", str(cellex.directory)]
    argv += ["--config", str(config)]
    connector = LineProcess(
        CONNECTOR, [network.python, *argv], base / f"{CONNECTOR}.log", str(config)
    )
    network.line[CONNECTOR] = connector
    connector.spawn(network.env)  # starts up while the tool does
    info = _tool_ready(tool)
    mapped = {n["node_id"] for n in pecvd_tool.mapped_nodes()}
    if {n["node_id"] for n in info["nodes"]} != mapped:
        raise NodeError(f"{TOOL} serves {info['nodes']}, the connector maps {sorted(mapped)}")
    published = sum(int(n["published"]) for n in info["nodes"])
    counts: dict[str, int] = {}

    def all_stored() -> bool:
        nonlocal counts
        with cellex.operator() as client:
            counts = client.qdm_counts()
        return counts.get("measurement", 0) - before >= published

    _wait_for(connector, all_stored, STORED_TIMEOUT_S, f"{published} readings stored")
    report.counts[MEMBER] = counts
    report.chapters[CHAPTER] = {
        "member": MEMBER,
        "endpoint": info["endpoint"],
        "tool_pid": info["pid"],
        "connector_pid": connector.process.pid if connector.process else None,
        "config": str(config),
        "connector_log": str(connector.log_path),
        "nodes": [
            {k: n[k] for k in ("node_id", "equipment", "element", "unit", "published")}
            for n in info["nodes"]
        ],
        "published": published,
        "stored": counts.get("measurement", 0) - before,
        "seconds": round(time.monotonic() - clock, 2),
    }


def print_opcua(console: Console, report: DemoReport) -> None:
    chapter = report.chapters.get(CHAPTER)
    if not chapter:
        return
    table = Table(
        title=f"line data: {chapter['member']}'s PECVD tool over OPC UA ({chapter['endpoint']})",
        title_justify="left",
    )
    for col in ("node id", "equipment", "data element", "unit", "readings"):
        table.add_column(col, justify="right" if col == "readings" else "left")
    for n in chapter["nodes"]:
        table.add_row(n["node_id"], n["equipment"], n["element"], n["unit"], str(n["published"]))
    console.print(table)
    console.print(
        f"{chapter['published']} readings published with history, {chapter['stored']} stored "
        f"in {chapter['member']}'s QDM by `qdspace connect opcua` (subscribed, then backfilled; "
        f"config {chapter['config']}) in {chapter['seconds']:.1f} s",
        highlight=False,
        soft_wrap=True,
    )
