"""A member's side of ``qdspace.v1.Federation``: calls to the coordinator, and the round loop.

``FederationClient`` turns each RPC into a typed call (streams in chunks, errors
as ``FederationRefused`` with the coordinator's reason). ``MemberRunner`` follows
a job from the member's node: it downloads each global version and checks its
signature (and, given a hook, its ledger anchor) before anything uses it, trains
on the member's own data through a ``Trainer``, and sends only its clipped change,
masked when the job uses secure aggregation.

In secure rounds the runner trusts the coordinator with nothing it can check
itself: the roster's keys are taken only from adverts signed under the key each
member's certificate binds to it (``federation_keys``), it signs the survivor set
it is shown, and it reveals shares only for a set enough other members signed.
When it refuses, the round's abort is reported as an ``aborted`` event that names
the cause (a swapped key, an inconsistent survivor set, a member's bad shares).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from nacl.signing import SigningKey, VerifyKey
from numpy.typing import NDArray

from qdspace.federation import secagg
from qdspace.federation.chunks import (
    DEFAULT_CHUNK_BYTES,
    Assembler,
    Chunk,
    prefer_heap_for_large_buffers,
)
from qdspace.federation.errors import FederationError, RefusalReason, SecAggAbort, SecAggError
from qdspace.federation.host import StatusView
from qdspace.federation.job import JobSpec
from qdspace.federation.member import Trainer, plain_update, prepare_change, secagg_client
from qdspace.federation.params import (
    Params,
    Vector,
    body_of,
    encode_vector,
    encoded_size,
    flatten,
    params_from_bytes,
    params_to_bytes,
)
from qdspace.federation.rounds import Phase
from qdspace.federation.secagg_masks import Ring
from qdspace.federation.secagg_messages import (
    Confirmation,
    EncryptedShare,
    KeyAdvert,
    UnmaskRequest,
    UnmaskResponse,
)
from qdspace.federation.versions import AnchorCheck, ModelVersion, SignedVersion, verify_version
from qdspace.node.errors import PeerError
from qdspace.node.rpc.federation_keys import CertificateKeys, Revoked
from qdspace.node.rpc.federation_serde import (
    advert_from_proto,
    advert_to_proto,
    confirmation_to_proto,
    decode_model_chunk,
    encode_data_chunk,
    serialize,
    share_to_proto,
    shares_from_proto,
    status_from_proto,
    unmask_request_from_proto,
    unmask_to_proto,
)
from qdspace.node.runtime.federation_member import MemberEvent as MemberEvent
from qdspace.node.runtime.federation_member import MemberResult as MemberResult
from qdspace.node.runtime.federation_member import Position
from qdspace.node.runtime.federation_member import VersionHook as VersionHook
from qdspace.protocols.v1 import federation_pb2 as pb
from qdspace.protocols.v1 import federation_pb2_grpc as pb_grpc
from qdspace.protocols.v1 import node_pb2, node_pb2_grpc

logger = logging.getLogger("node.rpc")

CALL_TIMEOUT_S = 60.0
DEFAULT_POLL_S = 10.0
#: How long a member keeps polling a coordinator that cannot be reached (it restarts).
OUTAGE_S = 180.0
RETRY_S = 1.0
_TRANSIENT = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})


class FederationRefused(PeerError):
    """The coordinator refused a call; ``reason`` is its machine-readable refusal, if any."""

    def __init__(self, message: str, code: str, reason: RefusalReason | None) -> None:
        super().__init__(message, code)
        self.reason = reason


def _refusal(peer: str, exc: grpc.aio.AioRpcError) -> FederationRefused:
    details = exc.details() or ""
    prefix = details.split(":", 1)[0]
    reason = RefusalReason(prefix) if prefix in set(RefusalReason) else None
    return FederationRefused(
        f"coordinator {peer}: {exc.code().name}: {details}", exc.code().name, reason
    )


def _flat(params: Params) -> Vector:
    """The trainer's parameters as one vector: a view of a single contiguous tensor, else a copy."""
    if len(params) == 1 and params[0].dtype == np.float32 and params[0].flags.c_contiguous:
        return params[0].reshape(-1)
    return flatten(params)


