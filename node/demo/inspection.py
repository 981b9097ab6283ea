"""Demo chapter: EL line inspection at each supplier, on Ray Serve, into the node's QDM.

Two steps around the federated chapter. ``train_step`` (before it): each supplier
trains a small CNN on its own cells only (Cellex Mono: mono, PolyCell Works: poly; a
few seconds on 32 px inputs, so its figures are modest and printed as measured),
registers it in its node and makes it its line's model. Its cells are its share of the
federated job's split (``federation.el_features.member_split``), and its held-out cells
(the job's held-out cells of its cell type, never trained on by anyone) are its audit
set, on which the promotion gate judges every version before it goes live. The
federated job then trains the same CNN on everyone's shares; each supplier's *node*
checks the final version (signature, ledger anchor, ONNX) and offers it to its gate.

``inspection_chapter`` (after it): each supplier's line inspects its held-out cells at
two stations on one local Ray Serve tier, starting on its own model, the one it served
while the job ran. Half-way through, the line follows the node's registry as
``qdspace inspect`` does: if the gate let the federated version in, it is hot-swapped
into the running line; if the gate refused it, the line keeps its own model and the
summary shows the gate's figures (never forced). Each verdict in the node's
``qdm_inspection`` table names the version that judged it. Drift rates and heatmaps of
misjudged validation cells are then read back through the node's own REST API.
Without the ``elpv`` or ``train`` extras both steps say so and are skipped.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from qdspace.node.demo.report import DemoReport

if TYPE_CHECKING:
    from qdspace.inference.dataset import ElImages
    from qdspace.inference.registry import ModelRegistry, ModelVersion
    from qdspace.inference.splits import SplitManifest
    from qdspace.node.localnet.network import LocalNetwork, MemberProcess

CHAPTER = "inspection"
TRAIN_TITLE = "EL lines: each supplier trains its own CNN"
TITLE = "EL line inspection at each supplier (Ray Serve, federated hot swap)"
SUPPLIERS = ("cellex", "polycell")
INPUT_SIZE = 32
STATIONS = 2
FPS = 27.0
SECONDS = 3.0
SWAP_AFTER_S = 1.5
EPOCHS = 3
#: the federated job's split of the EL cells (``member_split``), shared with its chapter
SPLIT_SEED = 7
#: the share of a supplier's own cells kept back for early stopping (and heatmaps)
VAL_SHARE = 1 / 6


@dataclass(frozen=True)
class DemoModels:
    """A supplier's own version, and the federated one its node registered (if any)."""

    own: ModelVersion
    federated: ModelVersion | None
    #: the node's promotion-log record of the federated version (outcome, gate figures)
    promotion: dict[str, Any] | None


def _extras() -> str | None:
    """Why the chapter cannot run here (a missing extra), or None."""
    try:
        import qdspace.inference.training  # noqa: F401  (PyTorch: the ``train`` extra)
        from qdspace.inference.dataset import load_elpv
        from qdspace.inference.extras import require_inspection

        require_inspection(ray=True)  # onnxruntime + Ray Serve: the ``inspect`` extra
        load_elpv(size=8)
    except ImportError as exc:  # Dataset-, Training- or InspectionUnavailableError
        return str(exc)
    return None


def train_step(network: LocalNetwork, report: DemoReport) -> None:
    """``story.STEPS`` entry before the federated chapter: each supplier's own model."""
    from qdspace.inference.dataset import load_elpv

    missing = _extras()
    if missing is not None:
        report.chapters[CHAPTER] = {"skipped": missing}
        return
    cells = load_elpv()
    small = load_elpv(size=INPUT_SIZE)  # the same cells, resized once for training
    members = [network[name] for name in SUPPLIERS if name in network.members]
    report.chapters[CHAPTER] = {m.spec.name: _train_own(m, small, cells) for m in members}


def inspection_chapter(network: LocalNetwork, report: DemoReport) -> None:
    """Serve, hot-swap and explain at every supplier; results in ``report.chapters``."""
    from qdspace.inference.dataset import load_elpv

    trained = report.chapters.get(CHAPTER) or {}
    if not trained or "skipped" in trained:
        return
    cells = load_elpv()
    members = [network[name] for name in SUPPLIERS if name in trained]
    results: dict[str, Any] = {}
    models = {m.spec.name: _models_at(m, trained[m.spec.name]) for m in members}
    for member in members:  # the federated version on the supplier's own held-out cells
        trained[member.spec.name]["federated"] = _federated_figures(member, models, cells)
    with _LocalRay():
        for member in members:
            name = member.spec.name
            results[name] = {**trained[name], **_inspect_at(member, models[name], cells)}
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


