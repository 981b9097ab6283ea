"""A member's side of ``qdspace.v1.Federation``: typed calls to the coordinator.

``FederationClient`` turns each RPC into a typed call: uploads stream in chunks
(serialized once, written in one copy each), the model download is hashed as it
arrives and never allowed to grow past what the job's shapes need, its header must
name exactly the job's shapes (a coordinator's version of another shape is refused
with a ``PeerError`` naming both, not a ``ValueError`` from deep in numpy; so are bytes
that are no ``ModelChunk``, not protobuf's ``DecodeError``), and every gRPC error
becomes a ``FederationRefused`` with the coordinator's machine-readable reason.
Once it has read a job's terms it holds the coordinator to them: terms with another
digest on a later read are refused (the member's checks ran on the first ones).
It decides nothing: what to send when is the round loop's (``federation_runner``).
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError
from nacl.signing import VerifyKey
from numpy.typing import NDArray

from qdspace.federation.chunks import DEFAULT_CHUNK_BYTES, Assembler, Chunk, check_chunk_bytes
from qdspace.federation.errors import FederationError, ParamsError, RefusalReason
from qdspace.federation.job import JobSpec
from qdspace.federation.params import (
    Params,
    Vector,
    body_of,
    encode_vector,
    encoded_size,
    params_from_bytes,
    params_to_bytes,
)
from qdspace.federation.round_status import StatusView
from qdspace.federation.secagg_masks import Ring
from qdspace.federation.secagg_messages import (
    Confirmation,
    EncryptedShare,
    KeyAdvert,
    UnmaskRequest,
    UnmaskResponse,
)
from qdspace.federation.versions import SignedVersion
from qdspace.node.errors import PeerError
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
from qdspace.node.runtime.federation_member import Position
from qdspace.protocols.v1 import federation_pb2 as pb
from qdspace.protocols.v1 import federation_pb2_grpc as pb_grpc
from qdspace.protocols.v1 import node_pb2, node_pb2_grpc
from qdspace.util.json_depth import loads as bounded_json

CALL_TIMEOUT_S = 60.0


class FederationRefused(PeerError):
    """The coordinator refused a call; ``reason`` is its machine-readable refusal, if any."""

    def __init__(self, message: str, code: str, reason: RefusalReason | None) -> None:
        super().__init__(message, code)
        self.reason = reason


#: What grpcio's asyncio client reports instead of the server's status when the server
#: ended a client-streaming call (refused an upload at its header, say) while a write
#: of the client's was still under way: the failed write overwrites the status that had
#: arrived (grpc/grpc#36066; a fix is proposed upstream, not released).
LOST_STATUS_DETAILS = "Internal error from Core"


def status_lost(exc: grpc.aio.AioRpcError) -> bool:
    """Whether gRPC's client lost the coordinator's status of a stream it ended early."""
    return exc.code() is grpc.StatusCode.INTERNAL and exc.details() == LOST_STATUS_DETAILS


def _refusal(peer: str, exc: grpc.aio.AioRpcError) -> FederationRefused:
    if status_lost(exc):
        return FederationRefused(
            f"coordinator {peer} ended the call while it was still being sent; gRPC's "
            "client lost its reason (grpc/grpc#36066): the job's status tells what changed",
            exc.code().name,
            None,
        )
    details = exc.details() or ""
    prefix = details.split(":", 1)[0]
    reason = RefusalReason(prefix) if prefix in set(RefusalReason) else None
    return FederationRefused(
        f"coordinator {peer}: {exc.code().name}: {details}", exc.code().name, reason
    )


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


async def _chunks(
    header: pb.UploadHeader, payload: bytes | memoryview, size: int
) -> AsyncIterator[bytes]:
    """The upload stream, serialized: the header, then data chunks of ``size`` bytes
    written in one copy each."""
    yield pb.UploadChunk(header=header).SerializeToString()
    view = memoryview(payload)
    for offset in range(0, len(view), size):
        yield encode_data_chunk(view[offset : offset + size])


async def _streamed_chunks(
    header: pb.UploadHeader, parts: Iterator[NDArray[np.uint32]]
) -> AsyncIterator[bytes]:
    """The upload stream of a payload made as it goes: while one chunk is written to the
    channel, the next one is made in a worker thread (masking overlaps sending)."""
    yield pb.UploadChunk(header=header).SerializeToString()
    loop = asyncio.get_running_loop()
    pending = loop.run_in_executor(None, _next_encoded, parts)
    while True:
        data = await pending
        if data is None:
            return
        pending = loop.run_in_executor(None, _next_encoded, parts)
        yield data


def _next_encoded(parts: Iterator[NDArray[np.uint32]]) -> bytes | None:
    part = next(parts, None)
    if part is None:
        return None
    return encode_data_chunk(np.ascontiguousarray(part, dtype="<u4").data.cast("B"))


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
    """Typed calls to one coordinator about one job.

    ``chunk_bytes``: what uploads are cut into (``MIN_CHUNK_BYTES`` to
    ``MAX_CHUNK_BYTES``; the coordinator accepts any size in that range).
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        coordinator: str,
        job_id: str,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        self.chunk_bytes = check_chunk_bytes(chunk_bytes)
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
                _chunks(header, payload, self.chunk_bytes), timeout=CALL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            raise _refusal(self.coordinator, exc) from None
        return status_from_proto(reply)

    async def list_jobs(self) -> list[StatusView]:
        reply = await self._call("ListJobs", pb.JobRef(job_id=""))
        return [status_from_proto(s) for s in reply.jobs]

    async def job(self) -> JobSpec:
        reply = await self._call("GetJob", pb.JobRef(job_id=self.job_id))
        try:
            terms = bounded_json(reply.terms)
        except ValueError as exc:
            raise PeerError(
                f"coordinator {self.coordinator} sent unreadable terms: {exc}"
            ) from None
        try:
            job = JobSpec.from_dict(terms)
        except FederationError as exc:  # the coordinator's fault: a 502, not our caller's 400
            raise PeerError(
                f"coordinator {self.coordinator} sent terms that are not valid: {exc}"
            ) from None
        if job.digest() != reply.job_digest or job.job_id != self.job_id:
            raise PeerError(f"coordinator {self.coordinator} sent terms of another job")
        if job.coordinator != self.coordinator:
            # the terms decide whose consistency signature counts (never the coordinator's):
            # terms naming another coordinator would count this one's own signatures, and
            # let it show two survivor splits and unmask one member's update
            raise PeerError(
                f"coordinator {self.coordinator} sent terms naming "
                f"{job.coordinator[:80]!r} as the coordinator"
            )
        if self._job is not None and job.digest() != self._job.digest():
            # the member checked the first terms (model, training, DP, secure aggregation)
            # before it joined; terms swapped later (DP or masking dropped, say) must not
            # be the ones its round loop follows
            raise PeerError(
                f"coordinator {self.coordinator} sent terms of job {self.job_id} other than "
                f"the ones it sent before (digest {job.digest().hex()[:16]}, first "
                f"{self._job.digest().hex()[:16]}): a member takes part only in the terms "
                "it joined"
            )
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
            first = await anext(aiter(stream), None)  # an empty stream is no model either
            header = None if first is None else self._model_chunk(first, version)[0]
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
                again, data = self._model_chunk(raw, version)
                if again is not None:
                    raise PeerError(f"coordinator {self.coordinator}: a second model header")
                assembler.add(Chunk(assembler.received, header.total_bytes, data))
        except grpc.aio.AioRpcError as exc:
            raise _refusal(self.coordinator, exc) from None
        payload = assembler.finish()
        digest = assembler.digest
        assert digest is not None
        try:  # the job's shapes, not the ones the coordinator's header names
            params = params_from_bytes(payload, job.shapes)
        except ParamsError as exc:
            raise PeerError(
                f"coordinator {self.coordinator} sent version {version} of job "
                f"{self.job_id} that is not the job's model: {exc}"
            ) from None
        signed = SignedVersion(header.record, header.signature)
        return Download(signed, params, body_of(payload, job.shapes), digest)

    def _model_chunk(
        self, raw: bytes, version: int
    ) -> tuple[pb.ModelHeader | None, memoryview | bytes]:
        """One message of a download: bytes that are no ``ModelChunk`` are the
        coordinator's fault (a ``PeerError``), not protobuf's ``DecodeError``."""
        try:
            return decode_model_chunk(raw)
        except DecodeError as exc:
            raise PeerError(
                f"coordinator {self.coordinator} sent version {version} of job {self.job_id} "
                f"in chunks that are not ModelChunk messages: {exc}"
            ) from None

    async def _upload(
        self, method: str, header: pb.UploadHeader, payload: bytes | memoryview
    ) -> StatusView:
        # No SHA-256 on uploads: TLS (AEAD) already protects the stream, and hashing
        # 50 MB on both ends would cost more than sending it. The size is checked.
        header.job_id = self.job_id
        header.total_bytes = len(payload)
        try:
            reply = await self._raw_uploads[method](
                _chunks(header, payload, self.chunk_bytes), timeout=CALL_TIMEOUT_S
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

    @property
    def chunk_elements(self) -> int:
        """Ring elements (4 bytes each) per chunk of a streamed masked input."""
        return self.chunk_bytes // 4

    async def upload_masked_stream(
        self, round_: int, attempt: int, elements: int, parts: Iterator[NDArray[np.uint32]]
    ) -> StatusView:
        """Send a masked input of ``elements`` ring elements made chunk by chunk by
        ``parts`` (each chunk is made while the one before it is sent); each part is one
        chunk on the wire, so it holds at most ``chunk_elements`` elements."""
        header = pb.UploadHeader(round=round_, attempt=attempt, job_id=self.job_id)
        header.total_bytes = 4 * elements
        try:
            reply = await self._raw_uploads["UploadMasked"](
                _streamed_chunks(header, parts), timeout=CALL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            raise _refusal(self.coordinator, exc) from None
        return status_from_proto(reply.status)

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

    async def report_bad_shares(self, round_: int, attempt: int, accused: str) -> None:
        request = pb.BadSharesReport(ref=self._ref(round_, attempt), accused=accused)
        await self._call("ReportBadShares", request)
