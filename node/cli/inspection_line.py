"""``qdspace inspect run``: the inspection line for a set time, live figures on screen, and
the parts ``inspect serve`` shares with it.

The line is the second feature of line inspection on the command line, beside the
models (`node.cli.inspection`: train, list, activate, explain): it feeds stations'
frames to the active model and writes each verdict into the node's QDM. ``inspect run``
is the timed demo; ``inspect serve`` (`node.cli.inspection_serve`) runs until stopped
and builds its stations, MES context and verdict sink with the same functions, so both
judge the same frames the same way. Needs onnxruntime and (unless ``--local``) Ray, both
imported when the command runs.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from qdspace.node.cli.choices import CellMember
from qdspace.node.cli.errors import clean_errors, fail
from qdspace.node.cli.inspection import DirOpt, MemberOpt, member_of
from qdspace.node.layout import NodeLayout

console = Console()

#: the stations' options ``inspect run`` and ``inspect serve`` share
StationsOpt = Annotated[int, typer.Option(min=1, help="number of stations")]
FpsOpt = Annotated[float, typer.Option(min=0.1, help="frames per second per station")]
FramesOpt = Annotated[Path | None, typer.Option(help="folder of images instead of the EL data set")]


@clean_errors
def run(
    directory: DirOpt,
    stations: StationsOpt = 2,
    fps: FpsOpt = 27.0,
    seconds: Annotated[float, typer.Option(min=0.1, help="how long to run")] = 30.0,
    frames: FramesOpt = None,
    name_pattern: Annotated[
        str | None,
        typer.Option(
            help="regex on each --frames file name with groups serial, order, batch, "
            "e.g. '(?P<order>[^_]+)_(?P<serial>.+)'"
        ),
    ] = None,
    sidecar: Annotated[
        bool, typer.Option(help="read serial/order_id/batch_id from FRAME.json beside each image")
    ] = False,
    mes_context: Annotated[
        Path | None,
        typer.Option(
            help="MES export (CSV or JSON: station,start,end,serial,order_id,batch_id) "
            "giving each verdict the unit its station had then, where the frame does not say"
        ),
    ] = None,
    member: MemberOpt = CellMember.AUTO,
    version: Annotated[str | None, typer.Option(help="model version (default: active)")] = None,
    local: Annotated[bool, typer.Option(help="judge in-process, without Ray Serve")] = False,
    cpus: Annotated[int | None, typer.Option(help="CPUs for a Ray started here")] = None,
    live: Annotated[bool, typer.Option(help="live display")] = True,
) -> None:
    """Feed stations at a set rate; verdicts go to this node's QDM, live stats on screen."""
    if frames is None and (name_pattern is not None or sidecar):
        raise fail("--name-pattern and --sidecar read --frames files; give --frames")
    if name_pattern is not None:
        from qdspace.inference.frame_context import compile_pattern

        compile_pattern(name_pattern)  # a mistake stops us before anything starts
    mes = load_mes_context(mes_context, stations)
    from qdspace.inference.alarms import AlarmLog
    from qdspace.inference.extras import require_inspection
    from qdspace.inference.line import InspectionLine, LineConfig
    from qdspace.inference.registry import ModelRegistry
    from qdspace.inference.session import InspectionSession

    require_inspection(ray=not local)  # the ``inspect`` extra, before anything starts
    if not local:
        import qdspace.inference.serve  # noqa: F401  (Serve sets its driver logger up on import)

        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    alarms = AlarmLog()
    with InspectionSession(ModelRegistry(directory), use_ray=not local, num_cpus=cpus) as session:
        served = session.start(version)
        context = {
            "name_pattern": name_pattern,
            "sidecar": sidecar,
            "context_required": mes is None,  # the MES fills what a frame does not say
        }
        specs, audit = station_specs(
            directory, stations, fps, frames, member, alarms, served, context=context
        )
        store, sink = store_sink(directory)
        try:
            line = InspectionLine(
                session.judge,
                sink,
                specs,
                LineConfig(run_id=uuid.uuid4().hex[:8], mes=mes),
                alarms,
                audit,
            )
            tier = "onnxruntime in-process" if local else "Ray Serve"
            console.print(
                f"serving {served.version[:12]} on {tier}; "
                f"{stations} station(s) at {fps:g} fps for {seconds:g}s"
            )
            final = _run_with_display(line, session, seconds, audit, directory, live)
        finally:
            store.close()
    console.print(_render(final, audit))


def load_mes_context(path: Path | None, stations: int) -> Any:
    """The MES context file, checked whole before the line starts (None: not given)."""
    if path is None:
        return None
    from qdspace.inference.mes_context import read_mes_context

    mes = read_mes_context(path)
    ours = {f"el-{i + 1}" for i in range(stations)}
    if not ours & set(mes.stations):
        raise fail(
            f"{path}: names stations {', '.join(mes.stations[:5])}; this line runs "
            f"{', '.join(sorted(ours))}"
        )
    return mes


