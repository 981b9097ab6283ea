"""A member that asks for a transfer and then refuses every callback about it (real node
processes, real mutual TLS): SunArc, by hand with its own certificate, requests a
transfer from Cellex under its agreement, naming its node's real callback address and a
consumer pid its node never opened; its node answers each TransferStartMessage 404.
Cellex's outbox sets the message aside after `outbox_refused_after` refusals in a row
(here 2) instead of trying it every minute for ever; Cellex's operator sees it apart,
by API, CLI and console, and queues it again (only Cellex's operator may)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from qdspace.connector import dsp_transfer as wire
from qdspace.node.cli import app
from qdspace.node.localnet.network import LocalNetwork, MemberSpec

from .conftest import dsp_network, ingest_sample, ok, runtime_of, wait_for
from .peer import Peer
from .test_dsp_transfer import negotiate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    members = [MemberSpec("sunarc", "oem"), MemberSpec("cellex", "supplier")]
    yield from dsp_network(tmp_path_factory, members, env={"QDSPACE_OUTBOX_REFUSED_AFTER": "2"})


@pytest.fixture(scope="module")
def sampled(net: LocalNetwork) -> LocalNetwork:
    """The network, with Cellex's sample data in (once for the module)."""
    ingest_sample(net, "cellex")
    return net


def _unsent(net: LocalNetwork, column: str, value: str) -> list[tuple[int, int, bool, str]]:
    """(attempts, refusals in a row, set aside, last error) of Cellex's undelivered
    messages whose `column` (``peer_id``, ``process_id``) is `value`."""
    assert column in ("peer_id", "process_id")
    engine = create_engine(net["cellex"].db_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT attempts, refusals, refused_at IS NOT NULL, last_error "
                    f"FROM contract_outbox WHERE {column} = :value AND sent_at IS NULL"
                ),
                {"value": value},
            ).all()
    finally:
        engine.dispose()
    return [(int(a), int(r), bool(s), str(e or "")) for a, r, s, e in rows]


def attempts(net: LocalNetwork, peer_id: str) -> list[tuple[int, int, bool]]:
    """(attempts, refusals in a row, set aside) of Cellex's messages to `peer_id`."""
    return [row[:3] for row in _unsent(net, "peer_id", peer_id)]


def test_callbacks_a_member_keeps_refusing_are_set_aside_until_the_operator_retries(
    sampled: LocalNetwork,
) -> None:
    net = sampled
    with net["sunarc"].client() as oem:
        agreement = negotiate(oem, runtime_of(net, "cellex")["dsp"], "inspections")
    sunarc = net["sunarc"].keys().identity.member_id
    hostile = Peer(net, "sunarc", "cellex")
    try:
        callback = runtime_of(net, "sunarc")["dsp"] + "/callback"  # its node's, for real
        asked = wire.request_message(f"urn:uuid:{uuid.uuid4()}", agreement, callback)
        answer = hostile.post("/transfers/request", asked)
        assert answer.status_code == 201, answer.text
    finally:
        hostile.http.close()

    def set_aside() -> Any:
        with net["cellex"].client() as supplier:
            owed = ok(supplier.get("/v1/outbox"))
        mine = [p for p in owed["peers"] if p["peer_id"] == sunarc and p["refused"]]
        return mine and owed

    owed = wait_for("Cellex to set the refused callback aside", set_aside)
    (to_sunarc,) = [p for p in owed["peers"] if p["peer_id"] == sunarc]
    assert to_sunarc["refused"] == 1 and to_sunarc["undelivered"] == 0, to_sunarc
    assert owed["refused"] == 1
    assert "HTTP 404" in (to_sunarc["refused_error"] or ""), to_sunarc
    assert attempts(net, sunarc) == [(2, 2, True)]  # two refusals, then no more tries

    shown = CliRunner().invoke(app, ["contracts", "--dir", str(net["cellex"].directory), "outbox"])
    assert shown.exit_code == 0, shown.output
    assert f"{sunarc}: 1 set aside after its refusals" in shown.output, shown.output
    assert f"outbox --retry {sunarc}" in shown.output, shown.output

    browser = net["cellex"].client(token="")
    try:
        login = browser.post("/console/login", data={"token": net["cellex"].token})
        assert login.status_code == 303, login.text
        page = browser.get("/console/")
        assert page.status_code == 200, page.text[:500]
        assert 'fill="#b00020">1 set aside</text>' in page.text, page.text
    finally:
        browser.close()

    # only Cellex's operator queues it again: no token, SunArc's, a forged one are 401
    for token in ("", net["sunarc"].token, "x" * 5000):
        with net["cellex"].client(token=token) as stranger:
            refused = stranger.post(f"/v1/outbox/{sunarc}/retry")
            assert refused.status_code == 401, (token[:8], refused.text)
    assert attempts(net, sunarc) == [(2, 2, True)]
    with net["cellex"].client() as supplier:
        for bad in ("x" * 5000, "%00"):  # too long, a NUL: refused, never a 5xx
            answer = supplier.post(f"/v1/outbox/{bad}/retry")
            assert 400 <= answer.status_code < 500, answer.text
            assert "Traceback" not in answer.text
        nobody = ok(supplier.post("/v1/outbox/nobody-0123456789ab/retry"))
        assert nobody == {"peer_id": "nobody-0123456789ab", "requeued": 0}
        again = ok(supplier.post(f"/v1/outbox/{sunarc}/retry"))
        assert again == {"peer_id": sunarc, "requeued": 1}
    # tried again (SunArc still refuses it: set aside again after two more refusals)
    wait_for(
        "the retried callback to be set aside again",
        lambda: attempts(net, sunarc) == [(4, 2, True)],
    )

    done = CliRunner().invoke(
        app, ["contracts", "--dir", str(net["cellex"].directory), "outbox", "--retry", sunarc]
    )
    assert done.exit_code == 0, done.output
    assert f"1 message(s) to {sunarc} queued again" in done.output, done.output


