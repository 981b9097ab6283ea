"""An upload stream that stalls, trickles or outlives its round is cut off, over real gRPC.

A member's update holds, from its header on, its one upload slot for the job and a
buffer the size of the model. Nothing limited how long: a member that sent a valid
header and then nothing (or a byte now and then) kept both for good, even after the
round closed, and its own later uploads were refused as BUSY. Now each stream ends
with ``DEADLINE_PASSED`` when it stalls between chunks, runs past its phase's deadline
(plus slack) or its round's attempt closes, and the slot is free again.

The coordinator is the node's own gRPC server, interceptor and servicer (Cellex
coordinates a job it is a member of, on its own node, over mutual TLS); the limits are
set small where a test needs them to pass, and no test measures how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc

from qdspace.federation import logreg
from qdspace.federation.job import JobSpec
from qdspace.federation.params import params_to_bytes
from qdspace.node.context import NodeContext
from qdspace.node.rpc.auth import PeerAuthenticator
from qdspace.node.rpc.client import open_channel
from qdspace.node.rpc.federation_service import FederationServicer
from qdspace.node.rpc.server import build_server
from qdspace.node.runtime.federation_jobs import FederationJobs
from qdspace.node.runtime.federation_uploads import UploadTimes
from qdspace.protocols.v1 import federation_pb2 as pb
from qdspace.protocols.v1 import federation_pb2_grpc as pb_grpc

ME = "cellex"
#: 40,100 parameters (160 KB): three chunks, as every chunk but the last carries at
#: least 64 KiB (``federation.chunks``)
DIMS, CLASSES = 400, 100
#: how long the client waits for the coordinator's answer before giving up on it
#: (the old coordinator never answered a stalled stream: the call hit this)
CALL_TIMEOUT_S = 20.0


def job(phase_timeout_s: float = 600.0) -> JobSpec:
    return JobSpec(
        job_id="stall-1",
        coordinator=ME,
        model="logreg",
        shapes=logreg.model_shapes(DIMS, CLASSES),
        rounds=2,
        min_members=1,
        members=(ME, "polycell"),
        phase_timeout_s=phase_timeout_s,
    )


PAYLOAD = params_to_bytes(logreg.init_params(DIMS, CLASSES))


def header(round_: int = 1) -> pb.UploadChunk:
    return pb.UploadChunk(
        header=pb.UploadHeader(
            job_id="stall-1",
            round=round_,
            total_bytes=len(PAYLOAD),
            sha256=hashlib.sha256(PAYLOAD).digest(),
            num_examples=10,
        )
    )


@asynccontextmanager
async def coordinator(
    node: NodeContext, root: Path, spec: JobSpec, times: UploadTimes, clock: Callable[[], float]
) -> AsyncIterator[tuple[FederationJobs, pb_grpc.FederationStub]]:
    """The node's federation service running ``spec`` (started by its operator) on a
    loopback port, and a stub of it over the node's own mutual-TLS channel."""
    jobs = FederationJobs(
        node.keys.identity, node.keys.signing_key, root, clock=clock, upload_times=times
    )
    await jobs.start(spec, memoryview(PAYLOAD), ME)
    server = build_server(
        node.keys,
        PeerAuthenticator(node.revocations),
        [FederationServicer(jobs).register],
        "127.0.0.1",
        0,
    )
    await server.start()
    try:
        async with open_channel(node.keys, f"127.0.0.1:{server.port}", ME) as channel:
            yield jobs, pb_grpc.FederationStub(channel)
    finally:
        await server.stop(0)


async def refusal(call: Awaitable[pb.Accepted]) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def whole_update(stub: pb_grpc.FederationStub, round_: int = 1) -> pb.Accepted:
    """An honest upload: header and data, back to back."""
    call = stub.UploadUpdate(timeout=CALL_TIMEOUT_S)
    await call.write(header(round_))
    await call.write(pb.UploadChunk(data=PAYLOAD))
    await call.done_writing()
    return await call


def test_a_stream_that_stalls_after_its_header_is_cut_off_and_frees_the_slot(
    node: NodeContext, tmp_path: Path
) -> None:
    async def run() -> None:
        times = UploadTimes(idle_s=0.2)
        async with coordinator(node, tmp_path, job(), times, lambda: 0.0) as (_, stub):
            stalled = stub.UploadUpdate(timeout=CALL_TIMEOUT_S)
            await stalled.write(header())  # and then nothing
            code, details = await refusal(stalled)
            assert code is not grpc.StatusCode.DEADLINE_EXCEEDED, "the coordinator waited on"
            assert "deadline_passed" in details and "the stream stalled" in details, details
            accepted = await whole_update(stub)  # the member's slot is free again
            assert "accepted" in accepted.detail, accepted

    asyncio.run(run())


def test_a_trickling_stream_ends_at_its_phase_deadline(node: NodeContext, tmp_path: Path) -> None:
    """One chunk, then a pause shorter than the idle limit (a member may send a 64 KiB
    chunk every 59 s and take hours over 50 MB): the phase's deadline (1 s on the job's
    clock, no slack) ends it."""

    async def run() -> None:
        times = UploadTimes(idle_s=60.0, slack_s=0.0)
        spec = job(phase_timeout_s=1.0)
        loop = asyncio.get_running_loop()
        async with coordinator(node, tmp_path, spec, times, loop.time) as (_, stub):
            call = stub.UploadUpdate(timeout=CALL_TIMEOUT_S)
            await call.write(header())

            async def trickle() -> None:
                step = 1 << 16
                for at in range(0, len(PAYLOAD), step):
                    await call.write(pb.UploadChunk(data=PAYLOAD[at : at + step]))
                    await asyncio.sleep(30.0)  # under the idle limit

            writer = asyncio.ensure_future(trickle())
            code, details = await refusal(call)
            writer.cancel()
            with contextlib.suppress(BaseException):  # its writes fail once the call ends
                await writer
            assert code is not grpc.StatusCode.DEADLINE_EXCEEDED, "the coordinator read on"
            assert "ran past its phase's deadline" in details, details

    asyncio.run(run())


def test_a_stalled_stream_ends_when_its_round_attempt_closes(
    node: NodeContext, tmp_path: Path
) -> None:
    """The job's clock jumps past the phase's deadline and a status call closes the
    attempt (no update came): the stream claimed in it ends at once, long before its
    idle limit, and the member can upload in the next attempt."""

    async def run() -> None:
        now = [0.0]
        times = UploadTimes(idle_s=600.0)
        async with coordinator(node, tmp_path, job(10.0), times, lambda: now[0]) as (
            jobs,
            stub,
        ):
            stalled = stub.UploadUpdate(timeout=CALL_TIMEOUT_S)
            await stalled.write(header())
            answer = asyncio.ensure_future(refusal(stalled))
            while ME not in jobs.uploading("stall-1"):  # until its header is taken
                await asyncio.sleep(0.01)
            now[0] = 11.0
            status = await stub.GetStatus(pb.StatusRequest(job_id="stall-1"))
            assert (status.round, status.attempt) == (1, 2), status
            code, details = await answer
            assert code is not grpc.StatusCode.DEADLINE_EXCEEDED, "the coordinator waited on"
            assert "round 1 attempt 1 closed while it was sent" in details, details
            assert not jobs.uploading("stall-1")
            accepted = await whole_update(stub)
            assert "accepted" in accepted.detail, accepted

    asyncio.run(run())