def station_specs(
    directory: Path,
    count: int,
    fps: float,
    frames: Path | None,
    member: CellMember,
    alarms: Any,
    served: Any,
    loop: bool = True,
    context: dict[str, Any] | None = None,
) -> tuple[list[Any], Any]:
    """Station specs over a folder, or over the member's held-out cells with a drift audit."""
    from qdspace.inference.dataset import load_elpv, select_member
    from qdspace.inference.drift import DriftMonitor, DriftThresholds
    from qdspace.inference.line import StationSpec
    from qdspace.inference.sources import FolderFrames, dataset_frames, split_round_robin
    from qdspace.inference.splits import SplitManifest, split_el_images

    if frames is not None:
        specs = [
            StationSpec(f"el-{i + 1}", FolderFrames(frames, loop, **(context or {})), fps)
            for i in range(count)
        ]
        return specs, None
    who = member_of(directory, member)
    cells = select_member(load_elpv(), who)
    path = NodeLayout(directory).split_manifest(who)
    manifest = SplitManifest.read(path) if path.exists() else split_el_images(cells)
    held_out = cells.select(manifest.test)
    parts = split_round_robin(held_out, count)
    specs = [StationSpec(f"el-{i + 1}", dataset_frames(p, loop), fps) for i, p in enumerate(parts)]
    thresholds = DriftThresholds.from_baseline(served.metrics)
    return specs, DriftMonitor(alarms, thresholds, model=served.version)


def store_sink(directory: Path) -> tuple[Any, Any]:
    """The node's QDM store (the caller closes it) and the sink that writes verdicts to it."""
    from qdspace.inference.writer import ingest_sink
    from qdspace.node.config import NodeSettings

    store = NodeSettings.load(directory).open_store()
    return store, ingest_sink(store.ingest_rows, source="inspection-line")


def _run_with_display(
    line: Any, session: Any, seconds: float, audit: Any, directory: Path, live: bool
) -> Any:
    """Run the line; each tick refreshes the display and drift file and follows activations."""
    from qdspace.node.runtime.line_status import LineStatusWriter

    layout = NodeLayout(directory)
    drift_path = layout.drift
    status = LineStatusWriter(layout.line_status)  # what the node's console shows
    view: Live | None = None

    def tick(snapshot: Any) -> None:
        swapped = session.follow_active()
        if swapped is not None:
            console.print(f"hot swap: now serving {swapped.version[:12]}")
        if view is not None:
            view.update(_render(snapshot, audit))
        if audit is not None:
            audit.model = session.version.version
            audit.write(drift_path)
        status.write(snapshot, session.version.version, audit)

    if not live:
        final = line.run(seconds, on_tick=tick)
    else:
        with Live(
            _render(line.snapshot(), audit), console=console, refresh_per_second=4, transient=True
        ) as view:
            final = line.run(seconds, on_tick=tick)
    if audit is not None:
        audit.write(drift_path)
    status.write(final, session.version.version, audit, force=True)
    return final


def _ms(value: float) -> str:
    return "-" if value != value else f"{value:.1f}"  # NaN when there are no samples


def _render(snapshot: Any, audit: Any) -> Group:
    """Stations, throughput, latency percentiles, versions and alarms as rich tables."""
    stations = Table("station", "captured", "judged", "bad", "skipped", "errors", title="line")
    for name, c in sorted(snapshot.stations.items()):
        stations.add_row(
            name, *map(str, (c.captured, c.judged, c.bad_frames, c.skipped, c.judge_errors))
        )
    j, s = snapshot.judged_latency, snapshot.stored_latency
    perf = Table("measure", "value", title=f"after {snapshot.elapsed_s:.1f}s")
    perf.add_row("throughput", f"{snapshot.throughput_fps:.1f} frames/s")
    perf.add_row("frame->verdict p50/p90/p99", f"{_ms(j.p50)} / {_ms(j.p90)} / {_ms(j.p99)} ms")
    perf.add_row("frame->stored p50/p99", f"{_ms(s.p50)} / {_ms(s.p99)} ms")
    perf.add_row(
        "stored / queued / dropped",
        f"{snapshot.stored} / {snapshot.queued_verdicts} / {snapshot.dropped_verdicts}",
    )
    versions = ", ".join(f"{v[:12]}: {n}" for v, n in snapshot.model_versions.items()) or "-"
    perf.add_row("model versions", versions)
    alarms = ", ".join(f"{k}: {n}" for k, n in sorted(snapshot.alarms.items())) or "none"
    perf.add_row("alarms", alarms)
    parts: list[Any] = [stations, perf]
    if audit is not None:
        drift = Table("audit", "samples", "FPR", "FNR", title="drift (held-out cells)")
        for st in audit.status():
            drift.add_row(
                st.station,
                str(st.samples),
                "-" if st.fpr is None else f"{st.fpr:.3f}{' !' if st.fpr_alarm else ''}",
                "-" if st.fnr is None else f"{st.fnr:.3f}{' !' if st.fnr_alarm else ''}",
            )
        parts.append(drift)
    return Group(*parts)
