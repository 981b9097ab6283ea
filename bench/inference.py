"""Line inspection: frame -> stored verdict latency on Ray Serve, against bare onnxruntime.

One run trains the EL CNN (the ``qdspace train`` network, 64 px, on all cells' train
split), measures its held-out accuracy, F1 and AUROC on the test split through ONNX, and
then feeds the held-out cells (300x300 EL frames) at 2 stations x 27 fps to:

1. bare onnxruntime: ``judge_requests`` on one frame at a time in this process, the
   exact per-frame work a replica does (check, resize, run, verdict), no line, no store;
2. the in-process line: station loop, ``LocalJudge``, micro-batched writes into a real
   SQLite QDM store (``QualityStore.ingest_rows``), no Ray;
3. the served line: the same, judged by the Ray Serve tier (dynamic batching) on a local
   Ray; serving overhead = its frame->verdict p50/p99 minus the bare ones;
4. (``--compare-previous``, on by default) the served line as first built: one Serve
   request per frame passed by reference, a 0.5 ms batch wait, a writer waiting 5 ms for
   company, no GC freeze; its stored p50/p99 over the current ones is printed as a ratio.

A burst phase then offers many more frames (4 stations x 100 fps by default) to show the
throughput the tier sustains with batching and what it skips when it cannot keep up.

A streams phase (``--streams 1,8,32,128``; the default with ``--device cuda``) is the GPU
question: N streams each sending its next frame as soon as the last is answered, through
the Serve tier's dynamic batching, against bare onnxruntime judging N frames per call
(the ceiling batching can reach) on the same device in the same run: frames/s and p99 of
both, and the ratio. With ``--device cuda`` on a machine whose onnxruntime has no CUDA
provider (these CPU machines) the benchmark says it was skipped and why, and exits 0.

    python bench/inference.py                      # ~3 minutes on 2 cores
    python bench/inference.py --seconds 30 --device cuda --burst-fps 600 --out result.json
    python bench/inference.py --quick --streams 1,8      # the streams phase on the CPU
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import os.path
import platform
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from qdspace.connector.storage import open_store
from qdspace.inference.dataset import ElImages, load_elpv
from qdspace.inference.line import InspectionLine, LineConfig, LocalJudge, StationSpec
from qdspace.inference.metrics import binary_metrics
from qdspace.inference.model import OnnxClassifier
from qdspace.inference.sources import dataset_frames, split_round_robin
from qdspace.inference.splits import split_el_images
from qdspace.inference.stats import LatencySummary, LineSnapshot
from qdspace.inference.verdicts import FrameRequest, judge_requests
from qdspace.inference.writer import ingest_sink

FIGURES: dict[str, Any] = {}


def emit(name: str, value: float, unit: str) -> None:
    """Print one figure as ``name: value unit`` and keep it for ``--out``."""
    FIGURES[name] = {"value": value, "unit": unit}
    print(f"{name}: {value:,.2f} {unit}", flush=True)


def train(size: int, epochs: int, threads: int) -> tuple[bytes, ElImages, float]:
    """Train on the train split of all cells; returns ONNX bytes, test cells, seconds."""
    from qdspace.inference import training

    small = load_elpv(size=size)
    manifest = split_el_images(small)
    config = training.TrainConfig(input_size=size, epochs=epochs, threads=threads)
    started = time.perf_counter()
    result = training.train_and_export(
        small.select(manifest.train), small.select(manifest.val), config
    )
    seconds = time.perf_counter() - started
    return result.onnx_bytes, load_elpv().select(manifest.test), seconds


def held_out(model: OnnxClassifier, test: ElImages) -> None:
    """Accuracy, F1 and AUROC of the ONNX model on the held-out test split."""
    scores = np.array([j.score for j in model.judge(list(test.images))])
    m = binary_metrics(test.labels(2), scores)
    emit("held_out_cells", m.count, "cells")
    emit("held_out_accuracy", m.accuracy, "")
    emit("held_out_f1", m.f1, "")
    emit("held_out_auroc", m.auroc, "")


def bare(model: OnnxClassifier, test: ElImages, frames: int) -> LatencySummary:
    """Per-frame latency of the replica's own work, in this process, one frame at a time."""
    ids = test.frame_ids
    samples = []
    for i in range(frames):
        position = i % len(test)
        request = FrameRequest("bare", ids[position], test.images[position])
        started = time.perf_counter()
        judge_requests(model, [request])
        samples.append((time.perf_counter() - started) * 1000.0)
    summary = LatencySummary.of(samples)
    emit("bare_onnxruntime_p50", summary.p50, "ms")
    emit("bare_onnxruntime_p99", summary.p99, "ms")
    emit("bare_onnxruntime_frames_per_s_1_thread", 1000.0 / float(np.mean(samples)), "frames/s")
    return summary