@dataclass(frozen=True, slots=True)
class Download:
    """A downloaded global version (not yet verified): record, parameters, their digest.

    ``params`` are views into ``vector`` (the flat body of the received bytes);
    ``sha256`` was hashed over exactly the bytes they were parsed from.
    """

    signed: SignedVersion
    params: Params
    vector: Vector
    sha256: bytes


async def _chunks(header: pb.UploadHeader, payload: bytes | memoryview) -> AsyncIterator[bytes]:
    """The upload stream, serialized: the header, then data chunks written in one copy each."""
    yield pb.UploadChunk(header=header).SerializeToString()
    view = memoryview(payload)
    for offset in range(0, len(view), DEFAULT_CHUNK_BYTES):
        yield encode_data_chunk(view[offset : offset + DEFAULT_CHUNK_BYTES])


_METHOD = "/qdspace.v1.Federation/"


async def coordinator_key(channel: grpc.aio.Channel, name: str) -> VerifyKey:
    """The coordinator's Ed25519 key, from its certificate's identity (``Node/Hello``)."""
    stub = node_pb2_grpc.NodeStub(channel)
    nonce = uuid.uuid4().hex
    try:
        reply = await stub.Hello(node_pb2.HelloRequest(nonce=nonce), timeout=CALL_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        raise _refusal(name, exc) from None
    if reply.nonce != nonce or reply.server.name != name:
        raise PeerError(f"coordinator {name} answered as {reply.server.name!r}")
    return VerifyKey(reply.server.verify_key)


class FederationClient:
    """Typed calls to one coordinator about one job."""

    def __init__(self, channel: grpc.aio.Channel, coordinator: str, job_id: str) -> None:
        self._stub = pb_grpc.FederationStub(channel)
        # the payload streams carry serialized chunks (same wire format, fewer copies)
        self._raw_uploads = {
            name: channel.stream_unary(
                _METHOD + name,
                request_serializer=serialize,
                response_deserializer=reply.FromString,
            )
            for name, reply in (
                ("StartJob", pb.JobStatus),
                ("UploadUpdate", pb.Accepted),
                ("UploadMasked", pb.Accepted),
            )
        }
        self._raw_download = channel.unary_stream(
            _METHOD + "DownloadModel",
            request_serializer=pb.DownloadRequest.SerializeToString,
            response_deserializer=None,
        )
        self.coordinator = coordinator
        self.job_id = job_id
        self._job: JobSpec | None = None

    async def _call(self, method: str, request: Any, timeout: float = CALL_TIMEOUT_S) -> Any:
        try:
            return await getattr(self._stub, method)(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise _refusal(self.coordinator, exc) from None

    def _ref(self, round_: int, attempt: int) -> pb.RoundRef:
        return pb.RoundRef(job_id=self.job_id, round=round_, attempt=attempt)

    async def start_job(self, job: JobSpec, initial: Sequence[NDArray[np.float32]]) -> StatusView:
        payload = params_to_bytes(initial)
        header = pb.UploadHeader(
            job_id=job.job_id,
            total_bytes=len(payload),
            sha256=hashlib.sha256(payload).digest(),
            terms=job.canonical_bytes(),
        )
        try:
            reply = await self._raw_uploads["StartJob"](
                _chunks(header, payload), timeout=CALL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            raise _refusal(self.coordinator, exc) from None
        return status_from_proto(reply)

    async def list_jobs(self) -> list[StatusView]:
        reply = await self._call("ListJobs", pb.JobRef(job_id=""))
        return [status_from_proto(s) for s in reply.jobs]

    async def job(self) -> JobSpec:
        reply = await self._call("GetJob", pb.JobRef(job_id=self.job_id))
        job = JobSpec.from_dict(json.loads(reply.terms))
        if job.digest() != reply.job_digest or job.job_id != self.job_id:
            raise PeerError(f"coordinator {self.coordinator} sent terms of another job")
        self._job = job
        return job

    async def status(self, known: Position | None = None, wait_s: float = 0.0) -> StatusView:
        request = pb.StatusRequest(job_id=self.job_id, wait_s=wait_s)
        if known is not None:
            request.known_round = known.round
            request.known_attempt = known.attempt
            request.known_phase = known.phase.value
            request.known_version = known.version
        reply = await self._call("GetStatus", request, timeout=wait_s + CALL_TIMEOUT_S)
        return status_from_proto(reply)

    async def version_proof(self, version: int) -> str:
        """The coordinator's ledger proof (JSON) of ``version``; UNAVAILABLE until anchored."""
        request = pb.VersionRef(job_id=self.job_id, version=version)
        reply = await self._call("GetVersionProof", request)
        return str(reply.proof)

    async def download(self, version: int) -> Download:
        """The signed record and parameters of ``version`` (not yet verified).

        The bytes are hashed as they arrive; a stream that does not match the
        SHA-256 its header announces is refused here, and the digest goes on to
        ``verify_version`` (which checks it against the signed record).
        """
        request = pb.DownloadRequest(job_id=self.job_id, version=version)
        job = await self.job() if self._job is None else self._job
        try:
            stream = self._raw_download(request, timeout=CALL_TIMEOUT_S)
            header, _ = decode_model_chunk(await anext(aiter(stream)))
            if header is None:
                raise PeerError(f"coordinator {self.coordinator}: model stream without a header")
            assembler = Assembler(
                header.total_bytes,
                header.sha256,
                limit=encoded_size(job.shapes),  # never what the coordinator announces
                what=f"version {version} from {self.coordinator}",
                hash_always=True,
            )
            async for raw in stream:
                again, data = decode_model_chunk(raw)
                if again is not None:
                    raise PeerError(f"coordinator {self.coordinator}: a second model header")
                assembler.add(Chunk(assembler.received, header.total_bytes, data))
        except grpc.aio.AioRpcError as exc:
            raise _refusal(self.coordinator, exc) from None
        payload = assembler.finish()
        digest = assembler.digest
        assert digest is not None
        params = params_from_bytes(payload)
        signed = SignedVersion(header.record, header.signature)
        return Download(signed, params, body_of(payload), digest)

    async def _upload(
        self, method: str, header: pb.UploadHeader, payload: bytes | memoryview
    ) -> StatusView:
        # No SHA-256 on uploads: TLS (AEAD) already protects the stream, and hashing
        # 50 MB on both ends would cost more than sending it. The size is checked.
        header.job_id = self.job_id
        header.total_bytes = len(payload)
        try:
            reply = await self._raw_uploads[method](
                _chunks(header, payload), timeout=CALL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            raise _refusal(self.coordinator, exc) from None
        return status_from_proto(reply.status)

    async def upload_update(
        self, round_: int, params: Sequence[NDArray[np.float32]] | Vector, examples: int
    ) -> StatusView:
        """Send trained parameters (tensors, or the flat vector of the job's shapes)."""
        header = pb.UploadHeader(round=round_, num_examples=examples)
        if isinstance(params, np.ndarray):
            job = await self.job() if self._job is None else self._job
            payload: bytes | memoryview = encode_vector(params, job.shapes)
        else:
            payload = params_to_bytes(params)
        return await self._upload("UploadUpdate", header, payload)

    async def upload_masked(self, round_: int, attempt: int, masked: Ring) -> StatusView:
        header = pb.UploadHeader(round=round_, attempt=attempt)
        payload = np.ascontiguousarray(masked, dtype="<u4").data.cast("B")
        return await self._upload("UploadMasked", header, payload)

    async def advertise(self, round_: int, attempt: int, advert: KeyAdvert) -> None:
        request = pb.AdvertiseRequest(
            ref=self._ref(round_, attempt), advert=advert_to_proto(advert)
        )
        await self._call("AdvertiseKeys", request)

    async def roster(self, round_: int, attempt: int) -> list[KeyAdvert]:
        reply = await self._call("GetRoster", self._ref(round_, attempt))
        return [advert_from_proto(a) for a in reply.adverts]

    async def share_keys(self, round_: int, attempt: int, shares: Sequence[EncryptedShare]) -> None:
        request = pb.ShareKeysRequest(
            ref=self._ref(round_, attempt), shares=[share_to_proto(s) for s in shares]
        )
        await self._call("ShareKeys", request)

    async def inbox(self, round_: int, attempt: int) -> list[EncryptedShare]:
        reply = await self._call("GetInbox", self._ref(round_, attempt))
        return shares_from_proto(reply.shares)

    async def unmask_request(self, round_: int, attempt: int) -> UnmaskRequest:
        reply = await self._call("GetUnmaskRequest", self._ref(round_, attempt))
        return unmask_request_from_proto(reply)

    async def confirm(self, round_: int, attempt: int, confirmation: Confirmation) -> None:
        request = pb.ConfirmRequest(
            ref=self._ref(round_, attempt), confirmation=confirmation_to_proto(confirmation)
        )
        await self._call("ConfirmSurvivors", request)

    async def unmask(self, round_: int, attempt: int, response: UnmaskResponse) -> None:
        await self._call("Unmask", unmask_to_proto(response, self._ref(round_, attempt)))


# --- the member's round loop -------------------------------------------------------------


@dataclass
class _SecureRound:
    client: secagg.SecAggClient
    change: Vector
    steps: set[Phase] = field(default_factory=set)


class MemberRunner:
    """Follows one job as one member until it finishes (or the task is cancelled)."""

    def __init__(
        self,
        client: FederationClient,
        member: str,
        trainer: Trainer,
        coordinator_key: VerifyKey,
        *,
        signing_key: SigningKey | None = None,
        certificate: x509.Certificate | None = None,
        ca_cert: x509.Certificate | None = None,
        revoked: Revoked | None = None,
        on_event: Callable[[MemberEvent], None] | None = None,
        on_version: VersionHook | None = None,
        anchored: AnchorCheck | None = None,
        seed: int = 0,
        poll_s: float = DEFAULT_POLL_S,
    ) -> None:
        self.client = client
        self.member = member
        self._trainer = trainer
        self._key = coordinator_key
        self._signing_key = signing_key
        self._certificate = certificate
        self._ca_cert = ca_cert
        self._revoked = revoked  # the member's own revocation list, for the roster
        self._on_event = on_event
        self._on_version = on_version
        self._anchored = anchored
        self._rng = np.random.default_rng(seed)
        self._poll_s = poll_s
        self._job: JobSpec | None = None
        self._version: ModelVersion | None = None
        self._params: Params | None = None
        self._global: Vector | None = None
        self._trained: dict[int, tuple[Vector, int]] = {}
        self._sent: set[int] = set()
        self._secure: dict[tuple[int, int], _SecureRound] = {}
        self._result: MemberResult | None = None
        prefer_heap_for_large_buffers()  # 50 MB round buffers without per-round page faults

    def _emit(self, kind: str, round_: int, detail: str = "") -> None:
        version = -1 if self._version is None else self._version.version
        event = MemberEvent(kind, round_, version, detail)
        logger.info("federation member %s: %s round %s: %s", self.member, kind, round_, detail)
        if self._on_event is not None:
            self._on_event(event)

    @property
    def job(self) -> JobSpec:
        if self._job is None:
            raise FederationError("the runner has not fetched the job yet")
        return self._job

    async def run(self) -> MemberResult:
        job = self._job = await self.client.job()
        if self.member not in job.members:
            raise FederationRefused(
                f"{self.member} is not a member of job {job.job_id}",
                "PERMISSION_DENIED",
                RefusalReason.NOT_A_MEMBER,
            )
        status = await self.client.status()
        result = self._result = MemberResult(status)
        while True:
            if self._version is None or status.version > self._version.version:
                await self._download(status.version)
            if status.finished:
                break
            try:
                await self._act(status)
            except FederationRefused as exc:
                if exc.code == "PERMISSION_DENIED":
                    raise
                self._emit("refused", status.round, str(exc))
            except (SecAggError, SecAggAbort) as exc:  # we refuse what the coordinator relayed
                result.aborted.append(f"round {status.round} attempt {status.attempt}: {exc}")
                self._emit("aborted", status.round, str(exc))
            except FederationError as exc:  # e.g. our masked input missed the round
                self._emit("skipped", status.round, str(exc))
            status = await self._poll(status)
        result.status, result.params = status, self._params
        result.contributed = sorted(self._sent)
        self._emit("done", status.round, f"{status.phase.value}: {status.detail}")
        return result

    async def _poll(self, known: StatusView) -> StatusView:
        """The next status; a coordinator that is down (restarting) is polled again until
        it is back or ``OUTAGE_S`` has passed: a restarted coordinator resumes the job."""
        waited = 0.0
        while True:
            try:
                return await self.client.status(known, wait_s=self._poll_s)
            except FederationRefused as exc:
                if exc.code not in _TRANSIENT or waited >= OUTAGE_S:
                    raise
                self._emit("waiting", known.round, f"coordinator unreachable: {exc}")
            await asyncio.sleep(RETRY_S)
            waited += RETRY_S

    async def _download(self, version: int) -> None:
        got = await self.client.download(version)
        signed, params = got.signed, got.params
        parent = self._version
        if parent is not None and version != parent.version + 1:
            parent = None  # missed versions (joined late or dropped): no chain link to check
        checked = verify_version(
            signed,
            self._key,
            params,
            job_id=self.job.job_id,
            job_digest=self.job.digest(),
            parent=parent,
            anchored=self._anchored,
            digest=got.sha256,
        )
        self._version, self._params, self._global = checked, params, got.vector
        assert self._result is not None
        self._result.versions.append(checked)
        self._emit("model", checked.round, f"version {checked.version} verified")
        if self._on_version is not None:
            await asyncio.to_thread(self._on_version, checked, params)

    async def _train(self, round_: int) -> tuple[Vector, int]:
        if round_ not in self._trained:
            assert self._params is not None
            trained, examples = await asyncio.to_thread(self._trainer, self._params, round_)
            self._trained = {round_: (_flat(trained), examples)}
            self._emit("trained", round_, f"{examples} local examples")
        return self._trained[round_]

    async def _act(self, status: StatusView) -> None:
        round_, attempt, phase = status.round, status.attempt, status.phase
        job, client = self.job, self.client
        assert self._params is not None and self._global is not None
        global_vector = self._global
        if phase is Phase.TRAINING:
            if round_ in self._sent:
                return
            trained, examples = await self._train(round_)
            update = plain_update(job, global_vector, trained, self._rng)
            await client.upload_update(round_, update, examples)
            self._sent.add(round_)
            self._emit("sent", round_, "update sent")
            return
        key = (round_, attempt)
        state = self._secure.get(key)
        if phase is Phase.ADVERTISE and state is None:
            signing_key, certificate, _ = self._credentials()
            trained, _ = await self._train(round_)
            change = prepare_change(job, global_vector, trained, self._rng)
            sa = secagg_client(job, self.member, round_, attempt, signing_key)
            state = self._secure[key] = _SecureRound(sa, change)
            state.steps.add(Phase.ADVERTISE)
            await client.advertise(round_, attempt, sa.advertise(certificate))
        elif state is None or phase in state.steps:
            return
        elif phase is Phase.SHARE_KEYS:
            state.steps.add(phase)
            roster = await client.roster(round_, attempt)
            verify_keys = self._credentials()[2].keys(roster)
            await client.share_keys(round_, attempt, state.client.share_keys(roster, verify_keys))
        elif phase is Phase.MASKED_INPUT:
            state.steps.add(phase)
            inbox = await client.inbox(round_, attempt)
            masked = await asyncio.to_thread(state.client.mask, state.change, inbox)
            await client.upload_masked(round_, attempt, masked.vector)
            self._sent.add(round_)
            self._emit("sent", round_, "masked update sent")
        elif phase is Phase.CONSISTENCY:
            state.steps.add(phase)
            request = await client.unmask_request(round_, attempt)
            await client.confirm(round_, attempt, state.client.confirm(request))
        elif phase is Phase.UNMASK:
            state.steps.add(phase)
            request = await client.unmask_request(round_, attempt)
            await client.unmask(round_, attempt, state.client.unmask(request))

    def _credentials(self) -> tuple[SigningKey, bytes, CertificateKeys]:
        """What secure rounds need: our signing key, our certificate (DER) for the others to
        check, and the authority's certificate to check theirs."""
        if self._signing_key is None or self._certificate is None or self._ca_cert is None:
            raise SecAggError(
                f"member {self.member}: secure aggregation needs the member's signing key, "
                "its certificate and the authority's certificate"
            )
        der = self._certificate.public_bytes(Encoding.DER)
        checker = CertificateKeys(self._ca_cert, self.job.members, revoked=self._revoked)
        return self._signing_key, der, checker
