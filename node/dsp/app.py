"""The Dataspace Protocol 2025-1 HTTPS binding: catalog and negotiation endpoints.

Each route is a thin adapter: authenticate the caller (mutual TLS and its ID token,
`dsp_auth`), read the DSP message (`connector.dsp_codec`, `connector.dsp_negotiation`),
call ONE runtime move (the same `ContractRuntime` methods and state machines the gRPC
wire drives) and answer. The provider acknowledges at once (201 with the process, or
200) and its answer travels later to the consumer's callback address through the
contract outbox, queued in the commit that decided it. The same routes serve the
consumer's callbacks: a pid names our process and our role in it.

A process that is not the caller's is "not found" (404), exactly as one that does not
exist. Errors are DSP error bodies with the status of the node's fault table
(`node.faults`: a bad ID token 401, a body over `MAX_BODY` 413, before any parsing).
A request that would open a process (a negotiation here, a transfer in
`node.dsp.transfers`) is refused for the member's hourly quota before its body is read
(`before_body`: 429): a member over its quota costs a count, not a read and a parse.

These routes share the event loop with the node's gRPC calls, so nothing that costs
more than a dictionary look-up runs on it: decoding a large body, reading a message
(pyld), reading its policy (pyld again), every database read and write and the runtime's
move run in worker threads (`run_in_threadpool`), and a message's size is bounded by the
count of its values before any of it (`connector.dsp_jsonld.check_values`). The catalog's
datasets are built once per catalog generation (`node.dsp.catalog`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from qdspace.connector import dsp_codec as codec
from qdspace.connector import dsp_negotiation as wire
from qdspace.connector.contract_errors import UnknownContractError
from qdspace.connector.contract_store import DspProcess, OutboxMessage
from qdspace.connector.errors import ConnectorError
from qdspace.connector.negotiation import ContractRequest, Negotiation, NegotiationMessage, Role
from qdspace.node.dsp.auth import bearer, peer_of, verify_token
from qdspace.node.dsp.callbacks import CallbackCheck
from qdspace.node.dsp.caps import drain_body, error_kind
from qdspace.node.dsp.catalog import DspCatalog
from qdspace.node.dsp.client import outbox_message
from qdspace.node.errors import NodeError
from qdspace.node.faults import http_status
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.rpc.auth import PeerAuthenticator
from qdspace.node.runtime.access import DatasetAccess
from qdspace.node.runtime.contracts import ContractRuntime
from qdspace.policies.codec import parse_policy
from qdspace.policies.errors import PolicyError
from qdspace.policies.odrl.jsonld import MAX_DOCUMENT_BYTES, decode
from qdspace.util.numbers import decimal

logger = logging.getLogger("node.dsp")

#: one limit for every DSP route (256 KiB). Not a smaller one for the negotiation routes
#: to bound the policy a message carries: what pyld costs is per value, not per byte. A
#: body limit that admits an honest request of 1,024 orders with 40-character ids
#: (~45 KB) admits 11,000 one-character values, 5x the values that request has. The
#: values are counted instead (`connector.dsp_jsonld.MAX_MESSAGE_VALUES`, before pyld).
MAX_BODY = MAX_DOCUMENT_BYTES
#: a body up to this size is decoded on the event loop (~15 us for a small message);
#: a larger one in a worker thread (decoding 188 KB with its bounds checks: ~25 ms)
INLINE_DECODE_BYTES = 16 * 1024
NEG = "negotiation"


@dataclass(frozen=True)
class Opening:
    """A consumer's ContractRequestMessage read: the process it opens (our `pid`)."""

    pid: str
    consumer_pid: str
    callback: str
    message: ContractRequest


class BodyTooLarge(ValueError):
    """A DSP request body over `MAX_BODY` (HTTP 413, `node.faults`)."""


#: set in a request's state when it was refused before its body was read (`before_body`)
_UNREAD = "dsp_body_unread"


