"""Hostile callers of a real coordinator over mutual-TLS gRPC (real node processes).

Each refusal here comes from the coordinator node SunArc: callers outside a job, the
regulator, members without an agreement in force, a member speaking in another's
name or presenting another's certificate, a second upload stream while one is in
flight, and long polls with nonsense waits. The certificate check a member runs on
the roster is exercised on the network's real certificates. The last tests put the
other side on trial: a real member process of secure-aggregation v1, refused by the
coordinator, and a real coordinator process announcing another protocol (``PolyCell``,
restarted as ``v1_coordinator.py``), refused by a member before it sends anything.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import json
import math
import re
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from nacl.signing import SigningKey

from qdspace.federation import logreg
from qdspace.federation.errors import RefusalReason, RosterRefused
from qdspace.federation.job import JobSpec
from qdspace.federation.member import secagg_client
from qdspace.federation.params import MAGIC, encoded_size, params_to_bytes
from qdspace.federation.round_status import Phase
from qdspace.node.errors import NotTheMember
from qdspace.node.identity.certs import load_cert, load_key
from qdspace.node.identity.member import load_member_keys
from qdspace.node.identity.revocation import RevocationList, member_revocations
from qdspace.node.localnet.network import LocalNetwork
from qdspace.node.member_ids import member_id_for
from qdspace.node.rpc.client import open_channel
from qdspace.node.rpc.federation_client import (
    FederationClient,
    FederationRefused,
    coordinator_key,
)
from qdspace.node.rpc.federation_keys import CertificateKeys
from qdspace.node.rpc.federation_link import GrpcCoordinator
from qdspace.node.rpc.federation_runner import MemberRunner
from qdspace.node.rpc.federation_serde import advert_to_proto
from qdspace.node.rpc.peers import PeerDirectory
from qdspace.node.runtime.federation_member import MemberResult
from qdspace.protocols.v1 import federation_pb2 as pb
from qdspace.protocols.v1 import federation_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

COORDINATOR = "sunarc"
DIMS, CLASSES = 6, 2
SHAPES = logreg.model_shapes(DIMS, CLASSES)


def terms(job_id: str, **overrides: Any) -> JobSpec:
    fields: dict[str, Any] = {
        "job_id": job_id,
        "coordinator": COORDINATOR,
        "model": "logreg",
        "shapes": SHAPES,
        "rounds": 1,
        "min_members": 2,
        "members": ("cellex", "sunarc"),
        "phase_timeout_s": 60.0,
    }
    fields.update(overrides)
    return JobSpec(**fields)


async def start(network: LocalNetwork, job: JobSpec) -> None:
    """``job`` started by its coordinator's own operator."""
    coordinator = network[job.coordinator]
    keys = load_member_keys(coordinator.directory)
    channel = open_channel(keys, coordinator.grpc_address, job.coordinator)
    try:
        await FederationClient(channel, job.coordinator, job.job_id).start_job(
            job, logreg.init_params(DIMS, CLASSES)
        )
    finally:
        await channel.close()


async def run_member(
    network: LocalNetwork, member: str, job: JobSpec, seed: int, timeout: float
) -> MemberResult:
    """``member`` takes part in ``job`` as a node's runner does, on data of its own."""
    keys = load_member_keys(network[member].directory)
    channel = open_channel(keys, network[job.coordinator].grpc_address, job.coordinator)
    try:
        runner = MemberRunner(
            FederationClient(channel, job.coordinator, job.job_id),
            member,
            logreg.trainer(logreg.make_blobs(300, DIMS, CLASSES, seed=seed), epochs=1, lr=0.2),
            await coordinator_key(channel, job.coordinator),
            signing_key=keys.signing_key,
            certificate=keys.cert,
            ca_cert=keys.ca_cert,
            poll_s=2.0,
        )
        return await asyncio.wait_for(runner.run(), timeout)
    finally:
        await channel.close()


Call = Callable[[pb_grpc.FederationStub], Awaitable[Any]]


async def refused(network: LocalNetwork, caller: str, call: Call) -> grpc.aio.AioRpcError:
    """The error ``caller`` gets from the coordinator for ``call`` (which must fail)."""
    keys = load_member_keys(network[caller].directory)
    channel = open_channel(keys, network[COORDINATOR].grpc_address, COORDINATOR)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await call(pb_grpc.FederationStub(channel))
    finally:
        await channel.close()
    return exc.value


