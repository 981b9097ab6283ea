"""A coordinator that restarts the attempts of one round, against a member's floor.

Each attempt of a secure round the member draws fresh noise and sends a fresh masked
input: one more noisy copy of its data. Its floor (``federation_floor``) was checked
once, at join, over the rounds the terms name, so a coordinator that failed and
restarted the attempts of round 1 got a masked input every time, without end, and a
member joining the job again (its node restarted) sent its update again. Now the
member counts every release on disk before it sends it and withholds the one that
would pass its floor; the count is read back by a member re-created from the directory.

The coordinator is a gRPC server of this test that serves what a hostile one would: the
other two members' keys and shares (honest members, simulated here, so the member's
own checks of the roster pass), then a new attempt as soon as the member's masked input
arrives. The member side is the node's own code: ``FederationMember.join`` with its
``GrpcCoordinator`` link, ``MemberRunner`` and ``FederationClient``, over real gRPC.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from nacl.signing import SigningKey

from qdspace.federation import logreg
from qdspace.federation.dp import DPConfig
from qdspace.federation.job import JobSpec
from qdspace.federation.member import secagg_client
from qdspace.federation.member_floor import MemberFloor, member_epsilon
from qdspace.federation.params import params_to_bytes
from qdspace.federation.round_status import Phase
from qdspace.federation.secagg import SecAggClient
from qdspace.federation.secagg_messages import PROTOCOL, EncryptedShare, KeyAdvert
from qdspace.node.identity.certs import (
    build_ca_cert,
    build_member_cert,
    identity_of,
    member_subject,
    new_tls_key,
)
from qdspace.node.identity.member import MemberKeys
from qdspace.node.layout import NodeLayout
from qdspace.node.member_ids import member_id_for
from qdspace.node.rpc.federation_link import GrpcCoordinator
from qdspace.node.rpc.federation_serde import advert_from_proto, advert_to_proto, share_to_proto
from qdspace.node.runtime.federation_member import (
    FederationMember,
    FederationRequestError,
    JoinRequest,
    MemberSession,
)
from qdspace.node.runtime.federation_releases import ReleaseBook
from qdspace.protocols.v1 import federation_pb2 as pb
from qdspace.protocols.v1 import node_pb2

from .test_federation_hostile_coordinator import COORDINATOR, DIMS, KEY, MEMBER, terms, versions

OTHERS = ("polycell", "sunarc")
#: attempts the coordinator restarts at most (a member without a count sends in each)
MAX_ATTEMPTS = 6
#: releases the floor of these tests allows of the secure job (its epsilon, below)
ALLOWED = 3


def member_keys() -> dict[str, MemberKeys]:
    """Keys and certificates of the job's three members, issued by one test authority."""
    ca_key = new_tls_key()
    ca = build_ca_cert("qdspace", ca_key, valid_days=1)
    now = dt.datetime.now(dt.UTC)
    out = {}
    for i, name in enumerate((MEMBER, *OTHERS)):
        signing = SigningKey(bytes([i + 1]) * 32)
        verify = bytes(signing.verify_key)
        tls = new_tls_key()
        cert = build_member_cert(
            ca_cert=ca,
            ca_key=ca_key,
            subject=member_subject("qdspace", name, member_id_for(name, verify), "supplier"),
            public_key=tls.public_key(),
            verify_key=verify,
            hostnames=[],
            not_before=now - dt.timedelta(minutes=5),
            not_after=now + dt.timedelta(days=1),
        )
        out[name] = MemberKeys(signing, tls, cert, ca, identity_of(cert))
    return out


def secure_job() -> JobSpec:
    return terms(
        members=(MEMBER, *OTHERS),
        min_members=3,
        rounds=1,
        secure_aggregation=True,
        threshold=2,
        dp=DPConfig(clip=1.0, noise_multiplier=4.0),
    )


def floor_allowing(job: JobSpec, releases: int) -> MemberFloor:
    """A floor whose ``max_epsilon`` lets ``releases`` releases of ``job`` through, not one
    more (the epsilon is the floor's own count: ``member_epsilon``)."""
    floor = MemberFloor(max_epsilon=1.0)
    below = member_epsilon(job, floor, releases)
    above = member_epsilon(job, floor, releases + 1)
    return dataclasses.replace(floor, max_epsilon=(below + above) / 2)


