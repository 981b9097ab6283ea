"""Helpers of the node's unit tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from qdspace.connector.contract_store import ContractStore, ensure_schema
from qdspace.connector.storage import create_store_engine
from qdspace.node.api.app import create_app
from qdspace.node.context import NodeContext, build_context
from qdspace.node.identity.authority import Authority
from qdspace.node.init import init_node
from qdspace.node.runtime.contracts import ContractRuntime
from qdspace.node.runtime.contracts_clock import ContractClock

from ..servicer_doubles import seeded_member


def sqlite_runtime(root: Path) -> ContractRuntime:
    """SunArc's contract runtime (key of seed ``o``) on a fresh SQLite file in `root`, its
    contract clock not controlled."""
    key, me = seeded_member("sunarc", b"o", "oem")
    engine = create_store_engine(f"sqlite:///{root / 'node.db'}")
    ensure_schema(engine)
    clock = ContractClock(root / "node.clock", control=False)
    return ContractRuntime(me, key, ContractStore(engine, bytes(32)), engine, clock, bytes(32), {})


def cellex_context(root: Path) -> NodeContext:
    """A real node directory (Cellex, a supplier, on SQLite, with an authority of its
    own) under ``root``, and its context; the caller closes it."""
    Authority.init(root / "authority", "test-space")
    settings = init_node(
        root / "cellex",
        root / "authority",
        name="cellex",
        role="supplier",
        db_url=f"sqlite:///{root / 'cellex.db'}",
    )
    return build_context(settings)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeContext]:
    """`cellex_context`, one for the test module."""
    ctx = cellex_context(tmp_path_factory.mktemp("node"))
    yield ctx
    ctx.close()


async def operator_post(node: NodeContext, path: str, content: bytes) -> httpx.Response:
    """``content`` posted as JSON with the operator's token to ``path`` of the node's
    operator app, in process: a real HTTP request, where FastAPI's validation of a body
    shows as a caller meets it."""
    transport = httpx.ASGITransport(app=create_app(node))
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        headers = {
            "Authorization": f"Bearer {node.operator_token}",
            "content-type": "application/json",
        }
        return await client.post(path, headers=headers, content=content)


def post_json(node: NodeContext, path: str, body: dict[str, Any]) -> httpx.Response:
    """`operator_post` of ``body`` written as JSON, from synchronous code."""
    return asyncio.run(operator_post(node, path, json.dumps(body).encode()))
