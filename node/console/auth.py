"""The console's login: the operator token once, then a session cookie; CSRF on every change.

A browser cannot send the operator API's ``Authorization: Bearer`` header from a link or
a form, and a token kept in page script would be readable by any script that runs there.
So the console asks for the operator token once (a login form) and answers a session
cookie: random, ``HttpOnly`` (no script reads it), ``Secure`` (the listener is TLS),
``SameSite=Strict`` (no other site's page sends it) and ``Path=/console``. The API's
bearer auth is untouched: `node.api.gate.BearerGate` lets ``/console`` through to this
module's `SessionGate`, which refuses every console path but the login page and the
static assets before the request reaches a route, the way the bearer gate does.

Every request that changes something (``POST``) must also carry the session's CSRF token
(a form's hidden ``csrf`` field or the ``X-CSRF-Token`` header htmx and the page script
send) and, when the browser names one, an ``Origin`` equal to the node's own. SameSite
alone would do in current browsers; the token keeps an older one safe too.

Sessions live in this process's memory: a node restart logs everyone out, which is the
right default for an operator credential. They expire after `SESSION_TTL_S` and at most
`MAX_SESSIONS` are kept (the oldest goes first). The operator token is high-entropy
(`node.init` makes 32 random bytes), so a login form needs no lock-out against guessing.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qdspace.node.errors import LimitExceeded

COOKIE = "qdspace_console"
CSRF_HEADER = "x-csrf-token"
SESSION_TTL_S = 8 * 3600
MAX_SESSIONS = 256
#: console paths anyone may load: the login form and the vendored assets
OPEN_PREFIXES = ("/login", "/static/")
#: a login or console form is a few fields; anything longer is not ours
MAX_FORM_BYTES = 64 << 10


@dataclass(frozen=True)
class Session:
    session_id: str
    csrf: str
    expires: float


class Sessions:
    """The logged-in browsers of one node (in memory, module docstring)."""

    def __init__(self, ttl_s: float = SESSION_TTL_S, limit: int = MAX_SESSIONS) -> None:
        self.ttl_s = ttl_s
        self.limit = limit
        self._held: OrderedDict[str, Session] = OrderedDict()

    def open(self) -> Session:
        session = Session(
            secrets.token_urlsafe(32), secrets.token_urlsafe(32), time.time() + self.ttl_s
        )
        self._held[session.session_id] = session
        while len(self._held) > self.limit:
            self._held.popitem(last=False)
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id or len(session_id) > 128:
            return None
        session = self._held.get(session_id)
        if session is None:
            return None
        if session.expires < time.time():
            self._held.pop(session_id, None)
            return None
        return session

    def close(self, session_id: str) -> None:
        self._held.pop(session_id, None)

    def pace(self, session: Session) -> None:
        """Take what one request of ``session`` costs of its holder's request rate, or
        raise `LimitExceeded` (with ``retry_after_s``): nothing for the operator's own
        console; a regulator's is held to the rate its API requests are."""


def token_matches(given: str, operator_token: str) -> bool:
    """Constant-time comparison of bytes (no token, however odd, can raise)."""
    return hmac.compare_digest(given.encode(), operator_token.encode())


def session_of(request: Request) -> Session:
    """The session `SessionGate` found for this request (only gated routes call this)."""
    session = request.scope.get("console_session")
    assert isinstance(session, Session)
    return session


async def form_of(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body as a dict (first value of each key).

    Parsed here rather than by python-multipart: the console's forms are small and never
    upload files (a dropped proof is posted as JSON by the page script)."""
    return parse_form(await request.body())


def parse_form(body: bytes) -> dict[str, str]:
    if len(body) > MAX_FORM_BYTES:
        return {}
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {key: values[0] for key, values in parsed.items()}


def same_origin(request: Request) -> bool:
    """False when the browser names an ``Origin`` other than the host it asked."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    return origin in (f"https://{host}", f"http://{host}")


def set_session_cookie(response: RedirectResponse, session: Session, root: str) -> None:
    response.set_cookie(
        COOKIE,
        session.session_id,
        max_age=int(SESSION_TTL_S),
        path=root,
        secure=True,
        httponly=True,
        samesite="strict",
    )


@dataclass(frozen=True)
class SessionGate:
    """Refuses a console request without a live session (and a change without its CSRF
    token) before a route runs; the login page and static assets pass."""

    app: ASGIApp
    sessions: Sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        inner = path[len(root) :] if path.startswith(root) else path
        if inner.startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            if request.method == "GET" and not request.headers.get("hx-request"):
                await RedirectResponse(f"{root}/login", status_code=303)(scope, receive, send)
            else:
                await PlainTextResponse("log in first", status_code=401)(scope, receive, send)
            return
        if request.method not in ("GET", "HEAD"):
            refused, receive = await _check_change(request, session, receive)
            if refused:
                await PlainTextResponse(refused, status_code=403)(scope, receive, send)
                return
        try:
            self.sessions.pace(session)
        except LimitExceeded as exc:
            retry = str(getattr(exc, "retry_after_s", 1))
            answer = PlainTextResponse(str(exc), status_code=429, headers={"Retry-After": retry})
            await answer(scope, receive, send)
            return
        scope["console_session"] = session
        await self.app(scope, receive, send)


async def _check_change(
    request: Request, session: Session, receive: Receive
) -> tuple[str, Receive]:
    """Why a change is refused ("" if it is not), and the ``receive`` the route reads from
    (a form body read here for its ``csrf`` field is handed on unchanged)."""
    if not same_origin(request):
        return "cross-origin request refused", receive
    header = request.headers.get(CSRF_HEADER, "")
    if header:
        ok = hmac.compare_digest(header.encode(), session.csrf.encode())
        return ("" if ok else "CSRF token mismatch"), receive
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        return "CSRF token required (X-CSRF-Token header)", receive
    body = b""
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return "request ended early", receive
        body += message.get("body", b"")
        more = bool(message.get("more_body"))
        if len(body) > MAX_FORM_BYTES:
            return "form too large", receive
    given = parse_form(body).get("csrf", "")
    if not (given and hmac.compare_digest(given.encode(), session.csrf.encode())):
        return "CSRF token missing or wrong (reload the page)", receive
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return "", replay