def calls(job_id: str) -> dict[str, Call]:
    ref = pb.RoundRef(job_id=job_id, round=1, attempt=1)

    async def download(stub: pb_grpc.FederationStub) -> Any:
        async for _ in stub.DownloadModel(pb.DownloadRequest(job_id=job_id, version=0)):
            pass

    return {
        "GetJob": lambda stub: stub.GetJob(pb.JobRef(job_id=job_id)),
        "GetStatus": lambda stub: stub.GetStatus(pb.StatusRequest(job_id=job_id)),
        "DownloadModel": download,
        "GetRoster": lambda stub: stub.GetRoster(ref),
        "GetInbox": lambda stub: stub.GetInbox(ref),
        "GetUnmaskRequest": lambda stub: stub.GetUnmaskRequest(ref),
        "Unmask": lambda stub: stub.Unmask(pb.UnmaskResponse(ref=ref, member="cellex")),
        "ConfirmSurvivors": lambda stub: stub.ConfirmSurvivors(
            pb.ConfirmRequest(ref=ref, confirmation=pb.Confirmation(member="cellex"))
        ),
        "ReportBadShares": lambda stub: stub.ReportBadShares(
            pb.BadSharesReport(ref=ref, accused="sunarc")
        ),
    }


async def test_non_members_and_the_regulator_are_refused_every_job_call(
    network: LocalNetwork,
) -> None:
    job = terms("el-hostile-members")
    await start(network, job)
    for method, call in calls(job.job_id).items():
        outsider = await refused(network, "polycell", call)
        assert outsider.code() is grpc.StatusCode.PERMISSION_DENIED, method
        assert outsider.details().startswith("not_a_member: polycell"), (method, outsider)
        regulator = await refused(network, "regulator", call)
        assert regulator.code() is grpc.StatusCode.PERMISSION_DENIED, method
        assert "role regulator may not call" in regulator.details(), method


async def test_members_without_an_agreement_in_force_are_refused(network: LocalNetwork) -> None:
    asset = "fl-job:el-hostile-contract"
    job = terms("el-hostile-contract", agreement_asset=asset)
    await start(network, job)
    for method in ("GetJob", "GetStatus", "DownloadModel", "GetRoster", "GetInbox"):
        error = await refused(network, "cellex", calls(job.job_id)[method])
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED, method
        assert error.details().startswith("no_agreement: member cellex"), (method, error)
        assert f"holds no agreement for {asset}" in error.details(), method
    # Listing stays open to members: it names the asset to negotiate.
    keys = load_member_keys(network["cellex"].directory)
    channel = open_channel(keys, network[COORDINATOR].grpc_address, COORDINATOR)
    try:
        listed = await FederationClient(channel, COORDINATOR, job.job_id).list_jobs()
    finally:
        await channel.close()
    assert [v.agreement_asset for v in listed if v.job_id == job.job_id] == [asset]


