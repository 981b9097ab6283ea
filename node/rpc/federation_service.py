"""``qdspace.v1.Federation``: a coordinator's jobs served to their members.

Thin adapter over ``federation.host.JobHost``: decode, call one method under the
job's lock (in a worker thread, so aggregating a 50 MB round does not stall the
event loop), encode, and map ``federation`` errors to gRPC statuses in one place.
The caller's member name is the authenticated TLS peer; a message claiming to be
from someone else is refused by the round logic. ``GetStatus`` is a long poll: it
answers as soon as the job moves on, or when the current phase's deadline passes
(``wait_s`` from the caller is checked by ``federation.host.poll_wait``).

A hostile member is expected: every job call but ``ListJobs`` needs membership *and*,
for a job under contract, an agreement in force (FINALIZED, not terminated, policy
allows training now); one upload stream per member and job is read at a time (a
second is refused with RESOURCE_EXHAUSTED before its data is read); a key advert must
carry the caller's own certificate, which members check before trusting the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import grpc
from cryptography import x509
from google.protobuf.message import DecodeError
from nacl.signing import SigningKey, VerifyKey

from qdspace.federation.agreements import check_job_agreement, job_asset
from qdspace.federation.chunks import (
    DEFAULT_CHUNK_BYTES,
    Assembler,
    Chunk,
    prefer_heap_for_large_buffers,
)
from qdspace.federation.errors import (
    FederationError,
    RefusalReason,
    RosterRefused,
    SecAggAbort,
    UpdateRefused,
)
from qdspace.federation.host import (
    JobExists,
    JobHost,
    Published,
    UnknownJob,
    VersionAnchor,
    load_jobs,
    poll_wait,
)
from qdspace.federation.job import JobSpec
from qdspace.federation.params import encoded_size, params_from_bytes
from qdspace.federation.rounds import Phase
from qdspace.federation.secagg_messages import KeyAdvert
from qdspace.federation.versions import LEDGER_KIND
from qdspace.ledger.errors import LedgerError, NotAnchored, UnknownLeaf
from qdspace.ledger.proofs import build_proof
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.rpc.auth import Peer, current_peer
from qdspace.node.rpc.federation_keys import CertificateKeys
from qdspace.node.rpc.federation_serde import (
    advert_from_proto,
    advert_to_proto,
    confirmation_from_proto,
    decode_upload_chunk,
    encode_data_chunk,
    serialize,
    share_to_proto,
    shares_from_proto,
    status_to_proto,
    unmask_from_proto,
    unmask_request_to_proto,
)
from qdspace.protocols.v1 import federation_pb2 as pb
from qdspace.protocols.v1 import federation_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from qdspace.node.context import NodeContext
    from qdspace.node.runtime.contracts import ContractRuntime

logger = logging.getLogger("node.rpc")

T = TypeVar("T")

_REFUSAL_CODES = {
    RefusalReason.NOT_A_MEMBER: grpc.StatusCode.PERMISSION_DENIED,
    RefusalReason.NO_AGREEMENT: grpc.StatusCode.PERMISSION_DENIED,
    RefusalReason.BAD_SIGNATURE: grpc.StatusCode.PERMISSION_DENIED,
    RefusalReason.WRONG_SHAPE: grpc.StatusCode.INVALID_ARGUMENT,
    RefusalReason.NOT_FINITE: grpc.StatusCode.INVALID_ARGUMENT,
    RefusalReason.DUPLICATE: grpc.StatusCode.ALREADY_EXISTS,
    RefusalReason.WRONG_JOB: grpc.StatusCode.NOT_FOUND,
    RefusalReason.BUSY: grpc.StatusCode.RESOURCE_EXHAUSTED,
    RefusalReason.OUT_OF_RANGE: grpc.StatusCode.INVALID_ARGUMENT,
}


def status_code_of(exc: FederationError) -> grpc.StatusCode:
    """The gRPC status of a federation error (the details carry ``str(exc)``)."""
    if isinstance(exc, UpdateRefused):
        return _REFUSAL_CODES.get(exc.reason, grpc.StatusCode.FAILED_PRECONDITION)
    if isinstance(exc, UnknownJob):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, JobExists):
        return grpc.StatusCode.ALREADY_EXISTS
    if isinstance(exc, RosterRefused):
        return grpc.StatusCode.PERMISSION_DENIED
    if isinstance(exc, SecAggAbort):
        return grpc.StatusCode.ABORTED
    return grpc.StatusCode.INVALID_ARGUMENT


async def _abort(context: grpc.aio.ServicerContext, method: str, exc: Exception) -> NoReturn:
    if isinstance(exc, FederationError):
        code = status_code_of(exc)
    else:
        code = grpc.StatusCode.INVALID_ARGUMENT
    logger.warning("federation %s refused for %s: %s", method, current_peer().name, exc)
    await context.abort(code, str(exc))
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


def _state(host: JobHost) -> tuple[int, int, str, int]:
    c = host.coordinator
    return (c.round, c.attempt, c.phase.value, c.version)


@dataclass
class _Slot:
    """One job with its lock and a 'something changed' event for long polls."""

    host: JobHost
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    # the latest version's stream, serialized once and sent to every member that downloads it
    stream: tuple[Published | None, tuple[bytes, ...]] = (None, ())

    def model_stream(self, published: Published) -> tuple[bytes, ...]:
        if self.stream[0] is not published:
            payload = memoryview(published.payload)
            header = pb.ModelChunk(
                header=pb.ModelHeader(
                    record=published.signed.record,
                    signature=published.signed.signature,
                    total_bytes=len(payload),
                    sha256=published.sha256,
                )
            ).SerializeToString()
            data = (
                encode_data_chunk(payload[offset : offset + DEFAULT_CHUNK_BYTES])
                for offset in range(0, len(payload), DEFAULT_CHUNK_BYTES)
            )
            self.stream = (published, (header, *data))
        return self.stream[1]

    def notify(self) -> None:
        old, self.changed = self.changed, asyncio.Event()
        old.set()


class FederationServicer(pb_grpc.FederationServicer):
    """Serves the jobs this node coordinates; resumes them from disk when built."""

    def __init__(
        self,
        me: MemberIdentity,
        signer: SigningKey,
        root: Path,
        *,
        anchor: VersionAnchor | None = None,
        clock: Callable[[], float] = time.monotonic,
        agreements: AgreementCheck | None = None,
        offer: Callable[[JobSpec], None] | None = None,
        proofs: ProofSource | None = None,
        ca_cert: x509.Certificate | None = None,
    ) -> None:
        self._me = me
        self._ca = ca_cert
        self._uploading: set[tuple[str, str]] = set()
        self._proofs = proofs
        self._agreements = agreements
        self._offer = offer
        self._signer = signer
        self._root = root
        self._anchor = anchor
        self._clock = clock
        prefer_heap_for_large_buffers()  # 50 MB round buffers without per-round page faults
        hosts = load_jobs(root, signer, clock(), anchor=anchor)
        self._jobs: dict[str, _Slot] = {job_id: _Slot(h) for job_id, h in hosts.items()}
        for slot in self._jobs.values():
            self._publish(slot.host.job)

    def _publish(self, job: JobSpec) -> None:
        """Offer a job under contract in this node's catalog, so members can negotiate it."""
        if job.agreement_asset is not None and self._offer is not None:
            self._offer(job)

    @classmethod
    def from_context(cls, ctx: NodeContext) -> FederationServicer:
        """Built from the node's context; ``ctx.anchor_version`` is the ledger hook."""
        anchor = ctx.anchor_version
        contracts = getattr(ctx, "contracts", None)
        return cls(
            ctx.keys.identity,
            ctx.keys.signing_key,
            ctx.layout.federation_jobs,
            anchor=anchor if callable(anchor) else None,
            agreements=None if contracts is None else contract_agreements(contracts),
            offer=None if contracts is None else contract_offer(contracts),
            proofs=ledger_proofs(ctx),
            ca_cert=ctx.keys.ca_cert,
        )

    async def _require_agreement(self, job: JobSpec, member_id: str) -> None:
        """Refuse a member without an agreement in force when the job is under contract."""
        if job.agreement_asset is None or member_id == self._me.member_id:
            return  # the coordinator takes part in its own job without a contract with itself
        if self._agreements is None:
            raise UpdateRefused(
                RefusalReason.NO_AGREEMENT,
                f"job {job.job_id} needs agreements, and {self._me.name} keeps no contracts",
            )
        asset, now = job.agreement_asset, datetime.now(UTC)
        reason = await asyncio.to_thread(self._agreements, member_id, asset, now)
        if reason is not None:
            raise UpdateRefused(RefusalReason.NO_AGREEMENT, reason)

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_FederationServicer_to_server(self, _RawPayloads(server))

    # --- helpers -----------------------------------------------------------------------

    def _slot(self, job_id: str) -> _Slot:
        slot = self._jobs.get(job_id)
        if slot is None:
            raise UnknownJob(f"no job {job_id!r} on {self._me.name}")
        return slot

    async def _locked(self, slot: _Slot, call: Callable[[], T]) -> T:
        """Run ``call`` on the job under its lock in a worker thread; wake long polls."""
        async with slot.lock:
            before = _state(slot.host)
            try:
                return await asyncio.to_thread(call)
            finally:
                if _state(slot.host) != before:
                    slot.notify()

    async def _upload(
        self,
        requests: AsyncIterator[bytes],
        check: Callable[[pb.UploadHeader], Awaitable[None]],
        limit: Callable[[pb.UploadHeader], int],
        what: str,
    ) -> tuple[pb.UploadHeader, memoryview]:
        """Read a header-then-data stream; ``check`` refuses on the header, before any data.

        The messages arrive serialized (see ``_RawPayloads``): data chunks are read as
        views of the received bytes and copied once, into the payload buffer.
        """
        try:
            header, _ = decode_upload_chunk(await anext(requests))
        except StopAsyncIteration:
            raise UpdateRefused(RefusalReason.WRONG_SHAPE, f"{what}: empty stream") from None
        except DecodeError as exc:
            raise UpdateRefused(RefusalReason.WRONG_SHAPE, f"{what}: {exc}") from None
        if header is None:
            raise UpdateRefused(
                RefusalReason.WRONG_SHAPE, f"{what}: stream must start with a header"
            )
        await check(header)
        assembler = Assembler(header.total_bytes, header.sha256, limit=limit(header), what=what)
        async for raw in requests:
            try:
                again, data = decode_upload_chunk(raw)
            except DecodeError as exc:
                raise UpdateRefused(RefusalReason.WRONG_SHAPE, f"{what}: {exc}") from None
            if again is not None:
                raise UpdateRefused(RefusalReason.WRONG_SHAPE, f"{what}: a second header")
            assembler.add(Chunk(assembler.received, header.total_bytes, data))
        return header, assembler.finish()

    def _member(self) -> str:
        return current_peer().name

    async def _admitted(self, job_id: str) -> _Slot:
        """The job, if the caller is one of its members holding an agreement in force."""
        slot = self._slot(job_id)
        self._visible(job_id)
        await self._require_agreement(slot.host.job, current_peer().member_id)
        return slot

    def _advert_key(self, slot: _Slot, peer: Peer, advert: KeyAdvert) -> VerifyKey:
        """The caller's signing key, once its advert is seen to carry the caller's certificate."""
        if advert.member != peer.name:
            raise UpdateRefused(
                RefusalReason.NOT_A_MEMBER,
                f"{peer.name} sent a message in the name of {advert.member}",
            )
        if self._ca is None:
            raise RosterRefused(f"{self._me.name} has no authority certificate to check adverts")
        identity = CertificateKeys(self._ca, slot.host.job.members).identity(advert)
        if identity.fingerprint != peer.identity.fingerprint:
            raise UpdateRefused(
                RefusalReason.BAD_SIGNATURE,
                f"key advert of {peer.name} carries a certificate other than its own",
            )
        return VerifyKey(peer.identity.verify_key)

    def _accepted(self, slot: _Slot, detail: str) -> pb.Accepted:
        view = slot.host.view(self._clock())
        return pb.Accepted(detail=detail, status=status_to_proto(view))

    # --- administration ----------------------------------------------------------------

    async def StartJob(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> pb.JobStatus:
        peer = current_peer()
        if peer.member_id != self._me.member_id:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"only {self._me.name}'s own operator may start jobs on it, not {peer.name}",
            )
        holder: dict[str, JobSpec] = {}

        async def check(header: pb.UploadHeader) -> None:
            job = JobSpec.from_dict(_json(header.terms))
            if job.coordinator != self._me.name:
                raise FederationError(
                    f"job {job.job_id} names coordinator {job.coordinator}, this node is "
                    f"{self._me.name}"
                )
            if job.job_id in self._jobs:
                raise JobExists(f"job {job.job_id} already exists on {self._me.name}")
            holder["job"] = job

        def limit(header: pb.UploadHeader) -> int:
            return encoded_size(holder["job"].shapes)

        try:
            _, payload = await self._upload(request_iterator, check, limit, "initial model")
            job = holder["job"]
            initial = params_from_bytes(payload)
            host = await asyncio.to_thread(
                JobHost.create,
                self._root,
                job,
                initial,
                self._signer,
                self._clock(),
                anchor=self._anchor,
            )
        except FederationError as exc:
            await _abort(context, "StartJob", exc)
        slot = _Slot(host)
        self._jobs[job.job_id] = slot
        self._publish(job)
        logger.info(
            "federation: job %s started by %s: %s rounds, members %s, strategy %s, secagg %s",
            job.job_id,
            peer.name,
            job.rounds,
            ",".join(job.members),
            job.strategy.name.value,
            job.secure_aggregation,
        )
        return status_to_proto(host.view(self._clock()))

    async def ListJobs(
        self, request: pb.JobRef, context: grpc.aio.ServicerContext
    ) -> pb.ListJobsReply:
        member = self._member()
        now = self._clock()
        views = []
        for job_id in sorted(self._jobs):
            slot = self._jobs[job_id]
            if request.job_id and request.job_id != job_id:
                continue
            host = slot.host
            if member in host.job.members or member == self._me.name:
                views.append(await self._locked(slot, functools.partial(host.view, now)))
        return pb.ListJobsReply(jobs=[status_to_proto(v) for v in views])

    async def GetJob(self, request: pb.JobRef, context: grpc.aio.ServicerContext) -> pb.JobTerms:
        try:
            job = (await self._admitted(request.job_id)).host.job
        except FederationError as exc:
            await _abort(context, "GetJob", exc)
        return pb.JobTerms(terms=job.canonical_bytes(), job_digest=job.digest())

    def _visible(self, job_id: str) -> JobSpec:
        job = self._slot(job_id).host.job
        member = self._member()
        if member not in job.members and member != self._me.name:
            raise UpdateRefused(
                RefusalReason.NOT_A_MEMBER, f"{member} is not a member of job {job_id}"
            )
        return job

    async def GetStatus(
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.JobStatus:
        try:
            slot = await self._admitted(request.job_id)
            wait_s = poll_wait(request.wait_s)
        except FederationError as exc:
            await _abort(context, "GetStatus", exc)
        loop = asyncio.get_running_loop()
        end = loop.time() + wait_s
        while True:
            changed = slot.changed
            view = await self._locked(slot, lambda: slot.host.view(self._clock()))
            known = (request.known_round, request.known_attempt, request.known_phase)
            if view.finished or view.moved_from(*known, request.known_version):
                break
            remaining = end - loop.time()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(remaining, view.deadline_in_s + 0.02))
        return status_to_proto(view)

    # --- model download ----------------------------------------------------------------

    async def DownloadModel(
        self, request: pb.DownloadRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        try:
            slot = await self._admitted(request.job_id)
            published = slot.host.model(request.version)
        except FederationError as exc:
            await _abort(context, "DownloadModel", exc)
        if slot.stream[0] is not published:
            async with slot.lock:  # the first download of a version builds its chunks
                stream = await asyncio.to_thread(slot.model_stream, published)
        else:
            stream = slot.stream[1]
        for message in stream:
            yield message

    # --- plain rounds ------------------------------------------------------------------

    async def UploadUpdate(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> pb.Accepted:
        return await self._upload_round(request_iterator, context, Phase.TRAINING)

    async def UploadMasked(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> pb.Accepted:
        return await self._upload_round(request_iterator, context, Phase.MASKED_INPUT)

    async def _upload_round(
        self,
        requests: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext,
        phase: Phase,
    ) -> pb.Accepted:
        member = self._member()
        what = "update" if phase is Phase.TRAINING else "masked input"
        holder: dict[str, Any] = {}

        async def check(header: pb.UploadHeader) -> None:
            slot = await self._admitted(header.job_id)
            key = (header.job_id, member)
            if key in self._uploading:
                raise UpdateRefused(
                    RefusalReason.BUSY,
                    f"{member} already has an upload in flight for job {header.job_id}; "
                    f"this {what} is refused until it ends",
                )
            self._uploading.add(key)
            holder["slot"], holder["job"] = slot, header.job_id
            attempt = None if phase is Phase.TRAINING else header.attempt
            await self._locked(
                slot,
                lambda: slot.host.expect_upload(
                    member,
                    header.round,
                    phase,
                    self._clock(),
                    attempt=attempt,
                    total_bytes=header.total_bytes,
                ),
            )

        def limit(header: pb.UploadHeader) -> int:
            slot: _Slot = holder["slot"]
            return slot.host.upload_size(phase)

        try:
            header, payload = await self._upload(requests, check, limit, f"{what} of {member}")
            slot = holder["slot"]
            host = slot.host
            if phase is Phase.TRAINING:
                examples = int(header.num_examples)
                await self._locked(
                    slot,
                    lambda: host.submit_update(
                        member, header.round, payload, examples, self._clock()
                    ),
                )
            else:
                await self._locked(
                    slot,
                    lambda: host.submit_masked(
                        member, header.round, header.attempt, payload, self._clock()
                    ),
                )
        except FederationError as exc:
            await _abort(context, f"Upload {what}", exc)
        finally:  # this stream held the member's upload slot until its payload was taken
            if "job" in holder:
                self._uploading.discard((holder["job"], member))
        return self._accepted(slot, f"{what} of {member} for round {header.round} accepted")

    # --- secure aggregation ------------------------------------------------------------

    async def AdvertiseKeys(
        self, request: pb.AdvertiseRequest, context: grpc.aio.ServicerContext
    ) -> pb.Accepted:
        peer, ref = current_peer(), request.ref
        try:
            slot = await self._admitted(ref.job_id)
            advert = advert_from_proto(request.advert)
            key = self._advert_key(slot, peer, advert)
            await self._locked(
                slot,
                lambda: slot.host.submit_advert(
                    peer.name, ref.round, ref.attempt, advert, key, self._clock()
                ),
            )
        except FederationError as exc:
            await _abort(context, "AdvertiseKeys", exc)
        return self._accepted(slot, f"keys of {peer.name} for round {ref.round} accepted")

    async def GetRoster(self, request: pb.RoundRef, context: grpc.aio.ServicerContext) -> pb.Roster:
        member = self._member()
        try:
            slot = await self._admitted(request.job_id)
            roster = await self._locked(
                slot, lambda: slot.host.roster(member, request.round, request.attempt)
            )
        except FederationError as exc:
            await _abort(context, "GetRoster", exc)
        return pb.Roster(adverts=[advert_to_proto(a) for a in roster])

    async def ShareKeys(
        self, request: pb.ShareKeysRequest, context: grpc.aio.ServicerContext
    ) -> pb.Accepted:
        member, ref = self._member(), request.ref
        try:
            slot = await self._admitted(ref.job_id)
            shares = shares_from_proto(request.shares)
            await self._locked(
                slot,
                lambda: slot.host.submit_shares(
                    member, ref.round, ref.attempt, shares, self._clock()
                ),
            )
        except FederationError as exc:
            await _abort(context, "ShareKeys", exc)
        return self._accepted(slot, f"key shares of {member} accepted")

    async def GetInbox(self, request: pb.RoundRef, context: grpc.aio.ServicerContext) -> pb.Inbox:
        member = self._member()
        try:
            slot = await self._admitted(request.job_id)
            shares = await self._locked(
                slot, lambda: slot.host.inbox(member, request.round, request.attempt)
            )
        except FederationError as exc:
            await _abort(context, "GetInbox", exc)
        return pb.Inbox(shares=[share_to_proto(s) for s in shares])

    async def GetUnmaskRequest(
        self, request: pb.RoundRef, context: grpc.aio.ServicerContext
    ) -> pb.UnmaskRequest:
        member = self._member()
        try:
            slot = await self._admitted(request.job_id)
            unmask = await self._locked(
                slot, lambda: slot.host.unmask_request(member, request.round, request.attempt)
            )
        except FederationError as exc:
            await _abort(context, "GetUnmaskRequest", exc)
        return unmask_request_to_proto(unmask)

    async def ConfirmSurvivors(
        self, request: pb.ConfirmRequest, context: grpc.aio.ServicerContext
    ) -> pb.Accepted:
        member, ref = self._member(), request.ref
        try:
            slot = await self._admitted(ref.job_id)
            confirmation = confirmation_from_proto(request.confirmation)
            await self._locked(
                slot,
                lambda: slot.host.submit_confirmation(
                    member, ref.round, ref.attempt, confirmation, self._clock()
                ),
            )
        except FederationError as exc:
            await _abort(context, "ConfirmSurvivors", exc)
        return self._accepted(slot, f"survivor set signed by {member}")

    async def Unmask(
        self, request: pb.UnmaskResponse, context: grpc.aio.ServicerContext
    ) -> pb.Accepted:
        member, ref = self._member(), request.ref
        try:
            slot = await self._admitted(ref.job_id)
            response = unmask_from_proto(request)
            await self._locked(
                slot,
                lambda: slot.host.submit_unmask(
                    member, ref.round, ref.attempt, response, self._clock()
                ),
            )
        except FederationError as exc:
            await _abort(context, "Unmask", exc)
        return self._accepted(slot, f"unmask shares of {member} accepted")

    # --- ledger proofs ------------------------------------------------------------------

    async def GetVersionProof(
        self, request: pb.VersionRef, context: grpc.aio.ServicerContext
    ) -> pb.VersionProof:
        """The inclusion proof of a published version's ``model_version`` leaf."""
        try:
            published = (await self._admitted(request.job_id)).host.coordinator.version
        except FederationError as exc:
            await _abort(context, "GetVersionProof", exc)
        ref = f"{request.job_id}/v{request.version}"
        if request.version > published:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"job {request.job_id} has no version {request.version}"
            )
        proofs = self._proofs
        if proofs is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"{self._me.name} anchors to no chain"
            )
            raise AssertionError("unreachable: abort raises")  # pragma: no cover
        try:
            proof = await asyncio.to_thread(proofs, LEDGER_KIND, ref)
        except NotAnchored as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"not anchored yet: {exc}")
        except UnknownLeaf as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{ref} was never anchored: {exc}")
        except LedgerError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"ledger: {exc}")
        except FederationError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return pb.VersionProof(proof=proof)


