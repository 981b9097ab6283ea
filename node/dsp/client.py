"""Outgoing DSP calls: mutual TLS with the member certificate plus a self-issued ID token.

Every message the node sends over the binding (a callback, a consumer's request) goes
through `DspHttp.post`: the client presents the member certificate, verifies the
peer's against the space CA, and checks that the certificate the server presented is
the member the message is meant for, in good standing (not revoked, the certificate its
directory entry pins), **before a byte of the request is written**: host names do not
identify members, and a callback address is whatever URL the consumer named, so a
member could point the provider's callbacks (its agreement, a transfer's data address
and token) at another member's server. The check runs when the TLS handshake completes
(httpcore's ``trace`` hook, `_HandshakeCheck`), and each member called has its own
connection pool, so a connection verified as one member never carries a message meant
for another; a pooled connection's member is checked again before each call (it may
have been revoked since). Callbacks are queued in the contract outbox
(`outbox_message`, kind ``dsp``) in the commit that decided them, and delivered with
retries by `OutboxDispatcher` through `send_queued`.

Every byte a peer answers is an attack until checked: an answer is read up to
`MAX_ANSWER_BYTES` as it arrives (a declared length over it is refused unread), within
`TIMEOUT_S` for the whole exchange (not only per read: a peer dripping bytes), and a
refusal (a 4xx) is `PeerRefused` with the peer's reason on one line, so the caller can
close what it opened for the request; a peer that failed (5xx) or could not be reached
may have taken the request up, and is a plain `PeerError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from nacl.signing import SigningKey

from qdspace.connector import dsp_codec as codec
from qdspace.connector.contract_store import OutboxMessage
from qdspace.node.dsp.auth import issue_token
from qdspace.node.errors import IdentityError, NotTheMember, PeerBusy, PeerError, PeerRefused
from qdspace.node.identity.certs import MemberIdentity, identity_of
from qdspace.node.rpc.auth import Refused
from qdspace.policies.odrl.jsonld import decode

TIMEOUT_S = 15.0
#: a data-plane stream's longest silence (a live stream beats every few seconds)
STREAM_READ_S = 60.0
OUTBOX_KIND = "dsp"
#: a provider's refusal relayed to our caller with its meaning (any other 4xx, the peer
#: finding our message wrong, is not the operator's mistake: 502)
_REFUSAL_CODES = {
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",  # a cap of the provider's (negotiations within the hour)
}
#: a peer's reason, as relayed (one line)
REASON_CHARS = 300
#: the most of a peer's answer to a control message or a catalog read that is read: the
#: node's own answers are a few kilobytes, a dataset with its offers tens
MAX_ANSWER_BYTES = 1024 * 1024
_BODY_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


async def _bounded(response: httpx.Response, what: str) -> bytes:
    """The body of `response`, refused once it passes `MAX_ANSWER_BYTES` (a peer's
    endless or gigantic answer is not held in memory first)."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
        raise PeerError(f"{what}: an answer of {declared} bytes (at most {MAX_ANSWER_BYTES})")
    parts, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise PeerError(f"{what}: an answer over {MAX_ANSWER_BYTES} bytes")
        parts.append(chunk)
    return b"".join(parts)


def peer_reason(response: httpx.Response) -> str:
    """What a peer's error answer says, on one line: the ``reason`` of a DSP error body
    (TransferError, ContractNegotiationError), else the start of its text."""
    text = ""
    try:  # bounded: a body nested a hundred thousand deep is a refusal's text, not a crash
        body = decode(response.content)
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("reason") is not None:
        text = codec.reason(body)
    elif isinstance(body, dict) and isinstance(body.get("detail"), str):
        text = body["detail"]
    if not text:
        text = response.content[:REASON_CHARS].decode(errors="replace")
    return " ".join(text.split())[:REASON_CHARS] or f"HTTP {response.status_code}"


def outbox_message(
    peer_id: str, process_id: str, message_id: str, url: str, body: dict[str, Any]
) -> OutboxMessage:
    payload = json.dumps({"url": url, "body": body}, separators=(",", ":")).encode()
    return OutboxMessage(peer_id, OUTBOX_KIND, process_id, message_id, payload)


#: raises when a member is not in good standing (`PeerAuthenticator.check_standing`)
Standing = Callable[[MemberIdentity], None]
_Trace = Callable[[str, dict[str, Any]], Awaitable[None]]