async def test_members_cannot_speak_for_another_member(network: LocalNetwork) -> None:
    members = ("cellex", "polycell", "sunarc")
    job = terms("el-hostile-names", members=members, min_members=3)
    job = dataclasses.replace(job, secure_aggregation=True, threshold=2, update_clip=1.0)
    await start(network, job)
    ref = pb.RoundRef(job_id=job.job_id, round=1, attempt=1)
    cellex, sunarc = (load_member_keys(network[m].directory) for m in ("cellex", "sunarc"))
    # cellex presents sunarc's certificate with a key advert signed by cellex
    advert = secagg_client(job, "cellex", 1, 1, cellex.signing_key).advertise(
        sunarc.cert.public_bytes(Encoding.DER)
    )
    error = await refused(
        network,
        "cellex",
        lambda stub: stub.AdvertiseKeys(
            pb.AdvertiseRequest(ref=ref, advert=advert_to_proto(advert))
        ),
    )
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "carries the certificate of sunarc" in error.details()
    # ... an advert in sunarc's name, an unmask response and a signature in polycell's
    forged = secagg_client(job, "sunarc", 1, 1, cellex.signing_key).advertise(
        cellex.cert.public_bytes(Encoding.DER)
    )
    impersonations: dict[str, Call] = {
        "AdvertiseKeys": lambda stub: stub.AdvertiseKeys(
            pb.AdvertiseRequest(ref=ref, advert=advert_to_proto(forged))
        ),
        "Unmask": lambda stub: stub.Unmask(pb.UnmaskResponse(ref=ref, member="polycell")),
        "ConfirmSurvivors": lambda stub: stub.ConfirmSurvivors(
            pb.ConfirmRequest(ref=ref, confirmation=pb.Confirmation(member="polycell"))
        ),
    }
    for method, call in impersonations.items():
        error = await refused(network, "cellex", call)
        assert error.code() is grpc.StatusCode.PERMISSION_DENIED, method
        assert "cellex sent a message in the name of" in error.details(), (method, error)
    # a name of the sender's making is answered (and logged) cut and quoted: a member's
    # 900 KB name with line breaks was echoed whole
    forged_name = "polycell\n2026-12-07 11:00:00,000 WARNING forged" + "x" * 900_000
    error = await refused(
        network, "cellex", lambda stub: stub.Unmask(pb.UnmaskResponse(ref=ref, member=forged_name))
    )
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "in the name of 'polycell\\n2026" in error.details(), error.details()[:200]
    assert len(error.details()) < 300


async def test_a_second_upload_stream_of_a_member_is_refused_while_one_is_in_flight(
    network: LocalNetwork,
) -> None:
    job = terms("el-hostile-streams")
    await start(network, job)
    payload = params_to_bytes(logreg.init_params(DIMS, CLASSES))
    header = pb.UploadHeader(
        job_id=job.job_id,
        round=1,
        total_bytes=len(payload),
        sha256=hashlib.sha256(payload).digest(),
        num_examples=10,
    )
    keys = load_member_keys(network["cellex"].directory)
    channel = open_channel(keys, network[COORDINATOR].grpc_address, COORDINATOR)
    release = asyncio.Event()

    async def slow() -> Any:
        yield pb.UploadChunk(header=header)
        await release.wait()  # the header is in: the stream holds cellex's upload slot
        yield pb.UploadChunk(data=payload)

    async def quick() -> Any:
        yield pb.UploadChunk(header=header)

    try:
        stub = pb_grpc.FederationStub(channel)
        first = stub.UploadUpdate(slow(), timeout=30)
        await asyncio.sleep(1.0)
        with pytest.raises(grpc.aio.AioRpcError) as second:
            await stub.UploadUpdate(quick(), timeout=10)
        assert second.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert second.value.details().startswith("busy: cellex already has an upload")
        release.set()
        accepted = await first
        assert "update of cellex for round 1 accepted" in accepted.detail
    finally:
        await channel.close()
    # with the first stream done, a further upload is judged on its merits again
    error = await refused(
        network, "cellex", lambda stub: stub.UploadUpdate(_one(header), timeout=10)
    )
    assert error.code() is grpc.StatusCode.ALREADY_EXISTS
    assert error.details().startswith("duplicate:")


async def _one(header: pb.UploadHeader) -> Any:
    yield pb.UploadChunk(header=header)


async def test_long_polls_with_nonsense_waits_are_refused(network: LocalNetwork) -> None:
    job = terms("el-hostile-wait")
    await start(network, job)
    for wait in (float("nan"), -1.0, float("inf")):
        error = await refused(
            network,
            "cellex",
            lambda stub, w=wait: stub.GetStatus(
                pb.StatusRequest(job_id=job.job_id, wait_s=w), timeout=10
            ),
        )
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, wait
        if math.isfinite(wait):  # the servicer's range check
            assert error.details().startswith("out_of_range: wait_s"), wait
        else:  # the node's admission gate refuses non-finite numbers before any servicer
            assert error.details() == f"field wait_s is {wait}; numbers must be finite", wait


