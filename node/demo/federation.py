"""The demo's federated-learning chapter: the suppliers and the OEM train the line's CNN.

SunArc Modules (OEM) publishes an ``el-cnn`` job on its node: the very CNN the
inspection lines serve. Cellex Mono (mono cells), PolyCell Works (poly cells) and
SunArc itself (incoming inspection, few defects) train it on their own EL cells only,
a non-IID split. Each member's cells are written into its own node directory and read
only by that member's runner; only masked, clipped weight changes travel (secure
aggregation), over mutual-TLS gRPC to SunArc's node process. The chapter reports the
held-out accuracy / F1 / AUROC of every signed global version and compares the final
one with the suppliers' own line models (trained on their own cells only, by the
inspection chapter's ``train_step`` just before this one), on the same held-out cells.

Both suppliers ask their node to deploy the final version: the node checks the
coordinator's signature, the ledger anchor and the ONNX export, registers it and
offers it to the member's promotion gate against the line's own model, on the
member's audit set (its held-out cells). The gate's decision stands, either way; the
inspection chapter then hot-swaps an admitted version into the running line.

Settings (``IMAGE_SIZE``, ``WIDTHS``, ``ROUNDS``, ``EPOCHS``): the line's 32 px and
narrow widths, 5 rounds of 2 local epochs, chosen so the federated CNN beats each
supplier's own model on its audit cells on the gate's metric with these seeds (3
rounds did not at Cellex), in about 20-30 s on 2 cores (figures in the README).

How the demo uses it: ``federation_step`` fits ``node.demo.story.STEPS`` (it stores
its result in ``report.chapters["federation"]``) and ``federation_printer`` fits
``node.demo.story.CHAPTER_PRINTERS``.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from qdspace.federation.el_cnn import LAYOUT, MODEL, cnn_shapes
from qdspace.federation.el_features import SPLIT_MEMBERS, member_split
from qdspace.federation.job import JobSpec
from qdspace.federation.strategies import StrategyName, StrategySpec
from qdspace.node.client import ClientError, OperatorClient
from qdspace.node.demo import inspection
from qdspace.node.demo.report import DemoReport
from qdspace.node.localnet.network import LocalNetwork

COORDINATOR = "sunarc"
#: the suppliers whose nodes deploy the final version to their inspection lines
DEPLOY_AT = inspection.SUPPLIERS
MEMBERS = SPLIT_MEMBERS
#: the line's input size and widths (``inspection``), so versions are alike to serve
IMAGE_SIZE = inspection.INPUT_SIZE
WIDTHS = (8, 16, 32)
ROUNDS = 5
EPOCHS = 2
TRAINING = {
    "layout": float(LAYOUT),
    "image_size": float(IMAGE_SIZE),
    "epochs": float(EPOCHS),
    "lr": 3e-3,
    "batch": 32.0,
    "seed": 0.0,
}
#: L2 bound on a member's change per round (honest 2-epoch changes are about 1-3)
UPDATE_CLIP = 5.0
#: how often the demo asks the member nodes how their sessions are doing
SESSION_POLL_S = 1.0


@dataclass
class FederationDemo:
    """What the chapter shows, JSON-ready for ``summary.json``."""

    job_id: str
    data: str
    model: str = MODEL
    members: dict[str, dict[str, float]] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    global_accuracy: float = 0.0
    global_f1: float = 0.0
    global_auroc: float = 0.0
    #: supplier -> its own line model (local only) on the same held-out cells
    local_only: dict[str, dict[str, float]] = field(default_factory=dict)
    majority: float = 0.0
    seconds: float = 0.0
    #: member -> the agreement it negotiated with the coordinator before training
    agreements: dict[str, str] = field(default_factory=dict)
    #: supplier -> the final version at its node: anchor checked, ONNX, gate decision
    deployed: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: str | None = None


def el_split(seed: int = inspection.SPLIT_SEED) -> tuple[dict[str, Any], Any, Any, str]:
    """Member shares and held-out cells (images at ``IMAGE_SIZE`` and 0/1 labels): the
    split the suppliers' own models were trained on (``inspection.own_split``)."""
    from qdspace.inference.dataset import binary_labels, load_elpv

    data = load_elpv(size=IMAGE_SIZE)
    y = binary_labels(data.probabilities)
    rows, held_out = member_split(y, np.asarray(data.cell_types), seed=seed)
    shares = {m: (np.asarray(data.images[idx]), y[idx]) for m, idx in rows.items()}
    source = f"elpv EL cells at {IMAGE_SIZE}px, the line's CNN (widths {WIDTHS})"
    return shares, np.asarray(data.images[held_out]), y[held_out], source


