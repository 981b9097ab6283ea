"""Federated versus centralised versus local-only accuracy on the real EL cells.

The elpv EL images (2,624 cells, mono and poly, about 31% defective) are split as
in the demo: a random 20% held out; the OEM SunArc gets 240 cells with 8% defects,
Cellex Mono the remaining mono cells, PolyCell Works the remaining poly cells (a
non-IID split: cell type and defect rate differ). Every member maps its own cells
through the fixed feature extractor (``federation.el_features``) and trains the
small numpy classifier of ``federation.mlp``; the federated runs go through the
real coordinator state machine (``federation.rounds.Coordinator``) with secure
aggregation (X25519 + Shamir + masking), in process, so the figures are about
learning, not transport (``bench/federation.py`` times the transport).

Compared, on the same held-out split, with the same number of passes over each
example (``rounds * local epochs``):

* centralised: one model on the pooled training cells (the upper reference);
* local only: each member alone on its own cells;
* federated: secure-aggregated FedAvg, and norm bounding, over the three members.

Reported: accuracy, F1 and AUROC of the defective class (threshold 0.5), each the
mean over ``--seeds`` different held-out splits, and the issue's two targets
(federated >= centralised - 1 point; >= best local-only + 5 points).

    python bench/federation_accuracy.py              # about a minute on 2 cores
    python bench/federation_accuracy.py --seeds 3 --out acc.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from nacl.signing import SigningKey

from qdspace.federation import mlp
from qdspace.federation.el_features import SPLIT_MEMBERS, el_features, member_split
from qdspace.federation.job import JobSpec
from qdspace.federation.logreg import Dataset
from qdspace.federation.member import Trainer, prepare_change, secagg_client
from qdspace.federation.params import Params, flatten, unflatten
from qdspace.federation.rounds import Coordinator
from qdspace.federation.strategies import StrategyName, StrategySpec
from qdspace.inference.metrics import binary_metrics

IMAGE_SIZE = 96
HIDDEN = 32
ROUNDS = 10
TRAINING = {"epochs": 2.0, "lr": 0.002, "batch": 32.0}
CLIP = 20.0


def scores(params: Params, test: Dataset) -> dict[str, float]:
    m = binary_metrics(test.y, mlp.defect_scores(params, test.x))
    return {"accuracy": m.accuracy, "f1": m.f1, "auroc": m.auroc}


def train_alone(start: Params, data: Dataset, epochs: int, seed: int) -> Params:
    config = mlp.LocalTraining.from_terms({**TRAINING, "epochs": float(epochs)})
    params, _ = mlp.train_local(start, data, config, seed=seed)
    return params


def federated(
    start: Params,
    shares: dict[str, Dataset],
    strategy: StrategySpec,
    secure: bool,
    *,
    model: str = "el-mlp",
    rounds: int = ROUNDS,
    clip: float = CLIP,
    training: dict[str, float] | None = None,
    trainers: dict[str, Trainer] | None = None,
) -> Params:
    """``rounds`` rounds through the coordinator state machine, secure aggregation optional
    (``bench/federation_cnn.py`` runs the CNN through it with its own trainers)."""
    shapes = tuple(tuple(p.shape) for p in start)
    members = tuple(sorted(shares))
    terms = TRAINING if training is None else training
    job = JobSpec(
        job_id="acc",
        coordinator="sunarc",
        model=model,
        shapes=shapes,
        rounds=rounds,
        min_members=len(members),
        members=members,
        strategy=strategy,
        secure_aggregation=secure,
        threshold=2,
        update_clip=clip if secure else None,
        training=terms,
    )
    rng = np.random.default_rng(0)
    coord = Coordinator.start(job, flatten(start), now=0.0, seed=0)
    if trainers is None:
        trainers = {m: mlp.trainer_for(terms, shares[m]) for m in members}
    # each member signs its SecAgg messages with the Ed25519 key its certificate binds
    signing = {m: SigningKey.generate() for m in members}
    verify = {m: k.verify_key for m, k in signing.items()}
    while not coord.finished:
        rnd, glob = coord.round, coord.global_vector
        trained = {m: flatten(trainers[m](unflatten(glob, shapes), rnd)[0]) for m in members}
        if not secure:
            for m in members:
                coord.submit_update(m, rnd, unflatten(trained[m], shapes), len(shares[m]), 1.0)
            continue
        att = coord.attempt
        clients = {m: secagg_client(job, m, rnd, att, signing[m]) for m in members}
        for m, c in clients.items():
            coord.submit_advert(m, rnd, att, c.advertise(), verify[m], 1.0)
        for m, c in clients.items():
            shares_out = c.share_keys(coord.roster(m, rnd, att), verify)
            coord.submit_shares(m, rnd, att, shares_out, 1.0)
        for m, c in clients.items():
            change = prepare_change(job, glob, trained[m], rng)
            coord.submit_masked(m, rnd, att, c.mask(change, coord.inbox(m, rnd, att)), 1.0)
        split = coord.unmask_request(members[0], rnd, att)
        for m in split.survivors:
            coord.submit_confirmation(m, rnd, att, clients[m].confirm(split), 1.0)
        request = coord.unmask_request(members[0], rnd, att)
        for m in request.survivors:
            coord.submit_unmask(m, rnd, att, clients[m].unmask(request), 1.0)
    if coord.phase.value != "done":
        raise RuntimeError(f"federated run ended in {coord.phase.value}: {coord.detail}")
    return unflatten(coord.global_vector, shapes)


def one_split(
    features: np.ndarray, labels: np.ndarray, kinds: np.ndarray, seed: int
) -> dict[str, Any]:
    idx, test_idx = member_split(labels, kinds, seed=seed)
    shares = {m: Dataset(features[idx[m]], labels[idx[m]]) for m in SPLIT_MEMBERS}
    test = Dataset(features[test_idx], labels[test_idx])
    # the coordinator (the OEM) fits the input scaling to its own cells when it creates the job
    start = mlp.init_params(shares["sunarc"].x, HIDDEN, seed=seed)
    epochs = int(ROUNDS * TRAINING["epochs"])
    pooled = Dataset(
        np.concatenate([d.x for d in shares.values()]),
        np.concatenate([d.y for d in shares.values()]),
    )
    out: dict[str, Any] = {
        "members": {
            m: {"cells": len(d), "defect_rate": float(d.y.mean())} for m, d in shares.items()
        },
        "majority": float(max(test.y.mean(), 1 - test.y.mean())),
        "centralised": scores(train_alone(start, pooled, epochs, seed), test),
        "local_only": {
            m: scores(train_alone(start, d, epochs, seed), test) for m, d in shares.items()
        },
    }
    runs = {
        "federated_fedavg_secagg": (StrategySpec(StrategyName.FEDAVG), True),
        "federated_norm_bounding_secagg": (
            StrategySpec(StrategyName.NORM_BOUNDING, {"bound": CLIP}),
            True,
        ),
        "federated_fedavg_weighted_plain": (StrategySpec(StrategyName.FEDAVG), False),
    }
    for name, (strategy, secure) in runs.items():
        out[name] = scores(federated(start, shares, strategy, secure), test)
    return out


def mean_of(results: list[dict[str, Any]], *path: str) -> float:
    values = []
    for r in results:
        v: Any = r
        for key in path:
            v = v[key]
        values.append(float(v))
    return statistics.fmean(values)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=5, help="held-out splits to average over")
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument("--quick", action="store_true", help="one held-out split (CI)")
    ns = parser.parse_args()
    if ns.quick:
        ns.seeds = 1
    from qdspace.inference.dataset import binary_labels, load_elpv

    print(f"platform: {platform.platform()} cores: {os.cpu_count()} load: {os.getloadavg()[0]:.1f}")
    print(f"fl_acc_cores: {os.cpu_count()} cores")
    print(f"fl_acc_loadavg_1m: {os.getloadavg()[0]:.2f} load")
    t0 = time.perf_counter()
    data = load_elpv(size=IMAGE_SIZE)
    features = el_features(data.images)
    labels = binary_labels(data.probabilities)
    kinds = np.asarray(data.cell_types)
    print(
        f"fl_acc_data: {len(labels)} cells at {IMAGE_SIZE}px, {features.shape[1]} features, "
        f"{labels.mean():.1%} defective ({time.perf_counter() - t0:.1f} s to load)"
    )
    t1 = time.perf_counter()
    results = [one_split(features, labels, kinds, seed) for seed in range(7, 7 + ns.seeds)]
    print(f"fl_acc_runs: {ns.seeds} splits in {time.perf_counter() - t1:.1f} s")
    for m, info in results[0]["members"].items():
        print(f"fl_acc_member_{m}: {info['cells']} cells, {info['defect_rate']:.1%} defective")
    figures: dict[str, float] = {"majority_accuracy": mean_of(results, "majority")}
    models = (
        ["centralised"]
        + [f"local_only_{m}" for m in SPLIT_MEMBERS]
        + [k for k in results[0] if k.startswith("federated_")]
    )
    for model in models:
        path = (
            ("local_only", model.removeprefix("local_only_"))
            if model.startswith("local_only_")
            else (model,)
        )
        for metric in ("accuracy", "f1", "auroc"):
            figures[f"{model}_{metric}"] = mean_of(results, *path, metric)
        print(
            f"fl_acc_{model}: accuracy {figures[f'{model}_accuracy']:.3f} "
            f"f1 {figures[f'{model}_f1']:.3f} auroc {figures[f'{model}_auroc']:.3f}"
        )
    print(f"fl_acc_majority_baseline: {figures['majority_accuracy']:.3f} accuracy")
    best_local = max(figures[f"local_only_{m}_accuracy"] for m in SPLIT_MEMBERS)
    central = figures["centralised_accuracy"]
    for model in [k for k in models if k.startswith("federated_")]:
        fed = figures[f"{model}_accuracy"]
        vs_central = 100 * (fed - central)
        vs_local = 100 * (fed - best_local)
        figures[f"{model}_minus_centralised_points"] = vs_central
        figures[f"{model}_minus_best_local_points"] = vs_local
        print(
            f"fl_acc_{model}_vs_centralised: {vs_central:+.1f} points "
            f"(target >= -1: {'met' if vs_central >= -1 else 'missed'})"
        )
        print(
            f"fl_acc_{model}_vs_best_local: {vs_local:+.1f} points "
            f"(target >= +5: {'met' if vs_local >= 5 else 'missed'})"
        )
    if ns.out:
        with open(ns.out, "w") as fh:
            machine = {"cpus": os.cpu_count(), "loadavg_1m": os.getloadavg()[0]}
            json.dump({"figures": figures, "splits": results, "machine": machine}, fh, indent=2)


if __name__ == "__main__":
    main()
