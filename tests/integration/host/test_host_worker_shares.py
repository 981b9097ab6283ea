"""One tenant's slow calls may borrow every idle worker thread of its host but one, and
cannot keep a neighbour's work waiting behind theirs.

Every tenant of a host is served in one process, and blocking work (a database read, a
large encode) runs in worker threads its tenants share: gRPC handlers' in the asyncio
executor, the HTTP routes' (operator API, DSP) in the HTTP worker threads. A real host
process serves two tenants over real TLS; HELD's worker-thread work is held
(`held_host`: as a slow database read holds a thread) and HELD's callers keep more
calls in flight than a pool has threads. `node.host.workers` promises, in both pools:

- HELD, alone, gets every thread but one (idle threads are lent; one is kept);
- CALM's call, which needs a worker thread too, takes the thread kept and is answered
  while HELD still holds all the others. Where that thread is busy for a moment (the
  host's own work, a tenant's job), CALM waits only for a thread to free: each time one
  of HELD's held calls is let go while CALM has work waiting, the thread goes to CALM
  (it holds the fewest), never to HELD's own queued calls.

Nothing is timed: the host logs what its pools decide (`held_host`), HELD's calls are
let go one at a time, and the test checks the order of the decisions.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from qdspace.node.client_transport import tls_verification
from qdspace.node.host.config import HostSettings
from qdspace.node.host.workers import default_threads
from qdspace.node.init import add_peers
from qdspace.node.layout import NodeLayout
from qdspace.node.localnet.network import LocalNetwork, MemberSpec
from qdspace.node.rpc.peers import PeerDirectory
from qdspace.protocols.v1 import trace_pb2, trace_pb2_grpc
from qdspace.util.ports import free_port

from .conftest import Host, qdspace

pytestmark = pytest.mark.integration
T = TypeVar("T")

HELD, CALM = "heldco", "calmco"
#: how long one step may take before the test fails (never reached when it passes)
WAIT_S = 45.0
#: HELD's calls: as many as a member may have in flight at one node (its per-peer cap,
#: 32, which is more than asyncio's executor has threads on most machines); and staff
#: requests past the 40 threads of the HTTP pool (HELD's calls-in-flight quota is 48)
GRPC_CALLS = 32
HTTP_CALLS = 44


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    workdir = tmp_path_factory.mktemp("host-workers")
    net = LocalNetwork(workdir, members=(MemberSpec("sunarc", "oem"),), chain=False)
    net.create()
    gate = workdir / "gate"
    gate.mkdir()
    (gate / "open").touch()
    ports = {HELD: free_port(), CALM: free_port()}
    hosted = Host(
        workdir,
        workdir / "H",
        net,
        free_port(),
        ports,
        launcher=(str(Path(__file__).with_name("held_host.py")),),
        env={"QDSPACE_HELD_GATE": str(gate), "QDSPACE_HELD_TENANT": HELD},
    )
    done = qdspace("host", "init", "--dir", str(hosted.directory), "--api-port",
                   str(hosted.api_port))  # fmt: skip
    assert done.returncode == 0, done.stderr
    hosted.add_tenant(HELD, "supplier", "--max-calls", "48")
    hosted.add_tenant(CALM, "supplier")
    add_peers(net["sunarc"].directory, {n: f"127.0.0.1:{p}" for n, p in ports.items()})
    try:
        hosted.start()
        yield hosted
    finally:
        hosted.stop()


def _gate(host: Host) -> Path:
    return host.workdir / "gate"


@contextmanager
def _held(host: Host) -> Iterator[None]:
    """HELD's worker-thread work is held from now until the block ends (or `_release`d);
    the pools' decision log starts afresh."""
    gate = _gate(host)
    for name in ("started", "log", "release"):
        (gate / name).unlink(missing_ok=True)
    (gate / "open").unlink()
    try:
        yield
    finally:
        (gate / "open").touch()


def _held_count(host: Host) -> int:
    started = _gate(host) / "started"
    return started.stat().st_size if started.exists() else 0


async def _until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"not within {WAIT_S:.0f}s: {what}"
        await asyncio.sleep(0.05)


def _decisions(host: Host) -> list[tuple[str, str, str]]:
    """The pools' decisions since `_held` began: (pool, what, tenant) in order."""
    log = _gate(host) / "log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [(pool, what, tenant) for pool, what, tenant in (line.split() for line in lines)]


def _calm_waiting(host: Host) -> bool:
    """Some of CALM's work waits for a thread in some pool now."""
    waiting: Counter[str] = Counter()
    for pool, what, tenant in _decisions(host):
        if tenant == CALM and what in ("wait", "start"):
            waiting[pool] += 1 if what == "wait" else -1
    return any(waiting.values())


async def _answered_releasing_one_at_a_time(host: Host, call: asyncio.Future[T]) -> T:
    """Let HELD's held calls go one at a time, each when CALM has work waiting (so the
    freed thread is CALM's to take), until ``call`` (CALM's) is answered."""
    release = _gate(host) / "release"
    deadline = time.monotonic() + WAIT_S
    while not call.done():
        assert time.monotonic() < deadline, f"CALM not answered within {WAIT_S:.0f}s"
        if not release.exists() and _calm_waiting(host):
            release.touch()
        await asyncio.wait([call], timeout=0.05)
    assert not (_gate(host) / "open").exists()  # (answered while HELD's calls were held)
    return call.result()


