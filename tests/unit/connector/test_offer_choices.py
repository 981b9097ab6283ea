"""A provider's own terms for its standard assets (`connector.offer_choices`, the node
setting ``offers``): narrower fields and purposes, its retention and receipt duty, an
asset not offered; and every choice that does not hold refused with its path."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from qdspace.connector.offer_choices import OfferChoice, chosen_assets
from qdspace.connector.offers import (
    Narrowing,
    Verdict,
    answer_request,
    counter_request,
    narrowed_request,
    offer_terms,
    standard_assets,
)
from qdspace.node.config import NodeSettings
from qdspace.node.errors import ConfigError
from qdspace.policies.model import OfferTerms, make_offer

PROVIDER = "cellex-0123456789ab"
KEPT = frozenset({"inspection_id", "order_id", "verdict"})


def test_chosen_terms_are_what_the_catalog_offers_and_what_is_agreed() -> None:
    choices = {
        "inspections": OfferChoice(fields=KEPT, retention_days=90, receipt=False),
        "operator-log": OfferChoice(offered=False),
    }
    assets = {a.asset_id: a for a in chosen_assets(PROVIDER, choices)}
    assert "operator-log" not in assets  # not offered at all
    standard = {a.asset_id: a for a in standard_assets(PROVIDER)}
    assert assets["process-genealogy"] == standard["process-genealogy"]  # untouched
    terms = offer_terms(assets["inspections"].offer)
    assert (terms.fields, terms.retention_days, terms.receipt) == (KEPT, 90, False)
    assert terms.purposes == offer_terms(standard["inspections"].offer).purposes
    # a request for a field the provider no longer shares gets the chosen terms back
    asked = make_offer(
        "req",
        PROVIDER,
        "inspections",
        OfferTerms(
            purposes=frozenset({"quality-assurance"}),
            orders=frozenset({"PO-1"}),
            fields=KEPT | {"score"},
        ),
    )
    answer = answer_request(assets["inspections"].offer, asked, frozenset({"PO-1"}), "c")
    assert answer.verdict is Verdict.COUNTER and answer.offer is not None
    countered = offer_terms(answer.offer)
    assert countered.fields == KEPT and countered.retention_days == 90


def _settings(tmp_path: Path, offers: Any) -> NodeSettings:
    directory = tmp_path / "node"
    directory.mkdir(exist_ok=True)
    config = {"directory": str(directory), "name": "cellex", "role": "supplier",
              "member_id": PROVIDER, "offers": offers}  # fmt: skip
    (directory / "node.json").write_text(json.dumps(config))
    return NodeSettings.load(directory)


@pytest.mark.parametrize(
    ("offers", "message"),
    [
        ({"nothing": {}}, "offers['nothing']: no such asset; this node offers"),
        ({"inspections": {"fields": ["image_hash"]}}, "offers['inspections'].fields: image_hash"),
        ({"inspections": {"fields": []}}, "fields: none given"),
        ({"inspections": {"purposes": ["marketing"]}}, "purposes: marketing: choose among"),
        ({"inspections": {"retention_days": 0}}, "retention_days: 0; a retention is 1 to 3650"),
        ({"inspections": {"retention_days": 4000}}, "a retention is 1 to 3650 days"),
        ({"inspections": {"fields": "verdict"}}, "offers.inspections.fields"),
        ({"inspections": {"colour": "red"}}, "offers.inspections.colour"),
        ({"inspections": {"framework": "no spaces"}}, "offers['inspections'].framework: 'no"),
        ({"inspections": {"framework": ""}}, "is not a framework agreement's name"),
    ],
)
def test_a_choice_that_does_not_hold_is_refused_with_its_path(
    tmp_path: Path, offers: Any, message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        _settings(tmp_path, offers)
    assert message in str(refused.value), refused.value


def test_chosen_settings_load_and_convert(tmp_path: Path) -> None:
    settings = _settings(tmp_path, {"inspections": {"fields": sorted(KEPT), "receipt": False}})
    assert settings.offer_choices() == {"inspections": OfferChoice(fields=KEPT, receipt=False)}
    assert _settings(tmp_path, {}).offer_choices() == {}


DEG = "DataExchangeGovernance:1.0"


def _asked(offer_terms_: OfferTerms) -> Any:
    return make_offer("req", PROVIDER, "inspections", offer_terms_)


def test_an_offer_for_framework_signatories_is_agreed_only_with_one() -> None:
    choices = {"inspections": OfferChoice(framework=DEG)}
    offer = {a.asset_id: a for a in chosen_assets(PROVIDER, choices)}["inspections"].offer
    assert offer.uses_framework and offer_terms(offer).framework == DEG
    qa = frozenset({"quality-assurance"})
    orders = frozenset({"PO-1"})
    as_published = narrowed_request(offer, Narrowing(purposes=qa, orders=orders))

    for held in (None, frozenset(), frozenset({"Pcf:1.0"})):
        answer = answer_request(offer, as_published, orders, "c", held)
        assert answer.verdict is Verdict.TERMINATE, held
        assert f"framework agreement {DEG}" in answer.reason and "attests" in answer.reason

    agreed = answer_request(offer, as_published, orders, "c", frozenset({DEG, "Pcf:1.0"}))
    assert agreed.verdict is Verdict.AGREE and agreed.offer is not None
    assert offer_terms(agreed.offer).framework == DEG
    # a consumer cannot ask the requirement away, nor swap it for another framework
    for framework in (None, "Pcf:1.0"):
        asked = _asked(replace(offer_terms(as_published), framework=framework))
        answer = answer_request(offer, asked, orders, "c", frozenset({DEG, "Pcf:1.0"}))
        assert answer.verdict is Verdict.COUNTER and answer.offer is not None
        assert offer_terms(answer.offer).framework == DEG
    # and an offer without one is agreed as before, whatever the consumer holds
    plain = {a.asset_id: a for a in standard_assets(PROVIDER)}["inspections"].offer
    assert not plain.uses_framework
    asked = narrowed_request(plain, Narrowing(purposes=qa, orders=orders))
    assert answer_request(plain, asked, orders, "c", None).verdict is Verdict.AGREE


def test_a_consumer_counter_request_keeps_the_providers_framework() -> None:
    qa = frozenset({"quality-assurance"})
    mine = _asked(OfferTerms(purposes=qa, orders=frozenset({"PO-1"})))
    theirs = _asked(
        OfferTerms(purposes=qa | {"failure-analysis"}, orders=frozenset({"PO-1"}), framework=DEG)
    )
    back = counter_request(mine, theirs, "again")
    assert not isinstance(back, str)
    assert offer_terms(back).framework == DEG and offer_terms(back).purposes == qa