def _job(job_id: str) -> dict[str, Any]:
    """The job's terms as an operator writes them: the CNN's widths, not its shapes."""
    spec = JobSpec(
        job_id=job_id,
        coordinator=COORDINATOR,
        model=MODEL,
        shapes=cnn_shapes(WIDTHS),
        rounds=ROUNDS,
        min_members=2,
        members=MEMBERS,
        strategy=StrategySpec(StrategyName.NORM_BOUNDING, {"bound": UPDATE_CLIP}),
        secure_aggregation=True,
        threshold=2,
        update_clip=UPDATE_CLIP,
        phase_timeout_s=60.0,
        training=TRAINING,
        agreement_asset=f"fl-job:{job_id}",
    )
    terms = {k: v for k, v in spec.to_dict().items() if k != "shapes"}
    return {**terms, "widths": list(WIDTHS)}


def _wait_for(sessions: dict[str, tuple[OperatorClient, str]]) -> dict[str, dict[str, Any]]:
    """Each member's session, once none of them runs any more (the nodes run the rounds)."""
    while True:
        states = {m: api.federation.session(sid) for m, (api, sid) in sessions.items()}
        if all(s["state"] != "running" for s in states.values()):
            break
        time.sleep(SESSION_POLL_S)
    for m, s in states.items():
        if s["state"] != "done":
            raise ClientError(None, "federated job", f"{m}'s member session failed: {s['error']}")
    return states