#: the error families answered as DSP errors by the fault table (`node.faults`)
ERROR_FAMILIES: tuple[type[Exception], ...] = (
    ValueError,
    PermissionError,
    LookupError,
    NodeError,
    ConnectorError,
    PolicyError,
    Exception,
)


@dataclass
class DspBinding:
    """What the routes need: the runtime, the caller check, our address, the outbox kick."""

    runtime: ContractRuntime
    authenticator: PeerAuthenticator
    base_url: str
    kick: Callable[[], None] = lambda: None
    access: DatasetAccess = field(default_factory=DatasetAccess)
    callbacks: CallbackCheck = field(default_factory=CallbackCheck)

    @property
    def me(self) -> str:
        return self.runtime.me.member_id

    def pids(self, row: DspProcess) -> wire.Pids:
        if row.role == Role.PROVIDER.value:
            return wire.Pids(row.own_pid, row.peer_pid or "")
        return wire.Pids(row.peer_pid or "", row.own_pid)

    def deliver(
        self, row: DspProcess
    ) -> Callable[[Negotiation, list[NegotiationMessage]], Sequence[OutboxMessage]]:
        """How the answers of the process `row` binds reach its peer (the outbox)."""
        from_provider = row.role == Role.PROVIDER.value

        def queue(n: Negotiation, messages: list[NegotiationMessage]) -> list[OutboxMessage]:
            current = self.runtime.store.dsp.by_local(NEG, row.local_id) or row
            out = []
            for message in messages:
                path, body = wire.outgoing(message, self.pids(current), from_provider=from_provider)
                url = current.callback + path
                out.append(
                    outbox_message(row.peer_id, n.negotiation_id, message.message_id, url, body)
                )
            return out

        return queue


async def body_of(request: Request) -> Any:
    declared = request.headers.get("content-length")
    size = 0 if declared is None else decimal(declared.strip(), 40)
    if size is None:
        raise codec.DspMessageError("Content-Length", "must be a whole number of bytes")
    if size > MAX_BODY:
        raise BodyTooLarge(f"body of {size} bytes is over {MAX_BODY}")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY:
            raise BodyTooLarge(f"body is over {MAX_BODY} bytes")
    if len(data) <= INLINE_DECODE_BYTES:
        return decode(bytes(data))
    return await run_in_threadpool(decode, bytes(data))


async def before_body(request: Request, check: Callable[[], None]) -> None:
    """Run `check` (a database read, so in a worker thread) before the request's body is
    read. What it raises is answered as a body over `MAX_BODY` is: the body read and
    dropped up to `caps.DRAIN_BYTES`, never parsed, and the connection closed with the
    answer."""
    try:
        await run_in_threadpool(check)
    except Exception as exc:
        if http_status(exc) < 500:  # the caller's refusal; a 500 is answered by Starlette's
            setattr(request.state, _UNREAD, True)  # handler, which can no longer drain
        raise


def _unread(request: Request, exc: Exception) -> bool:
    return isinstance(exc, BodyTooLarge) or getattr(request.state, _UNREAD, False) is True


def _printable(value: str) -> bool:
    return 0 < len(value) <= codec.MAX_PID and value.isprintable()


def printable_path(request: Request) -> None:
    """Every path parameter of every route (a process id, a dataset id) is a printable
    string of at most `codec.MAX_PID` characters, as the ids in a message body must be:
    refused with a 400 DSP error before any route reads it (a NUL reached PostgreSQL,
    which refuses it in any string outright, and a member's request was a 500)."""
    for name, value in request.path_params.items():
        if not _printable(str(value)):
            raise codec.DspMessageError(
                f"path {name}", f"must be a printable string of 1 to {codec.MAX_PID} characters"
            )


