"""The demo's federated-learning chapter: the suppliers and the OEM improve the EL model.

SunArc Modules (OEM) publishes a job on its node; Cellex Mono (mono cells), PolyCell
Works (poly cells) and SunArc itself (incoming inspection, few defects) train on
their own EL cells only, a non-IID split. Each member's data is written into its own
node directory and read only by that member's runner; only masked, clipped model
changes travel, over mutual-TLS gRPC to SunArc's node process. The chapter reports
the held-out accuracy of every signed global version, and global versus local-only.

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

from qdspace.federation import logreg, mlp
from qdspace.federation.el_features import SPLIT_MEMBERS, el_features, member_split
from qdspace.federation.job import JobSpec
from qdspace.federation.logreg import Dataset
from qdspace.federation.params import Params, params_to_bytes
from qdspace.federation.strategies import StrategyName, StrategySpec
from qdspace.node.client import ClientError, OperatorClient, ensure_job_agreement
from qdspace.node.demo.report import DemoReport
from qdspace.node.localnet.network import LocalNetwork

COORDINATOR = "sunarc"
#: the supplier that puts the final global version on its inspection line
DEPLOY_AT = "cellex"
MEMBERS = SPLIT_MEMBERS
IMAGE_SIZE = 96
HIDDEN = 32
ROUNDS = 10
TRAINING = {"epochs": 2.0, "lr": 0.002, "batch": 32.0, "image_size": float(IMAGE_SIZE)}
UPDATE_CLIP = 20.0
MODEL = "el-mlp"
#: how often the demo asks the member nodes how their sessions are doing
SESSION_POLL_S = 1.0


@dataclass
class FederationDemo:
    """What the chapter shows, JSON-ready for ``summary.json``."""

    job_id: str
    data: str
    members: dict[str, dict[str, float]] = field(default_factory=dict)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    global_accuracy: float = 0.0
    local_only: dict[str, float] = field(default_factory=dict)
    centralised: float = 0.0
    majority: float = 0.0
    seconds: float = 0.0
    global_f1: float = 0.0
    global_auroc: float = 0.0
    centralised_f1: float = 0.0
    local_only_f1: dict[str, float] = field(default_factory=dict)
    #: member -> the agreement it negotiated with the coordinator before training
    agreements: dict[str, str] = field(default_factory=dict)
    #: the final version at a supplier's line: signature and anchor checked, ONNX, active
    deployed: dict[str, Any] = field(default_factory=dict)


def _metrics(params: Params, data: Dataset) -> tuple[float, float, float]:
    """Held-out accuracy, F1 and AUROC of the defective class."""
    from qdspace.inference.metrics import binary_metrics

    m = binary_metrics(data.y, mlp.defect_scores(params, data.x))
    return m.accuracy, m.f1, m.auroc


def el_split(seed: int = 7) -> tuple[dict[str, Dataset], Dataset, str]:
    """Non-IID member shares of the EL cells (as features) and a held-out split.

    Without the EL images (an optional extra) the chapter runs on synthetic blobs.
    """
    try:
        from qdspace.inference.dataset import binary_labels, load_elpv

        data = load_elpv(size=IMAGE_SIZE)
    except Exception as exc:  # the EL images are an optional extra
        blobs = logreg.make_blobs(3000, 32, 2, seed=seed, spread=2.0)
        parts = logreg.split(Dataset(blobs.x[:2400], blobs.y[:2400]), 3, seed)
        test = Dataset(blobs.x[2400:], blobs.y[2400:])
        return dict(zip(MEMBERS, parts, strict=True)), test, f"synthetic ({exc})"
    # each member would compute these from its own cells; the extractor is fixed and public
    x, y = el_features(data.images), binary_labels(data.probabilities)
    rows, held_out = member_split(y, np.asarray(data.cell_types), seed=seed)
    members = {m: Dataset(x[idx], y[idx]) for m, idx in rows.items()}
    source = f"elpv EL cells at {IMAGE_SIZE}px, {x.shape[1]} fixed features, MLP head"
    return members, Dataset(x[held_out], y[held_out]), source


def _job(job_id: str, dims: int) -> JobSpec:
    return JobSpec(
        job_id=job_id,
        coordinator=COORDINATOR,
        model=MODEL,
        shapes=mlp.model_shapes(dims, HIDDEN),
        rounds=ROUNDS,
        min_members=2,
        members=MEMBERS,
        strategy=StrategySpec(StrategyName.NORM_BOUNDING, {"bound": UPDATE_CLIP}),
        secure_aggregation=True,
        threshold=2,
        update_clip=UPDATE_CLIP,
        phase_timeout_s=30.0,
        training=TRAINING,
        agreement_asset=f"fl-job:{job_id}",
    )


def _alone(start: Params, data: Dataset) -> Params:
    """The same number of passes over each cell as the federated run, on one data set."""
    terms = {**TRAINING, "epochs": TRAINING["epochs"] * ROUNDS}
    params, _ = mlp.train_local(start, data, mlp.LocalTraining.from_terms(terms), seed=7)
    return params


def _wait_for(sessions: dict[str, tuple[OperatorClient, str]]) -> dict[str, dict[str, Any]]:
    """Each member's session, once none of them runs any more (the nodes run the rounds)."""
    while True:
        states = {m: api.federation_session(sid) for m, (api, sid) in sessions.items()}
        if all(s["state"] != "running" for s in states.values()):
            break
        time.sleep(SESSION_POLL_S)
    for m, s in states.items():
        if s["state"] != "done":
            raise ClientError(None, "federated job", f"{m}'s member session failed: {s['error']}")
    return states


