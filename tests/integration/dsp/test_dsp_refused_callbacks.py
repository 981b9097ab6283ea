"""A member that asks for a transfer and then refuses every callback about it (real node
processes, real mutual TLS): SunArc, by hand with its own certificate, requests a
transfer from Cellex under its agreement, naming its node's real callback address and a
consumer pid its node never opened; its node answers each TransferStartMessage 404.
Cellex's outbox sets the message aside after `outbox_refused_after` refusals in a row
(here 2) instead of trying it every minute for ever; Cellex's operator sees it apart,
by API, CLI and console, and queues it again (only Cellex's operator may)."""

from __future__ import annotations

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


def attempts(net: LocalNetwork, peer_id: str) -> list[tuple[int, int, bool]]:
    """(attempts, refusals in a row, set aside) of Cellex's messages to `peer_id`."""
    engine = create_engine(net["cellex"].db_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT attempts, refusals, refused_at IS NOT NULL FROM contract_outbox "
                    "WHERE peer_id = :peer AND sent_at IS NULL"
                ),
                {"peer": peer_id},
            ).all()
    finally:
        engine.dispose()
    return [(int(a), int(r), bool(s)) for a, r, s in rows]


def test_callbacks_a_member_keeps_refusing_are_set_aside_until_the_operator_retries(
    net: LocalNetwork,
) -> None:
    ingest_sample(net, "cellex")
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
