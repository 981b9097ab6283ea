"""Managed host: many tenant members in one process against the same members as nodes.

Issue 14 asks whether one ``qdspace host start`` process can carry the small suppliers
that have no servers more cheaply than one ``qdspace node start`` per member, without
peers noticing. Everything here is real processes over real TLS, enrolled with one
local authority; the bench process itself plays a self-hosted member (its own keys and
certificate) that calls every member's Catalog over mutual-TLS gRPC, the call peers make
first:

- ``host.N.start``: spawn of ``qdspace host start`` with N tenants (SQLite each) until
  ``/host/v1/status`` reports all N serving (the host opens its API listener only after
  every tenant's gRPC server is up); ``host.N.all_operator_apis``: spawn until every
  tenant's operator API has answered ``GET /v1/node`` once through the host's listener
  (the host builds tenants' API apps after it serves; this waits for all, as a node's
  ``/readyz`` includes its API);
- ``host.N.rss``: the host process's resident memory at rest (tenants' API apps warmed,
  memory steady), and ``host.N.rss_per_tenant``: that minus a 0-tenant host's, over N;
- ``host.N.catalog_p50/p99``: ``Catalog.ListAssets`` latency with every tenant called at
  once, closed loop: ``CONCURRENCY`` calls in flight per tenant (so 2 x N at once on the
  one host process), one channel per tenant, all from this one bench process;
- baseline in the same run, ``nodes.M.*``: the first M members (M = the smaller host's
  size) as M separate ``qdspace node start`` processes: spawn to every ``/readyz`` 200,
  their summed RSS, and the same catalog load on all of them;
- the ratios (memory per tenant over memory per node process, catalog p99 of the small
  host over the nodes'), and the issue's aims with whether each was met on this machine;
- ``fairness.{off,on}.*``: one host of ``FAIR_TENANTS`` tenants, run twice (per-tenant
  quotas off, then on: the flooding tenant held to ``FLOOD_QUOTA``, the others to a
  generous default). Each run: the quiet tenants' catalog p50/p99 alone, then again
  while one tenant is flooded by another process (``FLOOD_CONCURRENCY`` ListAssets in
  flight, closed loop, refusals ignored); ``*.flooded_over_alone`` is the slowdown,
  ``fairness.p99_on_over_off`` what the quotas win back, and the flooder's served and
  refused calls a second show that the quota, not luck, made the difference.

    python bench/host.py                 # hosts of 10 and 50 tenants, 10 nodes
    python bench/host.py --quick         # a host of 2 tenants, 2 nodes (CI)
    python bench/host.py --sizes 10,30 --out result.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from qdspace.node.host.config import HostLayout, HostSettings  # noqa: E402
from qdspace.node.host.quotas import Quota, QuotaSettings  # noqa: E402
from qdspace.node.host.registry import Registry  # noqa: E402
from qdspace.node.host.tenants import (  # noqa: E402
    Enrollment,
    add_tenant,
    init_host,
    tenant_token,
)
from qdspace.node.layout import NodeLayout  # noqa: E402
from qdspace.node.localnet.network import LocalNetwork, MemberSpec  # noqa: E402
from qdspace.node.rpc.peers import PeerDirectory  # noqa: E402
from qdspace.protocols.v1 import catalog_pb2, catalog_pb2_grpc  # noqa: E402
from qdspace.util.ports import free_port  # noqa: E402

READY_TIMEOUT_S = 300.0
FAIR_TENANTS = 4  # one flooded, the rest quiet
FLOOD_CONCURRENCY = 32
#: the flood runs this long before the quiet tenants are measured (its burst spent)
FLOOD_WARMUP_S = 2.0
#: the flooded tenant's own quota in the "on" run; every other tenant gets GENEROUS
FLOOD_QUOTA = {"rps": 20.0, "burst": 20, "max_calls": 4}
GENEROUS = {"rps": 5000.0, "burst": 5000, "max_calls": 64}
CONCURRENCY = 2  # calls in flight per member
AIM_TENANTS, AIM_START_MS, AIM_P99_MS, AIM_MEMORY_SHARE = 50, 2000.0, 50.0, 0.1
CALLER = "bench-caller"
FLOODER = ROOT / "bench" / "support" / "host_flood.py"


def _env() -> dict[str, str]:
    path = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}


def _rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and its children (each server is one process; be sure)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    pids = [pid] + ([int(p) for p in children.read_text().split()] if children.exists() else [])
    total = 0
    for each in pids:
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def _steady_rss(pids: list[int], settle_s: float = 0.5, limit_s: float = 30.0) -> int:
    """Summed RSS once it stops growing by more than 1% over ``settle_s`` (the host
    warms its tenants' API apps after it starts serving)."""
    deadline = time.monotonic() + limit_s
    last = sum(_rss_kib(p) for p in pids)
    while time.monotonic() < deadline:
        time.sleep(settle_s)
        now = sum(_rss_kib(p) for p in pids)
        if now <= last * 1.01:
            return now
        last = now
    return last


class Processes:
    """Every server process this bench starts, each in its own session, all stopped on
    exit (normal or not)."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def spawn(self, cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            process = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=_env(), start_new_session=True
            )
        self.running.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # it may end meanwhile
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        if process in self.running:
            self.running.remove(process)

    def stop_all(self) -> None:
        for process in list(self.running):
            self.stop(process)


def _wait(probe: Callable[[], bool], processes: list[subprocess.Popen[bytes]], what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise SystemExit(f"{what}: a process exited ({process.returncode}) while starting")
        if probe():
            return
        time.sleep(0.01)
    raise SystemExit(f"{what}: not ready in {READY_TIMEOUT_S:.0f}s")


def _catalog_load(
    net: LocalNetwork, addresses: dict[str, str], calls: int
) -> dict[str, float | int]:
    """``calls`` ListAssets per member, CONCURRENCY at a time, every member at once,
    from the caller member's keys; one warm-up call each (handshake, pin check) first."""
    caller = net[CALLER]
    files = NodeLayout(caller.directory)
    peers = PeerDirectory(caller.keys(), addresses, cert_files=(files.tls_cert, files.tls_key))
    request = catalog_pb2.CatalogRequest()
    latencies: list[float] = []

    async def one(name: str, record: bool) -> None:
        stub = catalog_pb2_grpc.CatalogStub(peers.channel(name))
        started = time.perf_counter()
        reply = await stub.ListAssets(request, timeout=60)
        if record:
            latencies.append((time.perf_counter() - started) * 1000)
        if not reply.assets:
            raise SystemExit(f"{name}: its catalog is empty")

    async def loop(name: str, n: int) -> None:
        for _ in range(n):
            await one(name, True)

    async def run() -> float:
        try:
            await asyncio.gather(*(one(name, False) for name in addresses))
            per_loop = max(1, calls // CONCURRENCY)
            started = time.perf_counter()
            jobs = [loop(name, per_loop) for name in addresses for _ in range(CONCURRENCY)]
            await asyncio.gather(*jobs)
            return time.perf_counter() - started
        finally:
            await peers.close()

    took = asyncio.run(run())
    ordered = sorted(latencies)
    return {
        "p50_ms": ordered[len(ordered) // 2],
        "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "calls": len(ordered),
        "calls_per_s": len(ordered) / took,
    }


_TAKEN: set[int] = set()


def _port() -> int:
    """A free port no earlier call handed out (the OS may offer a port twice while
    nothing is bound to it yet)."""
    while (port := free_port()) in _TAKEN:
        pass
    _TAKEN.add(port)
    return port


def _make_host(workdir: Path, net: LocalNetwork, name: str, tenants: int) -> tuple[Path, int]:
    """A host directory with ``tenants`` tenants enrolled from the local authority."""
    directory = workdir / name
    api_port = _port()
    settings = HostSettings(api_port=api_port, tenant_grpc_ports="7600-7699")
    init_host(directory, settings)
    enrollment = Enrollment(authority_dir=net.authority_dir)
    for i in range(tenants):
        add_tenant(directory, f"{name}-t{i}", "supplier", enrollment, grpc_port=_port())
        _unpaced(HostLayout(directory).tenant(f"{name}-t{i}") / "node.json")
    return directory, api_port


def _unpaced(node_json: Path) -> None:
    """A tenant without the node's per-member request rate (`node.rpc.member_rates`): the
    flood of ``fairness.off`` is the unlimited one it has always been, and ``fairness.on``
    measures the host's tenant quotas, not the rate every node has besides."""
    doc = json.loads(node_json.read_text())
    doc.update(rpc_rate_per_peer=1_000_000, rpc_burst_per_peer=1_000_000)
    node_json.write_text(json.dumps(doc, indent=2) + "\n")


def _spawn_host(
    procs: Processes, directory: Path, api_port: int, tenants: int
) -> tuple[subprocess.Popen[bytes], float]:
    """``host start`` until its status reports every tenant serving; the ms that took."""
    files = HostLayout(directory)
    bearer = {"Authorization": f"Bearer {files.host_token.read_text().strip()}"}
    verify = ssl.create_default_context(cafile=str(files.tls.ca_cert))
    status_url = f"https://127.0.0.1:{api_port}/host/v1/status"
    cmd = [sys.executable, "-m", "qdspace", "host", "start", "--dir", str(directory)]
    started = time.perf_counter()
    process = procs.spawn(cmd, directory.parent / f"{directory.name}.log")
    with httpx.Client(timeout=30, verify=verify) as http:

        def serving() -> bool:
            try:
                r = http.get(status_url, headers=bearer)
            except httpx.HTTPError:
                return False
            return r.status_code == 200 and r.json()["serving"] == tenants

        try:
            _wait(serving, [process], f"host {directory.name}")
        except BaseException:
            procs.stop(process)
            raise
        start_ms = (time.perf_counter() - started) * 1000
        if http.get(status_url, headers=bearer).json()["failed"]:
            procs.stop(process)
            raise SystemExit(f"host {directory.name}: some tenants failed")
    return process, start_ms


def _run_host(
    procs: Processes, net: LocalNetwork, directory: Path, api_port: int, tenants: int, calls: int
) -> dict[str, Any]:
    files = HostLayout(directory)
    book = Registry(directory).tenants()
    tokens = {t.name: tenant_token(directory, t.name) for t in book}
    verify = ssl.create_default_context(cafile=str(files.tls.ca_cert))
    api = f"https://127.0.0.1:{api_port}"
    started = time.perf_counter()
    process, start_ms = _spawn_host(procs, directory, api_port, tenants)
    try:
        with httpx.Client(timeout=30, verify=verify) as http:
            for name, bearer_token in tokens.items():  # builds any app not warmed yet
                r = http.get(f"{api}/v1/node", headers={"Authorization": f"Bearer {bearer_token}"})
                if r.status_code != 200 or r.json()["name"] != name:
                    raise SystemExit(f"{name}: its operator API answered {r.status_code}")
            apis_ms = (time.perf_counter() - started) * 1000
        rss = _steady_rss([process.pid])
        out: dict[str, Any] = {"start_ms": start_ms, "apis_ms": apis_ms, "rss_kib": rss}
        if tenants:
            addresses = {t.name: f"127.0.0.1:{t.grpc_port}" for t in book}
            out["catalog"] = _catalog_load(net, addresses, calls)
        return out
    finally:
        procs.stop(process)


def _set_quotas(directory: Path, default: dict[str, Any] | None, flooded: str, own: Any) -> None:
    """The host's default quota (None: every limit off) and the flooded tenant's own."""
    settings = HostSettings.load(directory)
    off = dict.fromkeys(QuotaSettings.model_fields)
    quota = settings.quota.quota().with_changes(default) if default else Quota(**off)
    settings.model_copy(update={"quota": QuotaSettings.of(quota)}).save(directory)
    chosen = QuotaSettings.of(quota.with_changes(own)) if own else None
    Registry(directory).set_quota(flooded, chosen)


def _flooder(caller_dir: Path, target: str, address: str) -> subprocess.Popen[str]:
    # the flooder's own light module: not this file, whose imports take seconds
    cmd = [sys.executable, str(FLOODER), f"{target}={address}", str(caller_dir),
           str(FLOOD_CONCURRENCY)]  # fmt: skip
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=_env(), text=True)
    assert process.stdout is not None
    if process.stdout.readline().strip() != "flooding":
        process.kill()
        raise SystemExit(f"the flooder of {target} did not start ({process.wait()})")
    return process


def _fairness_run(
    procs: Processes, net: LocalNetwork, directory: Path, api_port: int, calls: int, warmup: float
) -> dict[str, Any]:
    """Quiet tenants' catalog latency alone, then while the first tenant is flooded."""
    book = Registry(directory).tenants()
    flooded, quiet = book[0], book[1:]
    process, _ = _spawn_host(procs, directory, api_port, len(book))
    try:
        addresses = {t.name: f"127.0.0.1:{t.grpc_port}" for t in quiet}
        alone = _catalog_load(net, addresses, calls)
        flood = _flooder(net[CALLER].directory, flooded.name, f"127.0.0.1:{flooded.grpc_port}")
        try:
            time.sleep(warmup)
            during = _catalog_load(net, addresses, calls)
        finally:
            flood.terminate()
            out, _ = flood.communicate(timeout=60)
        flooder = json.loads(out.strip().splitlines()[-1])
    finally:
        procs.stop(process)
    per_s = {k: flooder[k] / flooder["seconds"] for k in ("served", "refused", "failed")}
    return {
        "alone": alone,
        "flooded": during,
        "flooder_per_s": per_s,
        "flood_s": flooder["seconds"],
    }


def measure_fairness(
    procs: Processes, net: LocalNetwork, workdir: Path, tenants: int, calls: int, warmup: float
) -> dict[str, Any]:
    """One host, run with quotas off and on (module docstring: ``fairness.*``)."""
    directory, api_port = _make_host(workdir, net, "fair", tenants)
    flooded = Registry(directory).tenants()[0].name
    _set_quotas(directory, None, flooded, None)
    off = _fairness_run(procs, net, directory, api_port, calls, warmup)
    _set_quotas(directory, GENEROUS, flooded, FLOOD_QUOTA)
    on = _fairness_run(procs, net, directory, api_port, calls, warmup)
    return {"off": off, "on": on, "tenants": tenants, "flood_concurrency": FLOOD_CONCURRENCY}


def _fairness_report(fair: dict[str, Any]) -> dict[str, float]:
    ratios: dict[str, float] = {}
    for mode in ("off", "on"):
        run = fair[mode]
        for phase in ("alone", "flooded"):
            for q in ("p50", "p99"):
                print(f"fairness.{mode}.quiet_{phase}_{q}: {run[phase][f'{q}_ms']:.1f} ms")
        for q in ("p50", "p99"):
            ratio = run["flooded"][f"{q}_ms"] / run["alone"][f"{q}_ms"]
            ratios[f"fairness.{mode}.{q}_flooded_over_alone"] = ratio
        for kind, value in run["flooder_per_s"].items():
            print(f"fairness.{mode}.flooder_{kind}: {value:.1f} calls/s")
        print(f"fairness.{mode}.flood_seconds: {run['flood_s']:.1f} s")
    for q in ("p50", "p99"):
        on, off = fair["on"]["flooded"][f"{q}_ms"], fair["off"]["flooded"][f"{q}_ms"]
        ratios[f"fairness.{q}_flooded_on_over_off"] = on / off
    for name, value in ratios.items():
        print(f"{name}: {value:.3f} ratio")
    return ratios


def _run_nodes(procs: Processes, net: LocalNetwork, names: list[str], calls: int) -> dict[str, Any]:
    members = [net[n] for n in names]
    started = time.perf_counter()
    processes = []
    for member in members:
        member.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "qdspace", "node", "start", "--dir", str(member.directory)]
        processes.append(procs.spawn(cmd, member.log_path))
    try:
        verify = ssl.create_default_context(cafile=str(members[0].ca_file))
        ready: set[str] = set()
        with httpx.Client(timeout=5, verify=verify) as http:

            def all_ready() -> bool:
                for member in members:
                    if member.spec.name in ready:
                        continue
                    try:
                        if http.get(f"{member.api_url}/readyz").status_code == 200:
                            ready.add(member.spec.name)
                    except httpx.HTTPError:
                        pass
                return len(ready) == len(members)

            _wait(all_ready, processes, f"{len(members)} nodes")
        start_ms = (time.perf_counter() - started) * 1000
        rss = _steady_rss([p.pid for p in processes])
        addresses = {m.spec.name: m.grpc_address for m in members}
        return {
            "start_ms": start_ms,
            "rss_kib": rss,
            "rss_per_node_kib": rss / len(members),
            "catalog": _catalog_load(net, addresses, calls),
        }
    finally:
        for process in processes:
            procs.stop(process)


def measure(sizes: list[int], calls: int, fair_tenants: int, warmup: float) -> dict[str, Any]:
    nodes = min(sizes)
    out: dict[str, Any] = {}
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="qdspace-bench-host-") as tmp:
        workdir = Path(tmp)
        specs = [MemberSpec(CALLER, "oem")] + [
            MemberSpec(f"node{i}", "supplier") for i in range(nodes)
        ]
        net = LocalNetwork(workdir / "net", specs, chain=False)
        net.create()
        _TAKEN.update(
            p for m in net.members.values() for p in (m.grpc_port, m.api_port, m.regulator_port)
        )
        hosts = {n: _make_host(workdir, net, f"h{n}", n) for n in [0, *sizes]}
        try:
            out["nodes"] = _run_nodes(procs, net, [f"node{i}" for i in range(nodes)], calls)
            out["host.0"] = _run_host(procs, net, *hosts[0], 0, calls)
            for n in sizes:
                out[f"host.{n}"] = _run_host(procs, net, *hosts[n], n, calls)
                base = out["host.0"]["rss_kib"]
                out[f"host.{n}"]["rss_per_tenant_kib"] = (out[f"host.{n}"]["rss_kib"] - base) / n
            out["fairness"] = measure_fairness(procs, net, workdir, fair_tenants, calls, warmup)
        finally:
            procs.stop_all()
    out["nodes.count"] = nodes
    return out


