"""The DSP negotiation routes do their JSON-LD work (pyld: reading the message, reading its
policy) and their database reads in worker threads, never on the event loop the node's
gRPC calls share: a request, its state, a counter-request and its retry."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from pyld import jsonld
from sqlalchemy import text

from .conftest import POLICY_CTX, Calls, Provider, request_message


def offered(provider: Provider, cpid: str) -> dict[str, Any]:
    """The provider's ContractOfferMessage for the consumer's `cpid`, from its outbox."""
    with provider.runtime.store.engine.connect() as connection:
        rows = connection.execute(text("SELECT payload FROM contract_outbox"))
        queued = [json.loads(payload)["body"] for (payload,) in rows]
    (body,) = [
        q for q in queued if q["@type"] == "ContractOfferMessage" and q["consumerPid"] == cpid
    ]
    offer: dict[str, Any] = body["offer"]
    return offer


def test_negotiation_routes_work_off_the_event_loop(
    cellex: Provider, calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = cellex.runtime.store
    for owner, name in (
        (jsonld, "expand"),
        (jsonld, "compact"),
        (store, "load_negotiation"),
        (store.dsp, "by_own_pid"),
        (store.dsp, "by_peer_pid"),
    ):
        calls.watch(monkeypatch, owner, name)
    sunarc = cellex.client(cellex.authority.member("sunarc", "oem", b"o"))
    cpid = f"urn:uuid:{uuid.uuid4()}"
    asked = request_message(sunarc, cpid)
    opened = sunarc.post("/negotiations/request", asked)
    assert opened.status_code == 201, opened.text
    ppid = opened.json()["providerPid"]
    assert sunarc.post("/negotiations/request", asked).json()["providerPid"] == ppid  # a retry
    assert sunarc.get(f"/negotiations/{ppid}").json()["state"] == "OFFERED"
    counter = {
        "@context": POLICY_CTX,
        "@type": "ContractRequestMessage",
        "providerPid": ppid,
        "consumerPid": cpid,
        "offer": {**offered(cellex, cpid), "@id": f"urn:uuid:{uuid.uuid4()}"},
    }
    for _ in range(2):  # the counter-request, and its retry
        answered = sunarc.post(f"/negotiations/{ppid}/request", counter)
        assert answered.status_code == 200, answered.text
    assert sunarc.get(f"/negotiations/{ppid}").json()["state"] == "AGREED"
    assert {"expand", "compact", "load_negotiation", "by_own_pid", "by_peer_pid"} <= set(
        calls.counts
    )
    assert calls.on_loop == []
