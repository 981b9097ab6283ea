"""A member flooding a node's gRPC listener with cheap calls is held to its request rate,
while another member calling at the same time is served.

Cellex's peer server is the real one (`node.rpc.server.build_server`: mutual TLS, the
interceptor, the metrics), in this process, with a limiter of ``BURST`` requests a
member on a clock the test holds still (so no token comes back while it runs: what is
admitted does not depend on the machine's speed). Mallory is a member process of its
own (`rate_flood.py`) calling ``Node/Hello`` in a tight loop with its own certificate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from qdspace.node.identity.authority import Authority
from qdspace.node.identity.member import MemberKeys, load_member_keys
from qdspace.node.identity.revocation import RevocationList
from qdspace.node.init import init_node
from qdspace.node.metrics import NodeMetrics
from qdspace.node.rpc.auth import PeerAuthenticator
from qdspace.node.rpc.client import open_channel
from qdspace.node.rpc.limits import CallCaps, CallLimiter
from qdspace.node.rpc.node_service import NodeServicer
from qdspace.node.rpc.server import build_server
from qdspace.protocols.v1 import node_pb2, node_pb2_grpc

pytestmark = pytest.mark.integration

BURST = 20
AT_LEAST = 200  # refusals mallory sends before it stops
FLOOD = Path(__file__).with_name("rate_flood.py")
HELLO = "/qdspace.v1.Node/Hello"


@dataclass(frozen=True)
class Space:
    authority: Authority
    dirs: dict[str, Path]

    def keys(self, name: str) -> MemberKeys:
        return load_member_keys(self.dirs[name])


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Space]:
    root = tmp_path_factory.mktemp("rate")
    authority = Authority.init(root / "authority", "rate-space")
    dirs = {}
    for name, role in (("cellex", "supplier"), ("mallory", "oem"), ("sunarc", "oem")):
        dirs[name] = root / name
        init_node(dirs[name], authority.directory, name=name, role=role)
    yield Space(authority, dirs)


async def _hello(keys: MemberKeys, address: str) -> node_pb2.HelloReply:
    async with open_channel(keys, address, "cellex") as channel:
        reply: node_pb2.HelloReply = await node_pb2_grpc.NodeStub(channel).Hello(
            node_pb2.HelloRequest(nonce="n" * 16), timeout=30
        )
        return reply


async def _garbage(keys: MemberKeys, address: str) -> tuple[grpc.StatusCode, str]:
    """Bytes that are no HelloRequest: INVALID_ARGUMENT once they are decoded."""
    async with open_channel(keys, address, "cellex") as channel:
        call = channel.unary_unary(HELLO, request_serializer=None, response_deserializer=None)
        try:
            await call(b"\x0a\xff\xff\xff\xff\x0f\x00garbage", timeout=30)
        except grpc.aio.AioRpcError as err:
            return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


async def _scenario(space: Space, tmp: Path) -> dict[str, Any]:
    now = [1000.0]
    limiter = CallLimiter(CallCaps(per_peer_rate=1.0, per_peer_burst=BURST), clock=lambda: now[0])
    cellex, metrics = space.keys("cellex"), NodeMetrics()
    revocations = RevocationList(cellex.ca_cert, space.authority.files.crl)
    server = build_server(
        cellex,
        PeerAuthenticator(revocations),
        [NodeServicer(cellex.identity).register],
        "127.0.0.1",
        0,
        limiter,
        metrics,
    )
    await server.start()
    address = f"127.0.0.1:{server.port}"
    stop = tmp / "stop"
    flood = await asyncio.create_subprocess_exec(
        sys.executable,
        str(FLOOD),
        str(space.dirs["mallory"]),
        address,
        "cellex",
        str(stop),
        str(AT_LEAST),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out: dict[str, Any] = {}
    try:
        line = await asyncio.wait_for(flood.stdout.readline(), 120)  # type: ignore[union-attr]
        assert line, (await flood.communicate())[1].decode()[-2000:]
        out["first"] = json.loads(line)
        # mallory floods on (it stops only once the stop file exists): sunarc is served
        out["sunarc"] = [
            (await _hello(space.keys("sunarc"), address)).caller.name for _ in range(5)
        ]
        out["garbage"] = await _garbage(space.keys("mallory"), address)
        stop.touch()
        stdout, stderr = await asyncio.wait_for(flood.communicate(), 120)
        assert flood.returncode == 0, stderr.decode()[-2000:]
        out["mallory"] = json.loads(stdout.decode().splitlines()[-1])
        now[0] += 1.0  # the retry-after later: a token is back
        out["after"] = (await _hello(space.keys("mallory"), address)).caller.name
        out["refused_metric"] = metrics.registry.get_sample_value(
            "qdspace_grpc_server_handling_seconds_count",
            {"method": HELLO, "code": "RESOURCE_EXHAUSTED"},
        )
    finally:
        if flood.returncode is None:
            flood.kill()
            await flood.wait()
        await server.stop(0)
    return out


def test_a_flooding_member_is_held_to_its_rate_while_another_is_served(
    space: Space, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="node.rpc")
    out = asyncio.run(_scenario(space, tmp_path))

    expected = (
        "member mallory is over its request rate on this node (rpc_rate_per_peer 1 a "
        f"second, rpc_burst_per_peer {BURST}); retry in 1 s"
    )
    assert out["first"] == {"details": expected, "trailers": {"retry-after": "1"}}
    # exactly its burst served, every other call refused, nothing else (no failure)
    assert out["mallory"]["OK"] == BURST, out["mallory"]
    assert out["mallory"]["RESOURCE_EXHAUSTED"] >= AT_LEAST
    assert set(out["mallory"]) == {"OK", "RESOURCE_EXHAUSTED"}, out["mallory"]
    assert out["sunarc"] == ["sunarc"] * 5  # served while mallory flooded
    # refused before its bytes were decoded (they are no message: that would be
    # INVALID_ARGUMENT)
    assert out["garbage"] == (grpc.StatusCode.RESOURCE_EXHAUSTED, expected)
    assert out["after"] == "mallory"
    # every refusal is in the node's metrics; the log has one line for the whole flood
    assert out["refused_metric"] == out["mallory"]["RESOURCE_EXHAUSTED"] + 1
    lines = [r.getMessage() for r in caplog.records if "over its request rate" in r.getMessage()]
    assert len(lines) == 1 and "refused /qdspace.v1.Node/Hello" in lines[0], lines
