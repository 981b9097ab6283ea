"""Pure ASGI gates in front of the node's API: who may call, and how much they may send.

FastAPI reads and parses a request body before it runs a route's dependencies, so a token
check written as a dependency lets an anonymous caller make the node read a body of any
size. These gates look only at the request line and headers and answer with a problem
(RFC 9457) before the application sees the request:

- `BearerGate`: every path except health and API docs needs a bearer credential. On
  the operator listener that is the operator token, on every path (``/v1/regulator/``
  included: the regulator routes live on their own listener, so a regulator credential
  here is just a wrong token); on the regulator listener (``operator_token=None``) it is
  the regulator credential, on every path. A missing, non-ASCII, malformed or wrong
  credential is 401 (a regulator credential that is well-formed but not acceptable
  stays 403, as its dependency says).
  The web console under ``/console`` passes here: it has its own gate
  (`qdspace.node.console.auth.SessionGate`: a session cookie from a login with the
  operator token on the operator listener, with a regulator credential on the
  regulator listener, `node.console.regulator_pages`) in front of every console route.
- `BodyLimit`: a declared ``Content-Length`` over the path's limit is 413 at once; a body
  without one is counted while it arrives and cut off at the limit with 413.
- `JsonDepthLimit`: a JSON body nested deeper than `MAX_JSON_DEPTH` is 400 before the
  parser sees it. Python's JSON decoder recurses in C, and py-evm (imported by the ledger)
  raises the recursion limit to 100,000, so ~400 kB of ``[`` would overflow the C stack
  and kill the node instead of raising.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qdspace.node import faults
from qdspace.node.api.problems import PROBLEM_MEDIA_TYPE, problem_bytes
from qdspace.node.errors import IdentityError, LimitExceeded
from qdspace.util.json_depth import MAX_JSON_DEPTH, json_too_deep
from qdspace.util.numbers import decimal

log = logging.getLogger("node.api")

#: paths anyone may read: health probes, metrics and the API's schema (no doc pages)
OPEN_PATHS = frozenset(
    {"/healthz", "/openapi.json"}
    | {"/livez", "/readyz", "/startupz", "/metrics"}  # probes and Prometheus' scrape
)
#: the web console (`qdspace.node.console`) checks its own session cookie (`SessionGate`)
CONSOLE_PREFIX = "/console"
#: bodies of every route but ingest are small JSON documents
DEFAULT_BODY_LIMIT = 1 << 20
#: ingest uploads carry whole CSV/JSONL files (they are spooled to disk, not held in memory)
INGEST_BODY_LIMIT = 512 << 20
INGEST_PREFIX = "/v1/ingest/"
MAX_CREDENTIAL_LEN = 8192

RegulatorCheck = Callable[[str], Any]


class CredentialRejected(Exception):
    """A bearer credential that is missing, malformed or wrong; the message says which."""


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str:
    """The token of the request's ``Authorization: Bearer`` header, ASCII only."""
    values = [v for k, v in headers if k.lower() == b"authorization"]
    if not values:
        raise CredentialRejected("credential required (Authorization: Bearer <token>)")
    if len(values) > 1:
        raise CredentialRejected("more than one Authorization header")
    raw = values[0]
    if len(raw) > MAX_CREDENTIAL_LEN:
        raise CredentialRejected("Authorization header is too long")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise CredentialRejected("Authorization header must be ASCII") from None
    scheme, _, token = text.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or any(c.isspace() for c in token):
        raise CredentialRejected("Authorization header must be 'Bearer <token>'")
    if not all(0x21 <= ord(c) < 0x7F for c in token):
        raise CredentialRejected("bearer token has characters a token never has")
    return token