def _run_job(
    network: LocalNetwork,
    job: JobSpec,
    initial: Params,
    files: dict[str, Path],
    test_file: Path,
    agreements: dict[str, str],
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """The OEM's node publishes the job; every member's node joins it and runs its rounds.

    A member's node trains on its own file only and checks every version it downloads
    (the coordinator's signature); the OEM's node scores each version on the held-out
    split; the supplier at ``DEPLOY_AT`` checks the final version's ledger anchor and ONNX
    export before its line uses it. The demo only asks the nodes, through their APIs.
    """
    with ExitStack() as stack:
        apis = {m: stack.enter_context(network[m].operator(timeout=120.0)) for m in MEMBERS}
        apis[COORDINATOR].federation_start(job.to_dict(), params_to_bytes(initial))
        sessions = {}
        for name in MEMBERS:
            api = apis[name]
            if name != COORDINATOR:
                # a job under contract: negotiate its offer (model updates for training
                # only, no raw data) through the member's own node before training
                assert job.agreement_asset is not None
                agreements[name], _ = ensure_job_agreement(api, COORDINATOR, job.agreement_asset)
            session = api.federation_join(
                job.job_id,
                str(files[name]),  # its own file only
                coordinator=COORDINATOR,
                test=str(test_file) if name == COORDINATOR else None,
                deploy=True if name == DEPLOY_AT else None,
                poll_s=5.0,
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
        if e["kind"] == "version"
    ]
    return states, rounds


def run_federation_chapter(network: LocalNetwork, job_id: str = "el-defects-fl") -> FederationDemo:
    """Run the short federated job on the running reference network and score it."""
    started = time.monotonic()
    shares, test, source = el_split()
    dims = test.x.shape[1]
    files = {}
    for name, data in shares.items():
        files[name] = network[name].layout.federation_data(job_id)
        logreg.save_dataset(files[name], data)
    # the OEM scores every signed version on the held-out split, in its own node
    test_file = network[COORDINATOR].layout.federation_data(f"{job_id}-held-out")
    logreg.save_dataset(test_file, test)
    # the OEM creates the job: it fits the model's input scaling to its own cells
    initial = mlp.init_params(shares[COORDINATOR].x, HIDDEN, seed=7)
    job = _job(job_id, dims)
    agreements: dict[str, str] = {}
    sessions, rounds = _run_job(network, job, initial, files, test_file, agreements)
    deployed = sessions[DEPLOY_AT]["deployment"] or {}
    pooled = Dataset(
        np.concatenate([d.x for d in shares.values()]),
        np.concatenate([d.y for d in shares.values()]),
    )
    last = rounds[-1]  # the final global version, scored by the OEM's node
    global_acc, global_f1, global_auroc = last["accuracy"], last["f1"], last["auroc"]
    central_acc, central_f1, _ = _metrics(_alone(initial, pooled), test)
    local = {m: _metrics(_alone(initial, d), test) for m, d in shares.items()}
    return FederationDemo(
        job_id=job_id,
        data=source,
        members={
            m: {"cells": float(len(d)), "defect_rate": float(d.y.mean())} for m, d in shares.items()
        },
        rounds=rounds,
        agreements=agreements,
        deployed=deployed,
        global_accuracy=global_acc,
        global_f1=global_f1,
        global_auroc=global_auroc,
        local_only={m: v[0] for m, v in local.items()},
        local_only_f1={m: v[1] for m, v in local.items()},
        centralised=central_acc,
        centralised_f1=central_f1,
        majority=float(max(test.y.mean(), 1 - test.y.mean())),
        seconds=time.monotonic() - started,
    )


def federation_step(network: LocalNetwork, report: DemoReport) -> None:
    """``story.STEPS`` entry: runs the chapter and keeps its result on the report."""
    report.chapters["federation"] = asdict(run_federation_chapter(network))


def federation_printer(console: Console, report: DemoReport) -> None:
    """``story.CHAPTER_PRINTERS`` entry."""
    if "federation" in report.chapters:
        print_federation(console, report.chapters["federation"])


def print_federation(console: Console, result: FederationDemo | dict[str, Any]) -> None:
    """The chapter's summary: member data, per-round accuracy, global vs local-only."""
    r = result if isinstance(result, FederationDemo) else FederationDemo(**result)
    if not r.rounds:
        return
    shares = ", ".join(
        f"{m} {int(v['cells'])} cells ({v['defect_rate']:.0%} defective)"
        for m, v in r.members.items()
    )
    console.print(
        f"federated job {r.job_id} on {r.data}: secure aggregation, norm bounding; {shares}",
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
            f"{row.get('f1', float('nan')):.3f}",
            f"{row.get('auroc', float('nan')):.3f}",
        )
    console.print(table)
    compare = Table(title="global versus local-only (same held-out split)")
    compare.add_column("model")
    compare.add_column("accuracy", justify="right")
    compare.add_column("F1 (defective)", justify="right")
    compare.add_row("federated (global)", f"{r.global_accuracy:.3f}", f"{r.global_f1:.3f}")
    for m, acc in r.local_only.items():
        compare.add_row(f"local only: {m}", f"{acc:.3f}", f"{r.local_only_f1.get(m, 0.0):.3f}")
    compare.add_row(
        "centralised (pooled, for reference)", f"{r.centralised:.3f}", f"{r.centralised_f1:.3f}"
    )
    compare.add_row("always 'ok' (majority)", f"{r.majority:.3f}", "0.000")
    console.print(compare)
    if r.deployed:
        d = r.deployed
        console.print(
            f"{d['member']} checked version {d['version']} (coordinator's signature; ledger "
            f"anchor: {d['anchor']}; ONNX equals the model within {d['max_difference']:.1e}) "
            f"and made it the active model of its inspection line: {d['registry_version'][:12]}",
            highlight=False,
        )
    best = max(r.local_only.values(), default=0.0)
    console.print(
        f"federated vs centralised {100 * (r.global_accuracy - r.centralised):+.1f} points, "
        f"vs best local-only {100 * (r.global_accuracy - best):+.1f} points; "
        f"chapter took {r.seconds:.1f} s",
        highlight=False,
    )


def main() -> None:  # pragma: no cover - manual run: python -m qdspace.node.demo.federation DIR
    import sys
    from pathlib import Path

    network = LocalNetwork(Path(sys.argv[1]))
    network.create()
    network.start()
    try:
        print_federation(Console(), run_federation_chapter(network))
    finally:
        network.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
