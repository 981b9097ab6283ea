"""``qdspace connect opcua | mqtt | folder``: line data into a node's QDM until stopped.

Each command loads the node's settings (``--dir``: its database and data dictionary)
and a connector configuration file (``--config``, JSON or YAML), checks the mappings
against the dictionary, and runs the connector in the foreground until SIGINT or
SIGTERM, logging progress and every refused reading with its source. The connector
libraries (asyncua, paho-mqtt, watchdog: the ``connect`` extra) load only here.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from qdspace.node.cli.errors import clean_errors, fail

console = Console(stderr=True, highlight=False)
connect_app = typer.Typer(
    no_args_is_help=True, help="line data in: OPC UA, MQTT and export folders"
)

DirOpt = Annotated[Path, typer.Option("--dir", help="node directory (database, dictionary)")]
ConfigOpt = Annotated[Path, typer.Option("--config", help="connector configuration (JSON, YAML)")]
LogOpt = Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING")]


def _require(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise fail(f"{module} is not installed: pip install 'qdspace[connect]'")


def _prepare(directory: Path, level: str) -> Any:
    from qdspace.node.config import NodeSettings
    from qdspace.node.logs import setup_logging

    setup_logging(level)
    return NodeSettings.load(directory).open_store()


def _until_signal(run: Any) -> None:
    """Run the coroutine factory ``run(stop)`` until SIGINT/SIGTERM sets ``stop``."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await run(stop)

    asyncio.run(main())


@connect_app.command("opcua")
@clean_errors
def opcua(directory: DirOpt, config: ConfigOpt, log_level: LogOpt = "INFO") -> None:
    """Subscribe to OPC UA nodes; store readings as process measurements."""
    _require("asyncua")
    from qdspace.connector.linein.config import OpcuaConfig, check_elements, read_config
    from qdspace.connector.linein.opcua import OpcuaConnector
    from qdspace.connector.linein.sink import MeasurementSink

    cfg = read_config(config, OpcuaConfig)
    store = _prepare(directory, log_level)
    try:
        check_elements(config, cfg.nodes, store.dictionary)
        sink = MeasurementSink(store, f"opcua {cfg.endpoint}")
        _until_signal(OpcuaConnector(cfg, sink).run)
        console.print(f"opcua {cfg.endpoint}: {sink.totals}")
    finally:
        store.close()


@connect_app.command("mqtt")
@clean_errors
def mqtt(directory: DirOpt, config: ConfigOpt, log_level: LogOpt = "INFO") -> None:
    """Subscribe to MQTT topics; store readings (QoS 1 acknowledged after commit)."""
    _require("paho")
    from qdspace.connector.linein.config import MqttConfig, check_elements, read_config
    from qdspace.connector.linein.mqtt import MqttConnector
    from qdspace.connector.linein.sink import MeasurementSink

    cfg = read_config(config, MqttConfig)
    store = _prepare(directory, log_level)
    try:
        check_elements(config, cfg.topics, store.dictionary)
        sink = MeasurementSink(store, f"mqtt {cfg.host}:{cfg.port}")
        _until_signal(MqttConnector(cfg, sink).run)
        console.print(f"mqtt {cfg.host}:{cfg.port}: {sink.totals}")
    finally:
        store.close()


@connect_app.command("folder")
@clean_errors
def folder(directory: DirOpt, config: ConfigOpt, log_level: LogOpt = "INFO") -> None:
    """Watch an export folder; ingest each CSV/JSONL file once, then move it."""
    _require("watchdog")
    from qdspace.connector.linein.config import FolderConfig, read_config
    from qdspace.connector.linein.folder import FolderConnector

    cfg = read_config(config, FolderConfig)
    store = _prepare(directory, log_level)
    try:
        watcher = FolderConnector(cfg, store)
        _until_signal(watcher.run)
        console.print(f"folder {cfg.watch}: {watcher.status()}")
    finally:
        store.close()
