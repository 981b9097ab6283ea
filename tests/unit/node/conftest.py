"""Helpers of the node's unit tests."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from nacl.signing import SigningKey

from qdspace.connector.contract_store import ContractStore, ensure_schema
from qdspace.connector.storage import create_store_engine
from qdspace.node.context import NodeContext, build_context
from qdspace.node.identity.authority import Authority
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.init import init_node
from qdspace.node.member_ids import member_id_for
from qdspace.node.runtime.contracts import ContractRuntime
from qdspace.node.runtime.contracts_clock import ContractClock


def sqlite_runtime(root: Path) -> ContractRuntime:
    """SunArc's contract runtime (key of seed ``o``) on a fresh SQLite file in `root`, its
    contract clock not controlled."""
    key, me = seeded_member("sunarc", b"o", "oem")
    engine = create_store_engine(f"sqlite:///{root / 'node.db'}")
    ensure_schema(engine)
    clock = ContractClock(root / "node.clock", control=False)
    return ContractRuntime(me, key, ContractStore(engine, bytes(32)), engine, clock, bytes(32), {})


def seeded_member(name: str, seed: bytes, role: str) -> tuple[SigningKey, MemberIdentity]:
    """A member's signing key (from `seed`, one byte repeated) and its identity, its
    certificate valid until 2100."""
    key = SigningKey(seed * 32)
    vk = bytes(key.verify_key)
    until = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
    return key, MemberIdentity(member_id_for(name, vk), name, role, vk, 1, until, name)


class Aborted(Exception):
    """What `AbortingContext.abort` raises: the status and reason a servicer aborted with."""

    def __init__(self, code: grpc.StatusCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class AbortingContext:
    """The part of a gRPC servicer context a servicer under test uses: `abort` raises
    `Aborted`; 5 s of deadline remain."""

    async def abort(self, code: grpc.StatusCode, reason: str) -> None:
        raise Aborted(code, reason)

    def time_remaining(self) -> float:
        return 5.0


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
