"""Federated round wall time: 3 members on loopback, small model and a 46.8 MB update.

Loopback part: real node processes (``node.localnet.network.LocalNetwork``: SunArc as
coordinator, Cellex and PolyCell), the real ``Federation`` gRPC service over mutual
TLS, and three member runners (``MemberRunner``) in this process whose "training"
adds a fixed change to the global model, so the figure is the cost of the round
itself: download and signature check, upload in chunks, secure aggregation
(X25519, Shamir, AES-128-CTR masks, certificate-checked signed adverts, dealer-signed
shares, the signed consistency round, unmasking), aggregation, signing and checkpoint.
Each variant runs a job of ``--rounds`` rounds; the figure is the median time
between consecutive global versions as a member sees them (rounds 2 onwards).

In-process part: the same round through the coordinator state machine without
transport (baseline for the transport's share).

The baseline, Flower 1.27 (``bench/support/flower_baseline.py``): its gRPC deployment
(SuperLink, three SuperNodes, a ServerApp via ``flwr run``) exchanging the same float32
payload, run with TLS (as our nodes always run: the ratio that counts) and ``--insecure``
(for reference). If it cannot be installed or run, the output says exactly why.

    python bench/federation.py                  # defaults, a few minutes on 2 cores
    python bench/federation.py --mb 4 --rounds 3 --no-flower --out result.json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from nacl.signing import SigningKey

from bench.support.flower_baseline import flower
from qdspace.federation.chunks import (
    DEFAULT_CHUNK_BYTES,
    MAX_CHUNK_BYTES,
    MIN_CHUNK_BYTES,
    check_chunk_bytes,
)
from qdspace.federation.job import JobSpec
from qdspace.federation.member import plain_update, prepare_change, secagg_client
from qdspace.federation.params import Params, unflatten
from qdspace.federation.rounds import Coordinator
from qdspace.federation.strategies import StrategyName, StrategySpec
from qdspace.federation.versions import ModelVersion
from qdspace.node.identity.member import load_member_keys
from qdspace.node.localnet.network import LocalNetwork, MemberSpec
from qdspace.node.rpc.client import open_channel
from qdspace.node.rpc.federation_client import FederationClient, coordinator_key
from qdspace.node.rpc.federation_runner import MemberRunner

MEMBERS = ("cellex", "polycell", "sunarc")
COORDINATOR = "sunarc"
SMALL_SHAPES = ((12, 3), (3,))


def make_job(
    job_id: str, shapes: tuple[tuple[int, ...], ...], secure: bool, rounds: int
) -> JobSpec:
    return JobSpec(
        job_id=job_id,
        coordinator=COORDINATOR,
        model="synthetic",
        shapes=shapes,
        rounds=rounds,
        min_members=3,
        members=MEMBERS,
        strategy=StrategySpec(StrategyName.FEDAVG),
        secure_aggregation=secure,
        threshold=2,
        update_clip=1.0 if secure else None,
        phase_timeout_s=120.0,
    )


def fixed_trainer(member: str, shapes: tuple[tuple[int, ...], ...]) -> Any:
    n = sum(int(np.prod(s)) for s in shapes)
    flat = np.random.default_rng(MEMBERS.index(member)).normal(0, 1e-5, n).astype(np.float32)
    change = unflatten(flat, shapes)

    def train(params: Params, round_: int) -> tuple[Params, int]:
        return [p + c for p, c in zip(params, change, strict=True)], 100

    return train


Sample = tuple[float, float, float]


async def loopback_job(
    network: LocalNetwork, job: JobSpec, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> list[Sample]:
    """Run one job; when the coordinator's member saw each version: (monotonic time, CPU
    seconds of the coordinator's node so far, CPU seconds of this process so far)."""
    seen: list[Sample] = []
    process = network[COORDINATOR].process
    assert process is not None

    def on_version(version: ModelVersion, params: Params) -> None:
        seen.append((time.perf_counter(), _process_cpu_s(process.pid), time.process_time()))

    async def member(name: str) -> None:
        keys = load_member_keys(network[name].directory)
        channel = open_channel(keys, network[COORDINATOR].grpc_address, COORDINATOR)
        try:
            client = FederationClient(channel, COORDINATOR, job.job_id, chunk_bytes=chunk_bytes)
            if name == COORDINATOR:
                zeros = [np.zeros(s, np.float32) for s in job.shapes]
                await client.start_job(job, zeros)
            else:
                while not [j for j in await client.list_jobs() if j.job_id == job.job_id]:
                    await asyncio.sleep(0.02)
            runner = MemberRunner(
                client,
                name,
                fixed_trainer(name, job.shapes),
                await coordinator_key(channel, COORDINATOR),
                signing_key=keys.signing_key,
                certificate=keys.cert,
                ca_cert=keys.trust,
                on_version=on_version if name == COORDINATOR else None,
                poll_s=30.0,
            )
            result = await runner.run()
            assert result.status.phase.value == "done", result.status
        finally:
            await channel.close()

    await asyncio.gather(*(member(m) for m in MEMBERS))
    return seen