#: Methods whose 50 MB payloads skip the protobuf message objects (same wire format).
_RAW_REQUESTS = ("StartJob", "UploadUpdate", "UploadMasked")
_RAW_RESPONSES = ("DownloadModel",)


def _raw(data: bytes) -> bytes:
    return data


class _RawPayloads:
    """Registers the generated handlers, with raw bytes for the payload streams.

    ``add_FederationServicer_to_server`` builds the method table from the proto; this
    stand-in for the server swaps the request deserializer of the upload streams and
    the response serializer of the download stream for pass-through ones, so the
    servicer parses (and, for downloads, pre-serializes) chunks itself without the
    extra copies of protobuf message objects. Everything else is registered unchanged.
    """

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the same table arrives through ``add_registered_method_handlers``

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        table = dict(handlers)
        for name in _RAW_REQUESTS:
            old = table[name]
            table[name] = grpc.stream_unary_rpc_method_handler(
                old.stream_unary,
                request_deserializer=_raw,
                response_serializer=old.response_serializer,
            )
        for name in _RAW_RESPONSES:
            old = table[name]
            table[name] = grpc.unary_stream_rpc_method_handler(
                old.unary_stream,
                request_deserializer=old.request_deserializer,
                response_serializer=serialize,
            )
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, table),)
        )
        self._server.add_registered_method_handlers(service, table)