def test_members_check_roster_certificates_against_the_authority(network: LocalNetwork) -> None:
    """What a member runs on the roster the coordinator relays, on real certificates."""
    job = dataclasses.replace(
        terms("el-hostile-roster", members=("cellex", "polycell", "sunarc"), min_members=3),
        secure_aggregation=True,
        threshold=2,
        update_clip=1.0,
    )
    keys = {m: load_member_keys(network[m].directory) for m in ("cellex", "polycell", "sunarc")}
    der = {m: k.cert.public_bytes(Encoding.DER) for m, k in keys.items()}
    checker = CertificateKeys(keys["cellex"].ca_cert, job.members)
    adverts = {
        m: secagg_client(job, m, 1, 1, k.signing_key).advertise(der[m]) for m, k in keys.items()
    }
    resolved = checker.keys(list(adverts.values()))
    assert {m: bytes(v) for m, v in resolved.items()} == {
        m: k.identity.verify_key for m, k in keys.items()
    }
    # the coordinator swaps polycell's keys for its own and attaches its own certificate
    swapped = secagg_client(job, "polycell", 1, 1, keys["sunarc"].signing_key).advertise(
        der["sunarc"]
    )
    with pytest.raises(RosterRefused, match="carries the certificate of sunarc"):
        checker.key(swapped)
    # ... or no certificate, or one the authority did not issue, or a non-member's
    for bad, reason in (
        (dataclasses.replace(adverts["polycell"], certificate=b""), "no certificate"),
        (dataclasses.replace(adverts["polycell"], certificate=b"junk"), "not valid"),
    ):
        with pytest.raises(RosterRefused, match=reason):
            checker.key(bad)
    regulator = load_member_keys(network["regulator"].directory)
    outsider = secagg_client(job, "regulator", 1, 1, regulator.signing_key).advertise(
        regulator.cert.public_bytes(Encoding.DER)
    )
    with pytest.raises(RosterRefused, match="not a member of this job"):
        checker.key(outsider)
    # and with the right certificate, a key other than the certified one does not verify
    client = secagg_client(job, "cellex", 1, 1, keys["cellex"].signing_key)
    own = client.advertise(der["cellex"])
    forged = dataclasses.replace(swapped, certificate=der["polycell"])
    roster = [own, forged, adverts["sunarc"]]
    with pytest.raises(RosterRefused, match="key advert of polycell is not signed by polycell"):
        client.share_keys(roster, checker.keys(roster))


def _crl(network: LocalNetwork, path: Path, revoked: list[int], valid: dt.timedelta) -> Path:
    """A revocation list signed by the data space's real authority, outside the network's
    own ``crl.pem`` (the session's nodes keep theirs)."""
    authority = network.workdir / "authority"
    ca_cert = load_cert(authority / "ca.crt", "authority certificate")
    ca_key = load_key(authority / "ca.key", "authority key")
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=1))
        .next_update(now + valid)
    )
    for serial in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now)
        builder = builder.add_revoked_certificate(entry.build())
    path.write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(Encoding.PEM))
    return path


def test_members_refuse_a_revoked_or_unverifiable_roster_certificate(
    network: LocalNetwork, tmp_path: Path
) -> None:
    """A coordinator relaying a revoked member's advert (or a member whose own list is
    stale) gets no shares: the member checks the roster against its revocation list."""
    keys = {m: load_member_keys(network[m].directory) for m in ("cellex", "polycell")}
    job = dataclasses.replace(
        terms("el-hostile-crl", members=("cellex", "polycell", "sunarc"), min_members=3),
        secure_aggregation=True,
        threshold=2,
        update_clip=1.0,
    )
    advert = secagg_client(job, "polycell", 1, 1, keys["polycell"].signing_key).advertise(
        keys["polycell"].cert.public_bytes(Encoding.DER)
    )
    ca = keys["cellex"].ca_cert
    clean = RevocationList(ca, _crl(network, tmp_path / "clean.pem", [], dt.timedelta(days=1)))
    assert CertificateKeys(ca, job.members, revoked=clean.is_revoked).key(advert)
    serial = keys["polycell"].cert.serial_number
    listed = RevocationList(ca, _crl(network, tmp_path / "rev.pem", [serial], dt.timedelta(days=1)))
    with pytest.raises(RosterRefused, match="the certificate of polycell is revoked"):
        CertificateKeys(ca, job.members, revoked=listed.is_revoked).key(advert)
    stale = RevocationList(ca, _crl(network, tmp_path / "old.pem", [], dt.timedelta(seconds=1)))
    time.sleep(1.5)
    with pytest.raises(RosterRefused, match="cannot check whether polycell is revoked"):
        CertificateKeys(ca, job.members, revoked=stale.is_revoked).key(advert)
    # the member runner of `qdspace fl join` and of the demo uses the node's own list
    own = member_revocations(network["cellex"].directory, ca)
    assert CertificateKeys(ca, job.members, revoked=own).key(advert)


