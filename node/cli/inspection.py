"""``qdspace train`` and ``qdspace inspect models | activate | explain``: the models a line
serves, and the ``inspect`` group's mount.

Line inspection from the command line has two features: the models (train one, list
the registered versions, activate one through the promotion gate, explain what it
misjudges) and the line that runs a model against stations (``inspect run``,
``inspect serve``). The models are here; the line is `node.cli.inspection_line` and
`node.cli.inspection_serve`, the stored verdicts `node.cli.inspection_verdicts`.
Mounted by ``node.cli`` with :func:`mount`. PyTorch is imported only by ``train``;
``explain`` needs onnxruntime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from qdspace.node.cli.choices import CellMember
from qdspace.node.cli.connect import JsonOpt, print_json
from qdspace.node.cli.errors import clean_errors
from qdspace.node.cli.train_images import OwnOptions, TrainOptions, train_own_images
from qdspace.node.layout import NodeLayout

inspect_app = typer.Typer(no_args_is_help=True, help="line inspection (EL cells)")
console = Console()
err = Console(stderr=True)

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
    from qdspace.node.cli.inspection_line import run
    from qdspace.node.cli.inspection_serve import serve_line
    from qdspace.node.cli.inspection_verdicts import defects, verdicts

    app.command("train")(train)
    inspect_app.command("run")(run)
    inspect_app.command("serve")(serve_line)
    inspect_app.command("verdicts")(verdicts)
    inspect_app.command("defects")(defects)
    app.add_typer(inspect_app, name="inspect")


def member_of(directory: Path, member: CellMember) -> str:
    """Whose EL cells ``member`` names (``auto``: the node's own, if it is a supplier)."""
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

    who = member_of(directory, member)
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
        print_gate(registry, entry.version)
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
    print_gate(registry, entry.version)
    if force:
        err.print(
            f"[yellow]forced:[/yellow] {entry.version[:12]} activated over the promotion "
            "gate; recorded in the promotion log",
            highlight=False,
        )
    console.print(f"active model version {entry.version}")


def print_gate(registry: Any, version: str) -> None:
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
    who = member_of(directory, member)
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
