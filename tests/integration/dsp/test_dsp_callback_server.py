"""A callback address is whatever URL the consumer named: the provider writes a callback
(an offer, an agreement, a transfer's data address and its token) only to a server whose
certificate is the consumer's, and checks that before the first byte of the request
(real node processes, real mutual TLS).

The server below holds a valid member certificate, Cellex's own, so the TLS handshake
succeeds: without the check at the handshake, Cellex's offer for SunArc was written to it
in full and only then refused, on the answer's certificate."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from qdspace.node.localnet.network import LocalNetwork

from .conftest import ok, outbox_errors, wait_for
from .peer import Callbacks, Peer, request

pytestmark = pytest.mark.integration


def test_a_callback_address_served_by_another_member_is_sent_nothing(
    dsp_net: LocalNetwork,
) -> None:
    sunarc = dsp_net["sunarc"].keys().identity.member_id
    cellex = dsp_net["cellex"].keys().identity.member_id
    elsewhere = Callbacks(dsp_net, "cellex")  # a member's server, not SunArc's
    peer = Peer(dsp_net, "sunarc", "cellex")
    try:
        cpid = f"urn:uuid:{uuid.uuid4()}"
        asked = request(cpid, peer.catalog_offer("inspections"), elsewhere.url)
        ppid = ok(peer.post("/negotiations/request", asked))["providerPid"]

        def refused() -> Any:
            return [
                e for e in outbox_errors(dsp_net, "cellex", "process_id", ppid) if "served by" in e
            ]

        errors = wait_for("Cellex's outbox to refuse the server", refused)
        assert all(f"is served by {cellex}, not {sunarc}" in e for e in errors), errors
        with elsewhere.lock:
            assert elsewhere.connections >= 1  # Cellex did connect: the test can fail
            assert elsewhere.lines == [], elsewhere.lines  # and wrote no request
            assert elsewhere.received == []
    finally:
        peer.http.close()
        elsewhere.close()
