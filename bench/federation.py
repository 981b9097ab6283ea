"""Federated round wall time: 3 members on loopback, small model and a 46.8 MB update.

Loopback part: real node processes (``node.localnet.network.LocalNetwork``: SunArc as
coordinator, Cellex and PolyCell), the real ``Federation`` gRPC service over mutual
TLS, and three member runners (``MemberRunner``) in this process whose "training"
adds a fixed change to the global model, so the figure is the cost of the round
itself: download and signature check, upload in chunks, secure aggregation
(X25519, Shamir, ChaCha20 masks, certificate-checked signed adverts, dealer-signed
shares, the signed consistency round, unmasking), aggregation, signing and checkpoint.
Each variant runs a job of ``--rounds`` rounds; the figure is the median time
between consecutive global versions as a member sees them (rounds 2 onwards).

In-process part: the same round through the coordinator state machine without
transport (baseline for the transport's share).

Flower (``flwr==1.27.0``) is installed into its own virtual environment
(``$TMPDIR/qdspace-bench-flower-venv``) from the machine's package index and run as
its gRPC deployment: ``flower-superlink --insecure``, three ``flower-supernode``
processes and a ServerApp submitted with ``flwr run``, exchanging the same float32
payload (FedAvg over the Message API); the round time is measured inside the
ServerApp. If it cannot be installed or run, the output says exactly why.

    python bench/federation.py                  # defaults, a few minutes on 2 cores
    python bench/federation.py --mb 4 --rounds 3 --no-flower --out result.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from nacl.signing import SigningKey

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


async def loopback_job(network: LocalNetwork, job: JobSpec) -> list[float]:
    """Run one job; the times (monotonic) at which the coordinator's member saw each version."""
    seen: list[float] = []

    def on_version(version: ModelVersion, params: Params) -> None:
        seen.append(time.perf_counter())

    async def member(name: str) -> None:
        keys = load_member_keys(network[name].directory)
        channel = open_channel(keys, network[COORDINATOR].grpc_address, COORDINATOR)
        try:
            client = FederationClient(channel, COORDINATOR, job.job_id)
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


