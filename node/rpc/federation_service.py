"""``qdspace.v1.Federation``: a coordinator's jobs served to their members.

Thin adapter over ``node.runtime.federation_jobs.FederationJobs``, which admits the
caller, takes the job's lock and runs the round: each RPC method here decodes its
request, calls one method of the jobs service, and encodes the answer. The caller is
the authenticated TLS peer. ``@handler`` turns every domain error into a gRPC status
through the node's one fault table (`qdspace.node.faults`), so no method maps or aborts
on its own.

What stays here is about the wire: reading header-then-data upload streams (an update
is copied once, from the received bytes into one buffer; a masked input is not copied
at all: its received chunks are summed where they lie), encoding a
published version into download chunks, and registering the 50 MB payload streams
with pass-through (de)serializers so they skip protobuf message objects.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, overload

import grpc
from google.protobuf.message import DecodeError

from qdspace.federation.chunks import (
    MAX_CHUNK_BYTES,
    Assembler,
    Chunk,
    Pieces,
)
from qdspace.federation.errors import (
    FederationError,
    RefusalReason,
    UpdateRefused,
)
from qdspace.federation.job_files import Published
from qdspace.federation.params import encoded_size
from qdspace.federation.round_status import Phase, StatusView
from qdspace.node.rpc.auth import current_peer
from qdspace.node.rpc.codes import status_code
from qdspace.node.rpc.federation_serde import (
    advert_from_proto,
    advert_to_proto,
    confirmation_from_proto,
    decode_upload_chunk,
    serialize,
    share_to_proto,
    shares_from_proto,
    status_to_proto,
    unmask_from_proto,
    unmask_request_to_proto,
)
from qdspace.node.rpc.limits import CHUNK_MAX_BYTES
from qdspace.node.runtime.federation_jobs import FederationJobs
from qdspace.node.runtime.federation_slots import RoundRef
from qdspace.node.runtime.federation_wiring import jobs_from_context
from qdspace.protocols.v1 import federation_pb2 as pb
from qdspace.protocols.v1 import federation_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from qdspace.node.context import NodeContext

logger = logging.getLogger("node.rpc")

S = TypeVar("S")
Req = TypeVar("Req")
Rep = TypeVar("Rep")
Unary = Callable[[S, Req, grpc.aio.ServicerContext], Awaitable[Rep]]
Streaming = Callable[[S, Req, grpc.aio.ServicerContext], AsyncIterator[Rep]]


def status_code_of(exc: FederationError) -> grpc.StatusCode:
    """The gRPC status of a federation error, from the node's fault table (a refused
    update by its reason); the details carry ``str(exc)``."""
    return status_code(exc)


@overload
def handler(method: Streaming[S, Req, Rep]) -> Streaming[S, Req, Rep]: ...
@overload
def handler(method: Unary[S, Req, Rep]) -> Unary[S, Req, Rep]: ...
def handler(method: Any) -> Any:
    """An RPC method whose domain errors end the call with their status (`status_code_of`)."""
    name = method.__name__
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for reply in method(self, request, context):
                    yield reply
            except FederationError as exc:
                await _abort(context, name, exc)

        return stream

    @functools.wraps(method)
    async def serve(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except FederationError as exc:
            await _abort(context, name, exc)

    return serve


async def _abort(context: grpc.aio.ServicerContext, method: str, exc: FederationError) -> NoReturn:
    logger.warning("federation %s refused for %s: %s", method, current_peer().name, exc)
    await context.abort(status_code_of(exc), str(exc))
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


class FederationServicer(pb_grpc.FederationServicer):
    """Serves the jobs this node coordinates (``FederationJobs``) over gRPC."""

    def __init__(self, jobs: FederationJobs) -> None:
        self._jobs = jobs

    @classmethod
    def from_context(cls, ctx: NodeContext) -> FederationServicer:
        """Built from the node's context (see ``node.runtime.federation_wiring``)."""
        return cls(jobs_from_context(ctx))

    def register(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_FederationServicer_to_server(self, _RawPayloads(server))

    # --- administration ----------------------------------------------------------------

    @handler
    async def StartJob(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> pb.JobStatus:
        caller = current_peer().identity
        self._jobs.check_operator(caller)
        header = await _read_header(request_iterator, "initial model")
        job = self._jobs.proposed(header.terms)
        limit = encoded_size(job.shapes)
        payload = await _read_payload(request_iterator, header, limit, "initial model")
        return status_to_proto(await self._jobs.start(job, payload, caller.name))

    @handler
    async def ListJobs(
        self, request: pb.JobRef, context: grpc.aio.ServicerContext
    ) -> pb.ListJobsReply:
        caller = current_peer().identity
        views = await self._jobs.jobs_of(caller.name, request.job_id, member_id=caller.member_id)
        return pb.ListJobsReply(jobs=[status_to_proto(v) for v in views])

    @handler
    async def GetJob(self, request: pb.JobRef, context: grpc.aio.ServicerContext) -> pb.JobTerms:
        job = await self._jobs.job(request.job_id, current_peer().identity)
        return pb.JobTerms(terms=job.canonical_bytes(), job_digest=job.digest())

    @handler
    async def GetStatus(
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.JobStatus:
        caller, r = current_peer().identity, request
        known = (r.known_round, r.known_attempt, r.known_phase, r.known_version)
        return status_to_proto(await self._jobs.status(r.job_id, caller, known, r.wait_s))

    # --- model download ----------------------------------------------------------------

    @handler
    async def DownloadModel(
        self, request: pb.DownloadRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        caller = current_peer().identity
        chunks = await self._jobs.model(request.job_id, caller, request.version, _model_chunks)
        for message in chunks:
            yield message

    # --- plain rounds ------------------------------------------------------------------

    @handler
    async def UploadUpdate(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> pb.Accepted:
        return await self._upload_round(request_iterator, Phase.TRAINING)

    @handler
    async def UploadMasked(
        self, request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> pb.Accepted:
        return await self._upload_round(request_iterator, Phase.MASKED_INPUT)

    async def _upload_round(self, requests: AsyncIterator[bytes], phase: Phase) -> pb.Accepted:
        """Read an update (or masked input) stream: the round checks the header, and the
        caller's one upload slot for the job is held, before any data is read; the data
        must come without stalls and before the phase's deadline (``FederationJobs.paced``)."""
        caller = current_peer().identity
        what = f"{'update' if phase is Phase.TRAINING else 'masked input'} of {caller.name}"
        header = await _read_header(requests, what)
        ref = RoundRef(header.job_id, header.round, header.attempt)
        async with self._jobs.upload(ref, caller, phase, header.total_bytes) as upload:
            chunks = self._jobs.paced(upload, requests)  # cut off if it stalls or runs late
            payload: memoryview | tuple[memoryview, ...]
            if phase is Phase.TRAINING:
                payload = await _read_payload(chunks, header, upload.limit, what)
            else:  # summed from the received messages: no copy into a buffer first
                pieces = Pieces(header.total_bytes, header.sha256, limit=upload.limit, what=what)
                await _read_stream(chunks, header, pieces, what)
                payload = pieces.finish()
            view = await self._jobs.submit(upload, payload, int(header.num_examples))
        return _accepted(view, f"{what} for round {header.round} accepted")

    # --- secure aggregation ------------------------------------------------------------

    @handler
    async def AdvertiseKeys(
        self, request: pb.AdvertiseRequest, context: grpc.aio.ServicerContext
    ) -> pb.Accepted:
        caller, ref = current_peer().identity, _ref(request.ref)
        advert = advert_from_proto(request.advert)
        view = await self._jobs.advertise(ref, caller, advert)
        return _accepted(view, f"keys of {caller.name} for round {ref.round} accepted")

    @handler
    async def GetRoster(self, request: pb.RoundRef, context: grpc.aio.ServicerContext) -> pb.Roster:
        roster = await self._jobs.roster(_ref(request), current_peer().identity)
        return pb.Roster(adverts=[advert_to_proto(a) for a in roster])

    @handler
    async def ShareKeys(
        self, request: pb.ShareKeysRequest, context: grpc.aio.ServicerContext
    ) -> pb.Accepted:
        caller, shares = current_peer().identity, shares_from_proto(request.shares)
        view = await self._jobs.share_keys(_ref(request.ref), caller, shares)
        return _accepted(view, f"key shares of {caller.name} accepted")

    @handler
    async def GetInbox(self, request: pb.RoundRef, context: grpc.aio.ServicerContext) -> pb.Inbox:
        shares = await self._jobs.inbox(_ref(request), current_peer().identity)
        return pb.Inbox(shares=[share_to_proto(s) for s in shares])

    @handler
    async def GetUnmaskRequest(
        self, request: pb.RoundRef, context: grpc.aio.ServicerContext
    ) -> pb.UnmaskRequest:
        unmask = await self._jobs.unmask_request(_ref(request), current_peer().identity)
        return unmask_request_to_proto(unmask)

    @handler
    async def ConfirmSurvivors(
        self, request: pb.ConfirmRequest, context: grpc.aio.ServicerContext
    ) -> pb.Accepted:
        caller = current_peer().identity
        confirmation = confirmation_from_proto(request.confirmation)
        view = await self._jobs.confirm(_ref(request.ref), caller, confirmation)
        return _accepted(view, f"survivor set signed by {caller.name}")

    @handler
    async def Unmask(
        self, request: pb.UnmaskResponse, context: grpc.aio.ServicerContext
    ) -> pb.Accepted:
        caller, response = current_peer().identity, unmask_from_proto(request)
        view = await self._jobs.unmask(_ref(request.ref), caller, response)
        return _accepted(view, f"unmask shares of {caller.name} accepted")

    @handler
    async def ReportBadShares(
        self, request: pb.BadSharesReport, context: grpc.aio.ServicerContext
    ) -> pb.Accepted:
        caller = current_peer().identity
        view = await self._jobs.report_bad_shares(_ref(request.ref), caller, request.accused)
        return _accepted(view, f"report of {caller.name} taken: it and the member it named leave")

    # --- ledger proofs ------------------------------------------------------------------

    @handler
    async def GetVersionProof(
        self, request: pb.VersionRef, context: grpc.aio.ServicerContext
    ) -> pb.VersionProof:
        """The inclusion proof of a published version's ``model_version`` leaf."""
        caller = current_peer().identity
        proof = await self._jobs.version_proof(request.job_id, caller, request.version)
        return pb.VersionProof(proof=proof)


def _ref(ref: pb.RoundRef) -> RoundRef:
    return RoundRef(ref.job_id, ref.round, ref.attempt)


def _accepted(view: StatusView, detail: str) -> pb.Accepted:
    return pb.Accepted(detail=detail, status=status_to_proto(view))


# --- payload streams ----------------------------------------------------------------------


async def _read_header(requests: AsyncIterator[bytes], what: str) -> pb.UploadHeader:
    """The header an upload stream must start with (the round checks it before any data)."""
    try:
        header, _ = decode_upload_chunk(await anext(requests))
    except StopAsyncIteration:
        raise UpdateRefused(RefusalReason.WRONG_SHAPE, f"{what}: empty stream") from None
    except DecodeError as exc:
        raise UpdateRefused(RefusalReason.WRONG_SHAPE, f"{what}: {exc}") from None
    if header is None:
        raise UpdateRefused(RefusalReason.WRONG_SHAPE, f"{what}: stream must start with a header")
    return header


async def _read_payload(
    requests: AsyncIterator[bytes], header: pb.UploadHeader, limit: int, what: str
) -> memoryview:
    """The data chunks after ``header``, checked against its size and digest and ``limit``,
    in one buffer (copied once, from the received bytes)."""
    assembler = Assembler(header.total_bytes, header.sha256, limit=limit, what=what)
    await _read_stream(requests, header, assembler, what)
    return assembler.finish()


async def _read_stream(
    requests: AsyncIterator[bytes],
    header: pb.UploadHeader,
    into: Assembler | Pieces,
    what: str,
) -> None:
    """Feed the data chunks after ``header`` to ``into`` (an ``Assembler`` copies them into
    one buffer, ``Pieces`` keeps them as received), which checks them on arrival; its
    ``finish`` then checks the whole against the header's size and digest.

    The messages arrive serialized (see ``_RawPayloads``): data chunks are read as
    views of the received bytes.
    """
    async for raw in requests:
        try:
            again, data = decode_upload_chunk(raw)
        except DecodeError as exc:
            raise UpdateRefused(RefusalReason.WRONG_SHAPE, f"{what}: {exc}") from None
        if again is not None:
            raise UpdateRefused(RefusalReason.WRONG_SHAPE, f"{what}: a second header")
        into.add(Chunk(into.received, header.total_bytes, data))
    if into.received < header.total_bytes:
        # the transport drops a message over its limit and ends the stream, unseen here
        raise UpdateRefused(
            RefusalReason.WRONG_SHAPE,
            f"{what}: stream ended after {into.received} of {header.total_bytes} bytes "
            f"(a message over {CHUNK_MAX_BYTES} bytes ends a stream: chunks carry at most "
            f"{MAX_CHUNK_BYTES} bytes)",
        )


def _model_chunks(published: Published) -> tuple[bytes, ...]:
    """A published version as the serialized ``ModelChunk`` stream: header, then data
    (the data chunks were written when the version was made: ``DOWNLOAD_FRAMING``)."""
    header = pb.ModelChunk(
        header=pb.ModelHeader(
            record=published.signed.record,
            signature=published.signed.signature,
            total_bytes=sum(len(p) for p in published.pieces),
            sha256=published.sha256,
        )
    ).SerializeToString()
    return (header, *published.messages)


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