def round_times(seen: list[Sample]) -> list[float]:
    # seen[0] is version 0 (download before round 1); round 1 includes job start-up.
    return [b[0] - a[0] for a, b in itertools.pairwise(seen[1:])]


def round_cpu(seen: list[Sample]) -> tuple[float, float]:
    """CPU seconds per round of the coordinator's node and of the 3 members (this process),
    over the same rounds as ``round_times``: job start-up and the bench's own set-up (the
    trainers' fixed changes) are not in it."""
    first, last = seen[1], seen[-1]
    rounds = max(len(seen) - 2, 1)
    return (last[1] - first[1]) / rounds, (last[2] - first[2]) / rounds


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loopback(rounds: int, mb: float, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> dict[str, float]:
    big = (int(mb * 1e6 / 4),)
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="qdspace-bench-fl-") as tmp:
        network = LocalNetwork(
            Path(tmp),
            [
                MemberSpec("sunarc", "oem"),
                MemberSpec("cellex", "supplier"),
                MemberSpec("polycell", "supplier"),
            ],
            env={"QDSPACE_LOG_LEVEL": "WARNING"},
        )
        network.create()
        network.start()
        try:
            for label, shapes in (("small", SMALL_SHAPES), (f"{mb:g}mb", (big,))):
                for secure in (False, True):
                    name = f"fl_loopback_{label}_{'secagg' if secure else 'plain'}_round_s"
                    job = make_job(name.replace("_", "-"), shapes, secure, rounds)
                    seen = asyncio.run(loopback_job(network, job, chunk_bytes))
                    times = round_times(seen)
                    figures[name] = statistics.median(times)
                    # CPU of the coordinator's node and of the 3 members per round (rounds 2
                    # on), which a busy machine inflates much less than wall time
                    coord_cpu, members_cpu = round_cpu(seen)
                    cpu_name = name.replace("_round_s", "_cpu_per_round_s")
                    figures[cpu_name] = coord_cpu + members_cpu
                    figures[cpu_name.replace("_cpu_", "_coordinator_cpu_")] = coord_cpu
                    figures[cpu_name.replace("_cpu_", "_members_cpu_")] = members_cpu
                    each = ", ".join(f"{t:.2f}" for t in times)
                    print(
                        f"{name}: {figures[name]:.3f} s (rounds {each}; cpu "
                        f"{coord_cpu + members_cpu:.2f} s/round = coordinator {coord_cpu:.2f} + "
                        f"members {members_cpu:.2f}; load {os.getloadavg()[0]:.1f})",
                        flush=True,
                    )
        finally:
            network.stop()
    return figures


def inprocess_secure_round(n: int) -> float:
    start = np.zeros(n, np.float32)
    job = make_job("bench", ((n,),), True, 1)
    rng = np.random.default_rng(1)
    trained = {m: start + np.float32(1e-4) * rng.standard_normal(n, np.float32) for m in MEMBERS}
    t0 = time.perf_counter()
    coord = Coordinator.start(job, start, now=0.0)
    signing = {m: SigningKey.generate() for m in MEMBERS}
    verify = {m: k.verify_key for m, k in signing.items()}
    clients = {m: secagg_client(job, m, 1, 1, signing[m]) for m in MEMBERS}
    for m, c in clients.items():
        coord.submit_advert(m, 1, 1, c.advertise(), verify[m], 1.0)
    for m, c in clients.items():
        coord.submit_shares(m, 1, 1, c.share_keys(coord.roster(m, 1, 1), verify), 1.0)
    for m, c in clients.items():
        change = prepare_change(job, coord.global_vector, trained[m], rng)
        coord.submit_masked(m, 1, 1, c.mask(change, coord.inbox(m, 1, 1)), 1.0)
    split = coord.unmask_request(MEMBERS[0], 1, 1)
    for m in split.survivors:
        coord.submit_confirmation(m, 1, 1, clients[m].confirm(split), 1.0)
    request = coord.unmask_request(MEMBERS[0], 1, 1)
    for m in request.survivors:
        coord.submit_unmask(m, 1, 1, clients[m].unmask(request), 1.0)
    assert coord.version == 1
    return time.perf_counter() - t0


