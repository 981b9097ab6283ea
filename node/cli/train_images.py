"""``qdspace train --images DIR``: the line's CNN trained on a member's own labelled images.

The command shows what it is about to train on before the first epoch (the split, what
changed in the folder since the last training, the class balance and its warnings),
the loss of each epoch while it trains, then the held-out figures and the promotion
gate's verdict, as ``qdspace train`` does for the bundled EL cells. The work itself is
``inference.own_training`` (shared with the node's API); this module only prints.
Nothing heavy is imported until the command runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


@dataclass(frozen=True)
class OwnOptions:
    """How to read the labels, and whether this set's test split becomes the audit set."""

    grades: bool = False
    positive: str = ""
    negative: str = ""
    replace_audit: bool = False


@dataclass(frozen=True)
class TrainOptions:
    """The training knobs ``qdspace train`` shares between bundled and own images."""

    epochs: int = 12
    size: int = 64
    seed: int = 0
    threads: int = 1
    classes: int = 2
    split_seed: int = 20240501
    activate: bool = True


def names(text: str) -> tuple[str, ...]:
    """``"crack, burn"`` -> ``("crack", "burn")``."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def train_own_images(
    directory: Path,
    images: Path,
    labels: Path | None,
    splits: Path | None,
    own: OwnOptions,
    options: TrainOptions,
) -> None:
    """Check, report, train, register and (through the gate) activate."""
    from qdspace.inference.labels import LabelRule
    from qdspace.inference.own_training import OwnTrainRequest, prepare, train_prepared
    from qdspace.inference.registry import ModelRegistry
    from qdspace.node.cli.inspection import print_gate

    request = OwnTrainRequest(
        images=images,
        labels=labels,
        splits=splits,
        rule=LabelRule(own.grades, names(own.positive), names(own.negative)),
        classes=options.classes,
        epochs=options.epochs,
        size=options.size,
        seed=options.seed,
        split_seed=options.split_seed,
        threads=options.threads,
        replace_audit=own.replace_audit,
    )
    registry = ModelRegistry(directory)
    prepared = prepare(request, registry)
    print_prepared(prepared)
    epochs = options.epochs
    result = train_prepared(
        prepared,
        registry,
        on_epoch=lambda e, loss: console.print(f"  epoch {e:>2}/{epochs}  loss {loss:.4f}"),
    )
    console.print(f"kept epoch {result.best_epoch} (lowest validation loss)")
    console.print(f"split manifest: {request.splits_path}")
    m = result.metrics
    table = Table("held-out (test)", "value")
    for name, value in (("accuracy", m.accuracy), ("F1", m.f1), ("AUROC", m.auroc)):
        table.add_row(name, f"{value:.3f}")
    table.add_row("images", str(m.count))
    console.print(table)
    console.print(f"model version [bold]{result.entry.version}[/bold] registered")
    if options.activate:
        registry.activate(result.entry.version)  # the promotion gate: may refuse
        print_gate(registry, result.entry.version)
        console.print(f"model version [bold]{result.entry.version}[/bold] (active)")


def print_prepared(prepared: Any) -> None:
    """The split, its changes, the class balance and its warnings, before training."""
    split, images = prepared.split, prepared.images
    how = "reused" if prepared.changes.reused else "drawn (new)"
    console.print(
        f"{len(images.rows)} images in {prepared.request.images} "
        f"({images.rule.describe()}); split {how}, seed {split.seed}, {split.sha256[:12]}",
        highlight=False,
    )
    for line in prepared.changes.lines():
        console.print(f"[yellow]changed:[/yellow] {line}", highlight=False)
    table = Table("label", "train", "val", "test", title="class balance")
    for row in prepared.balance.table():
        table.add_row(*row)
    console.print(table)
    for warning in prepared.balance.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    if prepared.audit_note and not prepared.request.replace_audit:
        console.print(f"[yellow]warning:[/yellow] {prepared.audit_note}", highlight=False)