async def send_problem(
    send: Send, status: int, detail: str, path: str, retry_after_s: int = 0
) -> None:
    """A complete problem response, written straight to the ASGI ``send``
    (``retry_after_s``: a Retry-After header, for a 429 or 503)."""
    body = problem_bytes(status, detail, path)
    headers = [
        (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    if retry_after_s:
        headers.append((b"retry-after", str(retry_after_s).encode()))
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@dataclass(frozen=True)
class BearerGate:
    """Refuses a request without the right credential before its body is read."""

    app: ASGIApp
    #: the operator listener's token; None on the regulator listener (no operator routes)
    operator_token: str | None
    #: the regulator listener's credential check; None on the operator listener
    regulator_check: RegulatorCheck | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if scope["type"] != "http" or path in OPEN_PATHS or self._console(path):
            await self.app(scope, receive, send)
            return
        try:
            self._check(path, scope.get("headers", []))
        except CredentialRejected as exc:
            await send_problem(send, 401, str(exc), path)
            return
        except IdentityError as exc:
            await send_problem(send, faults.http_status(exc), str(exc), path)
            return
        except LimitExceeded as exc:  # a caller over its request rate (the check paces it)
            if getattr(exc, "report", True):  # a flood: logged once, then summed up
                refused = getattr(exc, "refused", 1)
                log.warning("api %s: refused (%d since the last line): %s", path, refused, exc)
            retry = int(getattr(exc, "retry_after_s", 1))
            await send_problem(send, 429, str(exc), path, retry_after_s=retry)
            return
        except Exception as exc:  # a credential nobody could read: fail closed, say so
            log.warning("api %s: credential check failed: %r", path, exc)
            await send_problem(send, 403, "the credential cannot be read", path)
            return
        await self.app(scope, receive, send)

    def _console(self, path: str) -> bool:
        """The console's paths: they have their own login gate (the operator's console on
        the operator listener, the regulator's read-only one on the regulator listener)."""
        return path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")

    def _check(self, path: str, headers: list[tuple[bytes, bytes]]) -> None:
        token = bearer_token(headers)
        if self.operator_token is None:
            if self.regulator_check is None:
                raise CredentialRejected("this listener accepts no credential")
            self.regulator_check(token)
            return
        if not hmac.compare_digest(token.encode(), self.operator_token.encode()):
            raise CredentialRejected("operator token required (Authorization: Bearer ...)")


@dataclass(frozen=True)
class BodyLimit:
    """Caps request bodies: ``limits`` maps a path prefix to its limit, else ``default``."""

    app: ASGIApp
    default: int = DEFAULT_BODY_LIMIT
    limits: Mapping[str, int] | None = None

    def limit_of(self, path: str) -> int:
        for prefix, limit in (self.limits or {}).items():
            if path.startswith(prefix):
                return limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        limit = self.limit_of(path)
        declared = _content_length(scope.get("headers", []))
        if declared is None and _has_header(scope, b"content-length"):
            await send_problem(send, 400, "Content-Length is not a number", path)
            return
        if declared is not None and declared > limit:
            await send_problem(send, 413, _too_large(limit), path)
            return
        await _LimitedExchange(self.app, limit, path)(scope, receive, send)


class _LimitedExchange:
    """One request whose body is counted as it arrives (no or a lying Content-Length)."""

    def __init__(self, app: ASGIApp, limit: int, path: str) -> None:
        self.app, self.limit, self.path = app, limit, path
        self.received = 0
        self.exceeded = False
        self.started = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted_receive() -> Message:
            if self.exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
                if self.received > self.limit:
                    self.exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if self.exceeded:
                return  # the app's answer to a cut-off body is replaced by the 413 below
            if message["type"] == "http.response.start":
                self.started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not self.exceeded:
                raise
        if self.exceeded and not self.started:
            await send_problem(send, 413, _too_large(self.limit), self.path)


@dataclass(frozen=True)
class JsonDepthLimit:
    """Refuses JSON bodies nested deeper than ``limit`` (see the module docstring).

    Paths under ``exempt`` parse their JSON themselves with pydantic-core, whose parser
    is iterative and has its own depth limit (ingest: no need to hold a second copy).
    """

    app: ASGIApp
    limit: int = MAX_JSON_DEPTH
    exempt: tuple[str, ...] = ()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not path or path.startswith(self.exempt) or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        body, last = await _read_body(receive)
        if last["type"] == "http.request" and json_too_deep(body.decode("latin-1"), self.limit):
            detail = f"JSON body nested deeper than {self.limit} levels"
            await send_problem(send, 400, detail, path)
            return
        await self.app(scope, _replay(body, last, receive), send)


async def _read_body(receive: Receive) -> tuple[bytes, Message]:
    """The whole body (already capped by `BodyLimit`) and the last message received."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), message
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), message


def _replay(body: bytes, last: Message, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body read already, then the real channel."""
    pending: list[Message] = [
        {"type": "http.request", "body": body, "more_body": False}
        if last["type"] == "http.request"
        else last
    ]

    async def replayed() -> Message:
        return pending.pop() if pending else await receive()

    return replayed


def _is_json(scope: Scope) -> bool:
    for key, value in scope.get("headers", []):
        if key.lower() == b"content-type":
            media: bytes = value.split(b";")[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return False


def _too_large(limit: int) -> str:
    return f"request body is larger than this route's limit of {limit:,} bytes"


def _has_header(scope: Scope, name: bytes) -> bool:
    return any(k.lower() == name for k, _ in scope.get("headers", []))


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for key, value in headers:
        if key.lower() == b"content-length":
            text = value.decode("latin-1").strip()
            return decimal(text, 40)  # a length past any limit is 413, not 400
    return None