class NoTls:
    """A listener that answers whatever it is sent with a line of plain HTTP (no TLS: a
    service inside the provider's network, say); counts the connections it took."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")


def _outbox_row(net: LocalNetwork, process_id: str) -> tuple[int, int, bool, str]:
    """Cellex's one undelivered message about transfer `process_id` (none yet: zeros)."""
    rows = _unsent(net, "process_id", process_id)
    return rows[0] if rows else (0, 0, False, "")


@pytest.mark.parametrize("where", ["another member's server", "a server that speaks no TLS"])
def test_a_callback_address_that_is_not_the_members_server_is_set_aside_too(
    sampled: LocalNetwork, where: str
) -> None:
    """SunArc, by hand, asks Cellex for a transfer naming a callback address that is not
    its own server: Cellex's own DSP listener, or a plain-HTTP listener inside Cellex's
    network. Cellex's node never writes a byte of the callback there (the handshake
    check), and, as it does for a peer that refuses, stops dialling it after
    `outbox_refused_after` tries in a row (here 2). Before, such an address was "not
    reached" and dialled every minute for as long as the message stayed queued: a member
    could keep a provider connecting to hosts and ports of its choosing."""
    net = sampled
    with net["sunarc"].client() as oem:
        agreement = negotiate(oem, runtime_of(net, "cellex")["dsp"], "inspections")
    decoy = NoTls()
    try:
        if where == "another member's server":
            callback = runtime_of(net, "cellex")["dsp"] + "/callback"
            said = "is served by cellex-"
        else:
            callback = f"https://127.0.0.1:{decoy.port}/callback"
            said = "no server of this space there"
        hostile = Peer(net, "sunarc", "cellex")
        cpid = f"urn:uuid:{uuid.uuid4()}"  # the transfer's id at Cellex, too
        with hostile.http:
            asked = wire.request_message(cpid, agreement, callback)
            answer = hostile.post("/transfers/request", asked)
            assert answer.status_code == 201, answer.text
        row = wait_for("the start to be set aside", lambda: (r := _outbox_row(net, cpid))[2] and r)
        assert row[:3] == (2, 2, True), row
        assert said in row[3], row
        tried = decoy.connections
        time.sleep(3.0)  # past the back-off of a third try: none comes
        assert _outbox_row(net, cpid)[:3] == (2, 2, True) and decoy.connections == tried
        if where != "another member's server":
            assert tried == 2
    finally:
        decoy.sock.close()
