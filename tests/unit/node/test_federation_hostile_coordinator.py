"""A hostile coordinator against a member's real client and round loop, over real gRPC.

The coordinator here is a gRPC server that serves what a hostile one would: signed
versions it once published, announced as newer; rounds past the job's terms; terms
other than the ones the member joined; training terms that keep a member busy for
good. The member side is the node's own code (``FederationClient``, ``MemberRunner``,
``FederationMember.join``), talking to it on loopback.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from nacl.signing import SigningKey

from qdspace.federation import logreg
from qdspace.federation.dp import DPConfig
from qdspace.federation.errors import RefusalReason, VersionError
from qdspace.federation.job import JobSpec
from qdspace.federation.params import Params, params_to_bytes
from qdspace.federation.round_status import Phase
from qdspace.federation.versions import SignedVersion, describe, sign_version
from qdspace.node.errors import PeerError
from qdspace.node.rpc.federation_client import FederationClient, FederationRefused
from qdspace.node.rpc.federation_link import GrpcCoordinator
from qdspace.node.rpc.federation_runner import MemberRunner
from qdspace.node.runtime.federation_member import (
    FederationMember,
    FederationRequestError,
    JoinRequest,
)
from qdspace.protocols.v1 import federation_pb2 as pb

COORDINATOR, MEMBER = "x", "cellex"
DIMS, CLASSES = 4, 2
KEY = SigningKey(bytes(range(32)))


def terms(**overrides: Any) -> JobSpec:
    fields: dict[str, Any] = {
        "job_id": "j1",
        "coordinator": COORDINATOR,
        "model": "logreg",
        "shapes": logreg.model_shapes(DIMS, CLASSES),
        "rounds": 3,
        "min_members": 1,
        "members": (MEMBER, "polycell"),
    }
    fields.update(overrides)
    return JobSpec(**fields)


def versions(job: JobSpec, count: int) -> list[tuple[SignedVersion, Params]]:
    """Versions 0..count-1 of ``job``, each signed by the coordinator, chained."""
    out: list[tuple[SignedVersion, Params]] = []
    parent = None
    for v in range(count):
        params = [p + v for p in logreg.init_params(DIMS, CLASSES)]
        record = describe(
            job_id=job.job_id,
            job_digest=job.digest(),
            version=v,
            round_=v,
            model=job.model,
            params=params,
            parent=parent,
            members=(MEMBER,),
            coordinator=COORDINATOR,
            created_at=dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
        )
        out.append((sign_version(record, KEY), params))
        parent = record
    return out


@dataclass
class Hostile:
    """What the hostile coordinator serves: terms per ``GetJob`` call (the last one
    repeats), statuses per ``GetStatus`` call (the last one repeats), the version it
    serves for each asked one; what members uploaded."""

    served_terms: list[JobSpec]
    statuses: list[pb.JobStatus]
    serve: Callable[[int], tuple[SignedVersion, Params]]
    uploads: list[pb.UploadHeader] = field(default_factory=list)
    _terms_calls: int = 0
    _status_calls: int = 0

    async def get_job(self, request: pb.JobRef, context: Any) -> pb.JobTerms:
        job = self.served_terms[min(self._terms_calls, len(self.served_terms) - 1)]
        self._terms_calls += 1
        return pb.JobTerms(terms=job.canonical_bytes(), job_digest=job.digest())

    async def get_status(self, request: pb.StatusRequest, context: Any) -> pb.JobStatus:
        status = self.statuses[min(self._status_calls, len(self.statuses) - 1)]
        self._status_calls += 1
        return status

    async def download(self, request: pb.DownloadRequest, context: Any) -> AsyncIterator[Any]:
        signed, params = self.serve(request.version)
        payload = params_to_bytes(params)
        yield pb.ModelChunk(
            header=pb.ModelHeader(
                record=signed.record,
                signature=signed.signature,
                total_bytes=len(payload),
                sha256=hashlib.sha256(payload).digest(),
            )
        )
        yield pb.ModelChunk(data=payload)

    async def upload(self, requests: AsyncIterator[pb.UploadChunk], context: Any) -> pb.Accepted:
        async for chunk in requests:
            if chunk.HasField("header"):
                self.uploads.append(chunk.header)
        return pb.Accepted(detail="taken", status=self.statuses[-1])


def status(job: JobSpec, round_: int, phase: Phase, version: int) -> pb.JobStatus:
    return pb.JobStatus(
        job_id=job.job_id,
        round=round_,
        attempt=1,
        phase=phase.value,
        deadline_in_s=0.0 if phase in (Phase.DONE, Phase.FAILED) else 30.0,
        version=version,
        rounds=job.rounds,
        job_digest=job.digest(),
    )


async def serving(hostile: Hostile) -> tuple[grpc.aio.Server, int]:
    def unary(fn: Any, req: Any, rep: Any) -> Any:
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=req.FromString, response_serializer=rep.SerializeToString
        )

    handlers = {
        "GetJob": unary(hostile.get_job, pb.JobRef, pb.JobTerms),
        "GetStatus": unary(hostile.get_status, pb.StatusRequest, pb.JobStatus),
        "DownloadModel": grpc.unary_stream_rpc_method_handler(
            hostile.download,
            request_deserializer=pb.DownloadRequest.FromString,
            response_serializer=pb.ModelChunk.SerializeToString,
        ),
        "UploadUpdate": grpc.stream_unary_rpc_method_handler(
            hostile.upload,
            request_deserializer=pb.UploadChunk.FromString,
            response_serializer=pb.Accepted.SerializeToString,
        ),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("qdspace.v1.Federation", handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def follow(hostile: Hostile, *, read_terms_first: bool = False) -> Any:
    """A member's round loop against ``hostile``: its result, or the error that ended it."""
    server, port = await serving(hostile)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = FederationClient(channel, COORDINATOR, "j1")
            if read_terms_first:  # what `FederationMember.join` checks, on the same client
                await client.job()
            data = logreg.make_blobs(40, DIMS, CLASSES, seed=1)
            runner = MemberRunner(client, MEMBER, logreg.trainer(data), KEY.verify_key, poll_s=0.0)
            try:
                return await asyncio.wait_for(runner.run(), 30)
            except (VersionError, PeerError) as exc:
                return exc
    finally:
        await server.stop(0)