def own_split(member: str, full: ElImages) -> SplitManifest:
    """The supplier's share of the federated job's split: its own cells (train, and a
    validation share) and the job's held-out cells of its type (test = audit set)."""
    import numpy as np

    from qdspace.federation.el_features import member_split
    from qdspace.inference.dataset import binary_labels
    from qdspace.inference.splits import SplitManifest

    kinds = np.asarray(full.cell_types)
    rows, held_out = member_split(binary_labels(full.probabilities), kinds, seed=SPLIT_SEED)
    own = np.random.default_rng(SPLIT_SEED).permutation(rows[member])
    cut = int(len(own) * VAL_SHARE)
    kind = kinds[rows[member][0]]
    test = held_out[kinds[held_out] == kind]

    def ids(positions: Any) -> tuple[int, ...]:
        return tuple(sorted(int(full.indices[p]) for p in positions))

    return SplitManifest(
        seed=SPLIT_SEED,
        fractions=(1 - VAL_SHARE, VAL_SHARE, 0.0),
        stratified_by=f"federated job split (member_split seed {SPLIT_SEED}), {kind} cells",
        train=ids(own[cut:]),
        val=ids(own[:cut]),
        test=ids(test),
    )


def _train_own(member: MemberProcess, cells: ElImages, full: ElImages) -> dict[str, Any]:
    """Train on the member's own cells, register, set the audit set, go live (gated
    against the majority-class predictor)."""
    from qdspace.inference import training
    from qdspace.inference.registry import ModelRegistry

    name = member.spec.name
    manifest = own_split(name, full)
    manifest.write(member.layout.split_manifest(name))
    train, val, test = (cells.select(manifest.indices(p)) for p in ("train", "val", "test"))
    registry = ModelRegistry(member.directory)
    audit = full.select(manifest.test)
    registry.set_audit_set(list(audit.images), audit.labels(2).tolist(), audit.frame_ids)
    # one thread: on two shared cores PyTorch's second thread mostly waits for the first
    config = training.TrainConfig(
        input_size=INPUT_SIZE, epochs=EPOCHS, widths=(8, 16, 32), threads=1
    )
    started = time.monotonic()
    model, _ = training.train_model(train, config, val=val)
    metrics = training.evaluate(model, test, config)
    seconds = time.monotonic() - started
    version = registry.register(
        training.export_onnx(model, INPUT_SIZE),
        source=f"local-train:{name}",
        metrics={**metrics.as_dict(), "onnx_opset": float(training.ONNX_OPSET)},
        split_sha256=manifest.sha256,
        notes=f"demo: {config.epochs} epochs at {INPUT_SIZE}px, held-out=test",
    )
    registry.activate(version.version, reason="demo: the line's own first version")
    return {
        "cells": {"train": len(manifest.train), "test": len(manifest.test)},
        "train_seconds": round(seconds, 1),
        "own_version": version.version,
        "held_out": [_figures(metrics)],
    }


def _models_at(member: MemberProcess, trained: dict[str, Any]) -> DemoModels:
    """The supplier's own version and the federated one its node registered after it."""
    from qdspace.inference.registry import ModelRegistry

    registry = ModelRegistry(member.directory)
    own = registry.get(trained["own_version"])
    federated = [v for v in registry.versions() if v.source.startswith("federated:")]
    if not federated:
        return DemoModels(own, None, None)
    latest = federated[-1]
    records = [p for p in registry.promotions() if p["version"] == latest.version]
    return DemoModels(own, latest, records[-1] if records else None)


def _federated_figures(
    member: MemberProcess, models: dict[str, DemoModels], cells: ElImages
) -> dict[str, Any] | None:
    """The federated version's held-out figures on this supplier's audit cells, and the
    node gate's decision on it (read from the node's promotion log)."""
    from qdspace.inference.metrics import binary_metrics
    from qdspace.inference.registry import ModelRegistry
    from qdspace.inference.splits import SplitManifest

    chosen = models[member.spec.name]
    if chosen.federated is None:
        return None
    registry = ModelRegistry(member.directory)
    manifest = SplitManifest.read(member.layout.split_manifest(member.spec.name))
    audit = cells.select(manifest.test)
    model = registry.load(chosen.federated.version, device="cpu")
    probs = model.probabilities(model.prepare(list(audit.images)))
    scores = probs[:, list(model.info.defective_classes)].sum(axis=1)
    record = chosen.promotion or {}
    decision = record.get("decision")
    return {
        "version": chosen.federated.version,
        "source": chosen.federated.source,
        "input_size": chosen.federated.input_size,
        "held_out": _figures(binary_metrics(audit.labels(2), scores)),
        "gate": {
            "outcome": record.get("outcome", "not offered"),
            "promote": record.get("outcome") in ("activated", "ungated"),
            "summary": _gate_summary(decision),
            "metric": None if decision is None else decision.get("metric"),
        },
    }


