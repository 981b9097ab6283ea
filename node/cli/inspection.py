"""``qdspace train`` and ``qdspace inspect ...``: line inspection from the command line.

Mounted by ``node.cli`` with :func:`mount`. PyTorch is imported only by ``train``;
``inspect`` needs onnxruntime and (unless ``--local``) Ray.
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
from qdspace.node.cli.connect import JsonOpt, print_json
from qdspace.node.cli.errors import clean_errors, fail
from qdspace.node.cli.train_images import OwnOptions, TrainOptions, train_own_images
from qdspace.node.layout import NodeLayout

inspect_app = typer.Typer(no_args_is_help=True, help="line inspection (EL cells)")
console = Console()
err = Console(stderr=True)
logger = logging.getLogger("node")

DirOpt = Annotated[Path, typer.Option("--dir", help="node directory")]
MemberOpt = Annotated[
    CellMember,
    typer.Option(help="whose cells: cellex (mono), polycell (poly), all; auto = node name"),
]


ImagesOpt = Annotated[
    Path | None,
    typer.Option(
        help="train on your own images in this folder (see --labels) instead of the EL cells"
    ),
]
LabelsOpt = Annotated[
    Path | None, typer.Option(help="CSV 'file,label' (default: IMAGES/labels.csv)")
]
SplitsOpt = Annotated[
    Path | None, typer.Option(help="split manifest (default: splits.json beside the labels)")
]
GradesOpt = Annotated[
    bool, typer.Option("--grades", help="labels are grades 0..3 (2 and 3 fail), not pass/fail")
]
PositiveOpt = Annotated[
    str, typer.Option(help="your own labels that fail, comma-separated (e.g. crack,burn)")
]
NegativeOpt = Annotated[
    str, typer.Option(help="your own labels that pass (default with --positive: 0,ok,good,pass)")
]
ReplaceAuditOpt = Annotated[
    bool,
    typer.Option("--replace-audit", help="make this set's test split the gate's audit set"),
]


def mount(app: typer.Typer) -> None:
    """Add ``train`` and the ``inspect`` group to the ``qdspace`` app."""
    from qdspace.node.cli.inspection_serve import serve_line
    from qdspace.node.cli.inspection_verdicts import defects, verdicts

    app.command("train")(train)
    inspect_app.command("serve")(serve_line)
    inspect_app.command("verdicts")(verdicts)
    inspect_app.command("defects")(defects)
    app.add_typer(inspect_app, name="inspect")


def _member(directory: Path, member: CellMember) -> str:
    if member is not CellMember.AUTO:
        return member.value
    from qdspace.inference.dataset import ALL_MEMBERS, SUPPLIER_BY_CELL_TYPE
    from qdspace.node.config import NodeSettings

    name = NodeSettings.load(directory).name
    return name if name in SUPPLIER_BY_CELL_TYPE.values() else ALL_MEMBERS


@clean_errors
def train(
    directory: DirOpt,
    member: MemberOpt = CellMember.AUTO,
    epochs: Annotated[int, typer.Option(min=1, help="passes over the training split")] = 12,
    size: Annotated[int, typer.Option(min=16, help="model input side in pixels")] = 64,
    seed: Annotated[int, typer.Option(help="initialisation and shuffling seed")] = 0,
    threads: Annotated[int, typer.Option(min=1, help="PyTorch threads")] = 1,
    classes: Annotated[
        int, typer.Option(min=2, max=4, help="2: ok/defective; 4: the experts' grades")
    ] = 2,
    split_seed: Annotated[int, typer.Option(help="seed of the train/val/test split")] = 20240501,
    activate: Annotated[bool, typer.Option(help="serve this version from now on")] = True,
    images: ImagesOpt = None,
    labels: LabelsOpt = None,
    splits: SplitsOpt = None,
    grades: GradesOpt = False,
    positive: PositiveOpt = "",
    negative: NegativeOpt = "",
    replace_audit: ReplaceAuditOpt = False,
) -> None:
    """Train the defect CNN on this member's cells (or --images), export ONNX, register it."""
    if images is not None:
        train_own_images(
            directory,
            images,
            labels,
            splits,
            OwnOptions(grades, positive, negative, replace_audit),
            TrainOptions(epochs, size, seed, threads, classes, split_seed, activate),
        )
        return
    if labels is not None or splits is not None or grades or positive or negative:
        raise typer.BadParameter(
            "--labels, --splits, --grades, --positive, --negative need --images"
        )
    from qdspace.inference.dataset import load_elpv, select_member
    from qdspace.inference.registry import ModelRegistry
    from qdspace.inference.splits import split_el_images
    from qdspace.inference.training import ONNX_OPSET, TrainConfig, train_and_export

    who = _member(directory, member)
    cells = select_member(load_elpv(size=size), who)
    manifest = split_el_images(cells, seed=split_seed)
    manifest.write(NodeLayout(directory).split_manifest(who))
    registry = ModelRegistry(directory)
    if registry.audit_set() is None:
        # the member's held-out cells, full size, become the audit set the gate judges on
        audit = select_member(load_elpv(), who).select(manifest.test)
        registry.set_audit_set(list(audit.images), audit.labels(2).tolist(), audit.frame_ids)
    if classes not in (2, 4):
        raise typer.BadParameter(f"--classes {classes}: 2 or 4")
    config = TrainConfig(
        input_size=size, epochs=epochs, seed=seed, threads=threads, num_classes=classes
    )
    console.print(
        f"training on {len(manifest.train)} {who} cells "
        f"(val {len(manifest.val)}, test {len(manifest.test)}, split {manifest.sha256[:12]})"
    )
    result = train_and_export(
        cells.select(manifest.train),
        cells.select(manifest.test),
        config,
        on_epoch=lambda e, loss: console.print(f"  epoch {e:>2}/{epochs}  loss {loss:.4f}"),
        val=cells.select(manifest.val),
    )
    console.print(f"kept epoch {result.best_epoch} (lowest validation loss)")
    entry = registry.register(
        result.onnx_bytes,
        source=f"local-train:{who}",
        metrics={**result.metrics.as_dict(), "onnx_opset": float(ONNX_OPSET)},
        split_sha256=manifest.sha256,
        notes=f"classes={classes} epochs={epochs} size={size} seed={seed} "
        f"split_seed={split_seed} held-out=test best_epoch={result.best_epoch}",
    )
    m = result.metrics
    table = Table("held-out (test)", "value")
    for name, value in (("accuracy", m.accuracy), ("F1", m.f1), ("AUROC", m.auroc)):
        table.add_row(name, f"{value:.3f}")
    table.add_row("cells", str(m.count))
    console.print(table)
    console.print(f"model version [bold]{entry.version}[/bold] registered")
    if activate:
        registry.activate(entry.version)  # through the promotion gate: may refuse, with figures
        _print_gate(registry, entry.version)
        console.print(f"model version [bold]{entry.version}[/bold] (active)")