async def test_short_oversized_corrupt_and_nan_updates_are_refused_and_nothing_is_kept(
    network: LocalNetwork,
) -> None:
    """Cellex abuses the update stream (hashed and copied a piece at a time on arrival):
    each stream is refused with a reason that names what is wrong, and the honest
    update sent afterwards is the first one the round accepts."""
    job = terms("el-hostile-payloads")
    await start(network, job)
    params = logreg.init_params(DIMS, CLASSES)
    payload = params_to_bytes(params)

    def header(data: bytes, total: int | None = None) -> pb.UploadHeader:
        return pb.UploadHeader(
            job_id=job.job_id,
            round=1,
            total_bytes=len(data) if total is None else total,
            sha256=hashlib.sha256(data).digest(),
            num_examples=10,
        )

    def stream(head: pb.UploadHeader, *parts: bytes) -> Call:
        async def messages() -> Any:
            yield pb.UploadChunk(header=head)
            for part in parts:
                yield pb.UploadChunk(data=part)

        return lambda stub: stub.UploadUpdate(messages(), timeout=30)

    tampered = bytearray(payload)
    tampered[-3] ^= 0x40
    nan = params_to_bytes([p * math.nan for p in params])
    cases = {
        "short": (stream(header(payload), payload[:-8]), "ended after"),
        "oversized": (stream(header(payload), payload, b"\x00" * 4), "run past"),
        "corrupt": (stream(header(payload), bytes(tampered)), "does not match its SHA-256"),
        "announced too large": (
            stream(header(payload, 10**9), payload),
            "announces 1000000000 bytes",
        ),
        "NaN": (stream(header(nan), nan), "NaN"),
    }
    for name, (call, why) in cases.items():
        error = await refused(network, "cellex", call)
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (name, error.details())
        assert "cellex" in error.details() and why in error.details(), (name, error.details())
    # none of them was taken as cellex's update: the honest one is accepted now
    keys = load_member_keys(network["cellex"].directory)
    channel = open_channel(keys, network[COORDINATOR].grpc_address, COORDINATOR)
    try:
        view = await FederationClient(channel, COORDINATOR, job.job_id).upload_update(1, params, 10)
        assert view.round == 1
    finally:
        await channel.close()


