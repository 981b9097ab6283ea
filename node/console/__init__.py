"""The web console: pages for quality engineers and line leaders, served by every node.

A quality engineer reads control charts and contracts, not JSON. The console is a small
Starlette app that `qdspace.node.api.app.create_app` mounts at ``/console`` on the
operator listener (the same TLS port as the API), behind its own login
(`qdspace.node.console.auth`).

Why this stack (the README says it for users too): the node is a Python service, so the
pages are rendered on the server from Jinja2 templates, calling the same runtime methods
and public-model converters the API routes call (no second copy of any business rule,
no build step, nothing to install but Jinja2). htmx (14 kB, vendored) refreshes panels
in place; live control charts come by server-sent events (one HTTP response per page
that the node writes to as rows arrive: no WebSocket layer, reconnects by itself) and
are drawn by uPlot (a 50 kB canvas chart library that draws tens of thousands of points
per frame). Every asset lies in ``static/vendor`` with its licence: the console works
on a line's network that reaches nothing else.

Modules: `auth` (login, sessions, CSRF), `pages` (routes), `overview`, `spc`,
`contracts`, `ledger` (what each page reads, as plain data), ``templates/``, ``static/``.
"""

from __future__ import annotations

from qdspace.node.console.pages import create_console

PREFIX = "/console"

__all__ = ["PREFIX", "create_console"]
