"""A coordinator's model download that is not ``ModelChunk`` messages ends a member's
round loop with a ``PeerError`` naming the coordinator, not protobuf's ``DecodeError``.

The member's client parsed each chunk of ``DownloadModel`` unguarded: bytes that do not
parse (from a hostile or broken coordinator) escaped the module that turns a
coordinator's faults into peer errors, and the member's session ended on a raw protobuf
error. Real gRPC on loopback: the hostile coordinator of
`test_federation_hostile_coordinator`, its download sending bytes as they are, against
the node's own client and round loop.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from qdspace.federation import logreg
from qdspace.federation.params import params_to_bytes
from qdspace.federation.round_status import Phase
from qdspace.node.errors import PeerError
from qdspace.node.rpc.federation_client import FederationClient
from qdspace.node.rpc.federation_runner import MemberRunner
from qdspace.protocols.v1 import federation_pb2 as pb

from .test_federation_hostile_coordinator import (
    CLASSES,
    COORDINATOR,
    DIMS,
    KEY,
    MEMBER,
    Hostile,
    status,
    terms,
    versions,
)

#: what no ``ModelChunk`` parses from: a header field whose length runs past the end
GARBAGE = b"\x0a\xff\xff\xff\xff\x0f\x00garbage"


def hostile(sent: str) -> tuple[Hostile, Any]:
    """A job whose round 1 opens for training, and a download of its version 0 that is
    garbage from the start, a true header and then a garbage data chunk, or nothing."""
    job = terms()
    signed, params = versions(job, 1)[0]
    coordinator = Hostile([job], [status(job, 1, Phase.TRAINING, 0)], lambda v: (signed, params))

    async def download(request: bytes, context: Any) -> AsyncIterator[bytes]:
        payload = params_to_bytes(params)
        if sent == "empty":
            return
        if sent == "data-chunk":
            header = pb.ModelHeader(
                record=signed.record,
                signature=signed.signature,
                total_bytes=len(payload),
                sha256=hashlib.sha256(payload).digest(),
            )
            yield pb.ModelChunk(header=header).SerializeToString()
        yield GARBAGE

    return coordinator, download


async def follow(coordinator: Hostile, download: Any) -> Any:
    """A member's round loop against the coordinator: its result or the error ending it."""

    def unary(fn: Any, req: Any, rep: Any) -> Any:
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=req.FromString, response_serializer=rep.SerializeToString
        )

    handlers = {
        "GetJob": unary(coordinator.get_job, pb.JobRef, pb.JobTerms),
        "GetStatus": unary(coordinator.get_status, pb.StatusRequest, pb.JobStatus),
        "DownloadModel": grpc.unary_stream_rpc_method_handler(download),  # bytes as they are
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("qdspace.v1.Federation", handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = FederationClient(channel, COORDINATOR, "j1")
            data = logreg.make_blobs(40, DIMS, CLASSES, seed=1)
            runner = MemberRunner(client, MEMBER, logreg.trainer(data), KEY.verify_key, poll_s=0.0)
            try:
                return await asyncio.wait_for(runner.run(), 30)
            except PeerError as exc:
                return exc
    finally:
        await server.stop(0)


@pytest.mark.parametrize("sent", ["first-chunk", "data-chunk"])
def test_a_garbage_model_chunk_is_a_peer_error(sent: str) -> None:
    got = asyncio.run(follow(*hostile(sent)))
    assert isinstance(got, PeerError), got
    assert "coordinator x sent version 0 of job j1 in chunks that are not ModelChunk" in str(got)


def test_an_empty_model_stream_is_a_peer_error() -> None:
    """No message at all (``StopAsyncIteration`` escaped before): no header either."""
    got = asyncio.run(follow(*hostile("empty")))
    assert isinstance(got, PeerError), got
    assert "coordinator x: model stream without a header" in str(got)