def create_dsp_app(binding: DspBinding, routers: Sequence[APIRouter] = ()) -> FastAPI:
    """The listener's app; `routers`: more of the binding (the transfers, `node.dsp.transfers`)."""
    app = FastAPI(
        title="qdspace DSP 2025-1",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(printable_path)],
    )
    for extra in routers:
        app.include_router(extra)
    runtime = binding.runtime
    store = runtime.store

    async def dsp_error(request: Request, exc: Exception) -> JSONResponse:
        status = http_status(exc)
        if status >= 500:
            logger.exception("DSP %s %s failed", request.method, request.url.path)
            reason = "internal error"
        else:
            logger.warning("DSP %s %s: %s", request.method, request.url.path, exc)
            reason = str(exc)
        pid = str(request.path_params.get("pid", ""))
        pid = pid if _printable(pid) else ""  # (not echoed when that is what was wrong)
        body = codec.error(error_kind(request.url.path), str(status), reason, pid, pid)
        headers = None
        if _unread(request, exc):  # not read to its end: the connection goes with it
            headers = {"connection": "close"}
            await drain_body(request.receive, request.headers.get("content-length"))
        return JSONResponse(body, status_code=status, headers=headers)

    # A caller's mistake is answered by the exception middleware (the connection stays
    # open for the next request); only `Exception` itself reaches Starlette's server-error
    # middleware, which re-raises after answering, and uvicorn then closes the connection.
    for family in ERROR_FAMILIES:
        app.add_exception_handler(family, dsp_error)

    def caller(request: Request) -> MemberIdentity:
        identity = peer_of(request.scope, binding.authenticator)
        verify_token(bearer(request.headers.get("authorization")), identity, binding.me)
        return identity

    def owned(kind: str, pid: str, peer: MemberIdentity) -> DspProcess:
        row = store.dsp.by_own_pid(kind, pid)
        if row is None or row.peer_id != peer.member_id:
            raise UnknownContractError(f"no {kind} {pid[:128]} here")
        return row

    @app.get("/.well-known/dspace-version")
    async def version() -> dict[str, Any]:
        return codec.version_document("/")

    # ------------------------------------------------------------ catalog

    catalog = DspCatalog(runtime, binding.access, binding.base_url)

    @app.post("/catalog/request")
    async def catalog_request(request: Request) -> Response:
        peer = caller(request)
        await run_in_threadpool(codec.read_message, await body_of(request), "CatalogRequestMessage")
        return Response(await catalog.catalog(peer), media_type="application/json")

    @app.get("/catalog/datasets/{pid}")
    async def dataset(pid: str, request: Request) -> JSONResponse:
        item = await catalog.dataset(pid, caller(request))
        return JSONResponse(codec.dataset_response(item))

    # -------------------------------------------------------- negotiation

    def state(row: DspProcess) -> dict[str, Any]:
        n = store.load_negotiation(row.local_id)
        pids = binding.pids(row)
        return codec.negotiation(pids.provider, pids.consumer, n.state.value)

    def retried(row: DspProcess) -> dict[str, Any]:
        """The answer to a request of a consumerPid bound already (a retry): the state of
        its negotiation, REQUESTED while the request that bound it is still being
        decided. Blocking."""
        n = store.find_negotiation(row.local_id)
        pids = binding.pids(row)
        return codec.negotiation(pids.provider, pids.consumer, n.state.value if n else "REQUESTED")

    def provider_move(peer: MemberIdentity, message: NegotiationMessage, row: DspProcess) -> None:
        """The provider decides a consumer's message (unsigned: the DSP form), its answer
        queued for the consumer's callback in the same commit. Blocking."""
        runtime.handle_negotiation(peer, message, deliver=binding.deliver(row), signed=False)

    def read_request(data: Any, peer: MemberIdentity) -> Opening | dict[str, Any]:
        """A ContractRequestMessage read (pyld, twice): the process it opens, or the state
        of the one it opened already (a retry). Blocking."""
        body = codec.read_message(data, "ContractRequestMessage")
        consumer_pid = codec.text(body, "consumerPid")
        callback = codec.callback(body, required=True)
        if body.get("providerPid") is not None:
            raise codec.DspMessageError(
                "$.providerPid", "a counter-request goes to /negotiations/{providerPid}/request"
            )
        existing = store.dsp.by_peer_pid(NEG, peer.member_id, consumer_pid)
        if existing is not None:  # a retry: the same process (asked again in `open_requested`)
            return retried(existing)
        pid = f"urn:uuid:{uuid.uuid4()}"
        message = wire.request_in(body, pid, peer.member_id, runtime.clock.now())
        return Opening(pid, consumer_pid, callback, message)

    def open_requested(
        peer: MemberIdentity, message: ContractRequest, row: DspProcess
    ) -> dict[str, Any]:
        """Bind the pids, then decide the request (`provider_move`): a new negotiation,
        REQUESTED; or, when its consumerPid is bound meanwhile, the state of the one
        negotiation it has (the retry it is). Blocking.

        Under the member's lock (`ContractRuntime.opening`): the member's requests are
        bound and decided one at a time, so two of one consumerPid sent at once cannot
        both find it unbound, and the quota's count and the opening it allows are one
        step (`handle_negotiation`). The pids are bound before the answer is queued (the
        consumer may reply at once), and unbound when the request is refused before a
        negotiation opened (its retry is decided afresh)."""
        with runtime.opening(peer):
            existing = store.dsp.by_peer_pid(NEG, peer.member_id, row.peer_pid or "")
            if existing is not None:
                return retried(existing)
            met = store.dsp.bind(row)  # the unique key: a binding made by another process
            if met is not None:
                return retried(met)
            try:
                provider_move(peer, message, row)
            except Exception:  # refused (or failed) before a negotiation was opened
                if store.find_negotiation(row.local_id) is None:
                    store.dsp.unbind(NEG, row.local_id)
                raise
        return codec.negotiation(row.own_pid, row.peer_pid or "", "REQUESTED")

    @app.post("/negotiations/request", status_code=201)
    async def negotiation_request(request: Request) -> dict[str, Any]:
        """A consumer's ContractRequestMessage opens a negotiation (201), or is a retry of
        one it opened (its state, by its consumerPid).

        A member that opened ``negotiations_per_member_hour`` within the hour is refused
        (429, `NegotiationQuotaError`) before its body is read: reading and parsing it
        (pyld, up to `connector.dsp_jsonld.MAX_MESSAGE_VALUES` values) would cost the
        node ~65 ms of a worker for every request the member sends over its quota.
        Without the body the consumerPid is unknown, so a retry of a request it made is
        refused too while the member is over its quota. We take that: the retry brings
        nothing the consumer cannot have otherwise, as DSP has it: our answer to the
        request (with our providerPid) goes to its callback address whatever the retry
        gets, and ``GET /negotiations/{pid}`` answers the state at any time; after the
        hour the retry is answered again. The runtime checks the quota again
        (`ContractRuntime.handle_negotiation`, for the gRPC wire too), where a request on
        a negotiation that exists passes: counted with the opening, as one step per
        member (`open_requested`), so requests sent at once cannot all pass it."""
        peer = caller(request)
        await before_body(request, lambda: runtime.within_negotiation_quota(peer))
        data = await body_of(request)
        opening = await run_in_threadpool(read_request, data, peer)
        if isinstance(opening, dict):
            return opening
        pid, consumer_pid, callback = opening.pid, opening.consumer_pid, opening.callback
        message = opening.message
        binding.access.check(message.offer.target, peer)
        binding.callbacks.check(callback, peer)
        row = DspProcess(NEG, pid, Role.PROVIDER.value, peer.member_id, pid, callback, consumer_pid)
        answer = await run_in_threadpool(open_requested, peer, message, row)
        binding.kick()
        return answer

    @app.get("/negotiations/{pid}")
    async def negotiation_get(pid: str, request: Request) -> dict[str, Any]:
        peer = caller(request)
        return await run_in_threadpool(lambda: state(owned(NEG, pid, peer)))

    async def negotiation_message(
        request: Request,
        pid: str,
        kind: str,
        build: Callable[[Any, DspProcess, MemberIdentity, Negotiation], NegotiationMessage],
    ) -> Response:
        peer = caller(request)
        # the process first (a database read, off the loop): a pid not the caller's is a
        # 404 before its body is read
        row = await run_in_threadpool(owned, NEG, pid, peer)
        data = await body_of(request)

        def apply() -> bool:
            """Read the message (pyld), load the process and move it. Blocking; False
            for a retry of a message already applied."""
            body = codec.read_message(data, kind)
            own, theirs = (
                ("providerPid", "consumerPid")
                if row.role == "provider"
                else ("consumerPid", "providerPid")
            )
            if codec.text(body, own) != row.own_pid:
                raise codec.DspMessageError(f"$.{own}", "does not match the process addressed")
            their_pid = codec.text(body, theirs)
            if row.peer_pid is None:
                store.dsp.set_peer_pid(NEG, row.local_id, their_pid)
            elif their_pid != row.peer_pid:
                raise codec.DspMessageError(f"$.{theirs}", "does not match the process addressed")
            n = store.load_negotiation(row.local_id)
            message = build(body, row, peer, n)
            if any(mid == message.message_id for mid, _ in n.seen):
                return False
            if row.role == Role.PROVIDER.value:
                provider_move(peer, message, row)
            else:
                asked = parse_policy(row.asked_json) if row.asked_json else n.offer
                runtime.handle_provider_message(peer, message, asked, binding.deliver(row))
            return True

        if await run_in_threadpool(apply):
            binding.kick()
        return Response(status_code=200)

    def now_for(n: Negotiation) -> Any:
        return max(runtime.clock.now(), n.updated_at)

    @app.post("/negotiations/{pid}/events")
    async def events(pid: str, request: Request) -> Response:
        return await negotiation_message(
            request,
            pid,
            "ContractNegotiationEventMessage",
            lambda b, r, p, n: wire.event_in(b, r.local_id, p.member_id, now_for(n)),
        )

    @app.post("/negotiations/{pid}/agreement/verification")
    async def verification(pid: str, request: Request) -> Response:
        return await negotiation_message(
            request,
            pid,
            "ContractAgreementVerificationMessage",
            lambda b, r, p, n: wire.verification_in(r.local_id, p.member_id, now_for(n)),
        )

    @app.post("/negotiations/{pid}/termination")
    async def termination(pid: str, request: Request) -> Response:
        return await negotiation_message(
            request,
            pid,
            "ContractNegotiationTerminationMessage",
            lambda b, r, p, n: wire.termination_in(b, r.local_id, p.member_id, now_for(n)),
        )

    def counter_request(
        b: Any, r: DspProcess, p: MemberIdentity, n: Negotiation
    ) -> NegotiationMessage:
        if r.role != Role.PROVIDER.value:
            raise codec.DspMessageError("$", "a counter-request is for the provider's process")
        return wire.counter_request_in(b, r.local_id, p.member_id, now_for(n))

    @app.post("/negotiations/{pid}/request")
    async def counter(pid: str, request: Request) -> Response:
        """The consumer answers our offer with terms of its own: decided like a request
        (`ContractRuntime.handle_negotiation`): we sign only terms we build ourselves."""
        return await negotiation_message(request, pid, "ContractRequestMessage", counter_request)

    @app.post("/negotiations/{pid}/offers")
    async def offers(pid: str, request: Request) -> Response:
        return await negotiation_message(
            request,
            pid,
            "ContractOfferMessage",
            lambda b, r, p, n: wire.offer_in(b, r.local_id, p.member_id, now_for(n)),
        )

    @app.post("/negotiations/{pid}/agreement")
    async def agreement(pid: str, request: Request) -> Response:
        return await negotiation_message(
            request,
            pid,
            "ContractAgreementMessage",
            lambda b, r, p, n: wire.agreement_in(
                b, r.local_id, p.member_id, n.created_at, now_for(n)
            ),
        )

    return app