def test_a_member_refuses_an_old_signed_version_announced_as_newer() -> None:
    """The coordinator announces version 3 and serves its signed version 0 again: every
    check but the order passed (a missed version leaves no parent to compare), and the
    member took version 0 as its newest, after version 1."""
    job = terms()
    signed = versions(job, 2)
    hostile = Hostile(
        [job],
        # round 2 in a phase a plain member does nothing in; then "done at version 3"
        [status(job, 2, Phase.CONSISTENCY, 1), status(job, 4, Phase.DONE, 3)],
        serve=lambda v: signed[1] if v == 1 else signed[0],
    )
    got = asyncio.run(follow(hostile))
    assert isinstance(got, VersionError), got
    assert "announced version 3 of job j1 and served version 0 (this member has 1)" in str(got)


def test_a_member_refuses_a_version_other_than_the_announced_one() -> None:
    job = terms()
    signed = versions(job, 2)
    hostile = Hostile([job], [status(job, 4, Phase.DONE, 1)], serve=lambda v: signed[0])
    got = asyncio.run(follow(hostile))
    assert isinstance(got, VersionError), got
    assert "announced version 1 of job j1 and served version 0 (this member has none)" in str(got)


def test_a_member_trains_no_round_past_the_jobs_terms() -> None:
    """A job of 1 round; the coordinator opens round 2 for training: the member stops
    before training, and nothing is uploaded."""
    job = terms(rounds=1)
    signed = versions(job, 2)
    hostile = Hostile(
        [job],
        [status(job, 2, Phase.TRAINING, 1), status(job, 2, Phase.DONE, 1)],
        serve=lambda v: signed[v],
    )
    got = asyncio.run(follow(hostile))
    assert isinstance(got, FederationRefused), got
    assert got.reason is RefusalReason.OUT_OF_RANGE
    assert "opened round 2 of job j1, whose terms end after 1 rounds" in str(got)
    assert hostile.uploads == []


