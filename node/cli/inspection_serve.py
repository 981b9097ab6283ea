"""``qdspace inspect serve``: the inspection line as a service, on a local or joined Ray.

Unlike ``inspect run`` (a timed demo), it runs until SIGTERM or SIGINT, then stops the
graceful way: no new frames, frames in flight answered, verdicts flushed, a summary
printed. It follows ``inspect activate`` while it runs, and with ``--ray-address`` (or
``RAY_ADDRESS``) it joins a running cluster, whose nodes host the replicas (Serve
spreads them over the nodes). Status lines go to stderr, so ``--json`` leaves stdout
to the final summary alone.
"""

from __future__ import annotations

import logging
import signal
import threading
import uuid
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console

from qdspace.node.cli.choices import CellMember
from qdspace.node.cli.connect import JsonOpt, print_json
from qdspace.node.cli.errors import clean_errors
from qdspace.node.cli.inspection_line import FpsOpt, FramesOpt, StationsOpt

err = Console(stderr=True, soft_wrap=True)  # status lines stay one line each
logger = logging.getLogger("node")

DirOpt = Annotated[Path, typer.Option("--dir", help="node directory")]


@clean_errors
def serve_line(
    directory: DirOpt,
    ray_address: Annotated[
        str | None,
        typer.Option(envvar="RAY_ADDRESS", help="join this Ray cluster (host:port of its head)"),
    ] = None,
    replicas: Annotated[int, typer.Option(min=1, help="Serve replicas, spread over nodes")] = 1,
    replica_cpus: Annotated[float, typer.Option(min=0.0, help="CPUs per replica")] = 1.0,
    stations: StationsOpt = 2,
    fps: FpsOpt = 27.0,
    frames: FramesOpt = None,
    member: Annotated[
        CellMember, typer.Option(help="whose cells: cellex, polycell, all; auto = node name")
    ] = CellMember.AUTO,
    mes_context: Annotated[
        Path | None,
        typer.Option(help="MES export giving each verdict its station's serial/order/batch"),
    ] = None,
    once: Annotated[
        bool, typer.Option(help="each station takes its frames once, then the service stops")
    ] = False,
    max_in_flight: Annotated[
        int, typer.Option(min=1, help="unanswered frames per station before one is skipped")
    ] = 8,
    attempts: Annotated[int, typer.Option(min=1, help="tries per frame before it is dropped")] = 4,
    cpus: Annotated[int | None, typer.Option(help="CPUs for a local Ray started here")] = None,
    status_every: Annotated[
        float, typer.Option(min=0.5, help="seconds between status lines")
    ] = 10.0,
    metrics_port: Annotated[
        int, typer.Option(min=0, max=65535, help="serve Prometheus series here (0: off)")
    ] = 0,
    metrics_host: Annotated[str, typer.Option(help="address of the metrics port")] = "127.0.0.1",
    as_json: JsonOpt = False,
) -> None:
    """Serve the line until stopped: verdicts to this node's QDM, following activations."""
    from qdspace.inference.alarms import AlarmLog
    from qdspace.inference.extras import require_inspection
    from qdspace.inference.line import LineConfig
    from qdspace.inference.registry import ModelRegistry
    from qdspace.inference.service import InspectionService, ServiceSettings
    from qdspace.inference.session import InspectionSession
    from qdspace.node.cli.inspection_line import load_mes_context, station_specs, store_sink

    mes = load_mes_context(mes_context, stations)  # a bad MES file stops us before Ray starts
    require_inspection(ray=True)
    from qdspace.inference.serve import ServeSettings

    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    stop = threading.Event()
    alarms = AlarmLog()
    settings = ServeSettings(num_replicas=replicas, replica_cpus=replica_cpus, device="cpu")
    where = f"the Ray cluster at {ray_address}" if ray_address else "a local Ray"
    err.print(f"starting {replicas} replica(s) on {where}", highlight=False)
    with InspectionSession(
        ModelRegistry(directory), settings, num_cpus=cpus, alarms=alarms, ray_address=ray_address
    ) as session:
        served = session.start()
        nodes = _placement(session)
        specs, audit = station_specs(
            directory, stations, fps, frames, member, alarms, served, not once
        )
        store, sink = store_sink(directory)
        try:
            config = LineConfig(run_id=uuid.uuid4().hex[:8], max_in_flight=max_in_flight, mes=mes)
            service = InspectionService(
                session, sink, specs, config, alarms, audit, ServiceSettings(attempts=attempts)
            )
            stop_metrics = _metrics(service, metrics_port, metrics_host)
            previous = _on_stop_signals(stop)
            err.print(
                f"serving {served.version[:12]} with {len(nodes)} replica(s) on "
                f"{len(set(nodes.values()))} node(s); {stations} station(s) at {fps:g} fps",
                highlight=False,
            )
            try:
                on_tick = _ticks(_status_printer(status_every), _status_file(directory, audit))
                final = service.run(stop, on_tick=on_tick)
            finally:
                _restore(previous)
                stop_metrics()
            judged = _replica_frames(session)
        finally:
            store.close()
    summary = _summary(final, nodes, stop.is_set()) | {"replica_frames": judged}
    if as_json:
        print_json(summary)
    else:
        for key, value in summary.items():
            typer.echo(f"{key}: {value}")


