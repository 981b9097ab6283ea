"""Node start-up: cold start to ready (SQLite, PostgreSQL), memory at rest, enrolment.

A member's operator restarts a node after an upgrade, a crash or a reboot; an
orchestrator's readiness probe decides when traffic goes to it. Each sample here is a
fresh ``qdspace node start`` process, timed from spawn to the first ``/readyz`` 200 (the
database answers, the revocation list is fresh, the peer server is up):

- ``start.sqlite_first``: the first start of a new node (its SQLite file and schema are
  created), then ``start.sqlite``: restarts of the same node;
- ``start.postgresql``: the same node shape on a PostgreSQL database (``QDSPACE_TEST_PG_URL``;
  without it this figure is skipped and says so);
- ``rss.at_rest``: the node process's resident memory once ready and idle for a second;
- ``enroll.*``: how a member gets its identity. This tree has no network enrolment yet, so
  what is measured is the local path, ``node init --authority DIR`` (keys, certificate,
  node directory; in-process and as the CLI command an operator types), then the first
  peer call of a freshly started node (its channel, the mTLS handshake, one ``Hello``);
- ``baseline.import_floor``: in the same run, a fresh interpreter that imports the
  libraries a node is made of (FastAPI, uvicorn, grpc, SQLAlchemy, cryptography) and
  exits: the floor under any node start, so ``start_over_import_floor`` shows what the
  node itself adds.

    python bench/node_start.py                 # 5 starts per backend
    python bench/node_start.py --quick         # 1 restart per backend (CI)
    python bench/node_start.py --out result.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from qdspace.node.client import OperatorClient  # noqa: E402
from qdspace.node.init import init_node  # noqa: E402
from qdspace.node.localnet.network import LocalNetwork, MemberProcess, MemberSpec  # noqa: E402

PG_ENV = "QDSPACE_TEST_PG_URL"
READY_TIMEOUT_S = 120.0
IMPORT_FLOOR = "import fastapi, uvicorn, grpc, sqlalchemy, cryptography"


def _env() -> dict[str, str]:
    path = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}


def _spawn_exit_ms(cmd: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, env=_env(), cwd=ROOT, timeout=300)
    ms = (time.perf_counter() - started) * 1000
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-1000:]!r}")
    return ms


def _rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and its children (a node is one process; be sure)."""
    total = 0
    children = Path(f"/proc/{pid}/task/{pid}/children")
    pids = [pid] + [int(p) for p in children.read_text().split()] if children.exists() else [pid]
    for each in pids:
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def _start(member: MemberProcess, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], float]:
    """Spawn ``qdspace node start``; (process, ms until /readyz answers 200)."""
    member.log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "qdspace", "node", "start", "--dir", str(member.directory)]
    with member.log_path.open("ab") as log:
        started = time.perf_counter()
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"{member.api_url}/readyz"
    with httpx.Client(timeout=2) as http:
        while time.perf_counter() - started < READY_TIMEOUT_S:
            if process.poll() is not None:
                tail = member.log_path.read_text(errors="replace")[-2000:]
                raise SystemExit(f"node {member.spec.name} exited while starting:\n{tail}")
            try:
                if http.get(url).status_code == 200:
                    return process, (time.perf_counter() - started) * 1000
            except httpx.HTTPError:
                pass
            time.sleep(0.01)
    process.kill()
    raise SystemExit(f"node {member.spec.name} not ready in {READY_TIMEOUT_S:.0f}s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _summary(values: list[float]) -> dict[str, float]:
    return {"p50": statistics.median(values), "min": min(values), "max": max(values)}


def _starts(net: LocalNetwork, name: str, runs: int) -> tuple[float, list[float], int]:
    """(first start ms, restart ms samples, RSS KiB at rest after the last start)."""
    member = net[name]
    process, first = _start(member, net.env)
    _stop(process)
    samples, rss = [], 0
    for i in range(runs):
        process, ms = _start(member, net.env)
        samples.append(ms)
        if i == runs - 1:
            time.sleep(1.0)
            rss = _rss_kib(process.pid)
        _stop(process)
    return first, samples, rss


def _enrolment(net: LocalNetwork, workdir: Path, runs: int) -> dict[str, Any]:
    """The local `node init` path, in-process and as the CLI, and a first peer call."""
    in_process = []
    for i in range(runs):
        started = time.perf_counter()
        init_node(workdir / f"init-{i}", net.authority_dir, name=f"joiner{i}", role="supplier")
        in_process.append((time.perf_counter() - started) * 1000)
    cli = []
    for i in range(runs):
        cmd = [sys.executable, "-m", "qdspace", "node", "init", "--dir", str(workdir / f"cli-{i}")]
        cmd += ["--name", f"cli{i}", "--role", "supplier", "--authority", str(net.authority_dir)]
        cli.append(_spawn_exit_ms(cmd))
    first_call = []
    for _ in range(runs):
        process, _ms = _start(net["caller"], net.env)
        try:
            with OperatorClient(net["caller"].api_url, net["caller"].token) as client:
                started = time.perf_counter()
                client.hello("callee")
                first_call.append((time.perf_counter() - started) * 1000)
        finally:
            _stop(process)
    return {"init_in_process_ms": in_process, "init_cli_ms": cli, "first_peer_call_ms": first_call}


def measure(runs: int) -> dict[str, Any]:
    floor = [_spawn_exit_ms([sys.executable, "-c", IMPORT_FLOOR]) for _ in range(runs + 1)][1:]
    out: dict[str, Any] = {"baseline.import_floor_ms": _summary(floor)}
    with tempfile.TemporaryDirectory(prefix="qdspace-bench-start-") as tmp:
        specs = [MemberSpec("solo", "supplier"), MemberSpec("caller", "oem")]
        specs.append(MemberSpec("callee", "supplier"))
        net = LocalNetwork(Path(tmp) / "sqlite", specs, chain=False)
        net.create()
        first, samples, rss = _starts(net, "solo", runs)
        out["start.sqlite_first_ms"] = first
        out["start.sqlite_ms"] = _summary(samples)
        out["rss.at_rest_sqlite_kib"] = rss
        net.start(["callee"])
        try:
            enrol = _enrolment(net, Path(tmp) / "enrol", runs)
        finally:
            net.stop()
        out |= {f"enroll.{k}": _summary(v) for k, v in enrol.items()}
        pg_url = os.environ.get(PG_ENV)
        if pg_url:
            pg_net = LocalNetwork(Path(tmp) / "pg", specs[:1], chain=False, pg_url=pg_url)
            pg_net.create()
            try:
                first, samples, rss = _starts(pg_net, "solo", runs)
            finally:
                pg_net.drop_databases()
            out["start.postgresql_first_ms"] = first
            out["start.postgresql_ms"] = _summary(samples)
            out["rss.at_rest_postgresql_kib"] = rss
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="restarts per backend")
    parser.add_argument("--quick", action="store_true", help="1 restart per backend (CI)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    figures = measure(runs)
    floor = figures["baseline.import_floor_ms"]["p50"]
    results: dict[str, Any] = {
        "runs": runs,
        "cpus": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0],
        "python": platform.python_version(),
        "enrolment_path": "local `node init --authority` (no network enrolment in this tree)",
        "figures": figures,
    }
    for name, value in figures.items():
        unit = "KiB" if name.endswith("_kib") else "ms"
        key = name.removesuffix("_ms").removesuffix("_kib")
        if isinstance(value, dict):
            print(f"node_start.{key}_p50: {value['p50']:.0f} {unit}")
        else:
            print(f"node_start.{key}: {value:.0f} {unit}")
    over_floor = figures["start.sqlite_ms"]["p50"] / floor
    results["sqlite_start_over_import_floor"] = over_floor
    print(f"node_start.sqlite_start_over_import_floor: {over_floor:.2f} ratio")
    if "start.postgresql_ms" in figures:
        ratio = figures["start.postgresql_ms"]["p50"] / figures["start.sqlite_ms"]["p50"]
        results["postgresql_over_sqlite"] = ratio
        print(f"node_start.postgresql_over_sqlite: {ratio:.2f} ratio")
    else:
        print(f"# start.postgresql skipped: set {PG_ENV} to a PostgreSQL URL to measure it")
    print(f"# enrollment measured: {results['enrolment_path']}")
    print(f"node_start.cpus: {results['cpus']} cores")
    print(f"node_start.loadavg_1m: {results['loadavg_1m']:.2f} load")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
