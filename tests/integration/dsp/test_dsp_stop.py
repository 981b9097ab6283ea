"""A node on SIGTERM stops promptly although peers hold connections to its listeners,
and a consumer restarted mid-stream resumes after the rows it holds.

Before `node.http_listener`, uvicorn's graceful stop waited for every connection: an idle
keep-alive DSP connection of a peer's pooled client (the TLS close waits for the peer's
``close_notify``) and an open live data stream (a body that never ends) kept a node up
until the harness killed it after 20 s. Here the grace is 30 s and the harness kills
after 10 s: a node that waits for its peers is killed (exit -9) and the test fails.
"""

from __future__ import annotations

import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from qdspace.connector import dsp_transfer as wire
from qdspace.node.dsp.auth import issue_token
from qdspace.node.dsp.edr import DataTokens
from qdspace.node.localnet.network import LocalNetwork, MemberSpec

from .conftest import ingest_sample, ok, runtime_of, wait_for
from .test_dsp_transfer import SUNARC_ORDER, inspection_row, start_live_transfer, transfer_state

pytestmark = pytest.mark.integration

GRACE_S = 30.0  # what a stop that waits on its peers would take (or be killed at 10 s)
KILL_AFTER_S = 10.0  # the harness's SIGKILL: far below the grace, far above a prompt stop


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    net = LocalNetwork(
        tmp_path_factory.mktemp("dsp-stop"),
        [MemberSpec("sunarc", "oem"), MemberSpec("cellex", "supplier")],
        chain=False,
        env={"QDSPACE_DSP_PORT": "0", "QDSPACE_SHUTDOWN_GRACE_S": str(GRACE_S)},
    )
    net.create()
    net.start()
    try:
        yield net
    finally:
        net.stop()


def member_client(net: LocalNetwork, name: str, provider: str) -> httpx.Client:
    """``name``'s certificate calling ``provider``'s DSP listener, keep-alive pooled."""
    layout = net[name].layout
    context = ssl.create_default_context(cafile=str(layout.ca_cert))
    context.check_hostname = False
    context.load_cert_chain(layout.tls_cert, layout.tls_key)
    return httpx.Client(verify=context, base_url=runtime_of(net, provider)["dsp"], timeout=60)


class StreamReader(threading.Thread):
    """Reads a live data stream to its end; records the lines and how it ended."""

    def __init__(self, client: httpx.Client, pid: str, token: str) -> None:
        super().__init__(daemon=True)
        self.client, self.pid, self.token = client, pid, token
        self.lines: list[str] = []
        self.status = 0
        self.error: BaseException | None = None
        self.first = threading.Event()

    def run(self) -> None:
        headers = {"authorization": f"Bearer {self.token}"}
        try:
            with self.client.stream("GET", f"/data/{self.pid}", headers=headers) as body:
                self.status = body.status_code
                for line in body.iter_lines():
                    self.lines.append(line)
                    self.first.set()
        except BaseException as exc:  # what the test asserts on
            self.error = exc
        finally:
            self.first.set()


def test_a_node_with_peer_connections_and_a_live_stream_stops_promptly(
    pair: LocalNetwork,
) -> None:
    ingest_sample(pair, "cellex")
    provider = runtime_of(pair, "cellex")["dsp"]
    with pair["sunarc"].client() as oem:
        # sunarc's own consumer follows a live stream from cellex (a real peer's stream)
        agreement, _ = start_live_transfer(oem, provider)
    # a second stream, held by hand with sunarc's credentials, to see how it ends
    keys = pair["sunarc"].keys()
    me = keys.identity.member_id
    audience = pair["cellex"].keys().identity.member_id
    streaming = member_client(pair, "sunarc", "cellex")
    idle = member_client(pair, "sunarc", "cellex")
    operator = pair["cellex"].client()
    regulator = pair["cellex"].regulator_client()
    try:
        cpid = f"urn:uuid:{uuid.uuid4()}"
        callback = runtime_of(pair, "sunarc")["dsp"] + "/callback"
        auth = {"authorization": f"Bearer {issue_token(keys.signing_key, me, audience)}"}
        asked = idle.post(
            "/transfers/request",
            json=wire.request_message(cpid, agreement, callback),
            headers=auth,
        )
        assert asked.status_code == 201, asked.text
        ppid = asked.json()["providerPid"]
        # the idle client keeps its connection to the DSP listener open (keep-alive)
        assert idle.get(f"/transfers/{ppid}", headers=auth).json()["state"] == "STARTED"
        # and so do the operator's and a regulator's clients to the other two listeners
        ok(operator.get("/v1/contracts/transfers"))
        assert regulator.get("/healthz").status_code < 500
        token = DataTokens(pair["cellex"].keys().signing_key, 300).issue(ppid, me, 1)
        reader = StreamReader(streaming, ppid, token)
        reader.start()
        assert reader.first.wait(30) and reader.error is None and reader.status == 200
        assert reader.lines, "the live stream sends a heartbeat first"

        codes = pair.stop(["cellex"], timeout=KILL_AFTER_S)
        assert codes == {"cellex": 0}, f"cellex did not stop in {KILL_AFTER_S}s: {codes}"
        reader.join(10)
        assert not reader.is_alive()
        assert reader.error is None, f"the stream was cut, not ended: {reader.error!r}"
    finally:
        for client in (streaming, idle, operator, regulator):
            client.close()
    logs = "".join(p.read_text() for p in pair["cellex"].log_path.parent.glob("*.log"))
    assert "node cellex stopped" in logs
    assert "Traceback" not in logs and "ERROR" not in logs, logs[-3000:]


def test_a_restarted_consumer_resumes_a_live_stream_after_the_rows_it_holds(
    pair: LocalNetwork,
) -> None:
    """The consumer's data address and stream position live in memory; the restarted node
    asks the provider for a new address by itself and then for the rows after the last
    one it stored, so the provider sends nothing twice."""
    for name in ("cellex", "sunarc"):  # the test above stops cellex
        if not pair[name].running:
            pair.start([name])
    ingest_sample(pair, "cellex")
    provider = runtime_of(pair, "cellex")["dsp"]
    tag = uuid.uuid4().hex[:8]
    with pair["sunarc"].client() as oem, pair["cellex"].client() as supplier:
        agreement, tid = start_live_transfer(oem, provider)

        def post(i: int) -> None:
            rows = {"rows": [inspection_row(tag, i, SUNARC_ORDER)]}
            assert ok(supplier.post("/v1/ingest/inspection", json=rows))["accepted"] == 1

        post(1)
        wait_for("the first row", lambda: transfer_state(oem, tid)["received"] == 1)
    # the consumer restarts on the same DSP address (the provider calls it back there)
    port = urlsplit(runtime_of(pair, "sunarc")["dsp"]).port
    assert pair.stop(["sunarc"], timeout=KILL_AFTER_S) == {"sunarc": 0}
    with pair["cellex"].client() as supplier:
        rows = {"rows": [inspection_row(tag, 2, SUNARC_ORDER)]}
        assert ok(supplier.post("/v1/ingest/inspection", json=rows))["accepted"] == 1
    pair.env["QDSPACE_DSP_PORT"] = str(port)
    try:
        pair.start(["sunarc"])
    finally:
        pair.env["QDSPACE_DSP_PORT"] = "0"
    with pair["sunarc"].client() as oem:
        # no operator's resume: the restarted node asks cellex for a new data address
        # (`received` counts across the restart: row 1 before it, row 2 after)
        wait_for("the row stored meanwhile", lambda: transfer_state(oem, tid)["received"] >= 2)
        time.sleep(1.5)  # a stream that started over would re-send row 1 by now
        assert transfer_state(oem, tid)["received"] == 2
        held = ok(oem.get("/v1/contracts/received", params={"agreement_id": agreement}))
        mine = [r["inspection_id"] for r in held["rows"] if r["inspection_id"].startswith("DSP")]
        assert mine == [f"DSP-{tag}-001", f"DSP-{tag}-002"]


def test_a_live_stream_outlives_its_providers_restarts(pair: LocalNetwork) -> None:
    """The provider restarts twice while SunArc follows its live stream. The first time
    the data address's token has expired meanwhile (Cellex hands out 2-second tokens
    then): SunArc asks for a new address by itself. The second time the token is still
    good: SunArc opens the stream again with it. Each time, rows stored after the restart
    arrive after the rows held, none twice, with no operator's resume (a consumer whose
    stream simply ended would hold a copy that stopped mirroring)."""
    if not pair["sunarc"].running:
        pair.start(["sunarc"])
    if pair["cellex"].running:
        assert pair.stop(["cellex"], timeout=KILL_AFTER_S) == {"cellex": 0}
    pair.env["QDSPACE_DSP_TOKEN_TTL_S"] = "2"
    try:
        pair.start(["cellex"])
    finally:
        del pair.env["QDSPACE_DSP_TOKEN_TTL_S"]
    ingest_sample(pair, "cellex")
    provider = runtime_of(pair, "cellex")["dsp"]
    port = urlsplit(provider).port
    tag = uuid.uuid4().hex[:8]

    def post(i: int) -> None:
        with pair["cellex"].client() as supplier:
            rows = {"rows": [inspection_row(tag, i, SUNARC_ORDER)]}
            assert ok(supplier.post("/v1/ingest/inspection", json=rows))["accepted"] == 1

    def restart_cellex() -> None:
        assert pair.stop(["cellex"], timeout=KILL_AFTER_S) == {"cellex": 0}
        waiting = wait_for(
            "SunArc to wait for the provider",
            lambda: transfer_state(oem, tid)["waiting"],
        )
        assert waiting.startswith("the provider to "), waiting
        pair.env["QDSPACE_DSP_PORT"] = str(port)  # the data address names this port
        try:
            pair.start(["cellex"])
        finally:
            pair.env["QDSPACE_DSP_PORT"] = "0"

    def mine() -> list[str]:
        held = ok(oem.get("/v1/contracts/received", params={"agreement_id": agreement}))
        return [r["inspection_id"] for r in held["rows"] if r["inspection_id"].startswith("DSP")]

    def asked_again() -> int:
        log = pair["sunarc"].log_path.parent / "node.log"
        return log.read_text().count(f"DSP transfer {tid}: asking")

    with pair["sunarc"].client() as oem:
        agreement, tid = start_live_transfer(oem, provider)
        post(1)
        wait_for("the first row", lambda: transfer_state(oem, tid)["received"] == 1)
        time.sleep(2.5)  # the token expires (the open stream goes on)

        restart_cellex()  # with tokens of the default lifetime from now on
        post(2)
        wait_for("the row after the first restart", lambda: len(mine()) >= 2, timeout=150)
        assert asked_again() == 1  # the expired token was refused: a new address, once

        restart_cellex()
        post(3)
        wait_for("the row after the second restart", lambda: len(mine()) >= 3, timeout=150)
        assert asked_again() == 1  # the address held was still good: no new one asked

        time.sleep(1.5)  # a stream that started over would re-send rows 1 and 2 by now
        assert mine() == [f"DSP-{tag}-{i:03d}" for i in (1, 2, 3)]
        state = transfer_state(oem, tid)
        assert state["state"] == "STARTED" and state["received"] == 3, state
        assert state["waiting"] == "" and state["error"] == "", state
        assert state["reconnects"] >= 2, state
