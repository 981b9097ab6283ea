"""Chunk sizes on the wire, between a real coordinator process and real members (mTLS).

The sender picks the size of its upload chunks; the coordinator must accept any size
from ``MIN_CHUNK_BYTES`` up to ``MAX_CHUNK_BYTES`` on every payload path (plain
updates, secure aggregation's masked inputs) and refuse a stream cut finer than that,
with a reason naming the limit, instead of spending its CPU on millions of messages.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import grpc
import numpy as np
import pytest

from qdspace.federation import logreg
from qdspace.federation.chunks import MIN_CHUNK_BYTES
from qdspace.federation.job import JobSpec
from qdspace.federation.params import Params, flatten, params_to_bytes
from qdspace.federation.round_status import Phase
from qdspace.node.identity.member import load_member_keys
from qdspace.node.localnet.network import LocalNetwork
from qdspace.node.rpc.client import open_channel
from qdspace.node.rpc.federation_client import FederationClient, coordinator_key
from qdspace.node.rpc.federation_runner import MemberRunner
from qdspace.node.rpc.limits import CHUNK_MAX_BYTES
from qdspace.node.runtime.federation_member import MemberResult
from qdspace.protocols.v1 import federation_pb2 as pb

pytestmark = pytest.mark.integration

COORDINATOR = "sunarc"
MEMBERS = ("cellex", "polycell", "sunarc")
#: 300,002 parameters: a 1.2 MB update and masked input, more than one 1 MiB chunk
DIMS, CLASSES = 150_000, 2
SHAPES = logreg.model_shapes(DIMS, CLASSES)
STEP = np.float32(0.001)


def job_terms(job_id: str, **overrides: Any) -> JobSpec:
    fields: dict[str, Any] = {
        "job_id": job_id,
        "coordinator": COORDINATOR,
        "model": "logreg",
        "shapes": SHAPES,
        "rounds": 1,
        "min_members": 3,
        "members": MEMBERS,
        "phase_timeout_s": 30.0,
    }
    fields.update(overrides)
    return JobSpec(**fields)


def step(params: Params, round_: int) -> tuple[Params, int]:
    """Every member moves every parameter by ``STEP`` (so the mean change is ``STEP``)."""
    return [p + STEP for p in params], 10


async def start(network: LocalNetwork, job: JobSpec) -> None:
    keys = load_member_keys(network[COORDINATOR].directory)
    channel = open_channel(keys, network[COORDINATOR].grpc_address, COORDINATOR)
    try:
        await FederationClient(channel, COORDINATOR, job.job_id).start_job(
            job, logreg.init_params(DIMS, CLASSES)
        )
    finally:
        await channel.close()


async def run_member(
    network: LocalNetwork, member: str, job_id: str, chunk_bytes: int
) -> MemberResult:
    keys = load_member_keys(network[member].directory)
    channel = open_channel(keys, network[COORDINATOR].grpc_address, COORDINATOR)
    try:
        client = FederationClient(channel, COORDINATOR, job_id, chunk_bytes=chunk_bytes)
        runner = MemberRunner(
            client,
            member,
            step,
            await coordinator_key(channel, COORDINATOR),
            signing_key=keys.signing_key,
            certificate=keys.cert,
            ca_cert=keys.ca_cert,
            poll_s=5.0,
        )
        return await runner.run()
    finally:
        await channel.close()


@pytest.mark.parametrize("secure", [True, False], ids=["secure", "plain"])
async def test_members_sending_small_and_mixed_chunk_sizes_finish_the_round(
    network: LocalNetwork, secure: bool
) -> None:
    """Each member cuts its uploads its own way (the smallest size allowed, 1 MiB, the
    default); the round finishes with everyone's change in it."""
    extra: dict[str, Any] = (
        {"secure_aggregation": True, "threshold": 2, "update_clip": 1.0} if secure else {}
    )
    job = job_terms(f"el-chunks-{'secure' if secure else 'plain'}", **extra)
    await start(network, job)
    sizes = {"cellex": MIN_CHUNK_BYTES, "polycell": 1 << 20, "sunarc": 4 << 20}
    results = await asyncio.wait_for(
        asyncio.gather(*(run_member(network, m, job.job_id, n) for m, n in sizes.items())),
        timeout=120,
    )
    for member, result in zip(sizes, results, strict=True):
        assert result.status.phase is Phase.DONE, member
        assert result.aborted == [], member
        assert result.status.history[-1].members == MEMBERS, member
        assert result.params is not None
        change = flatten(result.params) - flatten(logreg.init_params(DIMS, CLASSES))
        np.testing.assert_allclose(change, STEP, atol=1e-4)


