"""One tenant's slow calls cannot take every worker thread of its host.

Every tenant of a host is served in one process, and blocking work (a database read, a
large encode) runs in worker threads its tenants share: gRPC handlers' in the asyncio
executor, the HTTP routes' (operator API, DSP) in the HTTP worker threads. A real host
process serves two tenants over real TLS; HELD's worker-thread work is held
(`held_host`: as a slow database read holds a thread) and HELD's callers keep as many
calls in flight as its quotas allow. CALM's cheap call, which needs a worker thread too,
must then be answered at once, not when HELD's calls end: before the per-tenant worker
shares (`node.host.workers`) it waited the whole hold (~4 s), in both pools.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from qdspace.node.client_transport import tls_verification
from qdspace.node.init import add_peers
from qdspace.node.layout import NodeLayout
from qdspace.node.localnet.network import LocalNetwork, MemberSpec
from qdspace.node.rpc.peers import PeerDirectory
from qdspace.protocols.v1 import trace_pb2, trace_pb2_grpc
from qdspace.util.ports import free_port

from .conftest import Host, qdspace

pytestmark = pytest.mark.integration

HELD, CALM = "heldco", "calmco"
#: how long HELD's work is held at most (the gate opens by itself then)
HOLD_S = 5.0
#: what "at once" means for CALM's cheap call, on a busy CI machine
QUICK_S = 1.5
#: HELD's calls: as many as a member may have in flight at one node (its per-peer cap,
#: 32, which is more than asyncio's executor ever has threads); and staff requests past
#: the 40 threads of the HTTP pool (HELD's calls-in-flight quota is 48)
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
    """HELD's worker-thread work is held from now until the block ends, or `HOLD_S`."""
    gate = _gate(host)
    (gate / "started").unlink(missing_ok=True)
    (gate / "open").unlink()
    timer = threading.Timer(HOLD_S, (gate / "open").touch)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        (gate / "open").touch()


async def _until_held(host: Host) -> int:
    """Wait until HELD's calls are in their worker threads (as many as will get one):
    the count of held calls has not grown for half a second. Returns that count."""
    started = _gate(host) / "started"
    seen, since = 0, time.monotonic()
    deadline = since + HOLD_S - 1.0
    while time.monotonic() < deadline:
        now = started.stat().st_size if started.exists() else 0
        if now != seen:
            seen, since = now, time.monotonic()
        elif seen and time.monotonic() - since >= 0.5:
            break
        await asyncio.sleep(0.05)
    assert seen, "none of HELD's calls reached a worker thread"
    return seen


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


def test_a_tenant_s_slow_grpc_calls_leave_its_neighbour_a_worker(host: Host) -> None:
    """SunArc keeps 32 trace hops in flight at HELD, each holding a worker thread of the
    asyncio executor; its trace hop at CALM (a worker-thread read too) is answered at
    once, and HELD's calls all end answered (queued behind HELD's own, not refused)."""

    async def scenario() -> tuple[float, grpc.StatusCode, list[grpc.StatusCode], int]:
        peers = _peers(host)
        try:
            held = trace_pb2_grpc.TraceStub(peers.channel(HELD))
            calm = trace_pb2_grpc.TraceStub(peers.channel(CALM))
            await health_pb2_grpc.HealthStub(peers.channel(HELD)).Check(
                health_pb2.HealthCheckRequest(), timeout=30
            )
            await _upstream(calm, "warm-up")  # both channels connected before the clock
            with _held(host):
                calls = [
                    asyncio.ensure_future(_upstream(held, f"SLOW-{i}")) for i in range(GRPC_CALLS)
                ]
                in_threads = await _until_held(host)
                started = time.monotonic()
                code = await _upstream(calm, "SW-NONE-1")
                took = time.monotonic() - started
            return took, code, list(await asyncio.gather(*calls)), in_threads
        finally:
            await peers.close()

    took, code, held_codes, in_threads = asyncio.run(scenario())
    assert code is grpc.StatusCode.PERMISSION_DENIED, code  # answered: not its batch
    assert took < QUICK_S, f"CALM's call waited {took:.2f}s for a worker ({in_threads} held)"
    assert held_codes == [grpc.StatusCode.PERMISSION_DENIED] * GRPC_CALLS, held_codes


def test_a_tenant_s_slow_http_requests_leave_its_neighbour_a_worker(host: Host) -> None:
    """HELD's staff keep 44 slow requests in flight (a synchronous route: a worker
    thread each); CALM's staff asking for their node (a synchronous route too) are
    answered at once, and HELD's requests all end answered."""

    def client(tenant: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=host.api,
            headers={"Authorization": f"Bearer {host.tokens[tenant]}"},
            timeout=60,
            verify=tls_verification(host.files.tls.ca_cert),
            limits=httpx.Limits(max_connections=HTTP_CALLS + 4),
        )

    async def scenario() -> tuple[float, int, list[int], int]:
        async with client(HELD) as held, client(CALM) as calm:
            assert (await calm.get("/v1/node")).status_code == 200  # connected, app built
            assert (await held.get("/v1/node")).status_code == 200
            with _held(host):
                calls = [
                    asyncio.ensure_future(held.get("/v1/qdm/counts")) for _ in range(HTTP_CALLS)
                ]
                in_threads = await _until_held(host)
                started = time.monotonic()
                status = (await calm.get("/v1/node")).status_code
                took = time.monotonic() - started
            answers = await asyncio.gather(*calls)
            return took, status, [r.status_code for r in answers], in_threads

    took, status, held_statuses, in_threads = asyncio.run(scenario())
    assert status == 200
    assert took < QUICK_S, f"CALM's request waited {took:.2f}s for a worker ({in_threads} held)"
    assert held_statuses == [200] * HTTP_CALLS, held_statuses