#: ``(member_id, asset_id, now) -> None`` if the member may send updates, else the reason.
AgreementCheck = Callable[[str, str, datetime], str | None]


def contract_agreements(contracts: ContractRuntime) -> AgreementCheck:
    """The check over the node's contract store (``node.runtime.contracts.ContractRuntime``)."""
    from qdspace.connector.negotiation import Role

    def check(member_id: str, asset_id: str, at: datetime) -> str | None:
        return check_job_agreement(
            contracts.store.agreements(Role.PROVIDER), member_id, asset_id, at
        )

    return check


#: ``(kind, ref_id) -> proof JSON``; raises ``ledger.errors`` NotAnchored / UnknownLeaf.
ProofSource = Callable[[str, str], str]


def ledger_proofs(ctx: NodeContext) -> ProofSource | None:
    """Proofs from the node's ledger queue (looked up per call: the ledger may be attached
    after the servicer is built)."""

    def proof(kind: str, ref_id: str) -> str:
        from qdspace.node.runtime.ledger import node_ledger

        ledger = node_ledger(ctx)
        if ledger is None:
            raise FederationError(f"{ctx.keys.identity.name} anchors to no chain (no ledger.json)")
        return build_proof(ledger.queue, kind, ref_id).to_json()

    return proof


def contract_offer(contracts: ContractRuntime) -> Callable[[JobSpec], None]:
    """Publishes a job's asset (``federation.agreements.job_asset``) in the node's catalog."""

    def offer(job: JobSpec) -> None:
        contracts.offer_asset(job_asset(contracts.me.member_id, job))

    return offer


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise FederationError(f"job terms are not JSON: {exc}") from exc