@dataclass
class Restarting:
    """A coordinator that restarts round 1 after each masked input (a plain job: ends it
    after the update). A status asked for by a member that already saw the current one
    means the member sent nothing in its phase: the coordinator then ends the job."""

    job: JobSpec
    keys: dict[str, MemberKeys]
    #: the member's releases on disk (called as each of its uploads arrives)
    recorded: Callable[[], int]
    attempt: int = 1
    phase: Phase = Phase.ADVERTISE
    #: statuses asked for in a phase the member sent nothing in, before the job ends
    patience: int = 1
    uploads: list[int] = field(default_factory=list)
    on_disk_at_upload: list[int] = field(default_factory=list)
    _others: dict[str, SecAggClient] = field(default_factory=dict)
    _roster: list[KeyAdvert] = field(default_factory=list)
    _inbox: list[EncryptedShare] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.job.secure_aggregation:
            self.phase = Phase.TRAINING

    def status(self) -> pb.JobStatus:
        job = self.job
        return pb.JobStatus(
            job_id=job.job_id,
            round=1,
            attempt=self.attempt,
            phase=self.phase.value,
            deadline_in_s=0.0 if self.phase in (Phase.DONE, Phase.FAILED) else 30.0,
            version=0,
            rounds=job.rounds,
            job_digest=job.digest(),
            secagg_protocol=PROTOCOL if job.secure_aggregation else "",
        )

    async def hello(self, request: node_pb2.HelloRequest, context: Any) -> node_pb2.HelloReply:
        server = node_pb2.Member(name=COORDINATOR, verify_key=bytes(KEY.verify_key))
        return node_pb2.HelloReply(server=server, nonce=request.nonce)

    async def get_job(self, request: pb.JobRef, context: Any) -> pb.JobTerms:
        return pb.JobTerms(terms=self.job.canonical_bytes(), job_digest=self.job.digest())

    async def get_status(self, request: pb.StatusRequest, context: Any) -> pb.JobStatus:
        seen = (request.known_attempt, request.known_phase) == (self.attempt, self.phase.value)
        if seen and self.phase not in (Phase.DONE, Phase.FAILED):
            self.patience -= 1
            if self.patience <= 0:
                self.phase = Phase.FAILED  # the member sent nothing in this phase
        return self.status()

    async def download(self, request: pb.DownloadRequest, context: Any) -> AsyncIterator[Any]:
        signed, params = versions(self.job, 1)[0]
        payload = params_to_bytes(params)
        header = pb.ModelHeader(
            record=signed.record,
            signature=signed.signature,
            total_bytes=len(payload),
            sha256=hashlib.sha256(payload).digest(),
        )
        yield pb.ModelChunk(header=header)
        yield pb.ModelChunk(data=payload)

    async def advertise(self, request: pb.AdvertiseRequest, context: Any) -> pb.Accepted:
        """The member's advert, and the other members' for this attempt (fresh keys)."""
        adverts = [advert_from_proto(request.advert)]
        self._others = {}
        for name in OTHERS:
            keys = self.keys[name]
            client = secagg_client(self.job, name, 1, self.attempt, keys.signing_key)
            self._others[name] = client
            adverts.append(client.advertise(keys.cert.public_bytes(Encoding.DER)))
        self._roster = sorted(adverts, key=lambda a: a.member)
        self.phase = Phase.SHARE_KEYS
        return pb.Accepted(detail="taken", status=self.status())

    async def roster(self, request: pb.RoundRef, context: Any) -> pb.Roster:
        return pb.Roster(adverts=[advert_to_proto(a) for a in self._roster])

    async def share_keys(self, request: pb.ShareKeysRequest, context: Any) -> pb.Accepted:
        """The member's shares (passed on to nobody), and the others' shares for it."""
        verify = {name: keys.signing_key.verify_key for name, keys in self.keys.items()}
        self._inbox = [
            share
            for client in self._others.values()
            for share in client.share_keys(self._roster, verify)
            if share.receiver == MEMBER
        ]
        self.phase = Phase.MASKED_INPUT
        return pb.Accepted(detail="taken", status=self.status())

    async def inbox(self, request: pb.RoundRef, context: Any) -> pb.Inbox:
        return pb.Inbox(shares=[share_to_proto(s) for s in self._inbox])

    async def upload(self, requests: AsyncIterator[pb.UploadChunk], context: Any) -> pb.Accepted:
        """A masked input (or plain update) taken; the attempt "fails" and the next opens."""
        async for chunk in requests:
            if chunk.HasField("header"):
                self.uploads.append(chunk.header.attempt)
        self.on_disk_at_upload.append(self.recorded())
        if not self.job.secure_aggregation:
            self.phase = Phase.DONE
        elif self.attempt >= MAX_ATTEMPTS:
            self.phase = Phase.FAILED
        else:
            self.attempt, self.phase = self.attempt + 1, Phase.ADVERTISE
        return pb.Accepted(detail="taken", status=self.status())


