"""Security headers on every answer of a listener that serves the console.

The console (`qdspace.node.console`) lives on the same origin as the API it is mounted
on: any script that origin runs acts with the operator's (or regulator's) session. The
console's own pages carry their policy (`node.console.render.SECURITY_HEADERS`, script
from the node itself only); every other answer of the listener (JSON, problems, a
redirect, the console's static files) gets `API_HEADERS` here: nothing may load or run
from it, it may not be framed. An answer that names its own policy keeps it.

Why the API documentation pages are off (``docs_url=None``): FastAPI's Swagger UI and
ReDoc pages load their script from a CDN, which then ran on this origin; the schema
stays at ``/openapi.json`` for any viewer run elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: what an answer that is no console page says of itself: load nothing, run nothing
API_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "x-content-type-options": "nosniff",
}


class SecurityHeaders:
    """Adds `headers` to every HTTP answer that does not carry the header already."""

    def __init__(self, app: ASGIApp, headers: Mapping[str, str] = API_HEADERS) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in self.headers if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
