"""A member flooding a node's gRPC listener with cheap calls, as its own process.

    python rate_flood.py MEMBER_DIR HOST:PORT PEER_NAME STOP_FILE AT_LEAST

Sends ``Node/Hello`` in a tight loop (a few in flight at once) with the member's own
certificate. At its first RESOURCE_EXHAUSTED it prints one JSON line with the status's
details and trailers; it goes on until ``STOP_FILE`` exists and ``AT_LEAST`` calls were
refused, then prints a JSON line counting the answers by status code. It ends too
when the test that started it is gone (a flood must not outlive its test).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from pathlib import Path

import grpc

from qdspace.node.identity.member import load_member_keys
from qdspace.node.rpc.client import open_channel
from qdspace.protocols.v1 import node_pb2, node_pb2_grpc

IN_FLIGHT = 4


async def flood(directory: Path, address: str, peer: str, stop: Path, at_least: int) -> None:
    codes: Counter[str] = Counter()
    told = False
    parent = os.getppid()

    def done() -> bool:
        return os.getppid() != parent or (stop.exists() and codes["RESOURCE_EXHAUSTED"] >= at_least)

    async def loop(stub: node_pb2_grpc.NodeStub) -> None:
        nonlocal told
        while not done():
            try:
                await stub.Hello(node_pb2.HelloRequest(nonce="n" * 16), timeout=30)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as err:
                codes[err.code().name] += 1
                if err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and not told:
                    told = True
                    trailers = {k: str(v) for k, v in (err.trailing_metadata() or ())}
                    print(json.dumps({"details": err.details(), "trailers": trailers}), flush=True)

    async with open_channel(load_member_keys(directory), address, peer) as channel:
        stub = node_pb2_grpc.NodeStub(channel)
        await asyncio.gather(*(loop(stub) for _ in range(IN_FLIGHT)))
    print(json.dumps(dict(codes)), flush=True)


if __name__ == "__main__":
    member_dir, address, peer, stop_file, at_least = sys.argv[1:]
    asyncio.run(flood(Path(member_dir), address, peer, Path(stop_file), int(at_least)))
