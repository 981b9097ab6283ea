"""Demo chapter: EL line inspection at each supplier, on Ray Serve, into the node's QDM.

Each supplier trains a small CNN on its own cells only (Cellex Mono: mono, PolyCell
Works: poly; a few seconds on 32 px inputs, so its held-out figures are modest and
printed as measured), registers it in its node, and inspects its held-out cells at two
stations on one local Ray Serve tier. Its held-out cells are also its audit set, on
which the promotion gate judges every version before it goes live. Half-way through,
a fine-tuned second version is activated and hot-swapped in if the gate lets it (the
chapter prints the gate's figures either way, and says so when it refuses); each
verdict in the node's ``qdm_inspection`` table names the version that judged it.
Drift rates and heatmaps of misjudged validation cells are then read back through the
node's own REST API. Without the ``elpv`` or ``train`` extras the chapter says so and
is skipped.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from qdspace.node.demo.report import DemoReport

if TYPE_CHECKING:
    from qdspace.inference.dataset import ElImages
    from qdspace.inference.gate import GateDecision
    from qdspace.inference.registry import ModelRegistry, ModelVersion
    from qdspace.node.localnet.network import LocalNetwork, MemberProcess

CHAPTER = "inspection"
TITLE = "EL line inspection at each supplier (Ray Serve)"
SUPPLIERS = ("cellex", "polycell")
INPUT_SIZE = 32
STATIONS = 2
FPS = 27.0
SECONDS = 3.0
SWAP_AFTER_S = 1.5
EPOCHS = 3
FINE_TUNE_EPOCHS = 2


@dataclass(frozen=True)
class DemoModels:
    """The two versions a supplier trains: a first one and a fine-tuned successor."""

    first: ModelVersion
    second: ModelVersion
    gate: GateDecision | None


def inspection_chapter(network: LocalNetwork, report: DemoReport) -> None:
    """Train, serve, hot-swap and explain at every supplier; results in ``report.chapters``."""
    try:
        import qdspace.inference.training  # noqa: F401  (PyTorch: the ``train`` extra)
        from qdspace.inference.dataset import load_elpv
        from qdspace.inference.extras import require_inspection

        require_inspection(ray=True)  # onnxruntime + Ray Serve: the ``inspect`` extra

        cells = load_elpv()
        small = load_elpv(size=INPUT_SIZE)  # the same cells, resized once for training
    except ImportError as exc:  # Dataset-, Training- or InspectionUnavailableError
        report.chapters[CHAPTER] = {"skipped": str(exc)}
        return
    members = [network[name] for name in SUPPLIERS if name in network.members]
    trained = {
        m.spec.name: _train_two(m, small, cells) for m in members
    }  # before Ray takes the CPUs
    results: dict[str, Any] = {}
    with _LocalRay():
        for member in members:
            models, figures = trained[member.spec.name]
            results[member.spec.name] = {**figures, **_inspect_at(member, models, cells)}
    report.chapters[CHAPTER] = results


class _LocalRay:
    """One local Ray for the whole chapter (or the one already running), quiet."""

    def __init__(self) -> None:
        self._started = False

    def __enter__(self) -> None:
        import ray

        import qdspace.inference.serve  # noqa: F401  (configures Serve's driver logger on import)

        for noisy in ("ray", "ray.serve"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        if not ray.is_initialized():
            ray.init(
                num_cpus=2,
                include_dashboard=False,
                logging_level=logging.ERROR,
                log_to_driver=False,
            )
            self._started = True

    def __exit__(self, *exc: object) -> None:
        import ray

        if self._started:
            ray.shutdown()  # ends Serve too; serve.shutdown() first only adds raylet noise


def _train_two(
    member: MemberProcess, cells: ElImages, full: ElImages
) -> tuple[DemoModels, dict[str, Any]]:
    """Train on the member's own cells; the second version fine-tunes the first.

    The first version goes live through the promotion gate (against the majority-class
    predictor); the gate's decision on the second is taken now, against the first, so
    the line's tick only has to act on it.
    """
    from qdspace.inference import training
    from qdspace.inference.dataset import select_member
    from qdspace.inference.registry import ModelRegistry
    from qdspace.inference.splits import split_el_images

    name = member.spec.name
    own = select_member(cells, name)
    manifest = split_el_images(own)
    manifest.write(member.layout.split_manifest(name))
    train, val, test = (own.select(manifest.indices(p)) for p in ("train", "val", "test"))
    registry = ModelRegistry(member.directory)
    audit = select_member(full, name).select(manifest.test)
    registry.set_audit_set(list(audit.images), audit.labels(2).tolist(), audit.frame_ids)
    # one thread: on two shared cores PyTorch's second thread mostly waits for the first
    config = training.TrainConfig(
        input_size=INPUT_SIZE, epochs=EPOCHS, widths=(8, 16, 32), threads=1
    )
    started = time.monotonic()
    model, _ = training.train_model(train, config, val=val)
    first_metrics = training.evaluate(model, test, config)
    fine_tune = replace(config, epochs=FINE_TUNE_EPOCHS, learning_rate=config.learning_rate / 3)
    tuned, _ = training.train_model(train, fine_tune, initial=training.get_weights(model), val=val)
    second_metrics = training.evaluate(tuned, test, config)
    seconds = time.monotonic() - started
    versions: list[ModelVersion] = []
    notes = (f"{config.epochs} epochs", f"+{FINE_TUNE_EPOCHS} fine-tuning")
    for net, metrics, note in ((model, first_metrics, notes[0]), (tuned, second_metrics, notes[1])):
        versions.append(
            registry.register(
                training.export_onnx(net, INPUT_SIZE),
                source=f"local-train:{name}",
                metrics={**metrics.as_dict(), "onnx_opset": float(training.ONNX_OPSET)},
                split_sha256=manifest.sha256,
                parent=versions[0].version if versions else None,
                notes=f"demo: {note} at {INPUT_SIZE}px, held-out=test",
            )
        )
    registry.activate(versions[0].version, reason="demo: first version")
    gate = registry.evaluate(versions[1].version)
    figures = {
        "cells": {"train": len(manifest.train), "test": len(manifest.test)},
        "train_seconds": round(seconds, 1),
        "held_out": [_figures(first_metrics), _figures(second_metrics)],
        "gate": None
        if gate is None
        else {"promote": gate.promote, "summary": gate.summary(), "metric": gate.metric},
    }
    return DemoModels(versions[0], versions[1], gate), figures


def _figures(metrics: Any) -> dict[str, float]:
    return {k: round(float(getattr(metrics, k)), 3) for k in ("accuracy", "f1", "auroc")}


def _inspect_at(member: MemberProcess, models: DemoModels, cells: ElImages) -> dict[str, Any]:
    """One supplier: inspect with a hot swap, explain, read the results back via REST."""
    from qdspace.connector.storage import open_store
    from qdspace.inference.alarms import AlarmLog
    from qdspace.inference.dataset import select_member
    from qdspace.inference.drift import DriftMonitor, DriftThresholds
    from qdspace.inference.line import InspectionLine, LineConfig, StationSpec
    from qdspace.inference.registry import ModelRegistry
    from qdspace.inference.serve import ServeSettings
    from qdspace.inference.session import InspectionSession
    from qdspace.inference.sources import dataset_frames, split_round_robin
    from qdspace.inference.splits import SplitManifest
    from qdspace.inference.writer import ingest_sink

    name = member.spec.name
    registry = ModelRegistry(member.directory)
    manifest = SplitManifest.read(member.layout.split_manifest(name))
    held_out = select_member(cells, name).select(manifest.test)
    specs = [
        StationSpec(f"el-{i + 1}", dataset_frames(part), FPS)
        for i, part in enumerate(split_round_robin(held_out, STATIONS))
    ]
    alarms = AlarmLog()
    audit = DriftMonitor(
        alarms, DriftThresholds.from_baseline(models.first.metrics), models.first.version
    )
    with member.operator() as client:
        rows_before = int(client.qdm_counts().get("inspection", 0))
    store = open_store(member.db_url)
    settings = ServeSettings(device="cpu")
    swapped_at: list[float] = []
    try:
        with InspectionSession(registry, settings, alarms=alarms, app_name=f"el-{name}") as session:
            session.start()
            line = InspectionLine(
                session.judge,
                ingest_sink(store.ingest_rows, source="demo-inspection"),
                specs,
                LineConfig(run_id=uuid.uuid4().hex[:8]),
                alarms,
                audit,
            )

            # a version the gate refused is not swapped in; the summary shows its figures
            swap_due = [models.gate is None or models.gate.promote]

            def tick(snapshot: Any) -> None:
                if swap_due[-1] and snapshot.elapsed_s >= SWAP_AFTER_S:
                    swap_due.append(False)
                    registry.activate(models.second.version, decision=models.gate)
                    if session.follow_active() is not None:
                        swapped_at.append(snapshot.elapsed_s)

            final = line.run(SECONDS, on_tick=tick, tick_s=0.25)
    finally:
        store.close()
    audit.write(member.layout.drift)
    heatmaps = _explain(member, registry, cells, manifest)
    back = _read_back(member, heatmaps)
    back["qdm_new_rows"] = back.pop("qdm_inspection_rows") - rows_before
    return {**_served(final, swapped_at), **back}


def _served(final: Any, swapped_at: list[float]) -> dict[str, Any]:
    return {
        "frames": sum(c.captured for c in final.stations.values()),
        "stored": final.stored,
        "dropped": final.dropped_verdicts + sum(c.skipped for c in final.stations.values()),
        "p50_ms": round(final.stored_latency.p50, 1),
        "p99_ms": round(final.stored_latency.p99, 1),
        "versions": {v[:12]: n for v, n in final.model_versions.items()},
        "swapped_at_s": round(swapped_at[0], 2) if swapped_at else None,
        "alarms": dict(final.alarms),
    }


def _explain(member: MemberProcess, registry: ModelRegistry, cells: ElImages, manifest: Any) -> int:
    """Heatmaps of the top misjudgment groups of the served version on validation cells."""
    from qdspace.inference.dataset import select_member
    from qdspace.inference.explain import explain
    from qdspace.inference.registry import RegistryError

    active = registry.active()
    if active is None:
        raise RegistryError(f"no active model version in {registry.root}")
    val = select_member(cells, member.spec.name).select(manifest.val)
    out = member.layout.explanations / active.version
    groups = explain(registry.load(active.version, device="cpu"), val, out, per_group=1)
    return sum(len(g.examples) for g in groups)


def _read_back(member: MemberProcess, heatmaps: int) -> dict[str, Any]:
    """What the node itself now says, through its operator API."""
    with member.operator() as client:
        counts = client.qdm_counts()
        models = client.inspection_models()
        drift = client.inspection_drift()
        listed = client.inspection_explanations()
    line = next((s for s in drift["stations"] if s["station"] == "*"), None)
    return {
        "qdm_inspection_rows": counts.get("inspection"),
        "model_versions_registered": len(models),
        "drift_fpr": None if line is None else line["fpr"],
        "drift_fnr": None if line is None else line["fnr"],
        "heatmaps": heatmaps,
        "explanations_served": sum(e["groups"] for e in listed),
        "heatmap_url": f"{member.api_url}/v1/inspection/explanations/<version>/<png>",
    }


def print_inspection(console: Console, report: DemoReport) -> None:
    """The chapter's summary: one column per supplier, narrow enough for 80 columns."""
    results = report.chapters.get(CHAPTER)
    if not results:
        return
    if "skipped" in results:
        console.print(f"[yellow]inspection chapter skipped:[/yellow] {results['skipped']}")
        return
    table = Table(
        title=f"EL inspection on Ray Serve ({STATIONS} stations x {FPS:g} fps, {SECONDS:g} s)",
        title_justify="left",
    )
    table.add_column("")
    for name in results:
        table.add_column(name)
    for label, cell in _ROWS:
        table.add_row(label, *(cell(r) for r in results.values()))
    console.print(table)
    for name, result in results.items():
        if result.get("gate"):
            verdict = "let v2 in" if result["gate"]["promote"] else "REFUSED v2"
            console.print(
                f"promotion gate at {name} {verdict}: {result['gate']['summary']}",
                highlight=False,
            )
    console.print(
        "each supplier trained on its own cells only (seconds, 32 px: modest figures), the "
        "images never left its node; verdicts are rows of its qdm_inspection table, "
        "heatmaps are served at /v1/inspection/explanations",
        highlight=False,
    )


