"""The node as a DSP consumer answers a counter-offer that grants more than it asked with a
counter-request of its own: the counter-offer narrowed to what it asked, once. The
provider is one of another make, driven by hand (`foreign.ForeignProvider`, Cellex's
certificate): this node's own provider never counters with more than was asked.

SunArc's operator asks for Cellex's ``inspections`` for two purposes and two fields. The
provider counters with one purpose and every field: SunArc asks back for that purpose and
its two fields, the provider agrees to exactly that, and the negotiation is FINALIZED on
those terms. A provider that counters wider again after the counter-request, or whose
counter-offer shares no purpose with the request, is answered with a termination that
says why; nothing is agreed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from qdspace.connector import dsp_codec as codec
from qdspace.node.localnet.network import LocalNetwork
from qdspace.policies.model import to_agreement
from qdspace.policies.odrl.vocab import PolicyKind

from .conftest import ok, wait_for
from .foreign import ForeignProvider
from .peer import POLICY_CTX, Peer, values, with_values

pytestmark = pytest.mark.integration
PURPOSES = ["quality-assurance", "spc-monitoring"]
FIELDS = ["score", "verdict"]
VERIFICATION = "ContractAgreementVerificationMessage"
TERMINATION = "ContractNegotiationTerminationMessage"


@pytest.fixture(scope="module")
def foreign(dsp_net: LocalNetwork) -> Iterator[tuple[ForeignProvider, Peer]]:
    """Cellex's published dataset, served by a provider of another make under Cellex's
    certificate; and Cellex's credentials calling SunArc's callback endpoints."""
    looking = Peer(dsp_net, "sunarc", "cellex")
    try:
        dataset = ok(looking.get("/catalog/datasets/inspections"))
    finally:
        looking.http.close()
    provider = ForeignProvider(dsp_net, "cellex", dataset)
    answering = Peer(dsp_net, "cellex", "sunarc")
    try:
        yield provider, answering
    finally:
        answering.http.close()
        provider.close()


def _negotiate(net: LocalNetwork, provider: ForeignProvider) -> tuple[str, str, dict[str, Any]]:
    """SunArc's operator asks for two purposes and two fields: (our pid, the provider's
    pid, the offer SunArc asked for)."""
    body = {
        "provider_url": provider.url,
        "dataset_id": "inspections",
        "purposes": PURPOSES,
        "fields": FIELDS,
    }
    with net["sunarc"].client() as oem:
        started = ok(oem.post("/v1/dsp/negotiations", json=body))
    cpid, ppid = started["negotiation_id"], started["provider_pid"]
    with provider.lock:  # acknowledged before the operator's call returned
        (asked,) = [b for p, b in provider.received if b.get("consumerPid") == cpid]
    return cpid, ppid, asked["offer"]


def _counter(answering: Peer, cpid: str, ppid: str, offer: dict[str, Any]) -> None:
    message = {
        "@context": POLICY_CTX,
        "@type": "ContractOfferMessage",
        "providerPid": ppid,
        "consumerPid": cpid,
        "offer": offer,
    }
    response = answering.post(f"/negotiations/{cpid}/offers", message)
    assert response.status_code == 200, response.text


def _wider(offer: dict[str, Any], purposes: set[str]) -> dict[str, Any]:
    """``offer`` for ``purposes`` and without its fields constraint (every field)."""
    counter = with_values(offer, "purpose", purposes)
    rule = (
        counter["permission"][0]
        if isinstance(counter["permission"], list)
        else counter["permission"]
    )
    items = rule["constraint"] if isinstance(rule["constraint"], list) else [rule["constraint"]]
    rule["constraint"] = [i for i in items if "fields" not in str(i["leftOperand"])]
    counter["@id"] = f"{counter['@id']}:their-counter-{len(purposes)}"
    return counter


def _state(net: LocalNetwork, nid: str) -> dict[str, Any]:
    with net["sunarc"].client() as oem:
        found: dict[str, Any] = ok(oem.get(f"/v1/contracts/negotiations/{nid}"))
    return found


def test_a_wider_counter_offer_is_answered_with_a_counter_request_and_agreed_on_it(
    dsp_net: LocalNetwork, foreign: tuple[ForeignProvider, Peer]
) -> None:
    provider, answering = foreign
    cpid, ppid, asked = _negotiate(dsp_net, provider)
    assert values(asked, "purpose") == set(PURPOSES) and values(asked, "fields") == set(FIELDS)
    _counter(answering, cpid, ppid, _wider(asked, {"quality-assurance"}))

    back = provider.wait(f"/negotiations/{ppid}/request", "ContractRequestMessage")
    assert back["providerPid"] == ppid and back["consumerPid"] == cpid
    assert "callbackAddress" not in back
    assert values(back["offer"], "purpose") == {"quality-assurance"}  # what both allow
    assert values(back["offer"], "fields") == set(FIELDS)  # never more than asked
    assert _state(dsp_net, cpid)["state"] == "REQUESTED"

    # the provider agrees to the counter-request as it stands
    narrowed = codec.read_policy(back, "offer", PolicyKind.OFFER, target="inspections")
    consumer_id = dsp_net["sunarc"].keys().identity.member_id
    agreement = to_agreement(narrowed, "urn:uuid:agreement-counter-1", consumer_id)
    body = codec.agreement_message(ppid, cpid, agreement, datetime.now(UTC))
    response = answering.post(f"/negotiations/{cpid}/agreement", body)
    assert response.status_code == 200, response.text
    provider.wait(
        f"/negotiations/{ppid}/agreement/verification", "ContractAgreementVerificationMessage"
    )
    event = {
        "@context": POLICY_CTX,
        "@type": "ContractNegotiationEventMessage",
        "providerPid": ppid,
        "consumerPid": cpid,
        "eventType": "FINALIZED",
    }
    assert answering.post(f"/negotiations/{cpid}/events", event).status_code == 200
    done = wait_for("FINALIZED", lambda: _state(dsp_net, cpid)["state"] == "FINALIZED" or None)
    assert done
    with dsp_net["sunarc"].client() as oem:
        held = ok(oem.get("/v1/contracts/agreements/urn:uuid:agreement-counter-1"))
    text = str(held)
    assert "score" in text and "verdict" in text and "spc-monitoring" not in text, held


def test_a_provider_that_counters_wider_again_is_answered_with_a_termination(
    dsp_net: LocalNetwork, foreign: tuple[ForeignProvider, Peer]
) -> None:
    provider, answering = foreign
    cpid, ppid, asked = _negotiate(dsp_net, provider)
    _counter(answering, cpid, ppid, _wider(asked, {"quality-assurance"}))
    provider.wait(f"/negotiations/{ppid}/request", "ContractRequestMessage")
    _counter(answering, cpid, ppid, _wider(asked, {"quality-assurance", "failure-analysis"}))
    ended = provider.wait(
        f"/negotiations/{ppid}/termination", "ContractNegotiationTerminationMessage"
    )
    assert "after our counter-request" in str(ended), ended
    assert provider.count(f"/negotiations/{ppid}/request") == 1  # asked back once only
    state = wait_for("TERMINATED", lambda: _state(dsp_net, cpid)["state"] == "TERMINATED" or None)
    assert state


def test_a_counter_offer_sharing_no_purpose_ends_the_negotiation(
    dsp_net: LocalNetwork, foreign: tuple[ForeignProvider, Peer]
) -> None:
    provider, answering = foreign
    cpid, ppid, asked = _negotiate(dsp_net, provider)
    _counter(answering, cpid, ppid, _wider(asked, {"failure-analysis"}))
    ended = provider.wait(
        f"/negotiations/{ppid}/termination", "ContractNegotiationTerminationMessage"
    )
    assert "grants none of the purposes asked" in str(ended), ended
    assert provider.count(f"/negotiations/{ppid}/request") == 0
