"""A hostile provider's catalog against a consumer node (real processes, real mutual TLS).

Cellex's node stops and a rogue server takes its place: Cellex's own certificate (a
member gone rogue, or its host taken over) on Cellex's gRPC address, answering
``Catalog/ListAssets`` and ``Catalog/GetAsset`` with the bytes it is told. Before, the
consumer read any reply up to 64 MiB and parsed every offer in it on its event loop
(60 MiB held the node 18.7 s; every member's calls to it stood still), took the same
asset id twice, answered 400 (the caller's fault) for a provider's unreadable asset, and
negotiated whatever asset ``GetAsset`` returned in place of the one asked for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from qdspace.connector.assets import catalog_entry
from qdspace.connector.offers import standard_assets
from qdspace.node.localnet.network import LocalNetwork
from qdspace.node.rpc.client import ASSET_REPLY_BYTES, CATALOG_REPLY_BYTES
from qdspace.node.rpc.contracts_serde import MAX_CATALOG_ASSETS, catalog_entry_to_proto
from qdspace.node.rpc.server import server_credentials
from qdspace.protocols.v1 import catalog_pb2

from .conftest import oem_and_supplier

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    yield from oem_and_supplier(tmp_path_factory, "hostile-catalog")


class RogueCatalog:
    """Cellex's certificate on Cellex's address, answering the catalog calls with
    ``listing`` and ``asset`` (serialized replies)."""

    def __init__(self, net: LocalNetwork) -> None:
        self.listing = b""
        self.asset = b""
        self.calls = 0
        self._lock = threading.Lock()
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2),
            options=[("grpc.max_send_message_length", 128 * 1024 * 1024)],
        )
        handler = grpc.method_handlers_generic_handler(
            "qdspace.v1.Catalog",
            {
                "ListAssets": grpc.unary_unary_rpc_method_handler(
                    lambda request, context: self._answer(self.listing),
                    request_deserializer=catalog_pb2.CatalogRequest.FromString,
                    response_serializer=None,
                ),
                "GetAsset": grpc.unary_unary_rpc_method_handler(
                    lambda request, context: self._answer(self.asset),
                    request_deserializer=catalog_pb2.AssetRequest.FromString,
                    response_serializer=None,
                ),
            },
        )
        self.server.add_generic_rpc_handlers((handler,))
        cellex = net["cellex"]
        self.server.add_secure_port(cellex.grpc_address, server_credentials(cellex.keys()))

    def _answer(self, reply: bytes) -> bytes:
        with self._lock:
            self.calls += 1
        return reply

    def __enter__(self) -> RogueCatalog:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(0)


def _assets(provider: str) -> list[catalog_pb2.Asset]:
    return [catalog_entry_to_proto(catalog_entry(a, provider)) for a in standard_assets(provider)]


def _listing(assets: list[catalog_pb2.Asset], provider: str) -> bytes:
    return catalog_pb2.CatalogReply(provider_id=provider, assets=assets).SerializeToString()


class LoopWatch:
    """The consumer node's event loop, timed from outside: ``/livez`` asked every 50 ms."""

    def __init__(self, net: LocalNetwork) -> None:
        self.member = net["sunarc"]
        self.slowest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.member.client(timeout=60) as client:
            while not self._stop.is_set():
                start = time.monotonic()
                client.get("/livez")
                self.slowest = max(self.slowest, time.monotonic() - start)
                time.sleep(0.05)

    def __enter__(self) -> LoopWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_a_rogue_providers_catalog_is_refused_as_its_failure_and_holds_nobody(
    net: LocalNetwork,
) -> None:
    with net["sunarc"].client(timeout=60) as oem:
        honest = oem.get("/v1/contracts/catalog/cellex")
    assert honest.status_code == 200, honest.text
    provider = honest.json()[0]["provider_id"]
    assets = _assets(provider)
    assert net.stop(["cellex"]) == {"cellex": 0}

    def catalog() -> Any:
        with net["sunarc"].client(timeout=60) as oem:
            return oem.get("/v1/contracts/catalog/cellex")

    with RogueCatalog(net) as rogue, LoopWatch(net) as loop:
        # the honest catalog as it was: read as before
        rogue.listing = _listing(assets, provider)
        assert catalog().status_code == 200

        # 60 MiB of the same five assets: refused by gRPC on the reply's length prefix
        copies = 60 * 1024 * 1024 // len(rogue.listing)
        rogue.listing = _listing(assets * copies, provider)
        assert len(rogue.listing) > CATALOG_REPLY_BYTES
        big = catalog()
        assert big.status_code == 502, big.text
        assert f"more than the {CATALOG_REPLY_BYTES} read" in big.json()["detail"], big.text

        # under the byte limit, but more assets than any catalog holds: counted, not parsed
        many = [
            catalog_pb2.Asset(asset_id=f"a{i}", kind="inspections_of_order", provider_id="p")
            for i in range(MAX_CATALOG_ASSETS + 1)
        ]
        rogue.listing = _listing(many, provider)
        counted = catalog()
        assert counted.status_code == 502, counted.text
        assert f"more than {MAX_CATALOG_ASSETS}" in counted.json()["detail"]

        # one asset id twice, an offer of 100 KB: the provider's failure, not the caller's
        rogue.listing = _listing([assets[0], assets[0]], provider)
        twice = catalog()
        assert twice.status_code == 502 and "asset id twice" in twice.json()["detail"]
        fat = catalog_pb2.Asset()
        fat.CopyFrom(assets[0])
        fat.offer_json = b" " * 100_000
        rogue.listing = _listing([fat], provider)
        refused = catalog()
        assert refused.status_code == 502 and "offer is larger" in refused.json()["detail"]
    # none of it held the consumer's loop (before: 18.7 s for 60 MiB in-process)
    assert loop.slowest < 5.0, loop.slowest
    assert rogue.calls == 5
    assert "Traceback" not in net["sunarc"].log_path.read_text(errors="replace")


def test_an_asset_other_than_the_one_asked_for_is_not_negotiated(net: LocalNetwork) -> None:
    """``GetAsset`` for one asset answers with another (its offer and id): the consumer
    refuses it before it opens a negotiation, instead of asking for what it never chose."""
    with RogueCatalog(net) as rogue:
        wrong = next(a for a in _assets("cellex-x") if a.asset_id != "inspections")
        rogue.asset = wrong.SerializeToString()
        assert len(rogue.asset) < ASSET_REPLY_BYTES
        body = {
            "peer": "cellex",
            "asset_id": "inspections",
            "as_offered": True,
            "purposes": ["quality-assurance"],
        }
        with net["sunarc"].client(timeout=60) as oem:
            answer = oem.post("/v1/contracts/negotiations", json=body)
            listed = oem.get("/v1/contracts/negotiations")
        assert answer.status_code == 502, answer.text
        assert "answered with another" in answer.json()["detail"], answer.text
        assert rogue.calls == 1
    assert listed.status_code == 200 and listed.json() == [], listed.text
