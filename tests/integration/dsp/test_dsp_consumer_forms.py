"""A consumer writing its DSP messages in other JSON-LD forms than the node's own trades end
to end: expanded, full-IRI keys, prefixed keys with EDC's contexts and an offer carrying
its own context. Each negotiation runs request, acceptance, verification to FINALIZED
with a real member's certificate, key and callback listener."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from qdspace.node.localnet.network import LocalNetwork
from qdspace.policies.odrl.jsonld import expand

from .conftest import ingest_sample, ok
from .peer import DSP, POLICY_CTX, Callbacks, Peer, peer_with_callbacks, request

pytestmark = pytest.mark.integration
EDC = "https://w3id.org/edc/dspace/v0.0.1"


def _expanded(body: dict[str, Any]) -> dict[str, Any]:
    nodes = expand(body, None)
    assert len(nodes) == 1
    return dict(nodes[0])


def _iri_keys(body: dict[str, Any]) -> dict[str, Any]:
    """Full IRIs for every key, values as the compacted form wrote them (pids as strings)."""
    node = _expanded(body)
    flat = {k: v[0]["@id"] if k.endswith("Pid") else v for k, v in node.items()}
    return {"@context": [DSP], **flat}


def _edc(body: dict[str, Any]) -> dict[str, Any]:
    """EDC's habit: its contexts beside DSP's, prefixed keys, the offer with its own context."""
    out: dict[str, Any] = {
        "@context": [DSP, EDC, {"fx-policy": "https://w3id.org/factoryx/policy/v1.0/"}]
    }
    for key, value in body.items():
        if key == "@context":
            continue
        if key == "@type":
            out[key] = f"dspace:{value}"
        elif key == "offer":
            out["dspace:offer"] = {"@context": POLICY_CTX, **value}
        else:
            out[f"dspace:{key}"] = value
    return out


FORMS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "expanded": _expanded,
    "iri-keys": _iri_keys,
    "edc": _edc,
}


@pytest.fixture(scope="module")
def sunarc(dsp_net: LocalNetwork) -> Iterator[tuple[Peer, Callbacks]]:
    ingest_sample(dsp_net, "cellex")
    with peer_with_callbacks(dsp_net, "sunarc", "cellex") as pair:
        yield pair


def _pids(kind: str, ppid: str, cpid: str, **extra: Any) -> dict[str, Any]:
    return {"@context": [DSP], "@type": kind, "providerPid": ppid, "consumerPid": cpid, **extra}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_a_negotiation_in_another_form_reaches_finalized(
    sunarc: tuple[Peer, Callbacks], form: str
) -> None:
    peer, callbacks = sunarc
    write = FORMS[form]
    cpid = f"urn:uuid:{uuid.uuid4()}"
    asked = write(request(cpid, peer.catalog_offer("inspections"), callbacks.url))
    ppid = ok(peer.post("/negotiations/request", asked))["providerPid"]
    callbacks.wait(cpid, "ContractOfferMessage")  # narrowed to our orders: we take it
    accepted = _pids("ContractNegotiationEventMessage", ppid, cpid, eventType="ACCEPTED")
    answer = peer.post(f"/negotiations/{ppid}/events", write(accepted))
    assert answer.status_code == 200, answer.text
    callbacks.wait(cpid, "ContractAgreementMessage")
    verified = _pids("ContractAgreementVerificationMessage", ppid, cpid)
    answer = peer.post(f"/negotiations/{ppid}/agreement/verification", write(verified))
    assert answer.status_code == 200, answer.text
    event = callbacks.wait(cpid, "ContractNegotiationEventMessage")
    assert event["eventType"] == "FINALIZED"
    assert peer.state(ppid) == "FINALIZED"
