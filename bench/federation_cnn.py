"""The line's CNN, federated versus centralised versus local-only, on the real EL cells.

The same non-IID split as ``bench/federation_accuracy.py`` and the demo: a random 20 %
of the 2,624 elpv cells held out; the OEM SunArc holds 240 cells with 8 % defects,
Cellex Mono the other mono cells, PolyCell Works the other poly cells. All three train
the line's own CNN (``inference.training.ElCnn``, the ``el-cnn`` job model), with the
member's round trainer (``federation.train_torch.train_el_cnn``: class-weighted loss,
flips, AdamW, warm-up then cosine), so every figure comes from the same optimiser:

* centralised: one run on the pooled training cells, ``rounds * epochs`` epochs;
* local only: each member alone on its own cells, the same epochs;
* federated: ``rounds`` rounds of ``epochs`` local epochs through the real coordinator
  state machine with secure aggregation (masked, clipped changes; unweighted mean),
  and with ``--plain``, for reference, sample-weighted FedAvg without it.

Reported on the held-out cells: accuracy, F1 and AUROC of the defective class, the
seconds each took, and the issue's targets (centralised >= 0.85 accuracy and 0.90
AUROC; federated within 1 point of centralised and >= 5 points above the best local).
The final secure-aggregated global model is also exported with ``qdspace train``'s
export and scored through onnxruntime (``OnnxClassifier``), as the line would serve it.

    python bench/federation_cnn.py                 # 32 px, 4 x 2 epochs: minutes
    python bench/federation_cnn.py --size 40 --rounds 5 --out cnn.json   # the README's
    #   figures: 20-40 minutes on 2 busy cores
    python bench/federation_cnn.py --quick          # tiny (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
from federation_accuracy import federated

from qdspace.federation.el_cnn import LAYOUT, CnnTerms
from qdspace.federation.el_features import SPLIT_MEMBERS, member_split
from qdspace.federation.logreg import Dataset
from qdspace.federation.member import Trainer
from qdspace.federation.params import Params
from qdspace.federation.strategies import StrategyName, StrategySpec
from qdspace.federation.train_torch import el_cnn_onnx, el_cnn_scores, train_el_cnn
from qdspace.inference.frames import to_model_input
from qdspace.inference.metrics import binary_metrics
from qdspace.inference.model import OnnxClassifier
from qdspace.inference.training import TrainConfig, build_model, get_weights

#: the L2 bound on a member's change per round (a round of 2 epochs moves the 72k
#: weights by about 1-3 in L2 norm, so honest changes are rarely clipped)
CLIP = 5.0


def scores(params: Params, test: Dataset) -> dict[str, float]:
    m = binary_metrics(test.y, el_cnn_scores(params, test))
    return {"accuracy": m.accuracy, "f1": m.f1, "auroc": m.auroc}


def cnn_trainer(data: Dataset, terms: CnnTerms) -> Trainer:
    def train(params: Params, round_: int) -> tuple[Params, int]:
        return train_el_cnn(data, params, terms, round_, 0.0)

    return train


def timed(label: str, call: Any, test: Dataset) -> tuple[Any, float]:
    """Train, print the seconds and the held-out figures at once (a long run shows
    what it has so far)."""
    t0 = time.perf_counter()
    out = call()
    seconds = time.perf_counter() - t0
    s = scores(out, test)
    print(f"fl_cnn_seconds_{label}: {seconds:.1f} s", flush=True)
    print(
        f"fl_cnn_{label}: accuracy {s['accuracy']:.3f} f1 {s['f1']:.3f} auroc {s['auroc']:.3f}",
        flush=True,
    )
    return out, seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=32, help="image size in pixels")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2, help="local epochs per round")
    parser.add_argument("--widths", default="16,32,64", help="the CNN's three widths")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7, help="held-out split")
    parser.add_argument(
        "--plain",
        action="store_true",
        help="also sample-weighted FedAvg without secure aggregation",
    )
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument("--quick", action="store_true", help="tiny: 16 px, 2 rounds, 1 epoch")
    ns = parser.parse_args()
    if ns.quick:
        ns.size, ns.rounds, ns.epochs, ns.widths = 16, 2, 1, "4,8,8"
    widths = tuple(int(w) for w in ns.widths.split(","))
    assert len(widths) == 3, "three widths"
    from qdspace.inference.dataset import binary_labels, load_elpv

    print(f"platform: {platform.platform()} cores: {os.cpu_count()} load: {os.getloadavg()[0]:.1f}")
    print(f"fl_cnn_cores: {os.cpu_count()} cores")
    print(f"fl_cnn_loadavg_1m: {os.getloadavg()[0]:.2f} load")
    data = load_elpv(size=ns.size)
    labels = binary_labels(data.probabilities)
    idx, test_idx = member_split(labels, np.asarray(data.cell_types), seed=ns.seed)
    if ns.quick:  # a few cells a member: the script's every phase, in seconds
        idx = {m: rows[:60] for m, rows in idx.items()}
        test_idx = test_idx[:120]
    inputs = to_model_input(list(data.images), ns.size)
    shares = {m: Dataset(inputs[idx[m]], labels[idx[m]]) for m in SPLIT_MEMBERS}
    test = Dataset(inputs[test_idx], labels[test_idx])
    pooled = Dataset(
        np.concatenate([d.x for d in shares.values()]),
        np.concatenate([d.y for d in shares.values()]),
    )
    print(
        f"fl_cnn_data: {len(labels)} cells at {ns.size}px, {len(pooled)} training, "
        f"{len(test)} held out, widths {widths}, {ns.rounds} rounds x {ns.epochs} epochs"
    )
    for m, d in shares.items():
        print(f"fl_cnn_member_{m}: {len(d)} cells, {d.y.mean():.1%} defective")
    start = get_weights(build_model(TrainConfig(seed=0, widths=widths)))  # type: ignore[arg-type]
    local = CnnTerms(ns.size, epochs=ns.epochs, lr=ns.lr, threads=ns.threads)
    alone = CnnTerms(ns.size, epochs=ns.rounds * ns.epochs, lr=ns.lr, threads=ns.threads)
    figures: dict[str, float] = {"majority_accuracy": float(max(test.y.mean(), 1 - test.y.mean()))}
    seconds: dict[str, float] = {}
    runs: dict[str, Params] = {}
    runs["centralised"], seconds["centralised"] = timed(
        "centralised", lambda: train_el_cnn(pooled, start, alone, 1, 0.0)[0], test
    )
    for m, d in shares.items():
        runs[f"local_only_{m}"], seconds[f"local_only_{m}"] = timed(
            f"local_only_{m}", lambda d=d: train_el_cnn(d, start, alone, 1, 0.0)[0], test
        )
    terms = {
        "layout": float(LAYOUT),
        "image_size": float(ns.size),
        "epochs": float(ns.epochs),
        "lr": ns.lr,
    }
    trainers = {m: cnn_trainer(d, local) for m, d in shares.items()}
    fed = {"federated_fedavg_secagg": (StrategySpec(StrategyName.FEDAVG), True)}
    if ns.plain:
        fed["federated_fedavg_weighted_plain"] = (StrategySpec(StrategyName.FEDAVG), False)
    for name, (strategy, secure) in fed.items():
        runs[name], seconds[name] = timed(
            name,
            lambda strategy=strategy, secure=secure: federated(
                start,
                shares,
                strategy,
                secure,
                model="el-cnn",
                rounds=ns.rounds,
                clip=CLIP,
                training=terms,
                trainers=trainers,
            ),
            test,
        )
    for name, params in runs.items():
        s = scores(params, test)
        for metric, value in s.items():
            figures[f"{name}_{metric}"] = value
    print(f"fl_cnn_majority_baseline: {figures['majority_accuracy']:.3f} accuracy")
    onnx, _ = el_cnn_onnx(runs["federated_fedavg_secagg"], ns.size)
    served = OnnxClassifier(onnx, device="cpu").probabilities(test.x)[:, 1]
    m = binary_metrics(test.y, served.astype(np.float64))
    figures["federated_onnx_accuracy"] = m.accuracy
    print(f"fl_cnn_federated_onnx: accuracy {m.accuracy:.3f} auroc {m.auroc:.3f} (onnxruntime)")
    central = figures["centralised_accuracy"]
    best_local = max(figures[f"local_only_{m}_accuracy"] for m in SPLIT_MEMBERS)
    print(
        f"fl_cnn_centralised_target: accuracy {central:.3f} (>= 0.85: "
        f"{'met' if central >= 0.85 else 'missed'}), auroc {figures['centralised_auroc']:.3f} "
        f"(>= 0.90: {'met' if figures['centralised_auroc'] >= 0.9 else 'missed'})"
    )
    for name in fed:
        vs_central = 100 * (figures[f"{name}_accuracy"] - central)
        vs_local = 100 * (figures[f"{name}_accuracy"] - best_local)
        figures[f"{name}_minus_centralised_points"] = vs_central
        figures[f"{name}_minus_best_local_points"] = vs_local
        print(
            f"fl_cnn_{name}_vs_centralised: {vs_central:+.1f} points "
            f"(target >= -1: {'met' if vs_central >= -1 else 'missed'})"
        )
        print(
            f"fl_cnn_{name}_vs_best_local: {vs_local:+.1f} points "
            f"(target >= +5: {'met' if vs_local >= 5 else 'missed'})"
        )
    ratio = seconds["federated_fedavg_secagg"] / max(seconds["centralised"], 1e-9)
    print(f"fl_cnn_federated_time_vs_centralised: {ratio:.2f} x")
    if ns.out:
        with open(ns.out, "w") as fh:
            machine = {"cpus": os.cpu_count(), "loadavg_1m": os.getloadavg()[0]}
            settings = {k: v for k, v in vars(ns).items() if k != "out"}
            json.dump(
                {"figures": figures, "seconds": seconds, "settings": settings, "machine": machine},
                fh,
                indent=2,
            )


if __name__ == "__main__":
    main()
