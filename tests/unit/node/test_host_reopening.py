"""While a tenant is opened again (a renewed certificate, a new chain account), its staff
are answered 503 with Retry-After, not 401 "unknown token": the dispatcher of a real host
directory's runtime, over ASGI, with the tenant marked as being opened again the way
`HostRuntime.reopen` marks it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from qdspace.node.host.config import HostSettings
from qdspace.node.host.dispatch import HostDispatcher, create_host_app
from qdspace.node.host.runtime import HostRuntime, token_digest
from qdspace.node.host.tenants import init_host, load_host_token, load_master_key


def test_a_tenant_being_opened_again_is_busy_not_unknown(tmp_path: Path) -> None:
    files = init_host(tmp_path / "H", HostSettings())
    runtime = HostRuntime(
        files.directory, HostSettings.load(files.directory), load_master_key(files)
    )
    host_token = load_host_token(files)
    dispatcher = HostDispatcher(runtime, host_token, create_host_app(runtime, host_token, 0.0))
    token = "t" * 43
    runtime._reopening[token_digest(token)] = "cellex"  # as reopen() does around the gap

    async def ask(bearer: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=dispatcher)
        async with httpx.AsyncClient(transport=transport, base_url="https://host") as client:
            return await client.get("/v1/node", headers={"authorization": f"Bearer {bearer}"})

    busy = asyncio.run(ask(token))
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1", busy.text
    assert "cellex is being opened again" in busy.json()["detail"]
    assert asyncio.run(ask("u" * 43)).status_code == 401  # any other token: unknown
    runtime._reopening.clear()
    assert asyncio.run(ask(token)).status_code == 401  # opened (or gone): the usual check