def _report(figures: dict[str, Any], sizes: list[int]) -> dict[str, Any]:
    nodes, m = figures["nodes"], figures["nodes.count"]
    lines: list[tuple[str, float, str]] = [
        (f"nodes.{m}.start", nodes["start_ms"], "ms"),
        (f"nodes.{m}.rss_total", nodes["rss_kib"] / 1024, "MiB"),
        (f"nodes.{m}.rss_per_node", nodes["rss_per_node_kib"] / 1024, "MiB"),
        (f"nodes.{m}.catalog_p50", nodes["catalog"]["p50_ms"], "ms"),
        (f"nodes.{m}.catalog_p99", nodes["catalog"]["p99_ms"], "ms"),
        (f"nodes.{m}.catalog_calls_per_s", nodes["catalog"]["calls_per_s"], "calls/s"),
        ("host.0.start", figures["host.0"]["start_ms"], "ms"),
        ("host.0.rss", figures["host.0"]["rss_kib"] / 1024, "MiB"),
    ]
    ratios: dict[str, float] = {}
    for n in sizes:
        h = figures[f"host.{n}"]
        lines += [
            (f"host.{n}.start", h["start_ms"], "ms"),
            (f"host.{n}.all_operator_apis", h["apis_ms"], "ms"),
            (
                f"host.{n}.start_minus_empty_host",
                h["start_ms"] - figures["host.0"]["start_ms"],
                "ms",
            ),
            (f"host.{n}.rss", h["rss_kib"] / 1024, "MiB"),
            (f"host.{n}.rss_per_tenant", h["rss_per_tenant_kib"] / 1024, "MiB"),
            (f"host.{n}.catalog_p50", h["catalog"]["p50_ms"], "ms"),
            (f"host.{n}.catalog_p99", h["catalog"]["p99_ms"], "ms"),
            (f"host.{n}.catalog_calls_per_s", h["catalog"]["calls_per_s"], "calls/s"),
        ]
        ratios[f"host.{n}.memory_per_tenant_over_node"] = (
            h["rss_per_tenant_kib"] / nodes["rss_per_node_kib"]
        )
        ratios[f"host.{n}.catalog_p99_over_nodes"] = (
            h["catalog"]["p99_ms"] / (nodes["catalog"]["p99_ms"])
        )
        ratios[f"host.{n}.catalog_p50_over_nodes"] = (
            h["catalog"]["p50_ms"] / (nodes["catalog"]["p50_ms"])
        )
    small = figures[f"host.{m}"]
    ratios["start_host_over_nodes"] = small["start_ms"] / nodes["start_ms"]
    for name, value, unit in lines:
        print(f"{name}: {value:.1f} {unit}")
    for name, value in ratios.items():
        print(f"{name}: {value:.3f} ratio")
    big_n = max(sizes)
    big = figures[f"host.{big_n}"]
    aims = {
        f"aim.tenants_{AIM_TENANTS}": big_n >= AIM_TENANTS,
        f"aim.start_le_{AIM_START_MS:.0f}ms": big["start_ms"] <= AIM_START_MS,
        f"aim.catalog_p99_le_{AIM_P99_MS:.0f}ms": big["catalog"]["p99_ms"] <= AIM_P99_MS,
        "aim.memory_per_tenant_le_tenth_of_node": (
            ratios[f"host.{big_n}.memory_per_tenant_over_node"] <= AIM_MEMORY_SHARE
        ),
    }
    print(f"# aims (issue 14), judged on the {big_n}-tenant host:")
    print(f"#   {AIM_TENANTS} tenants on 2 cores: ran {big_n} on {os.cpu_count()} cores")
    print(f"#   start <= {AIM_START_MS:.0f} ms: {big['start_ms']:.0f} ms")
    print(f"#   catalog p99 <= {AIM_P99_MS:.0f} ms: {big['catalog']['p99_ms']:.1f} ms")
    share = ratios[f"host.{big_n}.memory_per_tenant_over_node"]
    print(f"#   memory per tenant <= {AIM_MEMORY_SHARE} of a node process: {share:.3f}")
    for name, met in aims.items():
        print(f"{name}: {int(met)} met")
    ratios.update(_fairness_report(figures["fairness"]))
    return {"ratios": ratios, "aims": aims}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="10,50", help="tenants per host, comma-separated")
    parser.add_argument("--calls", type=int, default=40, help="catalog calls per member")
    parser.add_argument("--quick", action="store_true", help="a host of 2 tenants (CI)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    # --quick: one host size goes through every phase (start, memory, catalog, fairness);
    # 2 is the least that has a flooded tenant and a quiet one, each node spawn costs seconds
    sizes = [2] if args.quick else sorted(int(s) for s in args.sizes.split(","))
    calls = 10 if args.quick else args.calls
    if not sizes or min(sizes) < 1:
        raise SystemExit("--sizes: give one or more tenant counts of at least 1")
    fair = (2, 0.5) if args.quick else (FAIR_TENANTS, FLOOD_WARMUP_S)
    figures = measure(sizes, calls, *fair)
    judged = _report(figures, sizes)
    results: dict[str, Any] = {
        "sizes": sizes,
        "calls_per_member": calls,
        "concurrency_per_member": CONCURRENCY,
        "cpus": os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0],
        "python": platform.python_version(),
        "figures": figures,
        **judged,
    }
    print(f"host.cpus: {results['cpus']} cores")
    print(f"host.loadavg_1m: {results['loadavg_1m']:.2f} load")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
