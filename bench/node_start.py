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
- ``enroll.*``: the round trip of a member joining over the network, against a real
  ``qdspace authority serve`` (HTTPS on loopback): the authority makes a code
  (``enroll.code``), ``qdspace node join`` as the operator types it (``enroll.join_cli``:
  CA fetched and pinned, preview, keys and CSR made here, certificate issued, node
  directory written), the node's start to ready (``enroll.start``), and its first peer
  call to a member it found in the directory (``enroll.first_peer_call``: the directory,
  the pin check, the mTLS handshake, one ``Hello``), all together ``enroll.round_trip``.
  For comparison, the offline path ``node init --authority DIR`` as a CLI command
  (``enroll.init_cli``, the CA key on the same disk);
- ``baseline.import_floor``: in the same run, a fresh interpreter that imports the
  libraries a node is made of (FastAPI, uvicorn, grpc, SQLAlchemy, cryptography) and
  exits: the floor under any node start, so ``start_over_import_floor`` shows what the
  node itself adds.

    python bench/node_start.py                 # 3 restarts per backend, 3 joins
    python bench/node_start.py --quick         # 1 restart per backend (CI)
    python bench/node_start.py --out result.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import ssl
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

from qdspace.node.client import ClientError  # noqa: E402
from qdspace.node.identity.authority import Authority  # noqa: E402
from qdspace.node.join import join_node  # noqa: E402
from qdspace.node.layout import NodeLayout  # noqa: E402
from qdspace.node.localnet.authority import AuthorityProcess  # noqa: E402
from qdspace.node.localnet.network import (  # noqa: E402
    LocalNetwork,
    MemberProcess,
    MemberSpec,
    free_port,
)

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
    verify = ssl.create_default_context(cafile=str(member.ca_file))  # the node's API is TLS
    with httpx.Client(timeout=2, verify=verify) as http:
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


def _joined(directory: Path, name: str) -> MemberProcess:
    """The MemberProcess view of a node directory made by `node join`."""
    from qdspace.node.config import NodeSettings

    settings = NodeSettings.load(directory)
    member = MemberProcess(
        MemberSpec(name, settings.role),
        directory,
        settings.grpc_port,
        settings.api_port,
        settings.regulator_port,
    )
    member.token = NodeLayout(directory).operator_token.read_text().strip()
    return member


def _first_call(member: MemberProcess, peer: str) -> float:
    """ms until ``member``'s first Hello to ``peer`` succeeds (found in the directory)."""
    started = time.perf_counter()
    with member.operator(timeout=30) as client:
        while time.perf_counter() - started < READY_TIMEOUT_S:
            try:
                client.hello(peer)
                return (time.perf_counter() - started) * 1000
            except ClientError:
                time.sleep(0.02)
    raise SystemExit(f"{member.spec.name} never reached {peer}")


def _enrolment(workdir: Path, runs: int) -> dict[str, list[float]]:
    """Join over the network (code, join, start, first peer call); the offline init CLI."""
    authority_dir = workdir / "authority"
    authority = Authority.init(authority_dir, "bench-space")
    env = _env()
    out: dict[str, list[float]] = {k: [] for k in ("code", "join_cli", "start")}
    out |= {"first_peer_call": [], "round_trip": [], "init_cli": []}
    with AuthorityProcess(authority_dir, env=env) as service:
        code = str(authority.create_enrollment(name="callee", role="supplier"))
        join_node(
            workdir / "callee",
            authority_url=service.url,
            code=code,
            grpc_port=free_port(),
            api_port=free_port(),
            regulator_port=free_port(),
        )
        callee, _ = _start(_joined(workdir / "callee", "callee"), env)
        try:
            for i in range(runs):
                started = time.perf_counter()
                code = str(authority.create_enrollment(name=f"joiner{i}", role="oem"))
                out["code"].append((time.perf_counter() - started) * 1000)
                directory = workdir / f"joiner{i}"
                cmd = [sys.executable, "-m", "qdspace", "node", "join", "--dir", str(directory)]
                code_file = workdir / f"joiner{i}.code"
                code_file.write_text(code + "\n")
                cmd += ["--authority-url", service.url, "--code-file", str(code_file)]
                cmd += ["--grpc-port", str(free_port()), "--api-port", str(free_port())]
                cmd += ["--regulator-port", str(free_port())]
                out["join_cli"].append(_spawn_exit_ms(cmd))
                process, ms = _start(_joined(directory, f"joiner{i}"), env)
                out["start"].append(ms)
                try:
                    out["first_peer_call"].append(_first_call(_joined(directory, ""), "callee"))
                finally:
                    _stop(process)
                out["round_trip"].append((time.perf_counter() - started) * 1000)
        finally:
            _stop(callee)
    for i in range(runs):
        cmd = [sys.executable, "-m", "qdspace", "node", "init", "--dir", str(workdir / f"cli-{i}")]
        cmd += ["--name", f"cli{i}", "--role", "supplier", "--authority", str(authority_dir)]
        out["init_cli"].append(_spawn_exit_ms(cmd))
    return out


def measure(runs: int) -> dict[str, Any]:
    floor = [_spawn_exit_ms([sys.executable, "-c", IMPORT_FLOOR]) for _ in range(runs + 1)][1:]
    out: dict[str, Any] = {"baseline.import_floor_ms": _summary(floor)}
    with tempfile.TemporaryDirectory(prefix="qdspace-bench-start-") as tmp:
        specs = [MemberSpec("solo", "supplier")]
        net = LocalNetwork(Path(tmp) / "sqlite", specs, chain=False)
        net.create()
        first, samples, rss = _starts(net, "solo", runs)
        out["start.sqlite_first_ms"] = first
        out["start.sqlite_ms"] = _summary(samples)
        out["rss.at_rest_sqlite_kib"] = rss
        enrol = _enrolment(Path(tmp) / "enrol", runs)
        out |= {f"enroll.{k}_ms": _summary(v) for k, v in enrol.items()}
        pg_url = os.environ.get(PG_ENV)
        if pg_url:
            pg_net = LocalNetwork(Path(tmp) / "pg", specs, chain=False, pg_url=pg_url)
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
    parser.add_argument("--runs", type=int, default=3, help="restarts per backend")
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
    trip = figures["enroll.round_trip_ms"]["p50"] / figures["enroll.init_cli_ms"]["p50"]
    results["join_round_trip_over_offline_init"] = trip
    print(f"node_start.join_round_trip_over_offline_init: {trip:.2f} ratio")
    print(f"node_start.cpus: {results['cpus']} cores")
    print(f"node_start.loadavg_1m: {results['loadavg_1m']:.2f} load")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
