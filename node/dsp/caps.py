"""How many requests one member may hold open on the DSP listener at once, and how often
it may send one.

The gRPC listener counts each member's calls and streams in flight (`node.rpc.limits`:
``rpc_max_calls_per_peer`` unary calls and ``rpc_max_streams_per_peer`` streams a
member, ``rpc_max_calls`` in all). The DSP listener is the same node's door for the same
members, so it counts against the same caps, in the same count
(`node.serving.call_limiter`: a member holding its streams on one listener has none left
on the other): without them one member could open as many live data streams as it liked
(each reads its pages in the listener's worker threads, for hours) or flood the control
endpoints, and every other member's DSP calls would wait behind its. A request holds a
slot from its first byte to the last byte of its answer; a data-plane GET
(``/data/...``: a pull, a live stream) holds a stream slot, any other request a call
slot. A member over its cap is answered 429 at once, with a DSP error naming the cap,
before its token is checked or its body parsed (a body of up to a mebibyte is read and
dropped first, so that the client reads the answer: `drain_body`); the others are not
affected. Slots are keyed by the member of the client certificate the TLS handshake
verified; a request without one is left to the routes, which refuse it (401).

Before its slot, a request takes a token of its member's request rate, the same bucket
as the member's gRPC calls (`CallLimiter.pace`, ``rpc_rate_per_peer`` a second and
``rpc_burst_per_peer`` at once): a member that sends cheap requests one after the other
(a negotiation's state, the catalog, messages on a process it holds) never holds many
slots, and would otherwise take the listener's loop and workers from everybody else.
Over it, the answer is the refusal above (the fault table's 429 and a DSP error body
naming the settings, as a member over its hourly quota of negotiations is answered), with
a Retry-After: the seconds until the member's next token. Unlike the other refusals the
connection is kept when the request's body was read to its end (a request without one,
a small one): a client that paces itself by Retry-After goes on on the same connection,
and each request of one that does not costs the node its parsing and a look-up, not a
TLS handshake as well. A flood of refusals is logged once, then summed up
(`node.rpc.member_rates`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from cryptography import x509
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from qdspace.connector import dsp_codec as codec
from qdspace.node.errors import IdentityError, LimitExceeded
from qdspace.node.faults import http_status
from qdspace.node.identity.certs import MemberIdentity, identity_of
from qdspace.node.metrics import NodeMetrics
from qdspace.node.rpc.limits import CallLimiter, RateExceeded

logger = logging.getLogger("node.dsp")

#: what is read and dropped of a request body the listener refuses (over `MAX_BODY`, a
#: member over its cap) before the answer and the close: a connection closed with the
#: client's bytes unread behind it is reset, and a reset can cost the client the answer
#: already sent to it (it reads a broken connection instead)
DRAIN_BYTES = 1024 * 1024
DRAIN_S = 2.0
#: what is read of a body refused for its member's request rate, to keep the connection
RATE_DRAIN_BYTES = 64 * 1024


async def drain_body(receive: Receive, declared: str | None, most: int = DRAIN_BYTES) -> bool:
    """Read the rest of a refused request body, if it is at most `most` bytes (as
    declared, and as it arrives) and arrives within `DRAIN_S`; a larger or slower one is
    cut off. True when the body was read to its end (the connection could go on)."""
    if declared and (not declared.isdigit() or int(declared) > most):
        return False
    read = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_S):
            while read <= most:
                message = await receive()
                if message["type"] != "http.request":
                    return False  # the client is gone
                read += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return True
    return False


def error_kind(path: str) -> str:
    """The DSP error body's type for a request to `path`."""
    if path.startswith(("/transfers", "/callback/transfers", "/data")):
        return "TransferError"
    if path.startswith("/catalog"):
        return "CatalogError"
    return "ContractNegotiationError"


class DspCallCaps:
    """ASGI middleware: a slot of `limiter` per request of a member (see the module)."""

    def __init__(
        self, app: ASGIApp, limiter: CallLimiter, metrics: NodeMetrics | None = None
    ) -> None:
        self.app = app
        self.limiter = limiter
        #: where refusals are counted (``qdspace_dsp_requests_refused``); None: nowhere
        self.metrics = metrics

    @staticmethod
    def _member(scope: Scope) -> MemberIdentity | None:
        der = scope.get("extensions", {}).get("tls", {}).get("client_cert_der")
        if not der:
            return None
        try:
            return identity_of(x509.load_der_x509_certificate(der))
        except (ValueError, IdentityError):
            return None  # the routes refuse it, saying why

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        member = self._member(scope) if scope["type"] == "http" else None
        if member is None:
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        try:
            self.limiter.pace(member.member_id, member.name)
            release = self.limiter.acquire(
                member.member_id, member.name, stream=path.startswith("/data/")
            )
        except LimitExceeded as exc:
            if self.metrics is not None:
                limit = "rate" if isinstance(exc, RateExceeded) else "in_flight"
                self.metrics.dsp_refused.labels(limit=limit).inc()
            # over its rate a member is refused often: only a small body is read to keep
            # the connection (a flood of 1 MiB bodies read in full would cost what it saves)
            most = RATE_DRAIN_BYTES if isinstance(exc, RateExceeded) else DRAIN_BYTES
            declared = Headers(scope=scope).get("content-length")
            read = await drain_body(receive, declared, most)
            await _refuse(exc, path, read)(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            release()


def _refuse(exc: LimitExceeded, path: str, read: bool) -> Any:
    """The 429 of a member over a cap or its request rate (`read`: its body read to the end)."""
    status = http_status(exc)
    body = codec.error(error_kind(path), str(status), str(exc))
    headers = {}
    if isinstance(exc, RateExceeded):
        headers["retry-after"] = str(exc.retry_after_s)
        if exc.report:  # a flood's first refusal, then one line every few seconds
            since = f" ({exc.refused} refused since the last line)" if exc.refused > 1 else ""
            logger.warning("DSP request refused: %s%s", exc, since)
    if not (read and "retry-after" in headers):  # the connection goes with it (the module)
        headers["connection"] = "close"
    return JSONResponse(body, status_code=status, headers=headers)