def _gate_summary(decision: dict[str, Any] | None) -> str:
    from qdspace.inference.gate import GateDecision

    if decision is None:
        return "no audit set, gate not applied"
    return GateDecision.from_dict(decision).summary()


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
        alarms, DriftThresholds.from_baseline(models.own.metrics), models.own.version
    )
    with member.operator() as client:
        rows_before = int(client.qdm_counts().get("inspection", 0))
    store = open_store(member.db_url)
    settings = ServeSettings(device="cpu")
    swapped_at: list[float] = []
    swapped_to: list[str] = []
    try:
        with InspectionSession(registry, settings, alarms=alarms, app_name=f"el-{name}") as session:
            # the line runs its own model, as it did while the federated job ran
            session.start(models.own.version)
            line = InspectionLine(
                session.judge,
                ingest_sink(store.ingest_rows, source="demo-inspection"),
                specs,
                LineConfig(run_id=uuid.uuid4().hex[:8]),
                alarms,
                audit,
            )

            # half-way, the line follows the registry: the federated version if the
            # node's gate let it in; a refused one is not active, so nothing is swapped
            swap_due = [True]

            def tick(snapshot: Any) -> None:
                if swap_due[-1] and snapshot.elapsed_s >= SWAP_AFTER_S:
                    swap_due.append(False)
                    now = session.follow_active()
                    if now is not None:
                        swapped_at.append(snapshot.elapsed_s)
                        swapped_to.append(now.version)

            final = line.run(SECONDS, on_tick=tick, tick_s=0.25)
    finally:
        store.close()
    audit.write(member.layout.drift)
    heatmaps = _explain(member, registry, cells, manifest)
    back = _read_back(member, heatmaps)
    back["qdm_new_rows"] = back.pop("qdm_inspection_rows") - rows_before
    served = _served(final, swapped_at)
    served["swapped_to"] = swapped_to[0] if swapped_to else None
    return {**served, **back}


def _served(final: Any, swapped_at: list[float]) -> dict[str, Any]:
    return {
        "frames": sum(c.captured for c in final.stations.values()),
        "stored": final.stored,
        "dropped": final.dropped_verdicts + sum(c.skipped for c in final.stations.values()),
        "p50_ms": round(final.stored_latency.p50, 1),
        "p99_ms": round(final.stored_latency.p99, 1),
        "versions": {v[:12]: n for v, n in final.model_versions.items()},
        "verdicts_by_version": dict(final.model_versions),
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
        fed = result.get("federated")
        if not fed:
            console.print(f"{name}: no federated version was deployed", highlight=False)
            continue
        gate = fed["gate"]
        if gate["promote"]:
            swapped = result.get("swapped_to") == fed["version"]
            what = (
                f"hot-swapped into the running line at {result['swapped_at_s']} s"
                if swapped
                else "activated, but the line did NOT swap to it"
            )
            verdict = f"let federated {fed['version'][:12]} in; {what}"
        else:
            verdict = f"REFUSED federated {fed['version'][:12]} (no swap, not forced)"
        console.print(
            f"promotion gate at {name} {verdict}: {gate['summary']}",
            highlight=False,
        )
    console.print(
        "each supplier first trained on its own cells only (seconds, 32 px: modest "
        "figures), the images never left its node; the federated CNN came from the "
        "federated job (secure aggregation) through its node's promotion gate; verdicts "
        "are rows of its qdm_inspection table, heatmaps are served at "
        "/v1/inspection/explanations",
        highlight=False,
    )


def _metrics(m: dict[str, float]) -> str:
    return f"{m['accuracy']:.2f} / {m['f1']:.2f} / {m['auroc']:.2f}"


def _gate(fed: dict[str, Any] | None) -> str:
    if fed is None:
        return "none deployed"
    if fed["gate"]["outcome"] == "ungated":
        return "no audit set"
    return "passed" if fed["gate"]["promote"] else "refused (no swap)"


def _fed_metrics(fed: dict[str, Any] | None) -> str:
    return "-" if fed is None else _metrics(fed["held_out"])


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


_ROWS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("cells train / test", lambda r: f"{r['cells']['train']} / {r['cells']['test']}"),
    ("own acc / F1 / AUROC", lambda r: _metrics(r["held_out"][0])),
    ("federated acc/F1/AUROC", lambda r: _fed_metrics(r.get("federated"))),
    ("gate on federated", lambda r: _gate(r.get("federated"))),
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
