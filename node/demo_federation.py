"""The demo's federated-learning chapter: the suppliers and the OEM improve the EL model.

SunArc Modules (OEM) publishes a job on its node; Cellex Mono (mono cells), PolyCell
Works (poly cells) and SunArc itself (incoming inspection, few defects) train on
their own EL cells only, a non-IID split. Each member's data is written into its own
node directory and read only by that member's runner; only masked, clipped model
changes travel, over mutual-TLS gRPC to SunArc's node process. The chapter reports
the held-out accuracy of every signed global version, and global versus local-only.

How the demo uses it: ``federation_step`` fits ``node.demo.STEPS`` (it stores its
result in ``report.chapters["federation"]``) and ``federation_printer`` fits
``node.demo.CHAPTER_PRINTERS``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from federation import logreg
from federation.job import JobSpec
from federation.params import Params
from federation.strategies import StrategyName, StrategySpec
from federation.versions import ModelVersion
from node.identity.member import load_member_keys
from node.launcher import LocalNetwork
from node.rpc.client import open_channel
from node.rpc.federation_client import (
    FederationClient,
    MemberResult,
    MemberRunner,
    coordinator_key,
)

COORDINATOR = "sunarc"
MEMBERS = ("cellex", "polycell", "sunarc")
IMAGE_SIZE = 24
ROUNDS = 5
TRAINING = {"epochs": 2.0, "lr": 0.02, "batch": 32.0}
HELD_OUT = 0.2
OEM_CELLS, OEM_DEFECT_RATE = 240, 0.08


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


def _features(images: np.ndarray) -> np.ndarray:
    """Per-image standardised pixels: each member computes them from its own cells alone."""
    x = images.reshape(len(images), -1).astype(np.float32)
    x -= x.mean(axis=1, keepdims=True)
    x /= x.std(axis=1, keepdims=True) + 1e-6
    return x


def el_split(seed: int = 7) -> tuple[dict[str, logreg.Dataset], logreg.Dataset, str]:
    """Non-IID member shares of the EL cells and a held-out split (synthetic if missing)."""
    try:
        from inference.dataset import binary_labels, load_elpv

        data = load_elpv(size=IMAGE_SIZE)
    except Exception as exc:  # the EL images are an optional extra
        blobs = logreg.make_blobs(3000, 32, 2, seed=seed, spread=2.0)
        parts = logreg.split(logreg.Dataset(blobs.x[:2400], blobs.y[:2400]), 3, seed)
        test = logreg.Dataset(blobs.x[2400:], blobs.y[2400:])
        return dict(zip(MEMBERS, parts, strict=True)), test, f"synthetic ({exc})"
    x, y = _features(data.images), binary_labels(data.probabilities)
    kinds = np.array(data.cell_types)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    test_idx, train_idx = order[: int(HELD_OUT * len(y))], order[int(HELD_OUT * len(y)) :]
    ok = train_idx[y[train_idx] == 0]
    bad = train_idx[y[train_idx] == 1]
    n_bad = int(OEM_CELLS * OEM_DEFECT_RATE)
    oem = np.concatenate([ok[: OEM_CELLS - n_bad], bad[:n_bad]])
    rest = np.setdiff1d(train_idx, oem)
    members = {
        "cellex": rest[kinds[rest] == "mono"],
        "polycell": rest[kinds[rest] == "poly"],
        "sunarc": oem,
    }
    shares = {m: logreg.Dataset(x[idx], y[idx]) for m, idx in members.items()}
    return shares, logreg.Dataset(x[test_idx], y[test_idx]), f"elpv EL cells at {IMAGE_SIZE}px"


def _job(job_id: str, dims: int) -> JobSpec:
    return JobSpec(
        job_id=job_id,
        coordinator=COORDINATOR,
        model="logreg",
        shapes=logreg.model_shapes(dims, 2),
        rounds=ROUNDS,
        min_members=2,
        members=MEMBERS,
        strategy=StrategySpec(StrategyName.NORM_BOUNDING, {"bound": 5.0}),
        secure_aggregation=True,
        threshold=2,
        phase_timeout_s=30.0,
        training=TRAINING,
    )


def _local_only(data: logreg.Dataset, dims: int) -> Params:
    params = logreg.init_params(dims, 2)
    for r in range(ROUNDS):
        params, _ = logreg.trainer_for(TRAINING, data)(params, r + 1)
    return params


async def _run_job(
    network: LocalNetwork, job: JobSpec, files: dict[str, Any], test: logreg.Dataset
) -> tuple[dict[str, MemberResult], list[dict[str, Any]]]:
    rounds: list[dict[str, Any]] = []
    address = network[COORDINATOR].grpc_address

    def score(version: ModelVersion, params: Params) -> None:
        rounds.append(
            {
                "version": version.version,
                "round": version.round,
                "members": list(version.members),
                "accuracy": logreg.accuracy(params, test),
            }
        )

    async def member(name: str) -> MemberResult:
        keys = load_member_keys(network[name].directory)
        channel = open_channel(keys, address, COORDINATOR)
        try:
            client = FederationClient(channel, COORDINATOR, job.job_id)
            if name == COORDINATOR:
                await client.start_job(job, logreg.init_params(job.shapes[0][0], 2))
            else:
                while not [j for j in await client.list_jobs() if j.job_id == job.job_id]:
                    await asyncio.sleep(0.05)
            dims, classes = job.shapes[0]
            own = logreg.load_dataset(files[name], dims, classes)  # this member's own file
            runner = MemberRunner(
                client,
                name,
                logreg.trainer_for(job.training, own),
                await coordinator_key(channel, COORDINATOR),
                signing_key=keys.signing_key,
                on_version=score if name == COORDINATOR else None,
                poll_s=5.0,
            )
            return await runner.run()
        finally:
            await channel.close()

    results = await asyncio.gather(*(member(m) for m in MEMBERS))
    return dict(zip(MEMBERS, results, strict=True)), rounds


def run_federation_chapter(network: LocalNetwork, job_id: str = "el-defects-fl") -> FederationDemo:
    """Run the short federated job on the running reference network and score it."""
    started = time.monotonic()
    shares, test, source = el_split()
    dims = test.x.shape[1]
    files = {}
    for name, data in shares.items():
        files[name] = network[name].directory / "federation" / "data" / f"{job_id}.npz"
        logreg.save_dataset(files[name], data)
    job = _job(job_id, dims)
    results, rounds = asyncio.run(_run_job(network, job, files, test))
    final = results[COORDINATOR].params
    assert final is not None
    pooled = logreg.Dataset(
        np.concatenate([d.x for d in shares.values()]),
        np.concatenate([d.y for d in shares.values()]),
    )
    return FederationDemo(
        job_id=job_id,
        data=source,
        members={
            m: {"cells": float(len(d)), "defect_rate": float(d.y.mean())} for m, d in shares.items()
        },
        rounds=rounds,
        global_accuracy=logreg.accuracy(final, test),
        local_only={m: logreg.accuracy(_local_only(d, dims), test) for m, d in shares.items()},
        centralised=logreg.accuracy(_local_only(pooled, dims), test),
        majority=float(max(test.y.mean(), 1 - test.y.mean())),
        seconds=time.monotonic() - started,
    )


def federation_step(network: LocalNetwork, report: Any) -> None:
    """``node.demo.STEPS`` entry: runs the chapter and keeps its result on the report."""
    report.chapters["federation"] = asdict(run_federation_chapter(network))


def federation_printer(console: Console, report: Any) -> None:
    """``node.demo.CHAPTER_PRINTERS`` entry."""
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
    table = Table(title="federated rounds (held-out accuracy of each signed version)")
    for col in ("version", "round", "members", "accuracy"):
        table.add_column(col)
    for row in r.rounds:
        table.add_row(
            str(row["version"]),
            str(row["round"]),
            ", ".join(row["members"]),
            f"{row['accuracy']:.3f}",
        )
    console.print(table)
    compare = Table(title="global versus local-only (same held-out split)")
    compare.add_column("model")
    compare.add_column("accuracy", justify="right")
    compare.add_row("federated (global)", f"{r.global_accuracy:.3f}")
    for m, acc in r.local_only.items():
        compare.add_row(f"local only: {m}", f"{acc:.3f}")
    compare.add_row("centralised (pooled, for reference)", f"{r.centralised:.3f}")
    compare.add_row("always 'ok' (majority)", f"{r.majority:.3f}")
    console.print(compare)
    console.print(f"federated chapter took {r.seconds:.1f} s")


def main() -> None:  # pragma: no cover - manual run: python -m node.demo_federation DIR
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