@inspect_app.command("models")
@clean_errors
def models(directory: DirOpt, as_json: JsonOpt = False) -> None:
    """List this node's model versions."""
    from qdspace.inference.registry import ModelRegistry

    registry = ModelRegistry(directory)
    active = registry.active()
    if as_json:
        current = None if active is None else active.version
        print_json([v.to_dict() | {"active": v.version == current} for v in registry.versions()])
        return
    table = Table("version", "source", "created", "acc", "F1", "AUROC", "active")
    for v in registry.versions():
        table.add_row(
            v.version[:16],
            v.source,
            v.created_at,
            *(
                f"{v.metrics[k]:.3f}" if k in v.metrics else "-"
                for k in ("accuracy", "f1", "auroc")
            ),
            "*" if active and active.version == v.version else "",
        )
    console.print(table)


@inspect_app.command("activate")
@clean_errors
def activate_version(
    directory: DirOpt,
    version: Annotated[str, typer.Argument(help="version or prefix")],
    force: Annotated[
        bool, typer.Option(help="activate even if the promotion gate refuses it (logged)")
    ] = False,
    reason: Annotated[str, typer.Option(help="why, for the promotion log")] = "",
) -> None:
    """Make a registered version the one ``inspect run``/``serve`` serve, if the gate lets it."""
    from qdspace.inference.registry import ModelRegistry

    registry = ModelRegistry(directory)
    entry = registry.activate(
        version, force=force, reason=reason or ("cli --force" if force else "")
    )
    _print_gate(registry, entry.version)
    if force:
        err.print(
            f"[yellow]forced:[/yellow] {entry.version[:12]} activated over the promotion "
            "gate; recorded in the promotion log",
            highlight=False,
        )
    console.print(f"active model version {entry.version}")