def test_a_member_follows_only_the_terms_it_joined() -> None:
    """The member's node checked terms with distributed DP (``join``); the round loop,
    on the same client, then read terms without it and sent its update unnoised."""
    joined = terms(dp=DPConfig(clip=1.0, noise_multiplier=1.0))
    swapped = terms()
    signed = versions(swapped, 1)
    hostile = Hostile(
        [joined, swapped],
        [status(swapped, 1, Phase.TRAINING, 0), status(swapped, 2, Phase.DONE, 0)],
        serve=lambda v: signed[0],
    )
    got = asyncio.run(follow(hostile, read_terms_first=True))
    assert isinstance(got, PeerError), got
    assert "sent terms of job j1 other than the ones it sent before" in str(got)
    assert hostile.uploads == []


@pytest.mark.parametrize(
    ("training", "named"),
    [
        ({"epochs": 1e12}, "epochs must be a whole number in 1..100, got 1e+12"),
        ({"batch": 0.0}, "batch must be a whole number in 1..4096, got 0"),
        ({"batch": -5.0}, "batch must be a whole number"),
        ({"lr": 1e6}, "lr must be in (0, 1]"),
    ],
)
def test_a_member_refuses_training_terms_that_never_end(
    tmp_path: Path, training: dict[str, float], named: str
) -> None:
    """``FederationMember.join`` (the node's member service) reads the hostile terms over
    gRPC and refuses them before any round, naming the term."""
    job = terms(training=training)
    data = tmp_path / "own.npz"
    logreg.save_dataset(data, logreg.make_blobs(40, DIMS, CLASSES, seed=1))

    async def join() -> Exception:
        server, port = await serving(Hostile([job], [status(job, 1, Phase.TRAINING, 0)], None))  # type: ignore[arg-type]
        try:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")

            def connect(coordinator: str, job_id: str) -> GrpcCoordinator:
                return GrpcCoordinator(None, lambda *_: False, channel, coordinator, job_id)  # type: ignore[arg-type]

            member = FederationMember(connect, tmp_path, MEMBER)
            with pytest.raises(FederationRequestError) as refused:
                await member.join(JoinRequest("j1", COORDINATOR, data))
            await channel.close()
            return refused.value
        finally:
            await server.stop(0)

    error = asyncio.run(join())
    assert f"{MEMBER} refuses job j1" in str(error)
    assert named in str(error)


def test_a_member_refuses_terms_for_a_purpose_other_than_training() -> None:
    """Terms naming another purpose than the one every member's agreement grants (model
    updates for training) were read and followed: the purpose was never looked at."""
    raw = terms().to_dict() | {"purpose": "marketing-profiles"}
    body = json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()

    async def read() -> Exception:
        async def get_job(request: pb.JobRef, context: Any) -> pb.JobTerms:
            return pb.JobTerms(terms=body, job_digest=hashlib.sha256(body).digest())

        hostile = Hostile([terms()], [status(terms(), 1, Phase.TRAINING, 0)], None)  # type: ignore[arg-type]
        hostile.get_job = get_job  # type: ignore[method-assign]
        server, port = await serving(hostile)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                with pytest.raises(PeerError) as refused:  # its fault: a 502
                    await FederationClient(channel, COORDINATOR, "j1").job()
                return refused.value
        finally:
            await server.stop(0)

    error = asyncio.run(read())
    assert "purpose 'marketing-profiles' is not 'model-training'" in str(error)


def test_a_member_claims_no_more_examples_than_the_terms_cap() -> None:
    """Terms that cap the examples one update may claim (`max_examples_per_member`): a
    member with more data claims the cap, which the coordinator takes, instead of its
    count, which the coordinator refuses."""
    job = terms(max_examples_per_member=5)
    signed = versions(job, 2)
    hostile = Hostile(
        [job],
        [status(job, 1, Phase.TRAINING, 0), status(job, 4, Phase.DONE, 1)],
        serve=lambda v: signed[v],
    )
    asyncio.run(follow(hostile))  # (40 local examples)
    assert [h.num_examples for h in hostile.uploads] == [5]
