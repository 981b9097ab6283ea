"""Rendering shared by the console's pages: templates, the page frame, security headers.

Templates autoescape everything; no page carries inline script or style, so the Content
Security Policy can forbid both (``script-src 'self'``): a value that slipped through
escaping still could not run.

Every id a route takes from its path (a case, an agreement, a trace, a model version) is
checked once, before the route runs (`path_id`, called by `Console.routes`' guard): a
dot segment (``.``, ``..``, also sent as ``%2e%2e``, which no client folds away), an
empty id and one with a control character are refused with a 400 page saying so, by
every route alike. A route checks its own length limit on top.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from qdspace.node import faults
from qdspace.node.console.auth import Session, Sessions
from qdspace.node.context import NodeContext

log = logging.getLogger("node.console")
HERE = Path(__file__).resolve().parent
Endpoint = Callable[[Request], Awaitable[Response]]
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    # frame-ancestors says the same to every current browser; this, to older ones too
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
NAV = (
    ("overview", "Overview", "/"),
    ("spc", "SPC", "/spc"),
    ("contracts", "Contracts", "/contracts"),
    ("inspection", "Inspection", "/inspection"),
    ("federation", "Federation", "/federation"),
    ("traces", "Traces", "/traces"),
    ("investigations", "Investigations", "/investigations"),
    ("ledger", "Ledger", "/ledger"),
)


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "none waiting"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _short(text: str | None, keep: int = 12) -> str:
    if not text:
        return ""
    return text if len(text) <= 2 * keep + 1 else f"{text[:keep]}…{text[-keep:]}"


#: path segments that name a folder, never a record: no route takes them as an id
DOT_SEGMENTS = frozenset({".", ".."})


def path_id(name: str, value: str) -> str:
    """A route's path parameter `name` as an id: not a dot segment, not blank, nothing
    but printable characters; else a 400 naming the parameter (``case_id``: "case id")."""
    what = name.replace("_", " ")
    if value.strip() in DOT_SEGMENTS:
        raise HTTPException(400, f"{what}: {value.strip()!r} is a path segment, not an id")
    if not value.strip() or not value.isprintable():
        raise HTTPException(400, f"{what}: must be printable characters, not blank")
    return value


def segment(value: object) -> str:
    """``value`` as one URL path segment: every byte but the unreserved ones escaped.

    Ids in the console's links and redirects are often a peer's choice (a case id, an
    action id, a trace report named in a case, an agreement id): Jinja's own ``urlencode``
    leaves ``/`` alone, so ``../contracts/negotiate`` in a case id made its Accept button
    post to another page of ours, and a redirect quoted by Starlette keeps ``?`` and
    ``#``, so the page after a move on case ``x?y`` was case ``x``'s. A dot segment is
    escaped too (``%2E%2E``): a browser would resolve ``..`` to the page above."""
    text = str(value)
    if text in DOT_SEGMENTS:
        return "%2E" * len(text)
    return quote(text, safe="")


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass
class Console:
    """What every console route needs: the node, the templates, the sessions."""

    ctx: NodeContext
    env: Environment
    sessions: Sessions
    root: str = "/console"
    #: the pages named in the header (the regulator's console names fewer)
    nav: tuple[tuple[str, str, str], ...] = NAV
    #: what the login form asks for
    login: str = "operator"

    @classmethod
    def build(
        cls,
        ctx: NodeContext,
        root: str,
        sessions: Sessions | None = None,
        nav: tuple[tuple[str, str, str], ...] = NAV,
        login: str = "operator",
    ) -> Console:
        env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.filters["ago"] = _ago
        env.filters["segment"] = segment
        env.filters["short"] = _short
        env.filters["when"] = _when
        return cls(ctx, env, sessions or Sessions(), root, nav, login)

    def page(
        self,
        request: Request,
        template: str,
        active: str = "",
        status: int = 200,
        session: Session | None = None,
        **values: Any,
    ) -> HTMLResponse:
        ident = self.ctx.keys.identity
        found = session or request.scope.get("console_session")
        body = self.env.get_template(template).render(
            root=self.root,
            nav=self.nav,
            login=self.login,
            active=active,
            member=ident.name,
            role=ident.role,
            csrf=found.csrf if isinstance(found, Session) else "",
            **values,
        )
        return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)

    async def failed(self, request: Request, exc: Exception) -> Response:
        """An error a route did not handle, as a page: the fault table's status, the
        error's message, never a traceback (an htmx request gets a fragment)."""
        if isinstance(exc, HTTPException):
            status, detail = exc.status_code, str(exc.detail)
        else:
            status = faults.http_status(exc)
            detail = str(exc) or type(exc).__name__
            if status >= 500:
                # a bug of ours: its traceback goes to the node's log, never to the page
                log.warning("console %s: %r", request.url.path, exc, exc_info=exc)
        if request.headers.get("hx-request"):
            return HTMLResponse(
                self.env.get_template("_error.html").render(status=status, detail=detail),
                status_code=200,  # htmx swaps 2xx only: the message replaces the panel
                headers=SECURITY_HEADERS,
            )
        return self.page(request, "error.html", status=status, detail=detail, code=status)

    async def not_found(self, request: Request, exc: Exception) -> Response:
        """A path no route has (or a method it does not take), as a page like any error."""
        return await self.failed(request, exc)

    def routes(self, pages: Sequence[tuple[str, Endpoint, str]]) -> list[BaseRoute]:
        """The pages as guarded routes (every error answered by `failed`), and the assets."""

        def guard(endpoint: Endpoint) -> Endpoint:
            async def guarded(request: Request) -> Response:
                try:
                    for name, value in request.path_params.items():
                        path_id(name, str(value))
                    return await endpoint(request)
                except Exception as exc:  # answered as a page by the fault table
                    return await self.failed(request, exc)

            return guarded

        routes: list[BaseRoute] = [
            Route(path, guard(endpoint), methods=[method]) for path, endpoint, method in pages
        ]
        routes.append(Mount("/static", StaticFiles(directory=HERE / "static"), name="static"))
        return routes
