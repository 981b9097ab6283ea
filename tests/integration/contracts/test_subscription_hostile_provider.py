"""A hostile provider against a consumer's subscription that reconnects by itself.

SunArc subscribes to Cellex's live inspections; then Cellex's node stops and a hostile
server takes its place: Cellex's own certificate (a member gone rogue, or its host taken
over) on Cellex's gRPC address, so SunArc's node reconnects to it as to Cellex. First it
ends every stream at once without a word, to make the consumer hammer it: the consumer
waits longer after each try that brought nothing (1, 2, 4 ... s). Then it answers with
a heartbeat naming a position that is no row id, the position the consumer would send
back when it opens the stream again: the consumer refuses it where it arrives and ends
the subscription saying why, and never calls again.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from qdspace.node.localnet.network import LocalNetwork
from qdspace.node.rpc.server import server_credentials
from qdspace.protocols.v1 import subscription_pb2

from .conftest import oem_and_supplier, ok, wait_for

pytestmark = pytest.mark.integration

SPC = "spc-monitoring"
ORDER = "PO-HOSTILE-0001"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    yield from oem_and_supplier(tmp_path_factory, "hostile-provider")


class RogueProvider:
    """Cellex's certificate on Cellex's address, serving Subscribe as told (`mode`)."""

    def __init__(self, net: LocalNetwork) -> None:
        self.calls: list[float] = []
        self.requests: list[subscription_pb2.SubscribeRequest] = []
        self.mode = "hang up"
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.method_handlers_generic_handler(
            "qdspace.v1.Subscription",
            {
                "Subscribe": grpc.unary_stream_rpc_method_handler(
                    self._subscribe,
                    request_deserializer=subscription_pb2.SubscribeRequest.FromString,
                    response_serializer=None,
                )
            },
        )
        self.server.add_generic_rpc_handlers((handler,))
        cellex = net["cellex"]
        self.server.add_secure_port(cellex.grpc_address, server_credentials(cellex.keys()))

    def _subscribe(
        self, request: subscription_pb2.SubscribeRequest, context: Any
    ) -> Iterator[bytes]:
        with self._lock:
            self.calls.append(time.monotonic())
            self.requests.append(request)
        if self.mode == "hang up":
            return  # the stream ends at once, nothing sent
        yield subscription_pb2.SubscriptionEvent(
            subscription_id=request.subscription_id,
            heartbeat=True,
            sent_at_unix_us=int(time.time() * 1e6),
            position="\u00b2",  # a superscript two: `str.isdigit` takes it, no row has it
        ).SerializeToString()
        time.sleep(5)  # and holds the stream open, as a provider would

    def __enter__(self) -> RogueProvider:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(0)


def test_a_rogue_provider_is_not_hammered_and_its_bad_position_ends_the_subscription(
    net: LocalNetwork,
) -> None:
    order = {"order_id": ORDER, "customer": "sunarc", "supplier": "cellex",
             "product": "cell", "quantity": 10, "status": "open",
             "opened_at": "2026-10-19T06:00:00Z"}  # fmt: skip
    with net["cellex"].client() as supplier:
        ok(supplier.post("/v1/ingest/order", json={"rows": [order]}))
    with net["sunarc"].client(timeout=60) as oem:
        body = {"peer": "cellex", "asset_id": "live-inspections", "purposes": [SPC],
                "orders": [ORDER]}  # fmt: skip
        agreement = ok(oem.post("/v1/contracts/negotiations", json=body))["agreement_id"]
        sub = ok(oem.post("/v1/contracts/subscriptions", json={"agreement_id": agreement}))
    sid = sub["subscription_id"]
    assert sub["state"] == "streaming", sub

    def state() -> dict[str, Any]:
        with net["sunarc"].client() as oem:
            return ok(oem.get(f"/v1/contracts/subscriptions/{sid}"))  # type: ignore[no-any-return]

    assert net.stop(["cellex"]) == {"cellex": 0}
    with RogueProvider(net) as rogue:
        wait_for("the consumer to call the rogue", lambda: len(rogue.calls) >= 2, timeout=60)
        first = rogue.calls[0]
        time.sleep(max(0.0, first + 6.5 - time.monotonic()))
        calls = [t - first for t in rogue.calls]
        # backing off: at most one try at 0, ~1, ~3 s and maybe ~7 s, never a storm
        assert 2 <= len(calls) <= 4, calls
        gaps = [b - a for a, b in itertools.pairwise(calls)]
        assert all(g >= 0.8 for g in gaps), gaps
        reconnecting = state()
        assert reconnecting["state"] == "reconnecting" and reconnecting["running"], reconnecting
        # every try resumes where the real stream stood, not from the start
        assert all(r.after_position.isdigit() for r in rogue.requests), rogue.requests

        rogue.mode = "bad position"
        ended = wait_for(
            "the subscription to end on the bad position",
            lambda: (s := state())["state"] == "ended" and s,
            timeout=90,
        )
        assert "is not a view cursor" in ended["error"], ended
        assert not ended["running"]
        tries = len(rogue.calls)
        time.sleep(3.0)
        assert len(rogue.calls) == tries  # ended: no more calls
    log = net["sunarc"].log_path.read_text(errors="replace")
    assert "Traceback" not in log