async def serving(coordinator: Restarting) -> tuple[grpc.aio.Server, int]:
    def unary(fn: Any, req: Any, rep: Any) -> Any:
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=req.FromString, response_serializer=rep.SerializeToString
        )

    upload = grpc.stream_unary_rpc_method_handler(
        coordinator.upload,
        request_deserializer=pb.UploadChunk.FromString,
        response_serializer=pb.Accepted.SerializeToString,
    )
    federation = {
        "GetJob": unary(coordinator.get_job, pb.JobRef, pb.JobTerms),
        "GetStatus": unary(coordinator.get_status, pb.StatusRequest, pb.JobStatus),
        "DownloadModel": grpc.unary_stream_rpc_method_handler(
            coordinator.download,
            request_deserializer=pb.DownloadRequest.FromString,
            response_serializer=pb.ModelChunk.SerializeToString,
        ),
        "AdvertiseKeys": unary(coordinator.advertise, pb.AdvertiseRequest, pb.Accepted),
        "GetRoster": unary(coordinator.roster, pb.RoundRef, pb.Roster),
        "ShareKeys": unary(coordinator.share_keys, pb.ShareKeysRequest, pb.Accepted),
        "GetInbox": unary(coordinator.inbox, pb.RoundRef, pb.Inbox),
        "UploadMasked": upload,
        "UploadUpdate": upload,
    }
    hello = {"Hello": unary(coordinator.hello, node_pb2.HelloRequest, node_pb2.HelloReply)}
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler("qdspace.v1.Federation", federation),
            grpc.method_handlers_generic_handler("qdspace.v1.Node", hello),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def recorded(node: Path, job: JobSpec) -> int:
    """The member's releases of ``job`` as its node directory records them."""
    return ReleaseBook(NodeLayout(node).federation).releases(COORDINATOR, job.job_id).count


def take_part(
    node: Path, job: JobSpec, keys: dict[str, MemberKeys], floor: MemberFloor, patience: int = 1
) -> tuple[MemberSession, Restarting]:
    """A member node (a ``FederationMember`` on ``node``, as a restarted node makes it)
    joins ``job`` at a fresh restarting coordinator and follows it to its end."""
    data = node / "own.npz"
    if not data.exists():
        logreg.save_dataset(data, logreg.make_blobs(40, DIMS, 2, seed=1))
    coordinator = Restarting(job, keys, lambda: recorded(node, job), patience=patience)

    async def run() -> MemberSession:
        server, port = await serving(coordinator)
        try:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")

            def connect(name: str, job_id: str) -> GrpcCoordinator:
                return GrpcCoordinator(keys[MEMBER], lambda _serial: False, channel, name, job_id)

            member = FederationMember(connect, node, MEMBER, floor=floor)
            session = await member.join(JoinRequest(job.job_id, COORDINATOR, data, poll_s=1.0))
            assert session.task is not None
            await asyncio.wait_for(session.task, 120)  # a bound against a hang, not a timing
            await channel.close()
            return session
        finally:
            await server.stop(0)

    return asyncio.run(run()), coordinator


def withheld(session: MemberSession) -> list[str]:
    return [e.detail for e in session.events if e.kind == "skipped"]