async def test_a_stream_cut_into_tiny_chunks_is_refused_naming_the_limit(
    network: LocalNetwork,
) -> None:
    """A member cutting its update into 1-byte messages (to keep the coordinator busy
    with millions of them) is refused as soon as its stream has more chunks than the
    announced size allows at ``MIN_CHUNK_BYTES`` each; nothing of it is kept."""
    job = job_terms("el-chunks-tiny", members=("cellex", "sunarc"), min_members=2)
    await start(network, job)
    params = logreg.init_params(DIMS, CLASSES)
    payload = params_to_bytes(params)
    header = pb.UploadHeader(
        job_id=job.job_id,
        round=1,
        total_bytes=len(payload),
        sha256=hashlib.sha256(payload).digest(),
        num_examples=10,
    )
    allowed = -(-len(payload) // MIN_CHUNK_BYTES)

    async def tiny() -> Any:
        yield pb.UploadChunk(header=header).SerializeToString()
        for i in range(len(payload)):
            yield pb.UploadChunk(data=payload[i : i + 1]).SerializeToString()

    keys = load_member_keys(network["cellex"].directory)
    channel = open_channel(keys, network[COORDINATOR].grpc_address, COORDINATOR)
    try:
        upload = channel.stream_unary(
            "/qdspace.v1.Federation/UploadUpdate",
            request_serializer=lambda b: b,
            response_deserializer=pb.Accepted.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await upload(tiny(), timeout=60)
        error = refused.value
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, error.details()
        details = error.details()
        assert "update of cellex" in details, details
        assert f"more than {allowed} chunks" in details, details
        assert f"{MIN_CHUNK_BYTES} bytes" in details, details
        # the refused stream left nothing behind: cellex's honest update is accepted
        client = FederationClient(channel, COORDINATOR, job.job_id, chunk_bytes=MIN_CHUNK_BYTES)
        view = await client.upload_update(1, params, 10)
        assert view.round == 1
    finally:
        await channel.close()


async def test_a_chunk_over_the_message_limit_is_refused_naming_the_limit(
    network: LocalNetwork,
) -> None:
    """A chunk bigger than any sender may cut never reaches the servicer: the transport
    refuses it, saying which limit that was (the coordinator's log says the stream
    ended short, naming the same limit)."""
    job = job_terms("el-chunks-huge", members=("cellex", "sunarc"), min_members=2)
    await start(network, job)
    payload = params_to_bytes(logreg.init_params(DIMS, CLASSES))
    header = pb.UploadHeader(job_id=job.job_id, round=1, total_bytes=len(payload), num_examples=10)

    async def huge() -> Any:
        yield pb.UploadChunk(header=header).SerializeToString()
        yield pb.UploadChunk(data=bytes(CHUNK_MAX_BYTES)).SerializeToString()

    keys = load_member_keys(network["cellex"].directory)
    channel = open_channel(keys, network[COORDINATOR].grpc_address, COORDINATOR)
    try:
        upload = channel.stream_unary(
            "/qdspace.v1.Federation/UploadUpdate",
            request_serializer=lambda b: b,
            response_deserializer=pb.Accepted.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await upload(huge(), timeout=60)
        error = refused.value
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
        assert f"larger than max ({CHUNK_MAX_BYTES + 5} vs. {CHUNK_MAX_BYTES})" in (error.details())
        # the dropped stream released cellex's upload slot: an honest update goes in
        client = FederationClient(channel, COORDINATOR, job.job_id)
        view = await client.upload_update(1, logreg.init_params(DIMS, CLASSES), 10)
        assert view.round == 1
    finally:
        await channel.close()
