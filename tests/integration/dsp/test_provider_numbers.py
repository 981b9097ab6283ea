"""Numbers a hostile provider writes, against a consumer node (real processes, mutual TLS).

SunArc agrees with Cellex over gRPC and over DSP; then Cellex's node stops and rogue
servers take its places, with Cellex's own certificate (a member gone rogue, or its host
taken over): one on its gRPC address, one on its DSP address. They answer SunArc's node
with numbers a provider writes: stream positions that name no row (``"-5"``,
``"1_000"``, ``" 7 "``, an Arabic-Indic three, 20 digits, 2**63), times no date holds
(±2**62 µs, the year 10000) or dated far ahead of SunArc's clock (9999), and DSP batch
headers whose offset or order index is no whole number >= 0 (2.9, ``true``, ``"2"``,
``[-1]``, ``[true]``).

On the old code a position was read by ``int`` and stored (-5, 1000, 7, 3) or raised in
the store, and a time raised OverflowError: a subscription reconnected for ever to be
sent the same event, a negotiation answered 500 and stayed REQUESTED, a reply dated 9999
dated SunArc's copy 9999, a DSP live transfer stored the rows or kept reopening its
stream, a DSP pull committed rows at the offset and orders ``int`` made of the header.
Now each is refused where it is decoded, naming the field: the subscription or transfer
ends once (no reconnect), nothing is stored, and the operator's call is answered 502.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import grpc
import orjson
import pytest

from qdspace.connector import dsp_transfer as wire
from qdspace.connector.dsp_data import batch_bytes, live_bytes
from qdspace.connector.transfer_wire import BatchRow, Checkpoint, RowBatch
from qdspace.node.localnet.network import LocalNetwork, MemberSpec
from qdspace.node.rpc.server import server_credentials
from qdspace.protocols.v1 import negotiation_pb2, subscription_pb2, transfer_pb2

from .conftest import dsp_network, negotiated_over_dsp, ok, rows_of, runtime_of, wait_for
from .peer import DSP, Peer

pytestmark = pytest.mark.integration

SPC = "spc-monitoring"
QA = "quality-assurance"
ORDER = "PO-NUMBERS-0001"
ROW = b'{"@key":"k-1","@v":1,"order_id":"PO-NUMBERS-0001","score":0.1,"verdict":"pass"}'
ROW2 = b'{"@key":"k-2","@v":1,"order_id":"PO-NUMBERS-0001","score":0.2,"verdict":"pass"}'
#: positions that name no row: each was read as one (stored) or raised in the store
NOT_ROWS = ["-5", "1_000", " 7 ", "\u0663", "99999999999999999999", str(2**63)]
#: the last microsecond of the year 9999, in µs since the epoch
MAX_US = 253_402_300_799_999_999
#: 9999-12-31: a date, but days ahead of any clock
IN_9999 = MAX_US - 86_400 * 10**6


def _now_us() -> int:
    return time.time_ns() // 1000


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    yield from dsp_network(
        tmp_path_factory, [MemberSpec("sunarc", "oem"), MemberSpec("cellex", "supplier")]
    )


# ------------------------------------------------------------------ the rogues


class RogueGrpc:
    """Cellex's certificate on Cellex's gRPC address: ``Subscribe`` streams what `script`
    makes of the request (holding the stream open after it), ``Negotiation/Send``
    answers with a termination dated `reply_at`."""

    def __init__(self, net: LocalNetwork) -> None:
        self.cellex_id = net["cellex"].keys().identity.member_id
        self.subscribes: list[subscription_pb2.SubscribeRequest] = []
        self.sends: list[negotiation_pb2.NegotiationMessage] = []
        self.script: Callable[[subscription_pb2.SubscribeRequest], Iterator[bytes]] = iter_none
        self.reply_at = 0
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        subscription = grpc.method_handlers_generic_handler(
            "qdspace.v1.Subscription",
            {
                "Subscribe": grpc.unary_stream_rpc_method_handler(
                    self._subscribe,
                    request_deserializer=subscription_pb2.SubscribeRequest.FromString,
                    response_serializer=None,
                )
            },
        )
        negotiation = grpc.method_handlers_generic_handler(
            "qdspace.v1.Negotiation",
            {
                "Send": grpc.unary_unary_rpc_method_handler(
                    self._send,
                    request_deserializer=negotiation_pb2.NegotiationMessage.FromString,
                    response_serializer=negotiation_pb2.NegotiationAck.SerializeToString,
                )
            },
        )
        self.server.add_generic_rpc_handlers((subscription, negotiation))
        cellex = net["cellex"]
        self.server.add_secure_port(cellex.grpc_address, server_credentials(cellex.keys()))

    def _subscribe(
        self, request: subscription_pb2.SubscribeRequest, context: Any
    ) -> Iterator[bytes]:
        with self._lock:
            self.subscribes.append(request)
        yield from self.script(request)
        deadline = time.monotonic() + 30
        while context.is_active() and time.monotonic() < deadline:
            time.sleep(0.05)  # held open, as a provider's stream is

    def _send(
        self, request: negotiation_pb2.NegotiationMessage, context: Any
    ) -> negotiation_pb2.NegotiationAck:
        with self._lock:
            self.sends.append(request)
        nid = request.negotiation_id
        reply = negotiation_pb2.NegotiationMessage(
            message_id=f"{nid}:p1", negotiation_id=nid, sender_id=self.cellex_id,
            at_unix_us=self.reply_at,
        )  # fmt: skip
        reply.termination.reason = "not today"
        return negotiation_pb2.NegotiationAck(
            negotiation_id=nid, state="TERMINATED", replies=[reply]
        )


def iter_none(request: subscription_pb2.SubscribeRequest) -> Iterator[bytes]:
    return iter(())


class RogueDsp:
    """Cellex's certificate on Cellex's DSP address: acknowledges a transfer request with a
    pid of its own and serves ``GET /data/<pid>`` with what `body` makes of the consumer's
    pid; counts the data-plane GETs of each pid."""

    def __init__(self, net: LocalNetwork, url: str) -> None:
        layout = net["cellex"].layout
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(layout.tls_cert, layout.tls_key)
        self.url = url.rstrip("/")
        where = urlsplit(self.url)
        self.body: Callable[[str], bytes] = lambda consumer_pid: b""
        self.bodies: dict[str, bytes] = {}
        self.gets: dict[str, int] = {}
        self.lock = threading.Lock()
        rogue = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, data: bytes, media: str) -> None:
                self.send_response(status)
                self.send_header("content-type", media)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                size = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(size) or b"{}")
                if self.path != "/transfers/request":
                    self._answer(200, b"", "application/json")
                    return
                ppid, cpid = f"urn:uuid:{uuid.uuid4()}", body["consumerPid"]
                with rogue.lock:
                    rogue.bodies[ppid] = rogue.body(cpid)
                ack = {"@context": [DSP], "@type": "TransferProcess", "providerPid": ppid,
                       "consumerPid": cpid, "state": "REQUESTED"}  # fmt: skip
                self._answer(201, json.dumps(ack).encode(), "application/json")

            def do_GET(self) -> None:
                ppid = self.path.split("?")[0].removeprefix("/data/")
                with rogue.lock:
                    rogue.gets[ppid] = rogue.gets.get(ppid, 0) + 1
                    data = rogue.bodies.get(ppid)
                if data is None:
                    self._answer(404, b'{"reason": ["none"]}', "application/json")
                else:
                    self._answer(200, data, "application/x-ndjson")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(
            (where.hostname or "127.0.0.1", where.port or 443), Handler
        )
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def setup(net: LocalNetwork) -> Iterator[dict[str, Any]]:
    """SunArc's gRPC agreement on Cellex's live inspections and DSP agreement on its
    inspections, then Cellex stopped and the rogues on its addresses."""
    order = {"order_id": ORDER, "customer": "sunarc", "supplier": "cellex", "product": "cell",
             "quantity": 10, "status": "open", "opened_at": "2026-10-19T06:00:00Z"}  # fmt: skip
    with net["cellex"].client() as supplier:
        ok(supplier.post("/v1/ingest/order", json={"rows": [order]}))
    with net["sunarc"].client(timeout=60) as oem:
        body = {"peer": "cellex", "asset_id": "live-inspections", "purposes": [SPC],
                "orders": [ORDER]}  # fmt: skip
        live = ok(oem.post("/v1/contracts/negotiations", json=body))["agreement_id"]
    over_dsp = negotiated_over_dsp(net, "sunarc", "cellex")
    assert over_dsp["state"] == "FINALIZED", over_dsp
    url = runtime_of(net, "cellex")["dsp"]  # (a stopped node's runtime file is gone)
    assert net.stop(["cellex"]) == {"cellex": 0}
    grpc_rogue, dsp_rogue = RogueGrpc(net), RogueDsp(net, url)
    grpc_rogue.server.start()
    dsp_rogue.thread.start()
    try:
        yield {
            "live": live,
            "dsp": over_dsp["agreement_id"],
            "grpc": grpc_rogue,
            "http": dsp_rogue,
        }
    finally:
        grpc_rogue.server.stop(0)
        dsp_rogue.close()


def _log(net: LocalNetwork) -> str:
    return net["sunarc"].log_path.read_text(errors="replace")


def _received(net: LocalNetwork, source_id: str) -> int:
    sql = "SELECT count(*) FROM contract_received_row WHERE source_id = :sid"
    return int(rows_of(net, "sunarc", sql, sid=source_id)[0][0])


# -------------------------------------------------------------- subscriptions


def _event(request: subscription_pb2.SubscribeRequest, **fields: Any) -> bytes:
    rows = [transfer_pb2.Row(json=ROW, order_id=ORDER)] if "positions" in fields else []
    fields.setdefault("sent_at_unix_us", _now_us())
    event = subscription_pb2.SubscriptionEvent(
        subscription_id=request.subscription_id, rows=rows, **fields
    )
    data: bytes = event.SerializeToString()
    return data


@pytest.mark.parametrize(
    ("fields", "named"),
    [({"positions": [bad]}, "positions[0]") for bad in NOT_ROWS]
    + [
        ({"positions": ["7"], "sent_at_unix_us": at}, "sent_at_unix_us")
        for at in (2**62, -(2**62), MAX_US + 1)
    ],
)
def test_a_first_event_with_a_bad_number_is_refused_and_the_caller_told_502(
    net: LocalNetwork, setup: dict[str, Any], fields: dict[str, Any], named: str
) -> None:
    rogue: RogueGrpc = setup["grpc"]
    rogue.script = lambda request: iter([_event(request, **fields)])
    calls, log_before = len(rogue.subscribes), len(_log(net))
    with net["sunarc"].client(timeout=60) as oem:
        answer = oem.post("/v1/contracts/subscriptions", json={"agreement_id": setup["live"]})
        assert answer.status_code == 502, answer.text
        detail = answer.json()["detail"]
        assert named in detail and "unreadable event" in detail, detail
        (request,) = rogue.subscribes[calls:]
        sid = request.subscription_id
        sub = ok(oem.get(f"/v1/contracts/subscriptions/{sid}"))
    # ended for good, at once: its task is done, so it cannot open the stream again
    assert (sub["state"], sub["running"], sub["reconnects"], sub["received"]) == (
        "ended", False, 0, 0,
    ), sub  # fmt: skip
    assert len(rogue.subscribes) == calls + 1
    assert _received(net, sid) == 0
    sql = "SELECT count(*) FROM contract_subscription WHERE subscription_id = :sid"
    assert rows_of(net, "sunarc", sql, sid=sid)[0][0] == 0  # never opened: nothing kept
    assert "Traceback" not in _log(net)[log_before:]


@pytest.mark.parametrize("bad", ["99999999999999999999", " 7 ", "\u0663"])
def test_a_bad_position_after_the_stream_opened_ends_the_subscription_once(
    net: LocalNetwork, setup: dict[str, Any], bad: str
) -> None:
    rogue: RogueGrpc = setup["grpc"]
    go = threading.Event()

    def script(request: subscription_pb2.SubscribeRequest) -> Iterator[bytes]:
        yield _event(request, heartbeat=True, position="5")
        go.wait(30)  # the bad rows once the operator saw the stream open
        yield _event(request, positions=[bad])

    rogue.script = script
    calls, log_before = len(rogue.subscribes), len(_log(net))
    with net["sunarc"].client(timeout=60) as oem:
        sub = ok(oem.post("/v1/contracts/subscriptions", json={"agreement_id": setup["live"]}))
        assert sub["state"] == "streaming", sub
        sid = sub["subscription_id"]
        go.set()

        def done() -> Any:
            s = ok(oem.get(f"/v1/contracts/subscriptions/{sid}"))
            return ((s["state"] == "ended" and not s["running"]) or s["reconnects"]) and s

        ended = wait_for("the subscription to end (or to open again)", done, timeout=20)
    assert ended["state"] == "ended" and not ended["running"], ended
    assert "positions[0]" in ended["error"] and "is not a view cursor" in ended["error"], ended
    assert (ended["reconnects"], ended["received"]) == (0, 0), ended
    assert len(rogue.subscribes) == calls + 1
    assert _received(net, sid) == 0
    sql = "SELECT end_reason FROM contract_subscription WHERE subscription_id = :sid"
    (reason,) = rows_of(net, "sunarc", sql, sid=sid)[0]
    assert "positions[0]" in reason, reason
    assert "Traceback" not in _log(net)[log_before:]


# ---------------------------------------------------------------- negotiation


@pytest.mark.parametrize(
    ("at", "said"),
    [
        (2**62, "at_unix_us is"),
        (-(2**62), "at_unix_us is"),
        (MAX_US + 1, "at_unix_us is"),
        (IN_9999, "ahead of this node's clock"),
    ],
)
def test_a_reply_dated_no_date_or_far_ahead_is_refused_and_nothing_left_half_way(
    net: LocalNetwork, setup: dict[str, Any], at: int, said: str
) -> None:
    rogue: RogueGrpc = setup["grpc"]
    rogue.reply_at = at
    sends, log_before = len(rogue.sends), len(_log(net))
    with net["sunarc"].client(timeout=60) as oem:
        body = {"peer": "cellex", "asset_id": "inspections", "purposes": [QA]}
        answer = oem.post("/v1/contracts/negotiations", json=body)
        assert answer.status_code == 502, answer.text
        assert said in answer.json()["detail"], answer.text
        # one round: no answer of ours to its reply, only the provider told that it ended
        request, told = rogue.sends[sends:]
        nid = request.negotiation_id
        assert told.negotiation_id == nid and told.WhichOneof("body") == "termination"
        assert told.termination.reason.startswith("the provider's reply was refused: ")
        kept = ok(oem.get(f"/v1/contracts/negotiations/{nid}"))
    # our copy ended, saying why; none of the provider's reply was applied
    assert kept["state"] == "TERMINATED", kept
    assert kept["reason"].startswith("the provider's reply was refused: "), kept
    assert kept["messages"] == 2, kept  # our request and our termination
    sql = "SELECT updated_at FROM contract_negotiation WHERE negotiation_id = :nid"
    (updated,) = rows_of(net, "sunarc", sql, nid=nid)[0]
    assert not str(updated).startswith("9999"), updated
    assert "Traceback" not in _log(net)[log_before:]


# ------------------------------------------------------------ DSP data plane


def _batch(consumer_pid: str, rows: list[bytes], **change: Any) -> bytes:
    """A last batch of `rows` as the consumer's chain expects it, its header `change`d."""
    cp = Checkpoint.genesis(consumer_pid).extend(rows, "7")
    batch = RowBatch.of(consumer_pid, [BatchRow(r, ORDER) for r in rows], cp, True)
    head = orjson.loads(batch_bytes(batch).split(b"\n", 1)[0])
    head["batch"].update(change)
    return orjson.dumps(head) + b"\n" + b"".join(r + b"\n" for r in rows)


