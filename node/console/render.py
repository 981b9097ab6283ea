"""Rendering shared by the console's pages: templates, the page frame, security headers.

Templates autoescape everything; no page carries inline script or style, so the Content
Security Policy can forbid both (``script-src 'self'``): a value that slipped through
escaping still could not run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from qdspace.node.console.auth import Session, Sessions
from qdspace.node.context import NodeContext

HERE = Path(__file__).resolve().parent
Endpoint = Callable[[Request], Awaitable[Response]]
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
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

    @classmethod
    def build(cls, ctx: NodeContext, root: str) -> Console:
        env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        env.filters["ago"] = _ago
        env.filters["short"] = _short
        env.filters["when"] = _when
        return cls(ctx, env, Sessions(), root)

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
            nav=NAV,
            active=active,
            member=ident.name,
            role=ident.role,
            csrf=found.csrf if isinstance(found, Session) else "",
            **values,
        )
        return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)