def _placement(session: Any) -> dict[str, str]:
    """Replica -> Ray node id, as the replicas report it."""
    tier = session.tier
    return {} if tier is None else {r.replica: r.node_id for r in tier.replicas()}


def _metrics(service: Any, port: int, host: str) -> Any:
    """Serve the service's Prometheus series when a port is given; returns the stopper."""
    if not port:
        return lambda: None
    from qdspace.node.runtime.inspection_metrics import serve_metrics

    stopper = serve_metrics(service.snapshot, port, host)
    err.print(f"metrics on http://{host}:{port}/metrics", highlight=False)
    return stopper


def _replica_frames(session: Any) -> dict[str, int]:
    """Frames each replica still running has judged (a lost replica's count is gone)."""
    tier = session.tier
    return {} if tier is None else {r.replica: r.frames for r in tier.replicas(timeout_s=10.0)}


def _on_stop_signals(stop: threading.Event) -> dict[int, Any]:
    """SIGTERM and SIGINT set ``stop`` (the service then drains and summarises)."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        err.print(f"{signal.Signals(signum).name}: draining and stopping", highlight=False)
        stop.set()

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _ticks(*callbacks: Any) -> Any:
    def tick(snapshot: Any) -> None:
        for callback in callbacks:
            callback(snapshot)

    return tick


def _status_file(directory: Path, audit: Any) -> Any:
    """A tick callback that keeps the drift file and the line's status file for the node
    (its API and console read them; `node.runtime.line_status`)."""
    from qdspace.node.layout import NodeLayout
    from qdspace.node.runtime.line_status import LineStatusWriter

    layout = NodeLayout(directory)
    writer = LineStatusWriter(layout.line_status)

    def tick(snapshot: Any) -> None:
        if audit is not None:
            audit.model = snapshot.version
            audit.write(layout.drift)
        writer.write(snapshot.line, snapshot.version, audit, dropped=snapshot.dropped)

    return tick


def _status_printer(every_s: float) -> Any:
    """A tick callback that prints a status line every ``every_s`` seconds."""
    import time

    last = [time.monotonic()]

    def tick(snapshot: Any) -> None:
        if time.monotonic() - last[0] < every_s:
            return
        last[0] = time.monotonic()
        t = snapshot.tier
        err.print(
            f"{snapshot.line.throughput_fps:.1f} fps; served {snapshot.served}, "
            f"retried {t.retried_frames}, dropped {snapshot.dropped}; "
            f"{snapshot.replicas} replica(s) running; version {snapshot.version[:12]}",
            highlight=False,
        )

    return tick


def _summary(final: Any, nodes: dict[str, str], signalled: bool) -> dict[str, Any]:
    """The final figures: every frame taken is served, dropped or bad."""
    line = final.line
    return {
        "stopped_by": "signal" if signalled else "sources exhausted",
        "elapsed_s": round(line.elapsed_s, 2),
        "taken": final.taken,
        "served": final.served,
        "retried": final.tier.retried_frames,
        "retries": final.tier.retries,
        "dropped": final.dropped,
        "bad_frames": final.bad_frames,
        "stored": line.stored,
        "dropped_verdicts": line.dropped_verdicts,
        "fps": round(final.served / line.elapsed_s, 2) if line.elapsed_s > 0 else 0.0,
        "model_versions": dict(line.model_versions),
        "version": final.version,
        "swaps": final.swaps,
        "resyncs": final.resyncs,
        "replica_nodes": nodes,
        "replicas_running": final.replicas,
        "alarms": dict(final.alarms),
    }