def _print_gate(registry: Any, version: str) -> None:
    """The promotion gate's figures for ``version``, if it just judged it."""
    log = registry.promotions()
    last = log[-1] if log and log[-1]["version"] == version else None
    if last is not None and last.get("decision"):
        from qdspace.inference.gate import GateDecision

        summary = GateDecision.from_dict(last["decision"]).summary()
        console.print(f"promotion gate: {summary}", highlight=False)


@inspect_app.command("explain")
@clean_errors
def explain_command(
    directory: DirOpt,
    member: MemberOpt = CellMember.AUTO,
    version: Annotated[str | None, typer.Option(help="model version (default: active)")] = None,
    top: Annotated[int, typer.Option(min=1, help="how many misjudgment groups")] = 5,
    per_group: Annotated[int, typer.Option(min=1, help="heatmaps per group")] = 3,
) -> None:
    """Heatmaps of the top FP/FN groups on this member's labelled validation cells."""
    from qdspace.inference.dataset import load_elpv, select_member
    from qdspace.inference.explain import explain
    from qdspace.inference.extras import require_inspection
    from qdspace.inference.registry import ModelRegistry, RegistryError
    from qdspace.inference.splits import SplitManifest, split_el_images

    require_inspection(ray=False)  # judging the cells needs onnxruntime
    registry = ModelRegistry(directory)
    entry = registry.get(version) if version else registry.active()
    if entry is None:
        raise RegistryError(f"no active model version in {registry.root}")
    who = _member(directory, member)
    cells = select_member(load_elpv(), who)
    path = NodeLayout(directory).split_manifest(who)
    manifest = SplitManifest.read(path) if path.exists() else split_el_images(cells)
    out = NodeLayout(directory).explanations / entry.version
    groups = explain(registry.load(entry.version), cells.select(manifest.val), out, top, per_group)
    table = Table("group", "kind", "cells", "heatmaps", title=f"misjudged {who} validation cells")
    for g in groups:
        table.add_row(g.group_id, g.kind, str(g.count), ", ".join(e.png for e in g.examples))
    console.print(table)
    console.print(f"written to {out}")


@inspect_app.command("run")
@clean_errors
def run(
    directory: DirOpt,
    stations: Annotated[int, typer.Option(min=1, help="number of stations")] = 2,
    fps: Annotated[float, typer.Option(min=0.1, help="frames per second per station")] = 27.0,
    seconds: Annotated[float, typer.Option(min=0.1, help="how long to run")] = 30.0,
    frames: Annotated[
        Path | None, typer.Option(help="folder of images instead of the EL data set")
    ] = None,
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
    mes = _mes(mes_context, stations)
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
        specs, audit = _stations(
            directory, stations, fps, frames, member, alarms, served, context=context
        )
        store, sink = _store_sink(directory)
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


def _mes(path: Path | None, stations: int) -> Any:
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


def _stations(
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
    who = _member(directory, member)
    cells = select_member(load_elpv(), who)
    path = NodeLayout(directory).split_manifest(who)
    manifest = SplitManifest.read(path) if path.exists() else split_el_images(cells)
    held_out = cells.select(manifest.test)
    parts = split_round_robin(held_out, count)
    specs = [StationSpec(f"el-{i + 1}", dataset_frames(p, loop), fps) for i, p in enumerate(parts)]
    thresholds = DriftThresholds.from_baseline(served.metrics)
    return specs, DriftMonitor(alarms, thresholds, model=served.version)


def _store_sink(directory: Path) -> tuple[Any, Any]:
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
