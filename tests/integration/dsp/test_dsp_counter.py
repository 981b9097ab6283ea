"""Counter-requests over DSP: a real member (its certificate, its key, its callback listener)
answers the provider's offer with terms of its own. The provider agrees only on terms it
rebuilt itself from its own policy: narrower terms are agreed (on the provider's policy,
saying the same), wider ones get the provider's own offer back, an order that is not the
member's ends the negotiation. Never a 5xx."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from qdspace.node.localnet.network import LocalNetwork

from .conftest import ingest_sample, ok, wait_for
from .peer import Callbacks, Peer, peer_with_callbacks, request, values, with_values

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sunarc(dsp_net: LocalNetwork) -> Iterator[tuple[Peer, Callbacks]]:
    ingest_sample(dsp_net, "cellex")  # the orders SunArc placed with Cellex
    with peer_with_callbacks(dsp_net, "sunarc", "cellex") as pair:
        yield pair


def _countered(peer: Peer, callbacks: Callbacks) -> tuple[str, str, dict[str, Any]]:
    """A negotiation asking for the catalog offer (no order named): the provider counters
    with its own offer, narrowed to the member's orders. Its pids and that offer."""
    cpid = f"urn:uuid:{uuid.uuid4()}"
    asked = request(cpid, peer.catalog_offer("inspections"), callbacks.url)
    ppid = ok(peer.post("/negotiations/request", asked))["providerPid"]
    offer = callbacks.wait(cpid, "ContractOfferMessage")["offer"]
    assert peer.state(ppid) == "OFFERED"
    return cpid, ppid, offer


def _counter(ppid: str, cpid: str, offer: dict[str, Any]) -> dict[str, Any]:
    body = request(cpid, offer, "")
    del body["callbackAddress"]
    return {**body, "providerPid": ppid}


def test_narrower_terms_are_agreed_on_the_providers_own_policy(
    sunarc: tuple[Peer, Callbacks],
) -> None:
    peer, callbacks = sunarc
    cpid, ppid, offer = _countered(peer, callbacks)
    orders = values(offer, "order")
    assert orders, offer
    one = {sorted(orders)[0]}
    fields = {"inspection_id", "verdict", "order_id"}
    narrower = with_values(with_values(offer, "order", one), "fields", fields)
    narrower["@id"] = f"urn:uuid:{uuid.uuid4()}"  # the member's own policy object
    answered = peer.post(f"/negotiations/{ppid}/request", _counter(ppid, cpid, narrower))
    assert answered.status_code == 200, answered.text
    agreement = callbacks.wait(cpid, "ContractAgreementMessage")["agreement"]
    assert peer.state(ppid) == "AGREED"
    assert values(agreement, "order") == one and values(agreement, "fields") == fields
    assert agreement["@id"] != narrower["@id"]  # the provider's agreement, not our object
    assert agreement["assigner"] == peer.audience
    assert agreement["assignee"] == peer.keys.identity.member_id
    # the same counter-request again (a retry): acknowledged, nothing changes
    again = peer.post(f"/negotiations/{ppid}/request", _counter(ppid, cpid, narrower))
    assert again.status_code == 200, again.text
    assert peer.state(ppid) == "AGREED"


@pytest.mark.parametrize("wider", ["fields", "purpose"])
def test_wider_terms_get_the_providers_own_offer_back(
    sunarc: tuple[Peer, Callbacks], wider: str
) -> None:
    peer, callbacks = sunarc
    cpid, ppid, offer = _countered(peer, callbacks)
    extra = {"fields": "latency_ms", "purpose": "marketing"}[wider]
    asked = with_values(offer, wider, values(offer, wider) | {extra})
    answered = peer.post(f"/negotiations/{ppid}/request", _counter(ppid, cpid, asked))
    assert answered.status_code == 200, answered.text

    def second_offer() -> Any:
        got = [b for p, b in callbacks.received if p.startswith(f"/negotiations/{cpid}/offers")]
        return got[1:] and got[1]

    again = wait_for("the provider's second offer", second_offer)["offer"]
    assert extra not in values(again, wider)
    assert values(again, wider) == values(offer, wider)
    assert peer.state(ppid) == "OFFERED"


def test_an_order_not_the_members_ends_the_negotiation(sunarc: tuple[Peer, Callbacks]) -> None:
    peer, callbacks = sunarc
    cpid, ppid, offer = _countered(peer, callbacks)
    asked = with_values(offer, "order", {"PO-NOT-SUNARCS-0001"})
    answered = peer.post(f"/negotiations/{ppid}/request", _counter(ppid, cpid, asked))
    assert answered.status_code == 200, answered.text
    ended = callbacks.wait(cpid, "ContractNegotiationTerminationMessage")
    assert "no order in scope" in str(ended["reason"])
    assert peer.state(ppid) == "TERMINATED"


def test_hostile_counter_requests_are_4xx(sunarc: tuple[Peer, Callbacks]) -> None:
    peer, callbacks = sunarc
    cpid, ppid, offer = _countered(peer, callbacks)
    cases = {
        "unknown pid": (f"urn:uuid:{uuid.uuid4()}", _counter(ppid, cpid, offer), 404),
        "their pid mismatch": (ppid, _counter(ppid, "urn:uuid:other", offer), 400),
        "another dataset": (ppid, _counter(ppid, cpid, {**offer, "target": "operator-log"}), 400),
        "not an offer": (ppid, _counter(ppid, cpid, {**offer, "@type": "Agreement"}), 400),
        "no offer": (ppid, {**_counter(ppid, cpid, offer), "offer": "x"}, 400),
    }
    for name, (pid, body, status) in cases.items():
        refused = peer.post(f"/negotiations/{pid}/request", body)
        assert refused.status_code == status, (name, refused.text)
        assert refused.json()["@type"] == "ContractNegotiationError", name
    assert peer.state(ppid) == "OFFERED"


def test_a_consumer_countering_for_ever_is_ended(sunarc: tuple[Peer, Callbacks]) -> None:
    peer, callbacks = sunarc
    cpid, ppid, offer = _countered(peer, callbacks)
    for round_ in range(1, 20):
        asked = with_values(offer, "fields", values(offer, "fields") | {f"extra_{round_}"})
        answered = peer.post(f"/negotiations/{ppid}/request", _counter(ppid, cpid, asked))
        assert answered.status_code == 200, (round_, answered.text)

        def answer(seen: int = round_) -> Any:
            got = [b for p, b in callbacks.received if p.startswith(f"/negotiations/{cpid}/")]
            return len(got) > seen and got[seen]

        reply = wait_for(f"the provider's answer to counter-request {round_}", answer)
        if reply["@type"] == "ContractNegotiationTerminationMessage":
            break
        assert reply["@type"] == "ContractOfferMessage"
    assert "rounds" in str(reply["reason"]) and round_ == 8
    assert peer.state(ppid) == "TERMINATED"