def inprocess_plain_round(n: int) -> float:
    start = np.zeros(n, np.float32)
    job = make_job("bench", ((n,),), False, 1)
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    coord = Coordinator.start(job, start, now=0.0)
    for m in MEMBERS:
        coord.submit_update(m, 1, [plain_update(job, start, start + np.float32(1e-4), rng)], 1, 1.0)
    assert coord.version == 1
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=float, default=46.8, help="large update size in MB")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per loopback job")
    parser.add_argument(
        "--no-flower", action="store_true", help="skip the Flower comparison (about a minute)"
    )
    parser.add_argument("--flower-rounds", type=int, default=3, help="rounds of the Flower run")
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument(
        "--chunk-kib",
        type=int,
        default=DEFAULT_CHUNK_BYTES // 1024,
        help=f"members' upload chunk size in KiB ({MIN_CHUNK_BYTES // 1024} to "
        f"{MAX_CHUNK_BYTES // 1024})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 MB updates, 2 rounds, 1 Flower round over TLS if it installs offline (CI)",
    )
    ns = parser.parse_args()
    if ns.quick:
        # 2 rounds: our figure is the time between versions 1 and 2; Flower's single round
        # (its start-up included) still runs the whole deployment over TLS; a Flower round
        # takes 6-9 s here whatever the payload (its polling), so each one left out counts
        ns.mb, ns.rounds, ns.flower_rounds = 1.0, 2, 1
    n = int(ns.mb * 1e6 / 4)
    print(
        f"platform: {platform.platform()} cores: {os.cpu_count()} python: {sys.version.split()[0]}"
        f" load: {os.getloadavg()[0]:.1f}"
    )
    print(f"fl_cores: {os.cpu_count()} cores")
    print(f"fl_loadavg_1m: {os.getloadavg()[0]:.2f} load")
    print(f"members: {len(MEMBERS)}, large update: {n * 4 / 1e6:.1f} MB ({n} float32)")
    figures: dict[str, float] = {}
    figures["fl_inprocess_plain_round_s"] = min(inprocess_plain_round(n) for _ in range(2))
    figures["fl_inprocess_secagg_round_s"] = min(inprocess_secure_round(n) for _ in range(2))
    for key in ("fl_inprocess_plain_round_s", "fl_inprocess_secagg_round_s"):
        print(f"{key}: {figures[key]:.3f} s", flush=True)
    figures.update(loopback(ns.rounds, ns.mb, check_chunk_bytes(ns.chunk_kib * 1024)))
    big = f"{ns.mb:g}mb"
    ours = figures[f"fl_loopback_{big}_secagg_round_s"]
    ratio = ours / figures[f"fl_loopback_{big}_plain_round_s"]
    figures["fl_loopback_secagg_vs_plain_ratio"] = ratio
    print(f"fl_loopback_secagg_vs_plain_ratio: {ratio:.2f} x")
    share = figures["fl_inprocess_secagg_round_s"] / ours
    figures["fl_secagg_compute_share_of_loopback_round"] = share
    print(f"fl_secagg_compute_share_of_loopback_round: {share:.2f} ratio")
    print(
        f"fl_target_secagg_round_s: 1.0 s (ours {ours:.3f} s: {'met' if ours <= 1.0 else 'missed'})"
    )
    notes = {"tls": "skipped (--no-flower)", "insecure": "skipped (--no-flower)"}
    modes = () if ns.no_flower else ("tls",) if ns.quick else ("tls", "insecure")
    for mode in modes:
        times, notes[mode] = flower(n, ns.flower_rounds, offline=ns.quick, tls=mode == "tls")
        key = f"fl_flower_{mode}_{big}_round_s"
        if times is None:
            print(f"{key}: not measured: {notes[mode]}")
            continue
        # round 1 includes Flower's ClientApp start-up; the median of the others is the figure
        theirs = statistics.median(times[1:] or times)
        figures[key] = theirs
        print(f"{key}: {theirs:.3f} s (rounds {', '.join(f'{t:.2f}' for t in times)}; "
              f"{notes[mode]})")  # fmt: skip
        for ours_mode in ("plain", "secagg"):
            speedup = theirs / figures[f"fl_loopback_{big}_{ours_mode}_round_s"]
            figures[f"fl_speedup_vs_flower_{mode}_{ours_mode}"] = speedup
            aim = " (aim >= 5 x)" if (mode, ours_mode) == ("tls", "secagg") else ""
            print(f"fl_speedup_vs_flower_{mode}_{ours_mode}: {speedup:.2f} x{aim}")
    if ns.out:
        with open(ns.out, "w") as fh:
            json.dump(
                {
                    "mb": ns.mb,
                    "rounds": ns.rounds,
                    "chunk_kib": ns.chunk_kib,
                    "quick": ns.quick,
                    "cpus": os.cpu_count(),
                    "loadavg_1m": os.getloadavg()[0],
                    "figures": figures,
                    "flower": notes,
                },
                fh,
                indent=2,
            )


if __name__ == "__main__":
    main()