def round_times(seen: list[float]) -> list[float]:
    # seen[0] is version 0 (download before round 1); round 1 includes job start-up.
    return [b - a for a, b in itertools.pairwise(seen[1:])]


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loopback(rounds: int, mb: float) -> dict[str, float]:
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
            coordinator = network[COORDINATOR].process
            assert coordinator is not None
            for label, shapes in (("small", SMALL_SHAPES), (f"{mb:g}mb", (big,))):
                for secure in (False, True):
                    name = f"fl_loopback_{label}_{'secagg' if secure else 'plain'}_round_s"
                    job = make_job(name.replace("_", "-"), shapes, secure, rounds)
                    cpu0 = _process_cpu_s(coordinator.pid) + time.process_time()
                    times = round_times(asyncio.run(loopback_job(network, job)))
                    cpu = _process_cpu_s(coordinator.pid) + time.process_time() - cpu0
                    figures[name] = statistics.median(times)
                    # CPU of the coordinator's node and of the 3 members, per round (the job's
                    # start-up included), which a busy machine inflates much less than wall time
                    figures[name.replace("_round_s", "_cpu_per_round_s")] = cpu / rounds
                    each = ", ".join(f"{t:.2f}" for t in times)
                    print(
                        f"{name}: {figures[name]:.3f} s (rounds {each}; "
                        f"cpu {cpu / rounds:.2f} s/round, load {os.getloadavg()[0]:.1f})",
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


FLOWER_VERSION = "1.27.0"
FLOWER_VENV = Path(tempfile.gettempdir()) / "qdspace-bench-flower-venv"

_FLOWER_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "qdbench"
version = "1.0.0"
description = "qdspace benchmark: one FedAvg round of a fixed-size float32 update"
license = "Apache-2.0"
dependencies = ["flwr==1.27.0", "numpy"]

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "qdspace"

[tool.flwr.app.components]
serverapp = "qdbench_server:app"
clientapp = "qdbench_client:app"

[tool.flwr.app.config]
values = 1000
rounds = 3
members = 3
out = "flower-rounds.json"
"""

# The ServerApp does FedAvg by hand over Flower's Message API so the round time is
# exactly: send the global ArrayRecord to every SuperNode, each ClientApp adds a
# fixed change, receive the replies, average (the same work as our plain round).
_FLOWER_SERVER = """\
import json
import time

import numpy as np
from nacl.signing import SigningKey
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    n, rounds, members = int(cfg["values"]), int(cfg["rounds"]), int(cfg["members"])
    deadline = time.monotonic() + 120
    nodes = sorted(grid.get_node_ids())
    while len(nodes) < members and time.monotonic() < deadline:
        time.sleep(0.2)
        nodes = sorted(grid.get_node_ids())
    nodes = nodes[:members]
    global_model = np.zeros(n, np.float32)
    times = []
    for rnd in range(1, rounds + 1):
        t0 = time.perf_counter()
        messages = [
            Message(
                content=RecordDict(
                    {"arrays": ArrayRecord([global_model]), "config": ConfigRecord({"round": rnd})}
                ),
                message_type=MessageType.TRAIN,
                dst_node_id=node,
            )
            for node in nodes
        ]
        replies = [m for m in grid.send_and_receive(messages) if m.has_content()]
        if len(replies) != len(nodes):
            raise RuntimeError(f"round {rnd}: {len(replies)} of {len(nodes)} replies")
        arrays = [m.content["arrays"].to_numpy_ndarrays()[0] for m in replies]
        global_model = np.mean(arrays, axis=0, dtype=np.float32)
        times.append(time.perf_counter() - t0)
    with open(str(cfg["out"]), "w") as fh:
        json.dump({"round_s": times, "nodes": len(nodes), "values": n}, fh)
"""

_FLOWER_CLIENT = """\
import numpy as np
from nacl.signing import SigningKey
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    params = msg.content["arrays"].to_numpy_ndarrays()[0]
    trained = params + np.float32(1e-5)
    content = RecordDict(
        {"arrays": ArrayRecord([trained]), "metrics": MetricRecord({"num-examples": 100})}
    )
    return Message(content=content, reply_to=msg)
"""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


def _flower_install(offline: bool = False) -> str | None:
    """Create the separate venv with flwr==1.27.0; None when ready, else why not.

    ``offline`` (``--quick``, CI): pip may use only what the machine already has (its
    wheel cache, a configured find-links folder), never the index, and gets 2 minutes."""
    flwr_bin = FLOWER_VENV / "bin" / "flower-superlink"
    python = FLOWER_VENV / "bin" / "python"
    if flwr_bin.exists():
        check = subprocess.run(
            [str(python), "-c", "import flwr; print(flwr.__version__)"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check.stdout.strip() == FLOWER_VERSION:
            return None
    try:
        if not python.exists():
            subprocess.run(
                [sys.executable, "-m", "venv", str(FLOWER_VENV)], check=True, timeout=120
            )
        pip = [str(python), "-m", "pip", "install", "-q", f"flwr=={FLOWER_VERSION}"]
        if offline:
            pip.insert(-1, "--no-index")
        done = subprocess.run(pip, capture_output=True, text=True, timeout=120 if offline else 900)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"could not create the Flower venv {FLOWER_VENV}: {exc}"
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr or done.stdout).splitlines() if "ERROR" in ln]
        how = " offline (--quick never reaches the index)" if offline else ""
        return f"pip could not install flwr=={FLOWER_VERSION}{how}: {(lines or ['no output'])[-1]}"
    return None


def flower(
    n: int, rounds: int, timeout_s: float = 600.0, offline: bool = False
) -> tuple[list[float] | None, str]:
    """Flower's deployment (SuperLink + 3 SuperNodes, ``flwr run``) exchanging ``n`` float32.

    Returns the per-round times measured inside Flower's ServerApp (send the global
    ArrayRecord to every SuperNode, receive the trained ones, average), or None and
    the exact reason it could not be measured.
    """
    problem = _flower_install(offline)
    if problem is not None:
        return None, problem
    bindir = FLOWER_VENV / "bin"
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="qdspace-bench-flower-") as tmp:
        work = Path(tmp)
        app = work / "app"
        app.mkdir()
        (app / "pyproject.toml").write_text(_FLOWER_PYPROJECT)
        (app / "qdbench_server.py").write_text(_FLOWER_SERVER)
        (app / "qdbench_client.py").write_text(_FLOWER_CLIENT)
        out = work / "rounds.json"
        serverappio, fleet, control = _free_port(), _free_port(), _free_port()
        home = work / "flwr-home"
        home.mkdir()
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
            f'address = "127.0.0.1:{control}"\ninsecure = true\n'
        )
        env = {**os.environ, "FLWR_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        env.pop("VIRTUAL_ENV", None)
        env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"

        def spawn(name: str, args: list[str]) -> Path:
            log = work / f"{name}.log"
            with log.open("wb") as fh:
                procs.append(
                    subprocess.Popen(
                        args,
                        cwd=work,
                        env=env,
                        stdout=fh,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            return log

        try:
            link_log = spawn(
                "superlink",
                [
                    str(bindir / "flower-superlink"),
                    "--insecure",
                    "--serverappio-api-address",
                    f"127.0.0.1:{serverappio}",
                    "--fleet-api-address",
                    f"127.0.0.1:{fleet}",
                    "--control-api-address",
                    f"127.0.0.1:{control}",
                    "--health-server-address",
                    f"127.0.0.1:{_free_port()}",
                    "--storage-dir",
                    str(work / "storage"),
                ],
            )
            for i in range(len(MEMBERS)):
                spawn(
                    f"supernode{i}",
                    [
                        str(bindir / "flower-supernode"),
                        "--insecure",
                        "--superlink",
                        f"127.0.0.1:{fleet}",
                        "--clientappio-api-address",
                        f"127.0.0.1:{_free_port()}",
                        "--health-server-address",
                        f"127.0.0.1:{_free_port()}",
                        "--node-config",
                        f"partition-id={i}",
                    ],
                )
            time.sleep(3.0)
            if any(p.poll() is not None for p in procs):
                return None, f"a Flower process exited at start: superlink log: {_tail(link_log)}"
            overrides = f"values={n} rounds={rounds} members={len(MEMBERS)} out='{out}'"
            run = subprocess.run(
                [str(bindir / "flwr"), "run", str(app), "bench", "--stream", "-c", overrides],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
            (work / "flwr-run.log").write_text(run.stdout + run.stderr)
            if not out.exists():
                return None, (
                    f"flwr run ended (exit {run.returncode}) without round times: "
                    f"{_tail(work / 'flwr-run.log')} / superlink: {_tail(link_log)}"
                )
            data = json.loads(out.read_text())
            return [float(t) for t in data["round_s"]], (
                f"flwr {FLOWER_VERSION}: SuperLink + {data['nodes']} SuperNodes (--insecure, "
                "no TLS), ServerApp via flwr run, Message API, FedAvg of one float32 array"
            )
        except subprocess.TimeoutExpired:
            return None, f"flwr run did not finish in {timeout_s:.0f}s: {_tail(link_log)}"
        finally:
            for proc in procs:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


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
        "--quick",
        action="store_true",
        help="1 MB updates, 2 rounds; Flower only if it installs offline (CI)",
    )
    ns = parser.parse_args()
    if ns.quick:
        ns.mb, ns.rounds, ns.flower_rounds = 1.0, 2, 2
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
    figures.update(loopback(ns.rounds, ns.mb))
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
    note = "skipped (--no-flower)"
    if not ns.no_flower:
        times, note = flower(n, ns.flower_rounds, offline=ns.quick)
        if times is None:
            print(f"fl_flower_{big}_round_s: not measured: {note}")
        else:
            # round 1 includes Flower's ClientApp start-up; the median of the others is the figure
            theirs = statistics.median(times[1:] or times)
            figures[f"fl_flower_{big}_round_s"] = theirs
            print(
                f"fl_flower_{big}_round_s: {theirs:.3f} s "
                f"(rounds {', '.join(f'{t:.2f}' for t in times)}; {note})"
            )
            for mode in ("plain", "secagg"):
                speedup = theirs / figures[f"fl_loopback_{big}_{mode}_round_s"]
                figures[f"fl_speedup_vs_flower_{mode}"] = speedup
                print(f"fl_speedup_vs_flower_{mode}: {speedup:.2f} x (aim >= 5 x for secagg)")
    if ns.out:
        with open(ns.out, "w") as fh:
            json.dump(
                {
                    "mb": ns.mb,
                    "rounds": ns.rounds,
                    "quick": ns.quick,
                    "cpus": os.cpu_count(),
                    "loadavg_1m": os.getloadavg()[0],
                    "figures": figures,
                    "flower": note,
                },
                fh,
                indent=2,
            )


if __name__ == "__main__":
    main()