def _dsp_transfer(
    net: LocalNetwork, setup: dict[str, Any], body: Callable[[str], bytes], delivery: str
) -> tuple[str, str, dict[str, Any]]:
    """A DSP transfer SunArc asks the rogue for, started (as Cellex) with a data address on
    the rogue serving `body`: (transfer id, provider pid, its state once its data plane
    stopped, broke, or the transfer moved on)."""
    rogue: RogueDsp = setup["http"]
    rogue.body = body
    with net["sunarc"].client(timeout=60) as oem:
        started = ok(oem.post("/v1/dsp/transfers", json={"agreement_id": setup["dsp"]}))
        tid, ppid, cpid = started["transfer_id"], started["provider_pid"], started["consumer_pid"]
        address = wire.DataAddress(f"{rogue.url}/data/{ppid}", "a-token", delivery)
        cellex = Peer(net, "cellex", "sunarc")
        try:
            told = cellex.post(
                f"/callback/transfers/{cpid}/start", wire.start_message(ppid, cpid, address)
            )
            assert told.status_code == 200, told.text
        finally:
            cellex.http.close()

        def stopped() -> Any:
            s = ok(oem.get(f"/v1/dsp/transfers/{tid}"))
            return (s["error"] or s["reconnects"] or s["state"] != "STARTED") and s

        return tid, ppid, wait_for("the data plane to stop", stopped, timeout=30)


