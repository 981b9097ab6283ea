"""The consumer's counter-request: a provider's counter-offer that grants more than was
asked is answered with the counter-offer narrowed to what was asked
(`connector.offers.counter_request`), in the DSP form a provider reads
(`connector.dsp_negotiation.outgoing`, the schema's ``providerPid`` branch)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jsonschema import Draft201909Validator
from referencing import Registry, Resource

from qdspace.connector import dsp_negotiation as wire
from qdspace.connector.negotiation import ContractRequest
from qdspace.connector.offers import (
    Verdict,
    acceptable_counter,
    answer_request,
    counter_request,
    offer_terms,
    standard_assets,
)
from qdspace.policies.model import OfferTerms, Policy, make_offer

PROVIDER = "cellex-0123456789ab"
PUBLISHED = {a.asset_id: a for a in standard_assets(PROVIDER)}["inspections"].offer
SCHEMAS = Path(__file__).parents[1] / "policies" / "dsp_2025_1"
AT = datetime(2026, 12, 6, tzinfo=UTC)


def terms(uid: str, **given: Any) -> Policy:
    base: dict[str, Any] = {"purposes": frozenset({"quality-assurance"})}
    return make_offer(uid, PROVIDER, "inspections", OfferTerms(**{**base, **given}))


def test_a_wider_counter_offer_is_answered_with_what_both_allow() -> None:
    """Asked: two purposes, two fields, 90 days. Countered: one purpose, every field the
    provider offers, 180 days. Asked back: that purpose, those two fields, 90 days."""
    asked = terms(
        "ask",
        purposes=frozenset({"quality-assurance", "root-cause-analysis"}),
        orders=frozenset({"PO-1"}),
        fields=frozenset({"score", "verdict"}),
        retention_days=90,
    )
    counter = terms(
        "their-counter",
        orders=frozenset({"PO-1"}),
        fields=offer_terms(PUBLISHED).fields,
        retention_days=180,
    )
    assert not acceptable_counter(asked, counter)
    narrowed = counter_request(asked, counter, "neg-1:counter-request")
    assert isinstance(narrowed, Policy)
    got = offer_terms(narrowed)
    assert got.purposes == {"quality-assurance"} and got.fields == {"score", "verdict"}
    assert got.retention_days == 90 and narrowed.uid == "neg-1:counter-request"
    assert narrowed.assigner == PROVIDER and narrowed.target == "inspections"
    assert acceptable_counter(asked, narrowed)  # never more than first asked
    # a provider deciding as this node's does agrees to it as it stands
    assert answer_request(PUBLISHED, narrowed, frozenset({"PO-1"}), "c").verdict is Verdict.AGREE


def test_nothing_in_common_is_a_reason_not_a_request() -> None:
    asked = terms("ask", fields=frozenset({"score"}))
    assert counter_request(asked, terms("c", purposes=frozenset({"marketing"})), "u") == (
        "the counter-offer grants none of the purposes asked"
    )
    assert counter_request(asked, terms("c", fields=frozenset({"verdict"})), "u") == (
        "the counter-offer grants none of the fields asked"
    )
    orders = terms("ask", orders=frozenset({"PO-1"}))
    assert counter_request(orders, terms("c", orders=frozenset({"PO-2"})), "u") == (
        "the counter-offer covers none of the orders asked"
    )
    odd = PUBLISHED.__class__(**{**PUBLISHED.__dict__, "obligations": PUBLISHED.permissions})
    reason = counter_request(asked, odd, "u")  # type: ignore[arg-type]
    assert isinstance(reason, str) and "cannot be narrowed" in reason


def _registry() -> Registry:
    resources = []
    for path in SCHEMAS.rglob("*.json"):
        doc = json.loads(path.read_text().replace(".json#definitions/", ".json#/definitions/"))
        resources.append((doc["$id"], Resource.from_contents(doc)))
    return Registry().with_resources(resources)


def test_the_counter_request_is_a_dsp_message_the_provider_reads_back() -> None:
    narrowed = terms("neg-1:counter-request", fields=frozenset({"score"}))
    message = ContractRequest("neg-1:c2:counter-request", "neg-1", "sunarc-x", narrowed, AT)
    pids = wire.Pids("urn:uuid:p-1", "urn:uuid:c-1")
    path, body = wire.outgoing(message, pids, from_provider=False)
    assert path == "/negotiations/urn:uuid:p-1/request"
    assert body["providerPid"] == "urn:uuid:p-1" and "callbackAddress" not in body
    schema = SCHEMAS / "negotiation" / "contract-request-message-schema.json"
    Draft201909Validator(json.loads(schema.read_text()), registry=_registry()).validate(body)
    read = wire.counter_request_in(json.loads(json.dumps(body)), "p-local", "sunarc-x", AT)
    assert read.offer.same_terms(narrowed)
