"""Every console route refuses a dot segment, a blank id or a control character in its
path with a 400 page that says so, never a 5xx (`node.console.render.path_id`).

The node's real operator app (`create_app`, the console mounted at ``/console``) on a
real node directory and SQLite file, driven over HTTP (httpx over ASGI) by a logged-in
client. ``..`` written as ``%2e%2e`` is not folded away by a client or by the server:
the route received ``..`` as a case, agreement or trace id (on a node without contract
machinery that was a 503 page; elsewhere a lookup of the id ``..``).
"""

from __future__ import annotations

import asyncio
import re

import httpx

from qdspace.node.api.app import create_app
from qdspace.node.console.render import segment
from qdspace.node.context import NodeContext

#: every route of the operator console that takes an id from its path, the id as {}
ROUTES = [
    ("GET", "/console/traces/{}"),
    ("GET", "/console/traces/{}/panel"),
    ("GET", "/console/investigations/{}"),
    ("POST", "/console/investigations/{}/ack"),
    ("POST", "/console/investigations/qc-1/actions/{}/done"),
    ("POST", "/console/investigations/{}/actions/A1/done"),
    ("GET", "/console/contracts/agreements/{}"),
    ("GET", "/console/contracts/agreements/{}/verify"),
    ("GET", "/console/inspection/heatmaps/{}/x.png"),
    ("GET", "/console/inspection/heatmaps/abcdef/{}"),
]
DOTS = ["%2e%2e", "%2E%2E", "%2e", ".%2e", "%20..%20"]
BAD = ["%20", "%09", "a%00b", "a%1Bb", "%E2%80%A8"]  # blank, tab, NUL, ESC, U+2028
CSRF = re.compile(r'data-csrf="([^"]+)"')


def _answers(node: NodeContext, calls: list[tuple[str, str]]) -> list[httpx.Response]:
    """The answers of the node's app to `calls`, made by a client logged in to the
    console (its session cookie, its page's CSRF token on every POST)."""

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(node))
        async with httpx.AsyncClient(transport=transport, base_url="https://node") as client:
            login = await client.post("/console/login", data={"token": node.operator_token})
            assert login.status_code == 303, login.text
            match = CSRF.search((await client.get("/console/")).text)
            assert match is not None
            headers = {"x-csrf-token": match.group(1)}
            return [await client.request(m, path, headers=headers) for m, path in calls]

    return asyncio.run(run())


def _page(answer: httpx.Response) -> str:
    """The answer is a 400 HTML page (no traceback); its text."""
    assert answer.status_code == 400, (answer.request.url, answer.status_code, answer.text[-500:])
    assert answer.headers["content-type"].startswith("text/html"), answer.request.url
    assert "Traceback" not in answer.text
    return answer.text


def test_a_dot_segment_is_no_id_on_any_route(node: NodeContext) -> None:
    calls = [(method, path.format(dots)) for method, path in ROUTES for dots in DOTS]
    for answer in _answers(node, calls):
        assert "is a path segment, not an id" in _page(answer), answer.request.url


def test_a_blank_id_or_a_control_character_is_refused_on_any_route(node: NodeContext) -> None:
    calls = [(method, path.format(bad)) for method, path in ROUTES for bad in BAD]
    for answer in _answers(node, calls):
        assert "must be printable characters, not blank" in _page(answer), answer.request.url


def test_a_link_to_a_dot_id_is_escaped_so_no_browser_resolves_it() -> None:
    assert (segment("."), segment(".."), segment("..."), segment("a.b")) == (
        "%2E",
        "%2E%2E",
        "...",
        "a.b",
    )
