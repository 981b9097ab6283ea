"""The DSP 2025-1 transfer-process endpoints, the consumer's transfer callbacks and the
HTTP data plane, as thin routes over `node.dsp.transfer_process`.

Provider: ``POST /transfers/request`` (201 and the process in REQUESTED; the
TransferStartMessage with the data address follows through the outbox), ``GET
/transfers/:pid``, ``POST /transfers/:pid/start|completion|suspension|termination``.
Consumer: ``POST /callback/transfers/:pid/start|completion|suspension|termination``.
Data plane: ``GET /data/:providerPid`` with the data address's token, under the same
release gate as the gRPC wire: a pull is `ProviderTransfers.pull` (resumable from the
consumer's checkpoint: ``offset``, ``digest``, ``position``; ``batch_rows``), a live
stream is the gRPC subscription's loop (`open_stream`, `stream_gate`, `stream_page`;
``after``: the last stream position held; without it, where the provider started the
transfer). Both end when the token is revoked, and when the caller is no longer in good
standing (`PeerAuthenticator.check_standing`: its certificate revoked or no longer the
one its directory entry names, or the revocation list stale, which ends every stream as
it does on the gRPC wire): a pull checks before each batch, a live stream every
`RECHECK_S`, so a member revoked with a stream open gets nothing stored after it; a live
stream also ends when the listener stops (``draining``), so a stopping node need not
wait out its grace for a body that never ends.

A pid that is not the caller's is 404, as one that does not exist; a message the
transfer's state does not accept is 409; a bad message or parameter 400; a missing or
bad token 401; a request of a member that opened ``transfers_per_member_hour`` within
the hour 429, before its body is read (`node.dsp.app.before_body`) (`node.faults`).
Errors are TransferError bodies (`node.dsp.app`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from qdspace.connector import dsp_codec as codec
from qdspace.connector import dsp_transfer as wire
from qdspace.connector.contract_errors import ContractError, UnknownContractError
from qdspace.connector.contract_store import DspProcess
from qdspace.connector.dsp_data import HEARTBEAT, batch_bytes, live_bytes
from qdspace.connector.encoding import StreamRequest
from qdspace.connector.negotiation import Role
from qdspace.connector.transfer import TransferProcess, TransferState
from qdspace.connector.transfer_wire import Checkpoint, RowBatch, view_cursor
from qdspace.node.dsp.app import before_body
from qdspace.node.dsp.auth import bearer, peer_of, verify_token
from qdspace.node.dsp.callbacks import CallbackCheck
from qdspace.node.dsp.edr import DataClaims, DataTokenError
from qdspace.node.dsp.transfer_consumer import DspTransfers
from qdspace.node.dsp.transfer_process import KINDS, agreed_scope, pids
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.rpc.auth import PeerAuthenticator, Refused
from qdspace.node.rpc.contracts_transfer_serde import PullRequest
from qdspace.node.runtime.contracts_base import GateRecheck
from qdspace.util.numbers import decimal

logger = logging.getLogger("node.dsp")

MAX_BATCH_ROWS = 10_000
RECHECK_S = 1.0
HEARTBEAT_S = 5.0
POLL_S = 0.5
NDJSON = "application/x-ndjson"
_MESSAGE = {
    "start": "TransferStartMessage",
    "completion": "TransferCompletionMessage",
    "suspension": "TransferSuspensionMessage",
    "termination": "TransferTerminationMessage",
}


def _int(params: Any, name: str, low: int, high: int, default: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    value = decimal(raw, 18) if isinstance(raw, str) else None
    if value is None or not low <= value <= high:
        raise codec.DspMessageError(f"?{name}", f"must be a whole number from {low} to {high}")
    return value


def resume_point(params: Any, process: TransferProcess) -> Checkpoint:
    """The consumer's checkpoint from the query (none: the transfer's beginning)."""
    genesis = replace(Checkpoint.genesis(process.transfer_id), position=process.since)
    if params.get("offset") is None and params.get("digest") is None:
        return genesis
    offset = _int(params, "offset", 0, 2**53, 0)
    digest, position = params.get("digest") or "", params.get("position") or ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise codec.DspMessageError("?digest", "must be 64 lower-case hex digits")
    if view_cursor(position) is None:
        raise codec.DspMessageError("?position", "must be a view position (a row id, digits)")
    return Checkpoint(offset, bytes.fromhex(digest), position)


def transfer_router(
    authenticator: PeerAuthenticator,
    transfers: DspTransfers,
    body_of: Callable[[Request], Awaitable[Any]],
    kick: Callable[[], None],
    draining: asyncio.Event | None = None,
    callbacks: CallbackCheck | None = None,
) -> APIRouter:
    """The routes; ``draining`` set (the listener stopping) ends open live streams, whose
    consumer resumes from its last position later; ``callbacks`` is where a consumer's
    callback address may be (`node.dsp.callbacks`; none: anywhere)."""
    callback_check = callbacks if callbacks is not None else CallbackCheck()
    stopping = draining if draining is not None else asyncio.Event()
    moves = transfers.moves
    runtime = moves.runtime
    api = APIRouter()

    def caller(request: Request) -> MemberIdentity:
        identity = peer_of(request.scope, authenticator)
        verify_token(bearer(request.headers.get("authorization")), identity, moves.me)
        return identity

    def addressed(pid: str, peer: MemberIdentity, role: Role) -> DspProcess:
        """The caller's process of `role` by our pid, or "not found". A database read:
        called in a worker thread, off the loop the node's other calls share."""
        row = moves.owned(pid, peer)
        if row.role != role.value:
            raise UnknownContractError(f"no transfer {pid[:128]} here")
        return row

    def check_pids(row: DspProcess, provider_pid: str, consumer_pid: str) -> None:
        """The message's pids are the process's; the peer's, the first time, is recorded
        (a write: called in a worker thread)."""
        own_provider, own_consumer = pids(row)
        if (row.role == Role.PROVIDER.value and provider_pid != own_provider) or (
            row.role == Role.CONSUMER.value and consumer_pid != own_consumer
        ):
            raise codec.DspMessageError("$", "the pids do not match the process addressed")
        their = consumer_pid if row.role == Role.PROVIDER.value else provider_pid
        if row.peer_pid is None:
            runtime.store.dsp.set_peer_pid("transfer", row.local_id, their)
        elif their != row.peer_pid:
            raise codec.DspMessageError("$", "the pids do not match the process addressed")

    # ------------------------------------------------------------ provider

    @api.post("/transfers/request", status_code=201)
    async def request_transfer(request: Request) -> dict[str, Any]:
        """A consumer's TransferRequestMessage opens a transfer (201), or is a retry of one
        it opened (the start queued again, `DspTransferMoves.open`).

        A member over ``transfers_per_member_hour`` (re-reads, resumes and suspensions
        counted) is refused (429, `TransferQuotaError`) before its body is read and
        parsed (pyld), as a negotiation request is (`node.dsp.app`): its retries too, as
        the consumerPid is in the body. The start of a transfer it opened still reaches
        its callback through the outbox (retried there), and ``GET /transfers/{pid}``
        answers the state; the runtime checks the quota again where it opens one."""
        peer = caller(request)
        await before_body(request, lambda: runtime.within_transfer_quota(peer))
        ask = await run_in_threadpool(wire.read_request, await body_of(request))
        callback_check.check(ask.callback, peer)
        row = await run_in_threadpool(moves.open, peer, ask)
        kick()
        provider_pid, consumer_pid = pids(row)
        return wire.process(provider_pid, consumer_pid, "REQUESTED")

    @api.get("/transfers/{pid}")
    async def transfer_get(pid: str, request: Request) -> dict[str, Any]:
        row = await run_in_threadpool(addressed, pid, caller(request), Role.PROVIDER)
        return await run_in_threadpool(moves.state_body, row)

    async def control(request: Request, pid: str, kind: str, role: Role) -> Response:
        peer = caller(request)
        row = await run_in_threadpool(addressed, pid, peer, role)
        provider_pid, consumer_pid, message = await run_in_threadpool(
            wire.read_pids, await body_of(request), _MESSAGE[kind]
        )
        await run_in_threadpool(check_pids, row, provider_pid, consumer_pid)
        address = wire.read_data_address(message) if role is Role.CONSUMER else None
        if address is not None:  # served where we talk DSP to the provider, nowhere else
            wire.check_endpoint(address, row.callback)
        after = await run_in_threadpool(moves.incoming, peer, row, kind, message)
        kick()
        if role is Role.CONSUMER:
            if kind == "start" and after.state is TransferState.STARTED:
                transfers.on_start(row, address)
            elif kind in ("suspension", "termination"):
                transfers.stop(row.local_id)
        return Response(status_code=200)

    for kind in KINDS:

        def bind(kind: str) -> None:
            async def provider_side(pid: str, request: Request) -> Response:
                return await control(request, pid, kind, Role.PROVIDER)

            async def consumer_side(pid: str, request: Request) -> Response:
                return await control(request, pid, kind, Role.CONSUMER)

            api.add_api_route(f"/transfers/{{pid}}/{kind}", provider_side, methods=["POST"])
            api.add_api_route(
                f"/callback/transfers/{{pid}}/{kind}", consumer_side, methods=["POST"]
            )

        bind(kind)

    # ---------------------------------------------------------- data plane

    def authorised(pid: str, request: Request) -> tuple[MemberIdentity, DspProcess, DataClaims]:
        peer = peer_of(request.scope, authenticator)
        header = request.headers.get("authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            raise DataTokenError("Authorization: Bearer <data-plane token> is required")
        claims = moves.tokens.verify(token.strip(), pid, peer.member_id)
        return peer, addressed(pid, peer, Role.PROVIDER), claims

    def current(row: DspProcess, claims: DataClaims) -> TransferProcess:
        process = moves.load(row)
        moves.tokens.check_current(claims, process)
        if process.state not in (TransferState.STARTED, TransferState.COMPLETED):
            raise DataTokenError(f"transfer {row.own_pid} is {process.state.value}")
        return process

    @api.get("/data/{pid}")
    async def data(pid: str, request: Request) -> Response:
        peer, row, claims = await run_in_threadpool(authorised, pid, request)
        process = await run_in_threadpool(current, row, claims)
        params = request.query_params
        if await run_in_threadpool(moves.is_stream, process):
            after = _int(params, "after", 0, 2**62, 0)
            return await live(peer, row, claims, process, str(after) if after else process.since)
        size = _int(params, "batch_rows", 1, MAX_BATCH_ROWS, 1000)
        pull = PullRequest(process.transfer_id, resume_point(params, process), size)
        batches = runtime.pull(peer, pull, size)
        first = await run_in_threadpool(next, batches, None)  # refusals are still statuses
        return StreamingResponse(pulled(peer, row, claims, first, batches), media_type=NDJSON)

    def served(peer: MemberIdentity, row: DspProcess, claims: DataClaims) -> None:
        """Raise `Refused` when the caller is no longer in good standing (revoked, another
        certificate pinned, or the revocation list stale: fails closed, as gRPC streams
        do), `DataTokenError` when its token or transfer no longer lets data out."""
        authenticator.check_standing(peer)
        current(row, claims)

    async def pulled(
        peer: MemberIdentity,
        row: DspProcess,
        claims: DataClaims,
        first: RowBatch | None,
        batches: Iterator[RowBatch],
    ) -> AsyncIterator[bytes]:
        batch = first
        while batch is not None:
            try:  # before each batch: a member revoked mid-pull gets no more of it
                await run_in_threadpool(served, peer, row, claims)
            except (Refused, DataTokenError) as exc:  # revoked, suspended, terminated
                logger.info("DSP data %s stopped: %s", row.own_pid, exc)
                return
            yield batch_bytes(batch)
            if batch.last:
                return
            batch = await run_in_threadpool(next, batches, None)

    async def live(
        peer: MemberIdentity,
        row: DspProcess,
        claims: DataClaims,
        process: TransferProcess,
        after: str,
    ) -> Response:
        stored = await run_in_threadpool(runtime.store.agreement, process.agreement_id)
        purpose, _order = agreed_scope(stored.signed.agreement.policy)
        ask = StreamRequest(process.transfer_id, process.agreement_id, purpose or "", None, after)
        gate, position = await run_in_threadpool(runtime.open_stream, peer, ask)

        async def events() -> AsyncIterator[bytes]:
            nonlocal gate, position
            yield HEARTBEAT
            recheck, beat = GateRecheck(runtime.store, RECHECK_S), time.monotonic()
            watch = runtime.new_inspections
            seen = watch.generation if watch is not None else 0
            while not stopping.is_set():
                if recheck.due():
                    try:
                        await run_in_threadpool(served, peer, row, claims)
                        stored = await run_in_threadpool(
                            runtime.provider_agreement, process.agreement_id, peer
                        )
                        gate = await run_in_threadpool(runtime.stream_gate, stored, ask)
                    except (Refused, DataTokenError, ContractError) as exc:
                        logger.info("DSP live %s stopped: %s", row.own_pid, exc)
                        return
                    recheck.rebuilt()
                rows, positions, position = await run_in_threadpool(
                    runtime.stream_page, gate, position
                )
                if rows:
                    yield live_bytes(rows, positions)
                    beat = time.monotonic()
                    continue
                if time.monotonic() - beat > HEARTBEAT_S:
                    yield HEARTBEAT
                    beat = time.monotonic()
                if watch is None:
                    await asyncio.sleep(POLL_S)
                else:
                    seen = await watch.wait(seen, POLL_S)

        return StreamingResponse(events(), media_type=NDJSON)

    return api
