"""The demo's simulated PECVD line at Cellex: an OPC UA server (asyncua) on loopback.

A real tool publishes its chamber pressure as an OPC UA variable and keeps a historian
behind it; a line connector subscribes to the variable and reads the history for what
it missed. This process plays both for Cellex's two PECVD tools, serving the sample
readings of `connector.sample_pecvd.pecvd_readings` (the planted PECVD-2 leak among
ordinary noise) and nothing else: each reading as a DataValue with its source
timestamp, in the history of its variable (``PECVD-n.ChamberVacuum`` in mbar,
``PECVD-n.ArcThickness`` in nm), and the batch and order each tool was running as
historized context variables (``PECVD-n.Batch``, ``PECVD-n.Order``), so a backfill
stores every reading with the batch it was taken in. The variables' current values are
each tool's last reading.

Run as its own process by the demo (``python -m qdspace.node.demo.pecvd_tool --dir D
--port P``) so that it outlives the demo with ``--keep-running``; once serving it writes
``D/tool.json`` (endpoint, node ids, readings published per node), stops on SIGTERM.
It keeps its output file (the demo's ``line/pecvd-tool.log``) bounded itself, as a node
does (`util.process_log`): a demo kept running runs for weeks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
from datetime import datetime
from pathlib import Path
from typing import Any

from qdspace.connector.sample_pecvd import MEMBER, TOOLS, pecvd_readings
from qdspace.util.process_log import keep_output_bounded

log = logging.getLogger("qdspace.demo.pecvd_tool")
NAMESPACE = "urn:cellex:line:pecvd"
READY_FILE = "tool.json"
#: variable -> (data element, the unit the tool publishes it in)
VARIABLES = {
    "ChamberVacuum": ("pecvd_chamber_vacuum", "mbar"),
    "ArcThickness": ("arc_thickness", "nm"),
}
CONTEXT = {"Batch": "batch_id", "Order": "order_id"}
#: the namespace index the server gives `NAMESPACE` (its first own namespace)
NS = 2


def endpoint(port: int) -> str:
    return f"opc.tcp://127.0.0.1:{port}/cellex/pecvd/"


def mapped_nodes() -> list[dict[str, str]]:
    """The tool's measured variables as a connector maps them: node id, data element,
    unit, equipment, and its batch and order variables as context."""
    return [
        {
            "node_id": f"ns={NS};s={tool}.{name}",
            "element": element,
            "unit": unit,
            "equipment": tool,
            "batch_id_node": f"ns={NS};s={tool}.Batch",
            "order_id_node": f"ns={NS};s={tool}.Order",
        }
        for tool in TOOLS
        for name, (element, unit) in VARIABLES.items()
    ]


def _mbar(row: dict[str, Any]) -> float:
    """The reading in the unit the variable publishes (the sample mixes mbar and Pa)."""
    value = float(row["value"])
    return round(value / 100, 6) if row["unit"] == "Pa" else value


async def serve(directory: Path, port: int, stop: asyncio.Event) -> None:
    from asyncua import ua as _ua
    from asyncua.server.server import Server

    ua: Any = _ua  # its stubs want its own wrapper types where plain ones work
    server = Server()
    await server.init()
    url = endpoint(port)
    server.set_endpoint(url)
    server.set_server_name("Cellex PECVD line (simulated)")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])  # loopback only
    idx = await server.register_namespace(NAMESPACE)
    if idx != NS:
        raise RuntimeError(f"namespace {NAMESPACE} got index {idx}, not {NS}")
    nodes: dict[tuple[str, str], Any] = {}
    for tool in TOOLS:
        obj = await server.nodes.objects.add_object(ua.NodeId(tool, idx), tool)
        for name in VARIABLES:
            nodes[tool, name] = await obj.add_variable(
                ua.NodeId(f"{tool}.{name}", idx), name, ua.Variant(0.0, ua.VariantType.Double)
            )
        for name in CONTEXT:
            nodes[tool, name] = await obj.add_variable(
                ua.NodeId(f"{tool}.{name}", idx), name, ua.Variant("", ua.VariantType.String)
            )
    await server.start()
    try:
        published = await _historian(server, nodes)
        info = {
            "endpoint": url,
            "pid": os.getpid(),
            "nodes": [
                {
                    "node_id": nodes[tool, name].nodeid.to_string(),
                    "equipment": tool,
                    "element": element,
                    "unit": unit,
                    "published": published[tool, name],
                    "batch_id_node": nodes[tool, "Batch"].nodeid.to_string(),
                    "order_id_node": nodes[tool, "Order"].nodeid.to_string(),
                }
                for tool in TOOLS
                for name, (element, unit) in VARIABLES.items()
            ],
        }
        tmp = directory / f".{READY_FILE}.tmp"
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        tmp.replace(directory / READY_FILE)
        log.info("serving %s: %s", url, published)
        await stop.wait()
    finally:
        await server.stop()


async def _historian(server: Any, nodes: dict[tuple[str, str], Any]) -> dict[tuple[str, str], int]:
    """Every sample reading into its variable's history; the last one as its value."""
    from asyncua import ua as _ua

    ua: Any = _ua

    storage = server.iserver.history_manager.storage
    for node in nodes.values():
        await storage.new_historized_node(node.nodeid, None, 0)
    published = {key: 0 for key in nodes}
    last: dict[tuple[str, str], Any] = {}

    async def save(key: tuple[str, str], variant: Any, at: datetime) -> None:
        dv = ua.DataValue(variant, SourceTimestamp=at, ServerTimestamp=at)
        await storage.save_node_value(nodes[key].nodeid, dv)
        published[key] += 1
        last[key] = dv

    by_element = {element: name for name, (element, _) in VARIABLES.items()}
    for row in pecvd_readings(MEMBER):
        tool, at = row["equipment"], datetime.fromisoformat(row["measured_at"])
        for name, field in CONTEXT.items():  # the batch / order changes before its readings
            current = last.get((tool, name))
            if current is None or current.Value.Value != row[field]:
                await save((tool, name), ua.Variant(row[field], ua.VariantType.String), at)
        name = by_element[row["parameter"]]
        value = _mbar(row) if name == "ChamberVacuum" else float(row["value"])
        await save((tool, name), ua.Variant(value, ua.VariantType.Double), at)
    for key, dv in last.items():
        await nodes[key].write_value(dv)
    return published


def main() -> None:
    keep_output_bounded()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("asyncua").setLevel(logging.WARNING)
    args.dir.mkdir(parents=True, exist_ok=True)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await serve(args.dir, args.port, stop)

    asyncio.run(run())


if __name__ == "__main__":
    main()