def _metrics(m: dict[str, float]) -> str:
    return f"{m['accuracy']:.2f} / {m['f1']:.2f} / {m['auroc']:.2f}"


def _gate(gate: dict[str, Any] | None) -> str:
    if gate is None:
        return "no audit set"
    return "passed" if gate["promote"] else "refused (no swap)"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


_ROWS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("cells train / test", lambda r: f"{r['cells']['train']} / {r['cells']['test']}"),
    ("v1 acc / F1 / AUROC", lambda r: _metrics(r["held_out"][0])),
    ("v2 acc / F1 / AUROC", lambda r: _metrics(r["held_out"][1])),
    ("gate on v2 (audit)", lambda r: _gate(r.get("gate"))),
    ("frames / stored", lambda r: f"{r['frames']} / {r['stored']}"),
    ("new rows in node QDM", lambda r: str(r["qdm_new_rows"])),
    ("dropped", lambda r: str(r["dropped"])),
    ("frame->stored p50/p99", lambda r: f"{r['p50_ms']} / {r['p99_ms']} ms"),
    (
        "verdicts per version",
        lambda r: ", ".join(f"{v[:8]}: {n}" for v, n in r["versions"].items()),
    ),
    ("hot swap at", lambda r: "-" if r["swapped_at_s"] is None else f"{r['swapped_at_s']} s"),
    ("audit FPR / FNR", lambda r: f"{_rate(r['drift_fpr'])} / {_rate(r['drift_fnr'])}"),
    ("alarms", lambda r: ", ".join(f"{k} {n}" for k, n in r["alarms"].items()) or "none"),
    ("heatmaps served", lambda r: str(r["explanations_served"])),
)