async def test_malformed_update_headers_are_refused_by_name_not_with_internal(
    network: LocalNetwork,
) -> None:
    """Cellex uploads updates of the job's exact size whose header the coordinator used
    to trust: negative dimensions (numpy's reshape raised), a header of nothing but ``[``
    (the JSON decoder raised RecursionError) and dimensions whose int64 product wraps to
    0. Each reached gRPC as INTERNAL with a traceback in the coordinator's log; each is
    now a ``wrong_shape`` refusal naming the problem, and the honest update sent
    afterwards is the one the round accepts."""
    shapes = logreg.model_shapes(500, CLASSES)  # 4 KB: room for 4,000 levels of '['
    job = terms("el-hostile-headers", shapes=shapes)
    keys = load_member_keys(network[COORDINATOR].directory)
    channel = open_channel(keys, network[COORDINATOR].grpc_address, COORDINATOR)
    try:
        await FederationClient(channel, COORDINATOR, job.job_id).start_job(
            job, logreg.init_params(500, CLASSES)
        )
    finally:
        await channel.close()
    size = encoded_size(shapes)
    scalars = 500 * CLASSES + CLASSES

    def crafted(head: bytes, body: int) -> bytes:
        head += b" " * (size - len(MAGIC) - 4 - body - len(head))  # JSON whitespace
        return MAGIC + struct.pack(">I", len(head)) + head + b"\0" * body

    def shaped(dims: list[list[int]]) -> bytes:
        return json.dumps({"dtype": "<f4", "shapes": dims}).encode()

    cases = {
        "negative": (crafted(shaped([[-2, -scalars // 2]]), 4 * scalars), "has shape [-2, -"),
        "nested": (crafted(b"[" * (size - len(MAGIC) - 4), 0), "nested deeper than"),
        "wrapping": (crafted(shaped([[2**62, 4]]), 0), "whole number in 0..2147483647"),
    }
    coordinator = network[COORDINATOR]
    seen_from = coordinator.log_path.stat().st_size
    for name, (payload, why) in cases.items():
        assert len(payload) == size, name

        async def messages(data: bytes = payload) -> Any:
            yield pb.UploadChunk(
                header=pb.UploadHeader(
                    job_id=job.job_id,
                    round=1,
                    total_bytes=len(data),
                    sha256=hashlib.sha256(data).digest(),
                    num_examples=10,
                )
            )
            yield pb.UploadChunk(data=data)

        error = await refused(
            network, "cellex", lambda stub, m=messages: stub.UploadUpdate(m(), timeout=30)
        )
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (name, error.details())
        details = error.details()
        assert details.startswith("wrong_shape: update of cellex: parameter header"), details
        assert why in details, (name, details)
    with coordinator.log_path.open("rb") as read:
        read.seek(seen_from)
        logged = read.read().decode(errors="replace")
    assert "Traceback" not in logged, logged[-3000:]
    keys = load_member_keys(network["cellex"].directory)
    channel = open_channel(keys, coordinator.grpc_address, COORDINATOR)
    try:
        client = FederationClient(channel, COORDINATOR, job.job_id)
        view = await client.upload_update(1, logreg.init_params(500, CLASSES), 10)
        assert view.round == 1 and view.phase is Phase.TRAINING  # sunarc's is still due
    finally:
        await channel.close()


async def test_a_member_process_of_secagg_v1_is_refused_by_name_and_no_sum_is_made(
    network: LocalNetwork,
) -> None:
    """v2 masks with AES-128-CTR, v1 with ChaCha20: a v1 member's masks would not cancel
    and the sum would decode to noise. A real v1 member process (``v1_member.py``) is
    refused at its key advert with ``wrong_protocol``, by name, and takes no part; the
    round cannot reach its threshold without it, so every attempt aborts and the job
    fails with no version published. The v2 member beside it runs as usual."""
    # sunarc is a member that never joins: a secure round needs t + 1 members present
    job = terms("el-hostile-v1", members=("cellex", "polycell", "sunarc"), phase_timeout_s=3.0)
    job = dataclasses.replace(job, secure_aggregation=True, threshold=2, update_clip=1.0)
    await start(network, job)
    v1 = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).with_name("v1_member.py")),
        "cellex",
        str(network["cellex"].directory),
        network[COORDINATOR].grpc_address,
        job.job_id,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    result = await run_member(network, "polycell", job, seed=4, timeout=120)
    out, _ = await asyncio.wait_for(v1.communicate(), 60)
    printed = out.decode()
    assert v1.returncode == 3, printed
    assert (
        "refused: coordinator sunarc: FAILED_PRECONDITION: wrong_protocol: the key advert "
        "of cellex runs secure-aggregation protocol no protocol (a qdspace-secagg-v1 node), "
        "this node 'qdspace-secagg-v2'"
    ) in printed, printed
    assert "event sent" not in printed, printed
    assert result.status.phase is Phase.FAILED, result.status
    assert "round 1 failed" in result.status.detail
    assert result.status.version == 0 and result.status.history == ()
    assert [v.version for v in result.versions] == [0] and result.contributed == []
    assert result.status.secagg_protocol == "qdspace-secagg-v2"


@pytest.mark.parametrize(
    "announced", ["", "qdspace-secagg-v9" + "x" * 4000], ids=["v1-no-field", "unknown-4k"]
)
async def test_members_refuse_a_coordinator_of_another_secagg_protocol(
    network: LocalNetwork, announced: str
) -> None:
    """The other direction of the v1 test above: a real coordinator process whose secure
    job announces another wire protocol (none, as v1 coordinators send; or an unknown
    one, 4 KB long) is refused by a v2 member on reading the job's status, by name and in
    a bounded message, before the member downloads a model or advertises a key: the
    coordinator's log shows only the member's Hello, GetJob and GetStatus."""
    polycell = network["polycell"]
    network.stop(["polycell"])
    log = polycell.log_path.open("ab")
    seen_from = polycell.log_path.stat().st_size
    script = str(Path(__file__).with_name("v1_coordinator.py"))
    polycell.process = subprocess.Popen(
        [sys.executable, script, str(polycell.directory), announced],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=network.env,
        start_new_session=True,
    )
    log.close()
    try:
        network.wait_ready("polycell")
        job = terms(
            f"el-hostile-coordinator-{len(announced)}",
            coordinator="polycell",
            members=("cellex", "polycell", "sunarc"),
        )
        job = dataclasses.replace(job, secure_aggregation=True, threshold=2, update_clip=1.0)
        await start(network, job)
        with pytest.raises(FederationRefused) as refusal:
            await run_member(network, "cellex", job, seed=5, timeout=60)
    finally:
        network.stop(["polycell"])
        network.start(["polycell"])
    named = repr(announced[:64]) if announced else "no protocol (a qdspace-secagg-v1 node)"
    assert refusal.value.reason is RefusalReason.WRONG_PROTOCOL
    assert refusal.value.code == "FAILED_PRECONDITION"
    message = str(refusal.value)
    assert message.startswith(
        f"coordinator polycell runs secure-aggregation protocol {named}, "
        "this node 'qdspace-secagg-v2'"
    ), message
    assert len(message) < 300
    with polycell.log_path.open("rb") as read:
        read.seek(seen_from)
        served = read.read().decode(errors="replace")
    called = set(re.findall(r"grpc /qdspace\.v1\.(\w+/\w+) peer=cellex", served))
    assert called == {"Node/Hello", "Federation/GetJob", "Federation/GetStatus"}, served[-3000:]


def test_a_member_sends_nothing_once_the_coordinators_name_answers_as_another_member(
    network: LocalNetwork,
) -> None:
    """A session is held to the member that held the coordinator's name when the node
    joined (or that its agreement names): before each update, key or share leaves, the
    node confirms the server called by that name is still that member (a name passes to
    another company once its holder leaves). Cellex follows a job at SunArc twice through
    the node's own link (`GrpcCoordinator`, static peers, the check's real TLS
    handshake): held to SunArc's member id it contributes; held to a member id of the
    same name that is not the one answering (as when the name changed hands after the
    join), it sends nothing and the session ends saying which member answered."""
    keys = load_member_keys(network["cellex"].directory)
    address = network[COORDINATOR].grpc_address
    peers = PeerDirectory(keys, {COORDINATOR: address})
    sunarc_id = load_member_keys(network[COORDINATOR].directory).identity.member_id
    other_id = member_id_for(COORDINATOR, bytes(SigningKey.generate().verify_key))
    trainer = logreg.trainer(logreg.make_blobs(300, DIMS, CLASSES, seed=3), epochs=1, lr=0.2)

    async def follow(job: JobSpec, held_to: str) -> MemberResult:
        link = GrpcCoordinator(
            keys,
            lambda serial: False,
            open_channel(keys, address, COORDINATOR),
            COORDINATOR,
            job.job_id,
            peers.confirm_member,
        )
        try:
            follows = link.follow(
                trainer,
                on_event=lambda event: None,
                on_version=lambda version, params: None,
                poll_s=1.0,
                coordinator_id=held_to,
            )
            return await asyncio.wait_for(follows, 60)
        finally:
            await link.close()

    async def scenario() -> None:
        held = terms("held-to-joined", min_members=1, phase_timeout_s=4.0)
        await start(network, held)
        result = await follow(held, sunarc_id)
        assert result.contributed == [1], result
        assert "cellex" in result.status.history[0].members

        moved = terms("held-to-moved", min_members=1, phase_timeout_s=4.0)
        await start(network, moved)
        with pytest.raises(NotTheMember, match=f"is member {sunarc_id}, not {other_id}"):
            await follow(moved, other_id)
        keys_c = load_member_keys(network[COORDINATOR].directory)
        channel = open_channel(keys_c, address, COORDINATOR)
        try:
            client = FederationClient(channel, COORDINATOR, moved.job_id)
            deadline = time.monotonic() + 30
            status = await client.status()
            while not status.finished and time.monotonic() < deadline:
                status = await client.status(status, wait_s=2.0)
        finally:
            await channel.close()
        assert all("cellex" not in record.members for record in status.history), status

    asyncio.run(scenario())


async def _phase(client: FederationClient, phase: Phase, timeout: float = 60.0) -> Any:
    """The job's status once it has reached ``phase`` (long polls on the coordinator)."""
    deadline = time.monotonic() + timeout
    status = await client.status()
    while status.phase is not phase:
        assert time.monotonic() < deadline and not status.finished, status
        status = await client.status(status, wait_s=2.0)
    return status


async def test_members_report_a_dealer_of_garbage_shares_and_the_coordinator_leaves_it_out(
    network: LocalNetwork,
) -> None:
    """cellex, a real member over its own mutual-TLS channel, deals key shares that do
    not decrypt to both other members and abuses ``ReportBadShares`` itself (naming
    itself, naming 100 KB of nobody, naming an honest member, reporting twice). The two
    honest members run the node's own runner: each finds cellex's share unusable and
    reports it; two reports make the threshold, so cellex is left out alone and its own
    report is not believed. Two members are then too few for a secure round, and the job
    fails at once, saying who reported whom. Before, nobody told the coordinator: each
    attempt aborted at the members and was reopened with cellex in it, until the job
    failed after its last attempt, with no word of cellex."""
    job = terms("el-hostile-garbage", members=("cellex", "polycell", "sunarc"), min_members=3)
    job = dataclasses.replace(job, secure_aggregation=True, threshold=2, update_clip=1.0)
    await start(network, job)
    honest = [
        asyncio.create_task(run_member(network, m, job, seed=s, timeout=180))
        for s, m in enumerate(("polycell", "sunarc"))
    ]
    keys = load_member_keys(network["cellex"].directory)
    channel = open_channel(keys, network[COORDINATOR].grpc_address, COORDINATOR)
    try:
        client = FederationClient(channel, COORDINATOR, job.job_id)
        status = await _phase(client, Phase.ADVERTISE)
        rnd, attempt = status.round, status.attempt
        cellex = secagg_client(job, "cellex", rnd, attempt, keys.signing_key)
        await client.advertise(rnd, attempt, cellex.advertise(keys.cert.public_bytes(Encoding.DER)))
        await _phase(client, Phase.SHARE_KEYS)
        roster = await client.roster(rnd, attempt)
        checker = CertificateKeys(keys.ca_cert, job.members)
        shares = cellex.share_keys(roster, checker.keys(roster))
        garbage = [dataclasses.replace(s, ciphertext=bytes(len(s.ciphertext))) for s in shares]
        await client.share_keys(rnd, attempt, garbage)
        await _phase(client, Phase.MASKED_INPUT)
        for accused, code in (("cellex", "INVALID_ARGUMENT"), ("x" * 100_000, "INVALID_ARGUMENT")):
            with pytest.raises(FederationRefused) as refused:
                await client.report_bad_shares(rnd, attempt, accused)
            assert refused.value.code == code, refused.value
            assert "dealt it none" in str(refused.value) and len(str(refused.value)) < 300
        with pytest.raises(FederationRefused) as stale:
            await client.report_bad_shares(rnd, attempt + 1, "polycell")
        assert stale.value.reason is RefusalReason.WRONG_ROUND, stale.value
        await client.report_bad_shares(rnd, attempt, "polycell")
        # a second report is refused: as a duplicate, or as late once the two honest
        # reports have closed the attempt (and the job)
        with pytest.raises(FederationRefused) as twice:
            await client.report_bad_shares(rnd, attempt, "sunarc")
        assert twice.value.reason in (RefusalReason.DUPLICATE, RefusalReason.WRONG_ROUND)
        results = await asyncio.gather(*honest)
    finally:
        await channel.close()
    for result in results:
        assert result.status.phase is Phase.FAILED, result.status
        assert result.aborted and "bad shares from cellex" in result.aborted[0], result.aborted
        assert result.contributed == []
    detail = results[0].status.detail
    assert "polycell, sunarc reported cellex's shares: cellex is left out" in detail, detail
    assert "cellex reported" not in detail, detail
    assert "2 members are left in the job, a secure round needs 3" in detail, detail
    assert results[0].status.attempt == 1 and results[0].status.version == 0