def _assert_calm_went_first(host: Host) -> None:
    """In every pool, no queued work of HELD's started while CALM's work waited, and
    CALM's work was started (at once, or as a thread freed)."""
    waiting: Counter[str] = Counter()
    for pool, what, tenant in _decisions(host):
        if what == "start" and tenant == HELD:
            assert not waiting[pool], f"HELD took a freed thread of pool {pool} before CALM"
        if tenant == CALM and what in ("wait", "start"):
            waiting[pool] += 1 if what == "wait" else -1
    assert any(t == CALM and w in ("now", "start") for _, w, t in _decisions(host))


def _peers(host: Host) -> PeerDirectory:
    files = NodeLayout(host.net["sunarc"].directory)
    addresses = {n: f"127.0.0.1:{p}" for n, p in host.ports.items()}
    return PeerDirectory(
        host.net["sunarc"].keys(), addresses, cert_files=(files.tls_cert, files.tls_key)
    )


async def _upstream(stub: trace_pb2_grpc.TraceStub, batch_id: str) -> grpc.StatusCode:
    try:
        await stub.Upstream(trace_pb2.UpstreamRequest(batch_id=batch_id), timeout=60)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_a_tenant_s_slow_grpc_calls_borrow_every_worker_and_its_neighbour_goes_next(
    host: Host,
) -> None:
    """SunArc keeps 32 trace hops in flight at HELD, each holding a worker thread of the
    asyncio executor once it has one: HELD alone takes every thread but one. SunArc's
    trace hop at CALM (a worker-thread read too) takes that one, before HELD's queued
    calls; and HELD's calls all end answered (queued behind HELD's own, not refused)."""
    threads = HostSettings.load(host.directory).worker_threads or default_threads()

    async def scenario() -> tuple[grpc.StatusCode, list[grpc.StatusCode]]:
        peers = _peers(host)
        try:
            held = trace_pb2_grpc.TraceStub(peers.channel(HELD))
            calm = trace_pb2_grpc.TraceStub(peers.channel(CALM))
            await health_pb2_grpc.HealthStub(peers.channel(HELD)).Check(
                health_pb2.HealthCheckRequest(), timeout=30
            )
            await _upstream(calm, "warm-up")  # both channels connected
            with _held(host):
                calls = [
                    asyncio.ensure_future(_upstream(held, f"SLOW-{i}")) for i in range(GRPC_CALLS)
                ]
                await _until(
                    lambda: _held_count(host) >= min(threads - 1, GRPC_CALLS),
                    f"HELD alone in {threads - 1} of the {threads} threads",
                )
                call = asyncio.ensure_future(_upstream(calm, "SW-NONE-1"))
                code = await _answered_releasing_one_at_a_time(host, call)
            return code, list(await asyncio.gather(*calls))
        finally:
            await peers.close()

    code, held_codes = asyncio.run(scenario())
    assert code is grpc.StatusCode.PERMISSION_DENIED, code  # answered: not its batch
    _assert_calm_went_first(host)
    assert held_codes == [grpc.StatusCode.PERMISSION_DENIED] * GRPC_CALLS, held_codes


def test_a_tenant_s_slow_http_requests_borrow_every_worker_and_its_neighbour_goes_next(
    host: Host,
) -> None:
    """HELD's staff keep 44 slow requests in flight (a synchronous route: a worker
    thread each): HELD alone takes 39 of the 40 HTTP threads. CALM's staff asking for
    their node (synchronous too) take the one kept, before HELD's queued requests; and
    HELD's requests all end answered."""
    threads = HostSettings.load(host.directory).http_worker_threads

    def client(tenant: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=host.api,
            headers={"Authorization": f"Bearer {host.tokens[tenant]}"},
            timeout=60,
            verify=tls_verification(host.files.tls.ca_cert),
            limits=httpx.Limits(max_connections=HTTP_CALLS + 4),
        )

    async def scenario() -> tuple[int, list[int]]:
        async with client(HELD) as held, client(CALM) as calm:
            assert (await calm.get("/v1/node")).status_code == 200  # connected, app built
            assert (await held.get("/v1/node")).status_code == 200
            with _held(host):
                calls = [
                    asyncio.ensure_future(held.get("/v1/qdm/counts")) for _ in range(HTTP_CALLS)
                ]
                await _until(
                    lambda: _held_count(host) >= threads - 1,
                    f"HELD alone in {threads - 1} of the {threads} HTTP threads",
                )
                call = asyncio.ensure_future(calm.get("/v1/node"))
                status = (await _answered_releasing_one_at_a_time(host, call)).status_code
            answers = await asyncio.gather(*calls)
            return status, [r.status_code for r in answers]

    status, held_statuses = asyncio.run(scenario())
    assert status == 200
    _assert_calm_went_first(host)
    assert held_statuses == [200] * HTTP_CALLS, held_statuses
