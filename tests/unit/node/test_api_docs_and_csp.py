"""No listener of ours runs a third party's script: no Swagger UI or ReDoc page (FastAPI
loads their script from cdn.jsdelivr.net, on the console's origin: a compromised CDN
would act with the operator's session), and every answer of a console's listener says
so in a Content-Security-Policy (`node.api.headers`).

The real apps over HTTP (httpx over ASGI): the operator's and the regulator's of a real
node directory, the authority's, a managed host's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from qdspace.node.api.app import create_app
from qdspace.node.api.regulator_app import create_regulator_app
from qdspace.node.authority.app import create_authority_app
from qdspace.node.authority.service import AuthorityService
from qdspace.node.context import NodeContext
from qdspace.node.host.config import HostSettings
from qdspace.node.host.dispatch import create_host_app
from qdspace.node.host.runtime import HostRuntime
from qdspace.node.host.tenants import init_host, load_host_token, load_master_key
from qdspace.node.identity.authority import Authority


def _get(app: object, *paths: str) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="https://node") as client:
            return [await client.get(path) for path in paths]

    return asyncio.run(run())


def _no_doc_pages(app: FastAPI) -> None:
    """No documentation page, nothing that loads a script; the schema is still there. (A
    gated app answers /docs 401 to a caller without a token: the app itself is asked,
    since an operator with its token would get the page.)"""
    assert (app.docs_url, app.redoc_url) == (None, None)
    assert not [r for r in app.routes if getattr(r, "path", "") in ("/docs", "/redoc")]
    docs, redoc, schema = _get(app, "/docs", "/redoc", "/openapi.json")
    for page in (docs, redoc):
        assert page.status_code in (401, 404), (page.request.url, page.status_code)
        assert "<script" not in page.text and "cdn." not in page.text, page.text[:300]
    assert schema.status_code == 200 and schema.json()["openapi"].startswith("3.")


def _script_from_us_only(answer: httpx.Response) -> str:
    """The answer's policy, which lets script come from the node itself at most."""
    policy = answer.headers.get("content-security-policy", "")
    assert "default-src" in policy, (answer.request.url, dict(answer.headers))
    directives = dict(d.strip().partition(" ")[::2] for d in policy.split(";") if d.strip())
    script = directives.get("script-src", directives["default-src"])
    assert script in ("'self'", "'none'"), (answer.request.url, policy)
    return policy


# the regulator app of a node without a chain names one stand-in route twice in its schema
# (`node.api.ledger`): FastAPI warns, the schema is served all the same
@pytest.mark.filterwarnings("ignore:Duplicate Operation ID:UserWarning")
def test_the_operator_and_regulator_listeners_serve_no_doc_page_and_a_policy(
    node: NodeContext,
) -> None:
    apps: list[FastAPI] = [create_app(node), create_regulator_app(node)]
    for app in apps:
        _no_doc_pages(app)
        answers = _get(app, "/healthz", "/openapi.json", "/docs", "/v1/nowhere", "/console/login")
        policies = [_script_from_us_only(a) for a in answers]
        assert policies[0] == policies[1] == policies[2] == policies[3]  # JSON: load nothing
        assert "default-src 'none'" in policies[0] and "frame-ancestors 'none'" in policies[0]
        assert answers[4].status_code == 200 and "script-src 'self'" in policies[4]  # a page
        assert all(a.headers["x-content-type-options"] == "nosniff" for a in answers)


def test_the_authority_and_the_host_serve_no_doc_page(tmp_path: Path) -> None:
    Authority.init(tmp_path / "authority", "test-space")
    _no_doc_pages(create_authority_app(AuthorityService.open(tmp_path / "authority")))
    files = init_host(tmp_path / "host", HostSettings())
    runtime = HostRuntime(
        files.directory, HostSettings.load(files.directory), load_master_key(files)
    )
    _no_doc_pages(create_host_app(runtime, load_host_token(files), 0.0))
