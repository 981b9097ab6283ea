"""A DSP negotiation message is bounded by the values it carries before it is read (real
SunArc and Cellex processes, SunArc a real member talking DSP by hand).

A ContractRequestMessage of 3 order constraints of 1,000 values each (every one within
the policy codec's 1,024, the policy ~28 KB of canonical JSON, within the 64 KiB a
negotiation takes) was read with pyld twice, on the provider's event loop the second
time, and kept: now it is a 400 DSP error naming the limit, and Cellex keeps nothing of
it. The same for a counter-request on a negotiation the member holds (which the member's
quota never limits). The largest honest request, 1,024 orders, is still read."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from qdspace.connector.dsp_jsonld import MAX_MESSAGE_VALUES
from qdspace.node.localnet.network import LocalNetwork
from qdspace.policies.odrl.codec import MAX_RIGHT_VALUES

from .conftest import ingest_sample, ok, rows_of
from .peer import Callbacks, Peer, peer_with_callbacks, request, values

pytestmark = pytest.mark.integration

LIMIT = f"at most {MAX_MESSAGE_VALUES} JSON values"


@pytest.fixture(scope="module")
def sunarc(dsp_net: LocalNetwork) -> Iterator[tuple[Peer, Callbacks]]:
    ingest_sample(dsp_net, "cellex")
    with peer_with_callbacks(dsp_net, "sunarc", "cellex") as pair:
        yield pair


def with_orders(offer: dict[str, Any], *orders: list[str]) -> dict[str, Any]:
    """`offer` narrowed to `orders` (an ``order`` constraint for each list added to its
    permission)."""
    out = copy.deepcopy(offer)
    permission = out["permission"]
    rule = permission[0] if isinstance(permission, list) else permission
    rule["constraint"] = [
        *rule["constraint"],
        *({"leftOperand": "order", "operator": "isAnyOf", "rightOperand": o} for o in orders),
    ]
    return out


def too_many(offer: dict[str, Any]) -> dict[str, Any]:
    """3,000 order values in 3 constraints: each within the codec's `MAX_RIGHT_VALUES`."""
    return with_orders(offer, *([f"O{j}-{i}" for i in range(1_000)] for j in range(3)))


def kept(net: LocalNetwork) -> tuple[int, ...]:
    """What Cellex holds of SunArc's negotiations: processes, bindings, queued messages,
    and the messages of each negotiation."""
    member = net["sunarc"].keys().identity.member_id
    counts = (
        ("SELECT count(*) FROM contract_negotiation WHERE consumer_id = :m", {"m": member}),
        ("SELECT count(*) FROM dsp_process WHERE peer_id = :m", {"m": member}),
        ("SELECT count(*) FROM contract_outbox WHERE peer_id = :m", {"m": member}),
        ("SELECT count(*) FROM contract_message", {}),
    )
    return tuple(int(rows_of(net, "cellex", sql, **params)[0][0]) for sql, params in counts)


def refused_for_values(answer: httpx.Response) -> None:
    assert answer.status_code == 400, answer.text
    error = answer.json()
    assert error["@type"] == "ContractNegotiationError", error
    assert error["code"] == "400", error
    (reason,) = error["reason"]
    assert reason.startswith("$.offer: ") and LIMIT in reason, reason
    assert "ask for fewer orders" in reason, reason


def test_a_request_carrying_too_many_values_is_refused_and_nothing_kept(
    dsp_net: LocalNetwork, sunarc: tuple[Peer, Callbacks]
) -> None:
    peer, callbacks = sunarc
    offer = peer.catalog_offer("inspections")
    before = kept(dsp_net)
    answer = peer.post(
        "/negotiations/request",
        request(f"urn:uuid:{uuid.uuid4()}", too_many(offer), callbacks.url),
    )
    refused_for_values(answer)
    assert kept(dsp_net) == before
    # the most orders the codec reads in a constraint is read and decided (none is
    # SunArc's: Cellex offers its own terms back), not refused at the door
    orders = [f"PO-2026-{i:04d}" for i in range(MAX_RIGHT_VALUES)]
    cpid = f"urn:uuid:{uuid.uuid4()}"
    asked = request(cpid, with_orders(offer, orders), callbacks.url)
    opened = ok(peer.post("/negotiations/request", asked))
    assert opened["consumerPid"] == cpid
    answered = callbacks.wait(cpid, "ContractOfferMessage")
    assert len(values(answered["offer"], "order")) < MAX_RIGHT_VALUES, answered
    # and a request of the catalog offer as published is answered as before
    cpid = f"urn:uuid:{uuid.uuid4()}"
    ppid = ok(peer.post("/negotiations/request", request(cpid, offer, callbacks.url)))
    assert callbacks.wait(cpid, "ContractOfferMessage")
    assert peer.state(ppid["providerPid"]) == "OFFERED"


def test_a_counter_request_carrying_too_many_values_is_refused(
    dsp_net: LocalNetwork, sunarc: tuple[Peer, Callbacks]
) -> None:
    peer, callbacks = sunarc
    cpid = f"urn:uuid:{uuid.uuid4()}"
    asked = request(cpid, peer.catalog_offer("inspections"), callbacks.url)
    ppid = ok(peer.post("/negotiations/request", asked))["providerPid"]
    offer = callbacks.wait(cpid, "ContractOfferMessage")["offer"]
    before = kept(dsp_net)
    body = {**request(cpid, too_many(offer), ""), "providerPid": ppid}
    del body["callbackAddress"]
    refused_for_values(peer.post(f"/negotiations/{ppid}/request", body))
    assert kept(dsp_net) == before
    assert peer.state(ppid) == "OFFERED"  # not read, so not decided