def bare_batched(model: OnnxClassifier, test: ElImages, batch: int, rounds: int) -> None:
    """Frames/s of the model alone on prepared batches (the ceiling batching can reach)."""
    prepared = model.prepare(list(test.images[:batch]))
    model.probabilities(prepared)
    started = time.perf_counter()
    for _ in range(rounds):
        model.probabilities(prepared)
    rate = batch * rounds / (time.perf_counter() - started)
    emit(f"bare_onnxruntime_batch{batch}_frames_per_s", rate, "frames/s")


class PerFrameJudge:
    """The first served design, for comparison: one Serve request per frame, by reference."""

    def __init__(self, handle: Any) -> None:
        self._judge = handle.judge.options(_by_reference=True)

    async def __call__(self, request: FrameRequest) -> Any:
        return await self._judge.remote(request)


def run_line(
    judge: Any,
    test: ElImages,
    stations: int,
    fps: float,
    seconds: float,
    db: Path,
    tag: str,
    config: LineConfig | None = None,
) -> LineSnapshot:
    """Stations over the held-out cells into a real SQLite QDM store for ``seconds``."""
    store = open_store(f"sqlite:///{db}")
    try:
        specs = [
            StationSpec(f"el-{i + 1}", dataset_frames(part), fps)
            for i, part in enumerate(split_round_robin(test, stations))
        ]
        run_id = uuid.uuid4().hex[:8]
        config = replace(config, run_id=run_id) if config else LineConfig(run_id=run_id)
        line = InspectionLine(judge, ingest_sink(store.ingest_rows), specs, config)
        final = line.run(seconds)
    finally:
        store.close()
    if not tag:
        return final
    j, s = final.judged_latency, final.stored_latency
    captured = sum(c.captured for c in final.stations.values())
    skipped = sum(c.skipped for c in final.stations.values())
    emit(f"{tag}_frame_to_verdict_p50", j.p50, "ms")
    emit(f"{tag}_frame_to_verdict_p99", j.p99, "ms")
    emit(f"{tag}_frame_to_stored_p50", s.p50, "ms")
    emit(f"{tag}_frame_to_stored_p99", s.p99, "ms")
    emit(f"{tag}_throughput", final.stored / final.elapsed_s, "verdicts/s")
    emit(f"{tag}_offered", captured / final.elapsed_s, "frames/s")
    emit(f"{tag}_skipped", skipped, "frames")
    emit(f"{tag}_dropped_verdicts", final.dropped_verdicts, "verdicts")
    return final


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=64, help="model input side (px)")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs")
    parser.add_argument("--stations", type=int, default=2)
    parser.add_argument("--fps", type=float, default=27.0, help="frames/s per station")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each line run")
    parser.add_argument("--burst-stations", type=int, default=4)
    parser.add_argument("--burst-fps", type=float, default=100.0)
    parser.add_argument("--burst-seconds", type=float, default=8.0)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--replica-threads", type=int, default=1, help="onnxruntime threads")
    parser.add_argument("--max-batch", type=int, default=16, help="Serve dynamic batch size")
    parser.add_argument(
        "--compare-previous",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the first served design (per-frame requests by reference)",
    )
    parser.add_argument(
        "--streams",
        help="closed-loop streams phase, e.g. 1,8,32,128 (default with --device cuda)",
    )
    parser.add_argument("--stream-seconds", type=float, default=5.0)
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument(
        "--quick", action="store_true", help="32 px, 2 epochs, 1 s runs, one design (CI)"
    )
    args = parser.parse_args()
    if args.quick:
        args.size, args.epochs, args.seconds, args.burst_seconds = 32, 2, 1.0, 1.0
        args.compare_previous = False
    if args.device == "cuda" and args.streams is None:
        args.streams = "1,8,32,128"
    streams = _stream_counts(parser, args.streams)
    cores = os.cpu_count() or 1
    print(f"cores: {cores}  python: {platform.python_version()}  device: {args.device}")
    if args.device == "cuda" and (missing := _no_cuda()) is not None:
        print(f"inference_cuda: skipped ({missing})", flush=True)
        if args.out:
            skipped = {"skipped": {"value": 1, "unit": "", "reason": missing}}
            Path(args.out).write_text(json.dumps(skipped, indent=1) + "\n")
        return
    emit("cores", cores, "cores")
    emit("loadavg_1m", os.getloadavg()[0], "load")

    onnx_bytes, test, train_s = train(args.size, args.epochs, 1 if cores <= 2 else 4)
    emit("train_seconds", train_s, "s")
    model = OnnxClassifier(onnx_bytes, device=args.device, threads=args.replica_threads)
    held_out(model, test)

    frames = int(args.stations * args.fps * args.seconds)
    base = bare(model, test, frames)
    bare_batched(model, test, args.max_batch, rounds=max(20, 2000 // args.max_batch))

    with tempfile.TemporaryDirectory(prefix="qdspace-bench-inference-") as tmp:
        local = run_line(
            LocalJudge(model),
            test,
            args.stations,
            args.fps,
            args.seconds,
            Path(tmp) / "local.db",
            "in_process",
        )
        served, burst = serve_phases(args, onnx_bytes, test, Path(tmp), streams)
    for q in ("p50", "p99"):
        overhead = getattr(served.judged_latency, q) - getattr(base, q)
        emit(f"serving_overhead_{q}", overhead, "ms")
        line_cost = getattr(local.judged_latency, q) - getattr(base, q)
        emit(f"in_process_line_overhead_{q}", line_cost, "ms")
    emit("served_p50_ratio_vs_bare", served.judged_latency.p50 / base.p50, "x")
    burst_rate = burst.stored / burst.elapsed_s
    emit("burst_throughput_ratio_vs_line_target", burst_rate / frames_target(args), "x")
    if args.out:
        Path(args.out).write_text(json.dumps(FIGURES, indent=1) + "\n")


def frames_target(args: argparse.Namespace) -> float:
    """The line rate the issue asks for (2 stations x 27 fps by default)."""
    return float(args.stations * args.fps)


def serve_phases(
    args: argparse.Namespace, onnx_bytes: bytes, test: ElImages, tmp: Path, streams: list[int]
) -> tuple[LineSnapshot, LineSnapshot]:
    """The served line at the target rate, then a burst, on one local Ray."""
    import ray

    from qdspace.inference.serve import InspectionTier, ServeSettings

    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    try:
        settings = ServeSettings(
            device=args.device, threads=args.replica_threads, max_batch_size=args.max_batch
        )
        tier = InspectionTier(settings, app_name="bench-inference")
        started = time.perf_counter()
        tier.start(onnx_bytes, "bench.onnx")
        emit("serve_deploy_seconds", time.perf_counter() - started, "s")
        try:
            warm_s = min(2.0, args.seconds)  # --quick: as long as its own runs
            run_line(tier.judge(), test, 2, 5.0, warm_s, tmp / "warmup.db", "")  # warm-up
            served = run_line(
                tier.judge(),
                test,
                args.stations,
                args.fps,
                args.seconds,
                tmp / "served.db",
                "served",
            )
            burst = run_line(
                tier.judge(),
                test,
                args.burst_stations,
                args.burst_fps,
                args.burst_seconds,
                tmp / "burst.db",
                "burst",
            )
            status = tier.status()
            sizes = status.batch_sizes
            mean = sum(k * v for k, v in sizes.items()) / max(sum(sizes.values()), 1)
            emit("served_mean_batch_size", mean, "frames")
        finally:
            tier.stop()
        if streams:
            streams_phase(args, onnx_bytes, test, streams)
        if args.compare_previous:
            previous_design(args, onnx_bytes, test, tmp, served)
    finally:
        ray.shutdown()
    return served, burst


def _stream_counts(parser: argparse.ArgumentParser, text: str | None) -> list[int]:
    if not text:
        return []
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        parser.error(f"--streams {text!r}: expected counts like 1,8,32,128")
    if any(n < 1 or n > 1024 for n in counts):
        parser.error(f"--streams {text!r}: each count is 1..1024")
    return counts


def _no_cuda() -> str | None:
    """Why the CUDA path cannot run here, or None when it can."""
    from qdspace.inference.extras import load_onnxruntime
    from qdspace.inference.model import CUDA_PROVIDER

    try:
        available = load_onnxruntime().get_available_providers()
    except Exception as exc:  # onnxruntime itself missing or broken
        return f"onnxruntime cannot load: {exc}"
    if CUDA_PROVIDER not in available:
        return (
            f"onnxruntime offers {', '.join(available)}, no {CUDA_PROVIDER}: run it on a "
            "machine with an NVIDIA GPU and onnxruntime-gpu installed"
        )
    return None


async def _closed_loop(
    judge: Any, test: ElImages, n: int, seconds: float, latencies: list[float]
) -> float:
    """``n`` streams, each sending its next frame when the last is answered, for
    ``seconds``; returns frames/s and appends each frame's latency (ms)."""
    import asyncio

    ids, images = test.frame_ids, test.images
    until = time.perf_counter() + seconds

    async def stream(k: int) -> int:
        done = 0
        while time.perf_counter() < until:
            i = (k * 7919 + done) % len(test)
            t0 = time.perf_counter()
            await judge(FrameRequest(f"s{k}", ids[i], images[i]))
            latencies.append((time.perf_counter() - t0) * 1000.0)
            done += 1
        return done

    started = time.perf_counter()
    frames = sum(await asyncio.gather(*(stream(k) for k in range(n))))
    return frames / (time.perf_counter() - started)


def streams_phase(
    args: argparse.Namespace, onnx_bytes: bytes, test: ElImages, counts: list[int]
) -> None:
    """N closed-loop streams through the tier's dynamic batching vs bare batches of N."""
    import asyncio

    from qdspace.inference.serve import InspectionTier, ServeSettings

    model = OnnxClassifier(onnx_bytes, device=args.device, threads=args.replica_threads)
    ids, images = test.frame_ids, test.images
    for n in counts:
        batch = [FrameRequest("bare", ids[i % len(test)], images[i % len(test)]) for i in range(n)]
        judge_requests(model, batch)  # warm (CUDA: the first run builds the kernels)
        samples: list[float] = []
        started = time.perf_counter()
        while time.perf_counter() - started < args.stream_seconds / 2 or len(samples) < 5:
            t0 = time.perf_counter()
            judge_requests(model, batch)
            samples.append((time.perf_counter() - t0) * 1000.0)
        bare_rate = n * len(samples) / (time.perf_counter() - started)
        bare_p99 = LatencySummary.of(samples).p99
        emit(f"streams_{n}_bare_frames_per_s", bare_rate, "frames/s")
        emit(f"streams_{n}_bare_p99", bare_p99, "ms")

        settings = ServeSettings(
            device=args.device, threads=args.replica_threads, max_batch_size=max(n, 1)
        )
        tier = InspectionTier(settings, app_name=f"bench-streams-{n}")
        tier.start(onnx_bytes, "bench.onnx")
        try:
            judge = tier.judge()
            asyncio.run(_closed_loop(judge, test, n, 1.0, []))  # warm-up
            latencies: list[float] = []
            rate = asyncio.run(_closed_loop(judge, test, n, args.stream_seconds, latencies))
        finally:
            tier.stop()
        p99 = LatencySummary.of(latencies).p99
        emit(f"streams_{n}_served_frames_per_s", rate, "frames/s")
        emit(f"streams_{n}_served_p99", p99, "ms")
        emit(f"streams_{n}_served_ratio_vs_bare", rate / bare_rate, "x")


def previous_design(
    args: argparse.Namespace, onnx_bytes: bytes, test: ElImages, tmp: Path, served: LineSnapshot
) -> None:
    """The same line as first built: per-frame requests by reference, a 0.5 ms batch wait,
    a writer that waits 5 ms for company, no GC freeze (the replica's access log was on
    too; it stays off here). Run after the current design, on the same Ray."""
    from qdspace.inference.serve import InspectionTier, ServeSettings

    settings = ServeSettings(
        device=args.device,
        threads=args.replica_threads,
        max_batch_size=args.max_batch,
        batch_wait_timeout_s=0.0005,
    )
    tier = InspectionTier(settings, app_name="bench-inference-previous")
    tier.start(onnx_bytes, "bench.onnx")
    config = LineConfig(run_id="", flush_interval_s=0.005, freeze_gc=False)
    try:
        judge = PerFrameJudge(tier.handle)
        run_line(judge, test, 2, 5.0, 2.0, tmp / "warmup-previous.db", "", config)
        previous = run_line(
            judge,
            test,
            args.stations,
            args.fps,
            args.seconds,
            tmp / "previous.db",
            "previous_design",
            config,
        )
    finally:
        tier.stop()
    for q in ("p50", "p99"):
        ratio = getattr(previous.stored_latency, q) / getattr(served.stored_latency, q)
        emit(f"stored_{q}_ratio_previous_vs_current", ratio, "x")


if __name__ == "__main__":
    main()
