"""`qdspace inspect serve` on a two-node Ray cluster: spread replicas, activation, a lost node.

A Ray head and a worker node are started with the venv's ``ray start`` as separate
processes, each with one CPU. As root, the worker lives in its own network namespace
(joined to the head by a veth pair), so it reaches the head, and the head and the
service reach it, over a real link rather than loopback; without root or ``ip netns``
it runs on the same host (the test says so in its output). The service is the real
CLI in a subprocess, judging with real onnxruntime on real Serve replicas, and writing
verdicts into the node's SQLite QDM.

Every process the cluster starts inherits a marker variable, so teardown stops exactly
those processes (``ray stop`` would stop every Ray on the machine), and "the worker
dies" is a SIGKILL of every process of the worker node.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qdspace.inference.registry import ModelRegistry
from qdspace.node.identity.authority import Authority
from qdspace.node.init import init_node
from qdspace.util.ports import free_port

pytestmark = pytest.mark.integration
training = pytest.importorskip("qdspace.inference.training", exc_type=ImportError)
pytest.importorskip("ray")

RAY = str(Path(sys.executable).with_name("ray"))
MARKER = "QDSPACE_TEST_RAY_NODE"
FRAMES = 120  # per station; two stations
SIZE = 32


@dataclass
class Cluster:
    address: str
    run_id: str
    netns: str | None
    temp_dir: Path
    notes: list[str] = field(default_factory=list)

    def pids(self, role: str | None = None) -> list[int]:
        """Processes of this cluster (of one node when ``role`` is given).

        A process Ray started carries the marker in its environment, unless it set its
        title (``ray::...``), which overwrites that memory: those are found as children
        of a marked process, and, once orphaned, by their open files in the temp dir.
        """
        want = f"{MARKER}={self.run_id}:{role or ''}".encode()
        parents: dict[int, int] = {}
        found: set[int] = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                env = (entry / "environ").read_bytes().split(b"\0")
                parents[pid] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if any(e.startswith(want) for e in env) or (role is None and self._holds_temp(entry)):
                found.add(pid)
        grew = True
        while grew:
            children = {pid for pid, parent in parents.items() if parent in found}
            grew = not children <= found
            found |= children
        return sorted(found)

    def _holds_temp(self, proc: Path) -> bool:
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            return False
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(fd).startswith(str(self.temp_dir)):
                    return True
        return False


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _sh(*args: str) -> bool:
    return subprocess.run(args, capture_output=True, timeout=30).returncode == 0


def _make_netns(name: str, subnet: int) -> tuple[str, str] | None:
    """A namespace joined to this one by a veth pair; (head ip, worker ip), or None."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return None
    head, worker = f"10.213.{subnet}.1", f"10.213.{subnet}.2"
    host_if, ns_if = f"qh{subnet}x{os.getpid() % 1000}", f"qw{subnet}x{os.getpid() % 1000}"
    steps = [
        ("ip", "netns", "add", name),
        ("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if),
        ("ip", "link", "set", ns_if, "netns", name),
        ("ip", "addr", "add", f"{head}/24", "dev", host_if),
        ("ip", "link", "set", host_if, "up"),
        ("ip", "netns", "exec", name, "ip", "addr", "add", f"{worker}/24", "dev", ns_if),
        ("ip", "netns", "exec", name, "ip", "link", "set", ns_if, "up"),
        ("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"),
    ]
    for step in steps:
        if not _sh(*step):
            _sh("ip", "netns", "del", name)
            _sh("ip", "link", "del", host_if)
            return None
    return head, worker


def _ray_start(cluster_env: dict[str, str], role: str, args: list[str], prefix: list[str]) -> None:
    env = {**cluster_env, MARKER: f"{cluster_env[MARKER]}{role}"}
    done = subprocess.run(
        [*prefix, RAY, "start", *args, "--num-cpus=1", "--disable-usage-stats"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"ray start ({role}) failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    run_id = f"{os.getpid()}-{time.monotonic_ns() % 10**6}"
    temp_dir = Path(tempfile.mkdtemp(prefix="qr-", dir="/tmp"))  # short: Unix socket paths
    netns = f"qds-{os.getpid()}"
    ips = _make_netns(netns, 100 + os.getpid() % 150)
    notes = []
    if ips is None:
        netns_used = None
        head_ip = worker_ip = "127.0.0.1"
        notes.append("no root or no `ip netns`: the worker node runs on the same host")
    else:
        netns_used = netns
        head_ip, worker_ip = ips
    # free on every address: Ray's GCS listens on 0.0.0.0, and a port free on the veth's
    # address may be a local node's on 127.0.0.1 (a fresh-clone run met that: "Address
    # already in use", the cluster never started)
    port = free_port("0.0.0.0")
    cluster = Cluster(f"{head_ip}:{port}", run_id, netns_used, temp_dir, notes)
    # Ray turns token auth on by itself when ~/.ray/auth_token exists (any local
    # ray.init() on this machine writes one); this cluster lives and dies with the test
    env = {**os.environ, MARKER: f"{run_id}:", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    try:
        _ray_start(
            env,
            "head",
            [
                "--head",
                f"--port={port}",
                f"--node-ip-address={head_ip}",
                f"--temp-dir={temp_dir}",
                "--include-dashboard=false",
            ],
            [],
        )
        prefix = [] if netns_used is None else ["ip", "netns", "exec", netns_used]
        _ray_start(
            env,
            "worker",
            [
                f"--address={cluster.address}",
                f"--node-ip-address={worker_ip}",
                f"--temp-dir={temp_dir}",
            ],
            prefix,
        )
        yield cluster
    finally:
        # Ray's GCS, raylets, agents and Serve actors outlive a SIGTERM by more than 15 s
        # (the teardown used to wait all of that, then kill): a short grace, then SIGKILL,
        # repeated until none is left (a killed parent's children are found by their
        # marker or open files; every one is gone before the namespace and folder go)
        _signal(cluster.pids(), signal.SIGTERM)
        deadline = time.monotonic() + 2
        while cluster.pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        deadline = time.monotonic() + 30
        while (left := cluster.pids()) and time.monotonic() < deadline:
            _signal(left, signal.SIGKILL)
            time.sleep(0.2)
        if netns_used is not None:
            _sh("ip", "netns", "del", netns_used)  # takes the veth pair with it
        shutil.rmtree(temp_dir, ignore_errors=True)


def _onnx(seed: int) -> bytes:
    config = training.TrainConfig(input_size=SIZE, widths=(4, 8, 8), seed=seed)
    return bytes(training.export_onnx(training.build_model(config), SIZE))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A node directory with an active model version and a folder of frames."""
    root = tmp_path_factory.mktemp("serve")
    Authority.init(root / "authority", "test-space")
    init_node(root / "node", root / "authority", name="cellex", role="supplier")
    ModelRegistry(root / "node").register(_onnx(1), source="test-v1", activate=True)
    frames = root / "node" / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(FRAMES):
        image = rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8)
        Image.fromarray(image).save(frames / f"cell{i:04d}.png")
    return root / "node"


class Service:
    """``qdspace inspect serve`` in a subprocess; its stderr lines, as they come."""

    def __init__(self, node: Path, cluster: Cluster, *extra: str) -> None:
        # the address by the variable, not the flag; the cluster runs without token auth
        env = {**os.environ, "RAY_ADDRESS": cluster.address, "RAY_AUTH_MODE": "disabled"}
        args = ["inspect", "serve", "--dir", str(node), "--replicas", "2", "--stations", "2"]
        args += ["--frames", str(node / "frames"), "--status-every", "1", "--json", *extra]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qdspace", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())

    def wait_for(self, text: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None, "\n".join(self.lines)
            assert time.monotonic() < deadline, f"no {text!r} in:\n" + "\n".join(self.lines)
            time.sleep(0.1)

    def summary(self, timeout: float = 120.0) -> dict[str, object]:
        out, _ = self.proc.communicate(timeout=timeout)
        self._reader.join(5)
        assert self.proc.returncode == 0, out + "\n".join(self.lines)
        # Ray itself prints a lost raylet's notice on the driver's stdout: the summary is
        # the JSON document that starts on the last line that is a lone "{"
        lines = out.splitlines()
        start = max(i for i, line in enumerate(lines) if line == "{")
        result: dict[str, object] = json.loads("\n".join(lines[start:]))
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def _rows(node: Path) -> list[tuple[str, str]]:
    if not (node / "node.db").exists():  # the first run creates the node's QDM
        return []
    with sqlite3.connect(node / "node.db") as conn:
        query = "SELECT model_version, inspected_at FROM qdm_inspection ORDER BY id"
        return [(str(v), str(t)) for v, t in conn.execute(query).fetchall()]


def test_activation_switches_the_served_version(node: Path, cluster: Cluster) -> None:
    registry = ModelRegistry(node)
    first = registry.active()
    assert first is not None
    before = len(_rows(node))
    port = free_port("127.0.0.1")
    # 64 frames in flight (6 s of one station) as in the lost-worker test: on a loaded
    # machine the replicas' load of the new version can stall the tier for seconds, and
    # the default 8 (under a second) then skips frames for backlog (alarmed, dropped)
    extra = ("--fps", "10", "--max-in-flight", "64", "--metrics-port", str(port))
    service = Service(node, cluster, *extra)
    try:
        service.wait_for("serving ")
        service.wait_for("fps; served")  # frames flow on the first version
        scraped = _scrape(port)
        assert scraped['qdspace_inspection_frames_total{outcome="served"}'] > 0
        assert scraped["qdspace_inspection_replicas"] == 2
        second = registry.register(_onnx(2), source="test-v2")
        activate = ["inspect", "activate", "--dir", str(node), second.version[:12]]
        done = subprocess.run(
            [sys.executable, "-m", "qdspace", *activate],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        service.wait_for(f"version {second.version[:12]}", timeout=60)
        time.sleep(1.0)  # verdicts of the new version
        service.proc.send_signal(signal.SIGTERM)
        summary = service.summary()
    finally:
        service.kill()
    figures = ("taken", "served", "dropped", "bad_frames", "fps", "swaps", "model_versions")
    print("activation run:", {k: summary[k] for k in figures}, "alarms:", summary["alarms"])
    assert summary["stopped_by"] == "signal"
    assert summary["swaps"] == 1 and summary["version"] == second.version
    versions = summary["model_versions"]
    assert isinstance(versions, dict) and set(versions) == {first.version, second.version}
    assert len(set(dict(summary["replica_nodes"]).values())) == 2  # type: ignore[call-overload]
    # a CI run under heavy load once had 63 of 162 frames not served here (with the
    # default 8 in flight); the service's own alarm lines say which frames and why
    said = "\n".join([line for line in service.lines if "inference.alarm" in line][-20:])
    assert summary["dropped"] == 0 and summary["bad_frames"] == 0, said
    assert summary["served"] == summary["taken"]
    judged = dict(summary["replica_frames"])  # type: ignore[call-overload]
    assert len(judged) == 2 and sum(judged.values()) == summary["served"]
    rows = _rows(node)[before:]
    assert len(rows) == summary["stored"] == summary["served"]
    assert rows[-1][0] == second.version  # the verdicts name the version that judged them


def test_a_lost_worker_loses_no_frame(node: Path, cluster: Cluster) -> None:
    for note in cluster.notes:
        print("NOTE:", note)
    before = len(_rows(node))
    sent = 2 * FRAMES
    service = Service(node, cluster, "--fps", "12", "--once", "--max-in-flight", "64")
    try:
        service.wait_for("serving ")
        service.wait_for("fps; served")
        time.sleep(2.0)
        worker = cluster.pids("worker")
        assert worker, "the worker node's processes"
        # the node freezes with frames in flight on its replica, then dies
        _signal(worker, signal.SIGSTOP)
        time.sleep(2.0)
        killed_at = time.time()
        _signal(worker, signal.SIGKILL)
        summary = service.summary(timeout=150)
    finally:
        service.kill()
    figures = ("taken", "served", "retried", "retries", "dropped", "fps", "replica_frames")
    figures += ("replicas_running",)  # 1 or 2: whether Serve had seen the node go
    print("kill run:", {k: summary[k] for k in figures}, "alarms:", summary["alarms"])
    assert len(set(dict(summary["replica_nodes"]).values())) == 2  # type: ignore[call-overload]
    assert summary["taken"] == sent and summary["bad_frames"] == 0
    served, dropped = summary["served"], summary["dropped"]
    assert isinstance(served, int) and isinstance(dropped, int)
    assert served + dropped == sent  # every frame accounted for
    alarms = dict(summary["alarms"])  # type: ignore[call-overload]
    assert dropped == alarms.get("judge_failed", 0) + alarms.get("frame_backlog", 0)
    rows = _rows(node)[before:]
    assert len(rows) == summary["stored"] == served
    # the replica on the head did not judge them all: the lost one served its share
    survivors = dict(summary["replica_frames"])  # type: ignore[call-overload]
    assert len(survivors) == 1 and 0 < sum(survivors.values()) < served
    # the line kept serving on the head after the worker was gone
    after = [t for _, t in rows if _epoch(t) > killed_at + 1.0]
    assert after, "no verdict after the worker died"


def _scrape(port: int) -> dict[str, float]:
    """The service's Prometheus series, ``name{labels}`` -> value."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    series = (line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    return {name: float(value) for name, value in series}


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def test_an_address_without_a_cluster_is_refused_in_one_line(node: Path) -> None:
    port = free_port("127.0.0.1")  # nothing listens there
    args = ["inspect", "serve", "--dir", str(node), "--ray-address", f"127.0.0.1:{port}"]
    done = subprocess.run(
        [sys.executable, "-m", "qdspace", *args, "--once"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert f"cannot join the Ray cluster at 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr
