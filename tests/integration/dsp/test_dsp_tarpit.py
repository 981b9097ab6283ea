"""A member that holds the provider's callbacks open on purpose (real node processes, real
mutual TLS): Voltis names as its callback address a server with its own certificate that
reads each message and then answers a byte at a time, never finishing. Cellex's other
peers are told what they are owed meanwhile (each peer has a delivery of its own), and
the delivery to Voltis is given up at the client's deadline for the whole exchange,
which a drip of bytes does not extend (httpx's timeouts are per read)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from qdspace.node.cli import app
from qdspace.node.dsp.client import TIMEOUT_S
from qdspace.node.localnet.network import LocalNetwork, MemberSpec

from .conftest import dsp_network, ingest_sample, ok, outbox_errors, runtime_of, wait_for
from .peer import Peer, request
from .test_dsp_transfer import negotiate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    members = [MemberSpec("sunarc", "oem"), MemberSpec("cellex", "supplier")]
    yield from dsp_network(tmp_path_factory, [*members, MemberSpec("voltis", "oem")])


class Tarpit:
    """An HTTPS server with `name`'s member certificate: it reads each request whole,
    then drips a never-ending response head, one byte a second, until the caller hangs
    up (counted in `hung_up`) or the test ends."""

    def __init__(self, net: LocalNetwork, name: str) -> None:
        layout = net[name].layout
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(layout.tls_cert, layout.tls_key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"https://127.0.0.1:{self.listener.getsockname()[1]}"
        self.requests: list[bytes] = []
        self.hung_up = 0
        self.lock = threading.Lock()
        self.done = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.done.is_set():
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._hold, args=(raw,), daemon=True).start()

    def _hold(self, raw: socket.socket) -> None:
        with raw:
            try:
                conn = self.context.wrap_socket(raw, server_side=True)
            except OSError:
                return
            with conn:
                self._drip(conn)

    def _drip(self, conn: ssl.SSLSocket) -> None:
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536) or b"\r\n\r\n"
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                (int(line.split(b":")[1]) for line in head.split(b"\r\n")
                 if line.lower().startswith(b"content-length:")),
                0,
            )  # fmt: skip
            while len(body) < length:
                body += conn.recv(65536)
            with self.lock:
                self.requests.append(head.split(b"\r\n")[0])
            conn.sendall(b"HTTP/1.1 200 OK\r\nx-drip: ")
            while not self.done.is_set():
                conn.sendall(b"x")
                time.sleep(1.0)
        except OSError:
            with self.lock:
                self.hung_up += 1

    def close(self) -> None:
        self.done.set()
        self.listener.close()


def test_a_member_holding_its_callbacks_open_holds_up_no_other_peer(net: LocalNetwork) -> None:
    ingest_sample(net, "cellex")
    voltis = net["voltis"].keys().identity.member_id
    tarpit = Tarpit(net, "voltis")
    hostile = Peer(net, "voltis", "cellex")
    try:
        offer = hostile.catalog_offer("inspections")
        for _ in range(3):  # three callbacks queued to Voltis, each to be held open
            asked = request(f"urn:uuid:{uuid.uuid4()}", offer, tarpit.url)
            ok(hostile.post("/negotiations/request", asked))

        def held() -> Any:
            with tarpit.lock:
                return tarpit.requests

        wait_for("Cellex's first callback to reach the tarpit", held)
        # while Cellex's delivery to Voltis is held open, SunArc's negotiation with Cellex
        # (a callback at each step) goes through
        with net["sunarc"].client() as oem:
            agreement = negotiate(oem, runtime_of(net, "cellex")["dsp"], "inspections")
        assert agreement
        with tarpit.lock:
            assert tarpit.hung_up == 0, "the negotiation went through while Voltis held on"

        # and the delivery to Voltis is given up at the deadline, drip or not
        def given_up() -> Any:
            return [
                e for e in outbox_errors(net, "cellex", "peer_id", voltis) if "no whole answer" in e
            ]

        (error, *_) = wait_for("Cellex to give up on Voltis", given_up, timeout=4 * TIMEOUT_S)
        assert f"within {TIMEOUT_S:.0f} s" in error, error
        wait_for("the tarpit to see Cellex hang up", lambda: tarpit.hung_up >= 1)

        # Cellex's operator sees who is owed what and why, by API and by CLI
        with net["cellex"].client() as supplier:
            owed = ok(supplier.get("/v1/outbox"))
        # only Cellex's operator: no token, another member's token, a forged one are 401
        for token in ("", net["sunarc"].token, "x" * 5000):
            with net["cellex"].client(token=token) as stranger:
                answer = stranger.get("/v1/outbox")
                assert answer.status_code == 401, (token[:8], answer.text)
                assert voltis not in answer.text and "Traceback" not in answer.text
        (to_voltis,) = [p for p in owed["peers"] if p["peer_id"] == voltis]
        assert to_voltis["undelivered"] >= 3 and to_voltis["attempts"] >= 1, to_voltis
        assert "no whole answer within" in (to_voltis["last_error"] or ""), to_voltis
        sunarc = net["sunarc"].keys().identity.member_id
        assert all(p["peer_id"] != sunarc for p in owed["peers"]), owed  # all delivered
        assert owed["undelivered"] == sum(p["undelivered"] for p in owed["peers"])
        shown = CliRunner().invoke(
            app, ["contracts", "--dir", str(net["cellex"].directory), "outbox"]
        )
        assert shown.exit_code == 0, shown.output
        assert f"{voltis}: last error: DSP POST " in shown.output, shown.output
        assert "no whole answer within" in shown.output, shown.output
        # and on the console's network picture: Voltis ringed red, with what it is owed
        browser = net["cellex"].client(token="")
        login = browser.post("/console/login", data={"token": net["cellex"].token})
        assert login.status_code == 303, login.text
        page = browser.get("/console/").text
        browser.close()
        assert f'fill="#b00020">{to_voltis["undelivered"]} owed</text>' in page, page
        assert "no whole answer within" in page
    finally:
        hostile.http.close()
        tarpit.close()
