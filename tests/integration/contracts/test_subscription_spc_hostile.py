"""A provider that tries to silence its consumer's SPC early warning with one bad row.

SunArc subscribes to Cellex's live inspections, watched by an SPC monitor; then
Cellex's node stops and a rogue server takes its place (Cellex's own certificate on
Cellex's gRPC address: a supplier with a motive to hide its drift from its customer).
It sends one event: rows in control (the monitor's baseline), then a row whose
``inspected_at`` is no date, then an out-of-control row whose time has no zone and five
more out of control. The bad time used to raise out of the monitor after the rows were
stored and the position had moved past them: the stream reconnected after the event and
none of the drifting rows was ever judged. Now a row with an unusable time is judged at
its arrival, the rows after it are judged too, the alerts are raised, the stream stays
open, and the node's log names the subscription and the row.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from qdspace.connector.transfer_wire import row_bytes
from qdspace.node.localnet.network import LocalNetwork
from qdspace.node.rpc.server import server_credentials
from qdspace.protocols.v1 import subscription_pb2, transfer_pb2

from .conftest import oem_and_supplier, ok, wait_for

pytestmark = pytest.mark.integration

SPC = "spc-monitoring"
ORDER = "PO-SPC-HOSTILE-0001"
T0 = datetime(2026, 11, 20, 8, tzinfo=UTC)
#: how long the rogue holds a stream open after its event (it ends when the consumer goes)
HOLD_S = 120.0


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    yield from oem_and_supplier(tmp_path_factory, "spc-hostile")


def _inspection(i: int, score: float, at: str, station: str) -> dict[str, Any]:
    return {"@key": f"SPC-{i:04d}", "@v": 1, "inspection_id": f"SPC-{i:04d}",
            "order_id": ORDER, "station": station, "inspected_at": at, "score": score,
            "verdict": "pass"}  # fmt: skip


def _rows() -> list[dict[str, Any]]:
    def at(i: int) -> str:
        return (T0 + timedelta(seconds=i)).isoformat()

    rows = [_inspection(i, 0.10 + (i % 3) * 0.001, at(i), "EL-1") for i in range(25)]
    rows.append(_inspection(25, 0.10, "not-a-date", "EL-1"))
    rows.append(_inspection(26, 0.95, "2026-11-20T08:05:00", "EL-NOZONE"))
    rows += [_inspection(27 + i, 0.95, at(100 + i), "EL-DRIFT") for i in range(5)]
    return rows


class RogueProvider:
    """Cellex's certificate on Cellex's address: its first stream brings the event, the
    streams after it (a consumer that reconnected) bring nothing; each is held open."""

    def __init__(self, net: LocalNetwork) -> None:
        self.calls: list[subscription_pb2.SubscribeRequest] = []
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
        left = threading.Event()
        context.add_callback(left.set)
        with self._lock:
            self.calls.append(request)
            first = len(self.calls) == 1
        if first:
            after = int(request.after_position or 0)
            rows = _rows()
            yield subscription_pb2.SubscriptionEvent(
                subscription_id=request.subscription_id,
                rows=[transfer_pb2.Row(json=row_bytes(r), order_id=ORDER) for r in rows],
                positions=[str(after + 1 + i) for i in range(len(rows))],
                sent_at_unix_us=int(time.time() * 1e6),
            ).SerializeToString()
        left.wait(HOLD_S)  # held open, as a provider's stream is

    def __enter__(self) -> RogueProvider:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(0)


def test_a_row_with_a_bad_time_does_not_silence_the_alarms_after_it(net: LocalNetwork) -> None:
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

        def alarmed() -> dict[str, Any] | None:
            now = state()
            stations = {a["station"] for a in now["alerts"]}
            return now if stations >= {"EL-NOZONE", "EL-DRIFT"} else None

        raised = wait_for("the drifting rows' alerts", alarmed, timeout=60)
        # every row stored and watched, on the one stream the rogue opened: none broke it
        assert raised["received"] == len(_rows()), raised
        assert raised["state"] == "streaming" and raised["error"] == "", raised
        assert len(rogue.calls) == 1, rogue.calls
        reconnects = raised["reconnects"]
        assert state()["reconnects"] == reconnects
    log = net["sunarc"].log_path.read_text(errors="replace")
    assert f"subscription {sid}: 2 rows from cellex had no usable inspected_at" in log
    assert "not-a-date" in log
    assert "Traceback" not in log
