"""The regulator's view: a read-only verification page on the regulator listener.

A regulator checks what a member anchored; it never changes anything there. So the
regulator listener (`node.api.regulator_app`) mounts this small console at ``/console``:
a login that takes a regulator credential (the token ``/v1/regulator/...`` takes as a
bearer header, printed by ``qdspace ledger credential``), then one page to look up a
record's proof and to drop a proof or passport file and read VALID / INVALID with the
reason. The lookup and the drop are the operator console's ledger pieces
(`ledger_pages`: `node.api.regulator.proof_public` and `verify_posted`, the regulator
API's own checks); none of the operator's pages or forms is mounted here.

The credential is checked at login and again on every request (it expires, and its
holder may be revoked meanwhile: a session never outlives its credential). The drop
zone's POST carries the session's CSRF token like every console change.
"""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from qdspace.ledger.leaves import KIND_CODES
from qdspace.node.console import ledger_pages
from qdspace.node.console.auth import (
    COOKIE,
    Session,
    SessionGate,
    Sessions,
    form_of,
    same_origin,
    session_of,
    set_session_cookie,
)
from qdspace.node.console.render import Console, Endpoint
from qdspace.node.context import NodeContext
from qdspace.node.errors import IdentityError
from qdspace.node.identity.credential import RegulatorPrincipal, check_credential

log = logging.getLogger("node.console")
REGULATOR_NAV = (("verify", "Verify", "/"),)
#: a regulator's console session lasts at most this long (its credential may be shorter)
REGULATOR_SESSION_TTL_S = 3600.0
MAX_CREDENTIAL = 8192


class CredentialSessions(Sessions):
    """Sessions that keep their credential and check it again on every use."""

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ttl_s=REGULATOR_SESSION_TTL_S)
        self.ctx = ctx
        #: session id -> its credential (checked again on every use) and whose it is
        self._tokens: dict[str, tuple[str, RegulatorPrincipal]] = {}

    def check(self, token: str) -> RegulatorPrincipal:
        """The regulator ``token`` is a credential of; `IdentityError` unless it is one
        for us."""
        if not token or len(token) > MAX_CREDENTIAL or not token.isascii():
            raise IdentityError("not a regulator credential")
        return check_credential(
            token,
            ca_cert=self.ctx.keys.trust,
            revocations=self.ctx.revocations,
            audience=self.ctx.keys.identity.member_id,
        )

    def open_for(self, token: str) -> Session:
        """A session for ``token``; `IdentityError` unless it is a regulator credential
        for us."""
        who = self.check(token)
        session = self.open()
        self._tokens[session.session_id] = (token, who)
        self._tokens = {k: v for k, v in self._tokens.items() if k in self._held}
        return session

    def pace(self, session: Session) -> None:
        """A console request takes a token of the regulator's bucket in the node's member
        rate, as its API requests do (`node.api.regulator_app`): the console's proof and
        verify pages read the chain too, and were a way around that rate."""
        held = self._tokens.get(session.session_id)
        if held is not None and self.ctx.calls is not None:
            self.ctx.calls.pace(held[1].member_id, held[1].name)

    def get(self, session_id: str | None) -> Session | None:
        session = super().get(session_id)
        if session is None:
            return None
        try:
            held = self._tokens.get(session.session_id)
            self.check(held[0] if held else "")
        except Exception:  # expired, revoked or unreadable: the session ends
            self.close(session.session_id)
            return None
        return session

    def close(self, session_id: str) -> None:
        super().close(session_id)
        self._tokens.pop(session_id, None)


def create_regulator_console(ctx: NodeContext, root: str = "/console") -> Starlette:
    """The read-only console of the regulator listener, to be mounted at ``root``."""
    sessions = CredentialSessions(ctx)
    console = Console.build(ctx, root, sessions, REGULATOR_NAV, login="regulator")

    async def login_form(request: Request) -> Response:
        return console.page(request, "login.html")

    async def login(request: Request) -> Response:
        form = await form_of(request)
        if not same_origin(request):
            return console.page(request, "login.html", status=403, error="cross-origin login")
        token = form.get("token", "").strip()
        try:
            session = sessions.open_for(token)  # the credential checked once, here
        except IdentityError as exc:
            return console.page(request, "login.html", status=401, error=str(exc)[:300])
        response = RedirectResponse(f"{root}/", status_code=303)
        set_session_cookie(response, session, root)
        return response

    async def logout(request: Request) -> Response:
        sessions.close(session_of(request).session_id)
        response = RedirectResponse(f"{root}/login", status_code=303)
        response.delete_cookie(COOKIE, path=root, secure=True, httponly=True, samesite="strict")
        return response

    async def verify_page(request: Request) -> Response:
        return console.page(request, "regulator.html", "verify", kinds=list(KIND_CODES))

    shared = ("/ledger/proof", "/ledger/proof.json", "/ledger/verify")
    pages: list[tuple[str, Endpoint, str]] = [
        ("/login", login_form, "GET"),
        ("/login", login, "POST"),
        ("/logout", logout, "POST"),
        ("/", verify_page, "GET"),
        *[r for r in ledger_pages.routes(console) if r[0] in shared],
    ]
    return Starlette(
        routes=console.routes(pages),
        middleware=[Middleware(SessionGate, sessions=sessions)],
        exception_handlers={HTTPException: console.not_found},
    )
