"""The provider's answer to a contract request, and the consumer's view of a counter-offer."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from connector.offers import (
    QUALITY_PURPOSES,
    Verdict,
    acceptable_counter,
    answer_request,
    offer_terms,
    standard_assets,
)
from policies.codec import parse_policy, policy_to_json
from policies.model import OfferTerms, make_offer

PROVIDER = "cellex-0123456789ab"
ASSETS = {a.asset_id: a for a in standard_assets(PROVIDER)}
PUBLISHED = ASSETS["inspections"].offer
OFFERED = offer_terms(PUBLISHED).fields
assert OFFERED is not None


def ask(**terms: object) -> object:
    base: dict[str, object] = {"purposes": frozenset({"quality-assurance"})}
    return make_offer("req", PROVIDER, "inspections", OfferTerms(**{**base, **terms}))  # type: ignore[arg-type]


def test_standard_offer_terms_round_trip_through_json() -> None:
    for asset in ASSETS.values():
        again = parse_policy(policy_to_json(asset.offer))
        assert offer_terms(again) == offer_terms(asset.offer)
    assert offer_terms(PUBLISHED).retention_days == 180
    assert "image_hash" not in OFFERED and "score" in OFFERED


def test_a_request_within_the_offer_for_own_orders_is_agreed() -> None:
    request = ask(orders=frozenset({"PO-1"}), fields=OFFERED)
    answer = answer_request(PUBLISHED, request, frozenset({"PO-1", "PO-2"}), "c")  # type: ignore[arg-type]
    assert answer.verdict is Verdict.AGREE


def test_asking_for_more_gets_the_narrowed_counter_offer() -> None:
    request = ask(
        orders=frozenset({"PO-1", "PO-9"}), fields=OFFERED | {"image_hash"}, retention_days=400
    )
    answer = answer_request(PUBLISHED, request, frozenset({"PO-1"}), "counter")  # type: ignore[arg-type]
    assert answer.verdict is Verdict.COUNTER and answer.offer is not None
    terms = offer_terms(answer.offer)
    assert terms.orders == frozenset({"PO-1"})
    assert terms.fields == OFFERED
    assert terms.retention_days == 180
    assert acceptable_counter(request, answer.offer)  # type: ignore[arg-type]


def test_nothing_grantable_terminates_with_the_reason() -> None:
    other = answer_request(PUBLISHED, ask(orders=frozenset({"PO-X"})), frozenset({"PO-1"}), "c")  # type: ignore[arg-type]
    assert other.verdict is Verdict.TERMINATE and "PO-X is not an order you placed" in other.reason
    purpose = answer_request(
        PUBLISHED,
        ask(purposes=frozenset({"marketing"})),
        frozenset({"PO-1"}),
        "c",  # type: ignore[arg-type]
    )
    assert purpose.verdict is Verdict.TERMINATE and "marketing is not offered" in purpose.reason


def test_a_counter_offer_granting_more_than_asked_is_not_acceptable() -> None:
    request = ask(orders=frozenset({"PO-1"}), fields=frozenset({"score"}))
    wider = ask(orders=frozenset({"PO-1", "PO-2"}), fields=frozenset({"score"}))
    more_fields = ask(orders=frozenset({"PO-1"}), fields=frozenset({"score", "verdict"}))
    assert not acceptable_counter(request, wider)  # type: ignore[arg-type]
    assert not acceptable_counter(request, more_fields)  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(
    purposes=st.frozensets(st.sampled_from([*QUALITY_PURPOSES, "marketing"]), min_size=1),
    orders=st.none() | st.frozensets(st.sampled_from(["PO-1", "PO-2", "PO-3"])),
    fields=st.none() | st.frozensets(st.sampled_from([*sorted(OFFERED), "image_hash", "frame_id"])),
    mine=st.frozensets(st.sampled_from(["PO-1", "PO-2"])),
    until=st.none()
    | st.datetimes(
        min_value=datetime(2027, 1, 1), max_value=datetime(2028, 1, 1), timezones=st.just(UTC)
    ),
)
def test_whatever_is_asked_the_agreed_terms_stay_within_offer_and_own_orders(
    purposes: frozenset[str],
    orders: frozenset[str] | None,
    fields: frozenset[str] | None,
    mine: frozenset[str],
    until: datetime | None,
) -> None:
    request = make_offer(
        "req", PROVIDER, "inspections", OfferTerms(purposes, orders, fields, not_after=until)
    )
    answer = answer_request(PUBLISHED, request, mine, "counter")
    if answer.verdict is Verdict.TERMINATE:
        assert answer.reason
        return
    agreed = offer_terms(request if answer.verdict is Verdict.AGREE else answer.offer)  # type: ignore[arg-type]
    assert agreed.purposes <= QUALITY_PURPOSES and agreed.purposes
    assert agreed.orders is not None and agreed.orders <= mine and agreed.orders
    assert agreed.fields is not None and agreed.fields <= OFFERED
    assert agreed.retention_days <= 180 and not agreed.allow_distribution
    if orders is not None:
        assert agreed.orders <= orders
    if until is not None:
        assert agreed.not_after is not None and agreed.not_after <= until