def _refused_once(net: LocalNetwork, setup: dict[str, Any], tid: str, ppid: str,
                  state: dict[str, Any], named: str) -> None:  # fmt: skip
    assert state["state"] == "STARTED", state  # nothing committed; resumable by the operator
    assert state["error"].startswith("DataPlaneFormatError: data plane: "), state
    assert named in state["error"], state
    assert (state["reconnects"], state["received"], state["offset"]) == (0, 0, 0), state
    assert state["waiting"] == "", state
    assert setup["http"].gets[ppid] == 1  # stopped: the data plane is not opened again
    assert _received(net, tid) == 0


@pytest.mark.parametrize("bad", NOT_ROWS)
def test_a_live_group_with_a_bad_position_stops_the_transfer_once(
    net: LocalNetwork, setup: dict[str, Any], bad: str
) -> None:
    log_before = len(_log(net))
    group = live_bytes([BatchRow(ROW, ORDER)], [bad])
    tid, ppid, state = _dsp_transfer(net, setup, lambda cpid: group, wire.STREAM)
    _refused_once(net, setup, tid, ppid, state, "positions[0]: position")
    assert "Traceback" not in _log(net)[log_before:]


@pytest.mark.parametrize(
    ("rows", "change", "named"),
    [
        ([ROW, ROW2], {"offset": 2.9}, "offset is 2.9"),
        ([ROW], {"offset": True}, "offset is True"),
        ([ROW, ROW2], {"offset": "2"}, "offset is '2'"),
        ([ROW], {"orders": ["PO-OTHER", ORDER], "index": [-1]}, "index[0] is -1"),
        ([ROW], {"orders": ["PO-OTHER", ORDER], "index": [True]}, "index[0] is True"),
    ],
)
def test_a_batch_header_number_read_loosely_before_stops_the_pull_once(
    net: LocalNetwork, setup: dict[str, Any], rows: list[bytes], change: dict[str, Any],
    named: str,
) -> None:  # fmt: skip
    log_before = len(_log(net))
    tid, ppid, state = _dsp_transfer(
        net, setup, lambda cpid: _batch(cpid, rows, **change), wire.BATCHES
    )
    _refused_once(net, setup, tid, ppid, state, named)
    assert "Traceback" not in _log(net)[log_before:]


def test_the_rogue_serves_what_an_honest_consumer_takes(
    net: LocalNetwork, setup: dict[str, Any]
) -> None:
    """The rogue's bodies are read as the node writes them: an honest batch completes (so
    the refusals above are the numbers', nothing else's)."""
    rows = [ROW.replace(b"k-1", f"k-{uuid.uuid4().hex}".encode()) for _ in range(2)]
    tid, _ppid, state = _dsp_transfer(net, setup, lambda cpid: _batch(cpid, rows), wire.BATCHES)
    assert state["state"] == "COMPLETED" and state["error"] == "", state
    assert _received(net, tid) == 2
