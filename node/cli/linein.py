"""``qdspace connect opcua | mqtt | folder``: line data into a node's QDM until stopped.

Each command loads the node's settings (``--dir``: its database and data dictionary)
and a connector configuration file (``--config``, JSON or YAML), checks the mappings
against the dictionary, and runs the connector in the foreground until SIGINT or
SIGTERM, logging progress and every refused reading with its source. The connector
libraries (asyncua, paho-mqtt, watchdog: the ``connect`` extra) load only here.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol

import typer
from rich.console import Console

if TYPE_CHECKING:  # asyncio (~30 ms) only when a connector runs: every command imports this
    import asyncio

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


class _Running(Protocol):
    async def run(self, stop: asyncio.Event) -> None: ...


#: builds a connector from its configuration and the node's open store; returns it and
#: a function that says, at the end, what it did
Factory = Callable[[Any, Any], tuple[_Running, Callable[[], str]]]


def _connect(directory: Path, config: Path, model: Any, log_level: str, factory: Factory) -> None:
    """The one way each ``connect`` command runs: load and check the configuration, open
    the node's store, run the connector until SIGINT/SIGTERM, print its totals, close."""
    from qdspace.connector.linein.config import read_config
    from qdspace.node.config import NodeSettings
    from qdspace.node.logs import setup_logging

    cfg = read_config(config, model)
    setup_logging(log_level)
    store = NodeSettings.load(directory).open_store()
    try:
        connector, summary = factory(cfg, store)
        _until_signal(connector.run)
        console.print(summary())
    finally:
        store.close()


def _until_signal(run: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run the coroutine factory ``run(stop)`` until SIGINT/SIGTERM sets ``stop``."""
    import asyncio

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
    from qdspace.connector.linein.config import OpcuaConfig, check_elements
    from qdspace.connector.linein.opcua import OpcuaConnector
    from qdspace.connector.linein.sink import MeasurementSink

    def factory(cfg: OpcuaConfig, store: Any) -> tuple[_Running, Callable[[], str]]:
        check_elements(config, cfg.nodes, store.dictionary)
        sink = MeasurementSink(store, f"opcua {cfg.endpoint}")
        return OpcuaConnector(cfg, sink), lambda: f"opcua {cfg.endpoint}: {sink.totals}"

    _connect(directory, config, OpcuaConfig, log_level, factory)


@connect_app.command("mqtt")
@clean_errors
def mqtt(directory: DirOpt, config: ConfigOpt, log_level: LogOpt = "INFO") -> None:
    """Subscribe to MQTT topics; store readings (QoS 1 acknowledged after commit)."""
    _require("paho")
    from qdspace.connector.linein.config import MqttConfig, check_elements
    from qdspace.connector.linein.mqtt import MqttConnector
    from qdspace.connector.linein.sink import MeasurementSink

    def factory(cfg: MqttConfig, store: Any) -> tuple[_Running, Callable[[], str]]:
        check_elements(config, cfg.topics, store.dictionary)
        where = f"mqtt {cfg.host}:{cfg.port}"
        sink = MeasurementSink(store, where)
        return MqttConnector(cfg, sink), lambda: f"{where}: {sink.totals}"

    _connect(directory, config, MqttConfig, log_level, factory)


@connect_app.command("folder")
@clean_errors
def folder(directory: DirOpt, config: ConfigOpt, log_level: LogOpt = "INFO") -> None:
    """Watch an export folder; ingest each CSV/JSONL file once, then move it."""
    _require("watchdog")
    from qdspace.connector.linein.config import FolderConfig
    from qdspace.connector.linein.folder import FolderConnector

    def factory(cfg: FolderConfig, store: Any) -> tuple[_Running, Callable[[], str]]:
        watcher = FolderConnector(cfg, store)
        return watcher, lambda: f"folder {cfg.watch}: {watcher.status()}"

    _connect(directory, config, FolderConfig, log_level, factory)