def test_a_coordinator_restarting_attempts_gets_no_release_past_the_floor(
    tmp_path: Path,
) -> None:
    """Round 1 is restarted after every masked input. The member sends in ``ALLOWED``
    attempts (its floor's epsilon over that many releases), then withholds, and the job
    ends without it. Before: a masked input in every one of the ``MAX_ATTEMPTS``."""
    job, keys = secure_job(), member_keys()
    floor = floor_allowing(job, ALLOWED)
    session, coordinator = take_part(tmp_path, job, keys, floor)
    assert session.state == "done", session.error
    assert coordinator.uploads == [1, 2, 3], coordinator.uploads
    # each release was on disk before it left (a crash in between over-counts)
    assert coordinator.on_disk_at_upload == [1, 2, 3]
    [refusal] = withheld(session)
    assert "withholding this member's update of job j1 (round 1 attempt 4)" in refusal
    assert "already sent 3 updates (the last in round 1 attempt 3)" in refusal
    assert f"over max_epsilon {floor.max_epsilon:g}" in refusal
    assert "federation_floor, node.json" in refusal
    assert session.status is not None and session.status.phase is Phase.FAILED


def test_a_member_past_its_floor_says_so_once_and_follows_the_job_on(tmp_path: Path) -> None:
    """A coordinator that waits in the attempt the member withholds from: the member's
    count only grows, so it sends nothing more of the job; it said so, and logged it, at
    every status it polled (an event list and a log line every poll, without end)."""
    job, keys = secure_job(), member_keys()
    session, coordinator = take_part(tmp_path, job, keys, floor_allowing(job, ALLOWED), 3)
    assert session.state == "done", session.error
    assert coordinator.uploads == [1, 2, 3] and coordinator.patience <= 0
    [refusal] = withheld(session)
    assert refusal.endswith("no more updates of this job")


def test_the_count_survives_a_member_recreated_from_its_directory(tmp_path: Path) -> None:
    """After the floor's releases, the node restarts (a new ``FederationMember`` on the
    same directory) and joins the job again: it sends nothing more. Before: the count
    started again at zero, and the coordinator got another ``MAX_ATTEMPTS``."""
    job, keys = secure_job(), member_keys()
    floor = floor_allowing(job, ALLOWED)
    take_part(tmp_path, job, keys, floor)
    session, coordinator = take_part(tmp_path, job, keys, floor)
    assert session.state == "done", session.error
    assert coordinator.uploads == []
    [refusal] = withheld(session)
    assert "(round 1 attempt 1)" in refusal and "already sent 3 updates" in refusal
    assert recorded(tmp_path, job) == ALLOWED


def test_a_plain_update_sent_again_after_a_restart_counts_against_max_rounds(
    tmp_path: Path,
) -> None:
    """A plain job, a floor of ``max_rounds`` 1: the round's update leaves once; a node
    joining again after a restart withholds a second copy (fresh noise, same data)."""
    job = terms(rounds=1, dp=DPConfig(clip=1.0, noise_multiplier=1.0))
    floor = MemberFloor(max_rounds=1)
    keys = member_keys()
    first, coordinator = take_part(tmp_path, job, keys, floor)
    assert coordinator.uploads == [0] and withheld(first) == []  # (attempt 0: a plain upload)
    again, coordinator = take_part(tmp_path, job, keys, floor)
    assert again.state == "done", again.error
    assert coordinator.uploads == []
    [refusal] = withheld(again)
    assert "already sent 1 update (the last in round 1 attempt 1)" in refusal
    assert "2 releases would be over max_rounds 1" in refusal


def test_an_unreadable_count_refuses_the_join(tmp_path: Path) -> None:
    """A record the node cannot read is not taken for zero releases."""
    job, keys = secure_job(), member_keys()
    path = ReleaseBook(NodeLayout(tmp_path).federation).path(COORDINATOR, job.job_id)
    path.parent.mkdir(parents=True)
    path.write_text('{"coordinator": "x", "job_id": "j1", "releases": [[1]]}')
    with pytest.raises(FederationRequestError, match=r"releases\[0\] must be") as refused:
        take_part(tmp_path, job, keys, floor_allowing(job, ALLOWED))
    assert f"{MEMBER} refuses job j1" in str(refused.value)