def _run_job(
    network: LocalNetwork,
    job: dict[str, Any],
    files: dict[str, Path],
    test_file: Path,
    agreements: dict[str, str],
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """The OEM's node publishes the job; every member's node joins it and runs its rounds.

    A member's node trains on its own file only and checks every version it downloads
    (the coordinator's signature); the OEM's node scores each version on the held-out
    cells; the suppliers' nodes check the final version's ledger anchor and ONNX export
    and offer it to their promotion gates. The demo only asks the nodes, through their
    APIs.
    """
    job_id = str(job["job_id"])
    with ExitStack() as stack:
        apis = {m: stack.enter_context(network[m].operator(timeout=120.0)) for m in MEMBERS}
        # no initial model: the coordinator's node makes the seeded fresh CNN (version 0)
        apis[COORDINATOR].federation.start(job, None)
        sessions = {}
        for name in MEMBERS:
            api = apis[name]
            if name != COORDINATOR:
                # a job under contract: negotiate its offer (model updates for training
                # only, no raw data) through the member's own node before training
                agreements[name], _ = api.federation.ensure_agreement(
                    COORDINATOR, str(job["agreement_asset"])
                )
            session = api.federation.join(
                job_id,
                str(files[name]),  # its own file only
                coordinator=COORDINATOR,
                test=str(test_file) if name == COORDINATOR else None,
                deploy=True if name in DEPLOY_AT else None,
                poll_s=1.0,
            )
            sessions[name] = (api, str(session["session_id"]))
        states = _wait_for(sessions)
    rounds = [
        {
            "version": e["version"],
            "round": e["round"],
            "members": e["members"],
            "accuracy": e["scores"]["accuracy"],
            "f1": e["scores"]["f1"],
            "auroc": e["scores"]["auroc"],
        }
        for e in states[COORDINATOR]["events"]
        if e["kind"] == "version" and e.get("scores")
    ]
    return states, rounds


def _local_only(
    network: LocalNetwork, report: DemoReport, images: Any, labels: Any
) -> dict[str, dict[str, float]]:
    """Each supplier's own line model (trained on its cells only) on the held-out cells."""
    from qdspace.inference.metrics import binary_metrics
    from qdspace.inference.registry import ModelRegistry

    out = {}
    for name, trained in (report.chapters.get(inspection.CHAPTER) or {}).items():
        if not isinstance(trained, dict) or "own_version" not in trained:
            continue
        model = ModelRegistry(network[name].directory).load(trained["own_version"], device="cpu")
        probs = model.probabilities(model.prepare(list(images)))
        m = binary_metrics(labels, probs[:, list(model.info.defective_classes)].sum(axis=1))
        out[name] = {"accuracy": m.accuracy, "f1": m.f1, "auroc": m.auroc}
    return out


def run_federation_chapter(
    network: LocalNetwork, report: DemoReport, job_id: str = "el-cnn-fl"
) -> FederationDemo:
    """Run the federated CNN job on the running reference network and score it."""
    started = time.monotonic()
    shares, test_images, test_labels, source = el_split()
    files = {}
    for name, (images, labels) in shares.items():
        files[name] = network[name].layout.federation_data(job_id)
        files[name].parent.mkdir(parents=True, exist_ok=True)
        np.savez(files[name], images=images, y=labels)
    # the OEM scores every signed version on the held-out cells, in its own node
    test_file = network[COORDINATOR].layout.federation_data(f"{job_id}-held-out")
    np.savez(test_file, images=test_images, y=test_labels)
    agreements: dict[str, str] = {}
    sessions, rounds = _run_job(network, _job(job_id), files, test_file, agreements)
    deployed = {m: sessions[m]["deployment"] for m in DEPLOY_AT if sessions[m]["deployment"]}
    last = rounds[-1]  # the final global version, scored by the OEM's node
    rate = float(test_labels.mean())
    return FederationDemo(
        job_id=job_id,
        data=source,
        members={
            m: {"cells": float(len(y)), "defect_rate": float(y.mean())}
            for m, (_, y) in shares.items()
        },
        rounds=rounds,
        agreements=agreements,
        deployed=deployed,
        global_accuracy=last["accuracy"],
        global_f1=last["f1"],
        global_auroc=last["auroc"],
        local_only=_local_only(network, report, test_images, test_labels),
        majority=max(rate, 1 - rate),
        seconds=time.monotonic() - started,
    )


def federation_step(network: LocalNetwork, report: DemoReport) -> None:
    """``story.STEPS`` entry: runs the chapter and keeps its result on the report."""
    trained = report.chapters.get(inspection.CHAPTER) or {}
    if "skipped" in trained:  # the CNN needs the same extras as the lines
        report.chapters["federation"] = asdict(
            FederationDemo(job_id="-", data="-", skipped=trained["skipped"])
        )
        return
    report.chapters["federation"] = asdict(run_federation_chapter(network, report))


def federation_printer(console: Console, report: DemoReport) -> None:
    """``story.CHAPTER_PRINTERS`` entry."""
    if "federation" in report.chapters:
        print_federation(console, report.chapters["federation"])


def print_federation(console: Console, result: FederationDemo | dict[str, Any]) -> None:
    """The chapter's summary: member data, per-round scores, federated vs local-only,
    and each supplier's deployment with its gate's decision."""
    r = result if isinstance(result, FederationDemo) else FederationDemo(**result)
    if r.skipped:
        console.print(f"[yellow]federated chapter skipped:[/yellow] {r.skipped}")
        return
    if not r.rounds:
        return
    shares = ", ".join(
        f"{m} {int(v['cells'])} cells ({v['defect_rate']:.0%} defective)"
        for m, v in r.members.items()
    )
    console.print(
        f"federated job {r.job_id} ({r.model}) on {r.data}: secure aggregation, norm "
        f"bounding; {shares}",
        highlight=False,
    )
    for m, agreement in r.agreements.items():
        console.print(
            f"{m} joined under agreement {agreement} with {COORDINATOR}: "
            "model updates for training only, no raw data, no redistribution",
            highlight=False,
        )
    table = Table(title="federated rounds (held-out scores of each signed version)")
    for col in ("version", "round", "members", "accuracy", "F1", "AUROC"):
        table.add_column(col)
    for row in r.rounds:
        table.add_row(
            str(row["version"]),
            str(row["round"]),
            ", ".join(row["members"]),
            f"{row['accuracy']:.3f}",
            f"{row['f1']:.3f}",
            f"{row['auroc']:.3f}",
        )
    console.print(table)
    compare = Table(title="federated CNN versus the suppliers' own CNNs (same held-out cells)")
    for col in ("model", "accuracy", "F1 (defective)", "AUROC"):
        compare.add_column(col, justify="left" if col == "model" else "right")
    compare.add_row(
        "federated (global)",
        f"{r.global_accuracy:.3f}",
        f"{r.global_f1:.3f}",
        f"{r.global_auroc:.3f}",
    )
    for m, v in r.local_only.items():
        compare.add_row(
            f"local only: {m}", f"{v['accuracy']:.3f}", f"{v['f1']:.3f}", f"{v['auroc']:.3f}"
        )
    compare.add_row("always 'ok' (majority)", f"{r.majority:.3f}", "0.000", "0.500")
    console.print(compare)
    for d in r.deployed.values():
        gate = (
            f"its promotion gate let it in: {d['gate']}"
            if d["active"]
            else f"its promotion gate REFUSED it (registered, not active): {d['gate']}"
        )
        console.print(
            f"{d['member']} checked federated version {d['version']} (coordinator's "
            f"signature; ledger anchor: {d['anchor']}; ONNX equals the model within "
            f"{d['max_difference']:.1e}), registered it as {d['registry_version'][:12]}; " + gate,
            highlight=False,
        )
    best = max((v["accuracy"] for v in r.local_only.values()), default=0.0)
    console.print(
        f"federated vs best local-only {100 * (r.global_accuracy - best):+.1f} points of "
        f"held-out accuracy; chapter took {r.seconds:.1f} s",
        highlight=False,
    )
