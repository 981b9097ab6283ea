"""The Catalog servicer encodes a reply once per (role, kind) and asset generation: a
cached reply never hides an asset offered later, never shows one role another's view,
and a peer's made-up kinds do not grow the cache."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey
from sqlalchemy import create_engine

from qdspace.connector.assets import Asset, AssetKind
from qdspace.connector.contract_store import ContractStore, ensure_schema
from qdspace.connector.paging import INSPECTION_FIELDS
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.member_ids import member_id_for
from qdspace.node.rpc.auth import _CURRENT_PEER, Peer
from qdspace.node.rpc.contracts_service import CatalogServicer
from qdspace.node.runtime.contracts import ContractRuntime
from qdspace.node.runtime.contracts_clock import ContractClock
from qdspace.policies.model import OfferTerms, make_offer
from qdspace.protocols.v1 import catalog_pb2


def identity(name: str, role: str, seed: bytes) -> MemberIdentity:
    vk = bytes(SigningKey(seed * 32).verify_key)
    return MemberIdentity(
        member_id_for(name, vk), name, role, vk, 1, dt.datetime(2100, 1, 1, tzinfo=dt.UTC), name
    )


def asset(asset_id: str, roles: frozenset[str]) -> Asset:
    offer = make_offer(
        f"offer-{asset_id}", "cellex", asset_id, OfferTerms(purposes=frozenset({"qa"}))
    )
    return Asset(
        asset_id=asset_id,
        title=asset_id,
        kind=AssetKind.INSPECTIONS_OF_ORDER,
        tables=("qdm_inspection",),
        fields=INSPECTION_FIELDS,
        offer=offer,
        pseudonymized=frozenset(),
        audience=roles,
    )


def ask(servicer: CatalogServicer, caller: MemberIdentity, kind: str = "") -> list[str]:
    async def call() -> Any:
        _CURRENT_PEER.set(Peer(caller, "127.0.0.1:1"))
        return await servicer.ListAssets(catalog_pb2.CatalogRequest(kind=kind), None)  # type: ignore[arg-type]

    return [a.asset_id for a in asyncio.run(call()).assets]


def test_cached_catalog_replies_follow_the_assets_and_the_callers_role(tmp_path: Path) -> None:
    key = SigningKey(b"s" * 32)
    engine = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    ensure_schema(engine)
    me = identity("cellex", "supplier", b"s")
    runtime = ContractRuntime(
        me,
        key,
        ContractStore(engine, bytes(32)),
        engine,
        ContractClock(tmp_path / "clock", control=False),
        bytes(32),
        {"for-oems": asset("for-oems", frozenset({"oem"}))},
    )
    servicer = CatalogServicer(runtime)
    oem, regulator = identity("sunarc", "oem", b"o"), identity("reg", "regulator", b"r")
    assert ask(servicer, oem) == ["for-oems"]
    assert ask(servicer, regulator) == []  # its own view, not the oem's cached one
    runtime.offer_asset(asset("later", frozenset({"oem", "regulator"})))
    assert ask(servicer, oem) == ["for-oems", "later"]  # a new asset is never hidden
    assert ask(servicer, regulator) == ["later"]
    for n in range(500):  # made-up kinds answer empty and are not kept
        assert ask(servicer, oem, f"kind-{n}") == []
    assert len(servicer._replies) <= 4
    engine.dispose()