def _member_of(stream: Any, url: str) -> MemberIdentity:
    """The member whose certificate the server presented on the TLS `stream`."""
    ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    try:
        return identity_of(x509.load_der_x509_certificate(der or b""))
    except (ValueError, IdentityError) as exc:
        raise PeerError(f"DSP {url}: the server's certificate names no member: {exc}") from None


def _check_server(
    server: MemberIdentity, url: str, audience: str | None, standing: Standing | None
) -> None:
    """Refuse a server that is not `audience` (if named) or not in good standing."""
    if audience is not None and server.member_id != audience:
        raise NotTheMember(f"DSP {url} is served by {server.member_id}, not {audience}")
    if standing is not None:
        try:
            standing(server)
        except Refused as exc:
            raise NotTheMember(f"DSP {url}: server {server.member_id}: {exc.reason}") from None


#: what OpenSSL says when the other end does not speak TLS at all (a plain HTTP server,
#: another protocol): no server of the space is there
_NOT_TLS = frozenset(
    {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST"}
)


def _transport_error(what: str, exc: httpx.HTTPError) -> PeerError:
    """A transport failure as the outbox should count it: a server whose certificate the
    space's CA did not issue, or one that speaks no TLS, is `NotTheMember` (it will not
    pass by waiting); anything else (refused, reset, timed out) may pass."""
    cause: BaseException | None = exc
    for _ in range(8):  # httpx wraps httpcore's error, which wraps the ssl module's
        if cause is None:
            break
        if isinstance(cause, ssl.SSLCertVerificationError) or (
            isinstance(cause, ssl.SSLError) and cause.reason in _NOT_TLS
        ):
            return NotTheMember(f"{what}: no server of this space there: {cause}")
        cause = cause.__cause__ or cause.__context__
    return PeerError(f"{what}: {type(exc).__name__}: {exc}")


def _server_of(
    response: httpx.Response, url: str, audience: str | None, standing: Standing | None
) -> MemberIdentity:
    """The member whose certificate the server presented (must be `audience`, if named)."""
    server = _member_of(response.extensions.get("network_stream"), url)
    _check_server(server, url, audience, standing)
    return server


class _HandshakeCheck:
    """httpcore's ``trace`` hook for one call: once a new connection's TLS handshake
    completes, the server's certificate is checked, and a server that is not the member
    the call is for is hung up on before the request is written (its pool then drops the
    connection). `seen` keeps the member each audience's connections were made with."""

    def __init__(
        self,
        url: str,
        audience: str | None,
        standing: Standing | None,
        seen: dict[str, MemberIdentity],
    ) -> None:
        self.url, self.audience, self.standing, self.seen = url, audience, standing, seen

    async def __call__(self, event: str, info: dict[str, Any]) -> None:
        if event != "connection.start_tls.complete":
            return
        stream = info["return_value"]
        try:
            server = _member_of(stream, self.url)
            _check_server(server, self.url, self.audience, self.standing)
        except PeerError:
            await stream.aclose()
            raise
        if self.audience is not None:
            self.seen[self.audience] = server


class DspHttp:
    """The node's DSP client (one per node)."""

    def __init__(
        self,
        me: str,
        key: SigningKey,
        cert: Path,
        tls_key: Path,
        ca: Path,
        standing: Standing | None = None,
        key_password: str | None = None,
    ) -> None:
        self.me = me
        self.key = key
        self.standing = standing
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
        context.check_hostname = False  # members are told apart by certificate, below
        # loaded now: the files may be transient (a hosted tenant's key is never plaintext)
        context.load_cert_chain(cert, tls_key, password=key_password)
        self._context = context
        #: one pool per member called (None: whoever answers a discovery read)
        self._clients: dict[str | None, httpx.AsyncClient] = {}
        #: the member each audience's pooled connections were verified as
        self._seen: dict[str, MemberIdentity] = {}

    async def _client_for(self, audience: str | None) -> httpx.AsyncClient:
        """The pool for calls to `audience`; its connections were all made to that member,
        which is checked again here (revoked since?): a member no longer in good standing
        gets its pool closed, and the next handshake decides."""
        seen = self._seen.get(audience) if audience is not None else None
        if seen is not None and self.standing is not None:
            try:
                self.standing(seen)
            except Refused:
                del self._seen[seen.member_id]
                stale = self._clients.pop(audience, None)
                if stale is not None:
                    await stale.aclose()
        client = self._clients.get(audience)
        if client is None:
            client = httpx.AsyncClient(verify=self._context, timeout=TIMEOUT_S)
            self._clients[audience] = client
        return client

    def _trace(self, url: str, audience: str | None) -> _Trace:
        return _HandshakeCheck(url, audience, self.standing, self._seen)

    async def call(
        self, method: str, url: str, audience: str | None, body: dict[str, Any] | None = None
    ) -> tuple[MemberIdentity, httpx.Response]:
        """One call; returns the member that answered and its response (any status).
        `audience` None: whoever answers (its identity is returned, checked by the caller)."""
        headers = {}
        if audience is not None:
            headers["authorization"] = f"Bearer {issue_token(self.key, self.me, audience)}"
        client = await self._client_for(audience)
        extensions = {"trace": self._trace(url, audience)}
        try:
            # the whole exchange within TIMEOUT_S: httpx's timeouts bound each read, so a
            # peer dripping its answer a byte at a time would otherwise hold the caller
            # (the outbox's delivery to that peer) for as long as it liked
            async with asyncio.timeout(TIMEOUT_S):
                async with client.stream(
                    method, url, json=body, headers=headers, extensions=extensions
                ) as streamed:
                    server = _server_of(streamed, url, audience, self.standing)
                    content = await _bounded(streamed, f"DSP {method} {url}")
        except httpx.HTTPError as exc:
            raise _transport_error(f"DSP {method} {url}", exc) from None
        except TimeoutError:
            raise PeerError(
                f"DSP {method} {url}: no whole answer within {TIMEOUT_S:.0f} s"
            ) from None
        # the body as read (decoded already): without the headers that would decode it again
        kept = [(k, v) for k, v in streamed.headers.items() if k.lower() not in _BODY_HEADERS]
        response = httpx.Response(
            streamed.status_code, headers=kept, content=content, request=streamed.request
        )
        return server, response

    @contextlib.asynccontextmanager
    async def stream(
        self, url: str, audience: str, token: str, params: Mapping[str, str]
    ) -> AsyncIterator[httpx.Response]:
        """A streamed GET of a data-plane endpoint with its data token (not an ID token:
        the data address's token is the authorization, EDC's EDR pattern); a status
        other than 200 is a `PeerError` with the provider's reason (429, the provider's
        cap on our streams in flight: `PeerBusy`; any other 4xx, a refusal: `PeerRefused`,
        401 when the token expired or was revoked)."""
        headers = {"authorization": f"Bearer {token}"}
        timeout = httpx.Timeout(TIMEOUT_S, read=STREAM_READ_S)
        client = await self._client_for(audience)
        extensions = {"trace": self._trace(url, audience)}
        try:
            async with client.stream(
                "GET", url, params=params, headers=headers, timeout=timeout, extensions=extensions
            ) as response:
                _server_of(response, url, audience, self.standing)
                status = response.status_code
                if status != 200:
                    told = httpx.Response(status, content=await _bounded(response, "DSP GET"))
                    reason = peer_reason(told)
                    what = f"DSP GET {url}: HTTP {status}: {reason}"
                    if status == 429:
                        raise PeerBusy(what)
                    if 400 <= status < 500:
                        raise PeerRefused(what, status, reason, _REFUSAL_CODES.get(status))
                    raise PeerError(what)
                yield response
        except httpx.HTTPError as exc:
            raise _transport_error(f"DSP GET {url}", exc) from None

    async def post(self, url: str, audience: str, body: dict[str, Any]) -> httpx.Response:
        """POST a message; a 4xx answer is `PeerRefused` with the peer's reason, any other
        status but 2xx a `PeerError`."""
        _server, response = await self.call("POST", url, audience, body)
        status = response.status_code
        if 400 <= status < 500:
            reason = peer_reason(response)
            raise PeerRefused(
                f"DSP POST {url}: refused (HTTP {status}): {reason}",
                status,
                reason,
                _REFUSAL_CODES.get(status),
            )
        if status >= 300:
            raise PeerError(f"DSP POST {url}: HTTP {status}: {peer_reason(response)}")
        return response

    async def send_queued(self, message: OutboxMessage) -> None:
        """Deliver a queued DSP message (the outbox retries on `PeerError`)."""
        data = json.loads(message.payload)
        await self.post(data["url"], message.peer_id, data["body"])

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
