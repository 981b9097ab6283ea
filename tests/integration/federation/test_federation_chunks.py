"""Chunk sizes on the wire, between a real coordinator process and real members (mTLS).

The sender picks the size of its upload chunks; the coordinator must accept any size
from ``MIN_CHUNK_BYTES`` up to ``MAX_CHUNK_BYTES`` on every payload path (plain
updates, secure aggregation's masked inputs) and refuse a stream cut finer than that,
with a reason naming the limit, instead of spending its CPU on millions of messages.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from numpy.typing import NDArray

from qdspace.federation import logreg
from qdspace.federation.chunks import MIN_CHUNK_BYTES, max_chunks
from qdspace.federation.job import JobSpec
from qdspace.federation.params import Params, flatten, params_to_bytes
from qdspace.federation.round_status import Phase, StatusView
from qdspace.node.identity.member import load_member_keys
from qdspace.node.localnet.network import LocalNetwork
from qdspace.node.rpc.client import open_channel
from qdspace.node.rpc.federation_client import FederationClient, coordinator_key, status_lost
from qdspace.node.rpc.federation_runner import MemberRunner
from qdspace.node.rpc.federation_serde import encode_data_chunk
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
    network: LocalNetwork,
    member: str,
    job_id: str,
    chunk_bytes: int,
    client_type: type[FederationClient] = FederationClient,
) -> MemberResult:
    keys = load_member_keys(network[member].directory)
    channel = open_channel(keys, network[COORDINATOR].grpc_address, COORDINATOR)
    try:
        client = client_type(channel, COORDINATOR, job_id, chunk_bytes=chunk_bytes)
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
    assert allowed + 1 < len(payload)  # the stream is refused long before its bytes run out

    keys = load_member_keys(network["cellex"].directory)
    channel = open_channel(keys, network[COORDINATOR].grpc_address, COORDINATOR)
    try:
        upload = channel.stream_unary(
            "/qdspace.v1.Federation/UploadUpdate",
            request_serializer=lambda b: b,
            response_deserializer=pb.Accepted.FromString,
        )
        # one byte a message, one message more than the announced size allows, and no
        # end of stream: only a coordinator that counts chunks as they come ends the call
        # (one that waited for the stream's end would run into the deadline). Writing on
        # after the refusal (the whole 1.2 MB a byte at a time) raced it: gRPC then
        # sometimes ended the call with "Internal error from Core" instead of its status.
        call = upload(timeout=60)
        await call.write(pb.UploadChunk(header=header).SerializeToString())
        for i in range(allowed + 1):
            await call.write(pb.UploadChunk(data=payload[i : i + 1]).SerializeToString())
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
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


class BadMaskedStreams(FederationClient):
    """A member that, before its honest masked input, opens masked-input streams that
    carry good chunks of that very input and then go wrong, and afterwards sends the
    honest input once more; ``refusals`` are the coordinator's answers, in order."""

    def __init__(self, channel: grpc.aio.Channel, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        self.refusals: list[tuple[str, str]] = []
        self.lost = 0
        self._raw = channel.stream_unary(
            "/qdspace.v1.Federation/UploadMasked",
            request_serializer=lambda b: b,
            response_deserializer=pb.Accepted.FromString,
        )

    async def upload_masked_stream(
        self, round_: int, attempt: int, elements: int, parts: Iterator[NDArray[np.uint32]]
    ) -> StatusView:
        real = [np.array(p, dtype="<u4") for p in parts]  # each copied before the next is made
        data = b"".join(p.tobytes() for p in real)
        good = [encode_data_chunk(p.data.cast("B")) for p in real]
        flipped = bytearray(data)
        flipped[-1] ^= 1
        head = pb.UploadHeader(
            job_id=self.job_id, round=round_, attempt=attempt, total_bytes=4 * elements
        )
        hashed = pb.UploadHeader()
        hashed.CopyFrom(head)
        hashed.sha256 = hashlib.sha256(data).digest()
        # after the first good chunk, one byte a message, one message more than the
        # payload may come in: a stream of all the rest a byte at a time (~150k messages)
        # kept the client writing long after the refusal, and gRPC then sometimes ended
        # the call with "Internal error from Core" instead of the server's status
        rest = data[real[0].nbytes :][: max_chunks(4 * elements)]
        bad = {
            "ends short": (head, good[:-1]),
            "runs past": (head, [*good, encode_data_chunk(b"\x00" * 4)]),
            "digest": (hashed, [encode_data_chunk(bytes(flipped))]),
            "too many chunks": (
                head,
                [good[0], *(encode_data_chunk(rest[i : i + 1]) for i in range(len(rest)))],
            ),
            "over the message limit": (head, [good[0], encode_data_chunk(bytes(CHUNK_MAX_BYTES))]),
        }
        for name, (header, chunks) in bad.items():
            await self._refused(name, header, chunks)
        view = await super().upload_masked_stream(round_, attempt, elements, iter(real))
        await self._refused("duplicate", head, good)
        return view

    async def _refused(self, name: str, header: pb.UploadHeader, chunks: list[bytes]) -> None:
        async def stream() -> Any:
            yield pb.UploadChunk(header=header).SerializeToString()
            for chunk in chunks:
                yield chunk

        # a stream the coordinator ends while cellex still writes may come back as gRPC's
        # "Internal error from Core" (status_lost: grpc/grpc#36066): the same bad stream
        # is sent again, and every copy must leave the round as if it never came
        for _ in range(5):
            try:
                await self._raw(stream(), timeout=30)
            except grpc.aio.AioRpcError as exc:
                if status_lost(exc):
                    self.lost += 1
                    continue
                self.refusals.append((name, exc.details() or ""))
                return
            raise AssertionError(f"the {name} stream was accepted")
        raise AssertionError(f"gRPC lost the status of the {name} stream five times")


async def test_masked_streams_refused_after_good_chunks_leave_the_round_as_without_them(
    network: LocalNetwork,
) -> None:
    """Cellex's masked-input streams carry good chunks of its real masked input and then
    end short, run past, fail their digest, are cut too fine, or carry a chunk over the
    limit; its honest input follows, and a duplicate of it after that. Each bad stream is
    refused, and the job's global model comes out bit for bit as in the same job without
    them: nothing of a refused stream reached the round's sum."""
    extra: dict[str, Any] = {"secure_aggregation": True, "threshold": 2, "update_clip": 1.0}
    results: dict[str, dict[str, MemberResult]] = {}
    hostile: list[BadMaskedStreams] = []

    class Recorded(BadMaskedStreams):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            hostile.append(self)

    for kind in ("honest", "hostile"):
        job = job_terms(f"el-chunks-masked-{kind}", **extra)
        await start(network, job)
        types = {m: FederationClient for m in MEMBERS}
        if kind == "hostile":
            types["cellex"] = Recorded
        runs = (run_member(network, m, job.job_id, 1 << 20, types[m]) for m in MEMBERS)
        done = await asyncio.wait_for(asyncio.gather(*runs), timeout=180)
        results[kind] = dict(zip(MEMBERS, done, strict=True))
    (cellex,) = hostile
    refused = dict(cellex.refusals)
    assert list(refused) == [
        "ends short",
        "runs past",
        "digest",
        "too many chunks",
        "over the message limit",
        "duplicate",
    ]
    assert "ended after" in refused["ends short"], refused
    assert "run past" in refused["runs past"], refused
    assert "does not match its SHA-256" in refused["digest"], refused
    assert "more than" in refused["too many chunks"], refused
    assert f"{CHUNK_MAX_BYTES}" in refused["over the message limit"], refused
    # a duplicate, or (once cellex's input completed the phase, or the job) too late
    late = ("duplicate:", "deadline_passed:", "wrong_phase:", "wrong_round:")
    assert refused["duplicate"].startswith(late), refused
    for member in MEMBERS:
        honest, attacked = results["honest"][member], results["hostile"][member]
        assert attacked.status.phase is Phase.DONE and attacked.aborted == [], member
        assert attacked.status.history[-1].members == MEMBERS, member
        assert honest.params is not None and attacked.params is not None
        for a, b in zip(honest.params, attacked.params, strict=True):
            assert np.array_equal(a, b), member
