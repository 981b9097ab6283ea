"""The provider's answer to a contract request, and the consumer's view of a counter-offer."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qdspace.connector.offers import (
    QUALITY_PURPOSES,
    Narrowing,
    NonStandardPolicyError,
    Verdict,
    acceptable_counter,
    answer_request,
    narrowed_request,
    offer_terms,
    standard_assets,
)
from qdspace.policies.codec import parse_policy, policy_to_json
from qdspace.policies.errors import PolicySyntaxError
from qdspace.policies.evaluate import Request, evaluate
from qdspace.policies.model import (
    ALLOWED_OPERATORS,
    Action,
    Constraint,
    LeftOperand,
    OfferTerms,
    Operator,
    Policy,
    Prohibition,
    make_offer,
    to_agreement,
)

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
    assert answer.offer is not None  # AGREE and COUNTER both carry the provider's own policy
    agreed = offer_terms(answer.offer)
    assert agreed.purposes <= QUALITY_PURPOSES and agreed.purposes
    assert agreed.orders is not None and agreed.orders <= mine and agreed.orders
    assert agreed.fields is not None and agreed.fields <= OFFERED
    assert agreed.retention_days <= 180 and not agreed.allow_distribution
    if orders is not None:
        assert agreed.orders <= orders
    if until is not None:
        assert agreed.not_after is not None and agreed.not_after <= until


# ------------------------------------------------- bent offers (issue 10, finding 1)

ALL_ORDERS = ("PO-MINE", "PO-OTHER-1", "PO-OTHER-2")
MINE = frozenset({"PO-MINE"})
SCOPE_OPERANDS = (LeftOperand.PURPOSE, LeftOperand.ORDER, LeftOperand.FIELDS, LeftOperand.DATETIME)


def _bend(policy: Policy, left: LeftOperand, operator: Operator, right: object) -> Policy:
    """`policy` with its `left` constraint rewritten as `left operator right`."""
    permission = policy.permissions[0]
    constraints = tuple(
        Constraint(left, operator, right) if c.left_operand is left else c  # type: ignore[arg-type]
        for c in permission.constraints
    )
    if all(c.left_operand is not left for c in permission.constraints):
        constraints = (*constraints, Constraint(left, operator, right))  # type: ignore[arg-type]
    return replace(policy, permissions=(replace(permission, constraints=constraints),))


def _right_for(left: LeftOperand, operator: Operator) -> object:
    if left is LeftOperand.DATETIME:
        return datetime(2020, 1, 1, tzinfo=UTC)
    values = {
        LeftOperand.PURPOSE: frozenset({"quality-assurance"}),
        LeftOperand.ORDER: MINE,
        LeftOperand.FIELDS: frozenset({"score"}),
    }[left]
    if operator in (Operator.EQ, Operator.NEQ):
        return next(iter(values))
    return values


def _bent_requests() -> list[tuple[str, Policy]]:
    base = ask(orders=MINE, fields=OFFERED)
    out = []
    for left in SCOPE_OPERANDS:
        for operator in sorted(ALLOWED_OPERATORS[left]):
            try:
                bent = _bend(base, left, operator, _right_for(left, operator))  # type: ignore[arg-type]
            except PolicySyntaxError:
                continue
            out.append((f"{left} {operator}", bent))
    return out


def _granted_orders(policy: Policy) -> set[str]:
    at = datetime(2027, 6, 1, tzinfo=UTC)
    granted = set()
    for order in ALL_ORDERS:
        for purpose in (*QUALITY_PURPOSES, "marketing"):
            request = Request(Action.READ, at, PUBLISHED_FIELDS, purpose=purpose, order_id=order)
            if evaluate(policy, request).allowed:
                granted.add(order)
    return granted


PUBLISHED_FIELDS = ASSETS["inspections"].fields


@pytest.mark.parametrize(("label", "bent"), _bent_requests(), ids=[x for x, _ in _bent_requests()])
def test_a_bent_request_is_never_signed_as_sent(label: str, bent: Policy) -> None:
    """Every operator on every scope constraint: whatever the provider signs is a policy it
    built itself, granting only the consumer's own orders and offered purposes."""
    answer = answer_request(PUBLISHED, bent, MINE, "counter")
    if answer.verdict is Verdict.TERMINATE:
        assert answer.reason
        return
    assert answer.offer is not None, label
    built = answer.offer
    assert offer_terms(built).orders == MINE  # the provider's own reading, always narrowed
    if answer.verdict is Verdict.AGREE:
        assert built.same_terms(bent)  # agreed only to exactly its own terms
    agreement = to_agreement(built, "agr-1", "sunarc-000000000000")
    assert _granted_orders(agreement) <= MINE, label


def test_the_isnoneof_order_bypass_is_countered_not_agreed() -> None:
    """The reproduced attack: copy the offer, scope `order isNoneOf [my order]`."""
    bent = _bend(ask(orders=MINE, fields=OFFERED), LeftOperand.ORDER, Operator.IS_NONE_OF, MINE)
    assert _granted_orders(to_agreement(bent, "agr-x", "sunarc")) == {"PO-OTHER-1", "PO-OTHER-2"}
    answer = answer_request(PUBLISHED, bent, MINE, "counter")
    assert answer.verdict is Verdict.COUNTER and answer.offer is not None
    assert "order isNoneOf is not a term we offer" in answer.reason
    assert _granted_orders(to_agreement(answer.offer, "agr-x", "sunarc")) == set(MINE)


def test_a_request_with_extra_rules_is_not_of_the_standard_shape() -> None:
    base = ask(orders=MINE, fields=OFFERED)
    loophole = replace(
        base,
        prohibitions=(
            Prohibition(
                Action.DISTRIBUTE,
                (Constraint(LeftOperand.PURPOSE, Operator.IS_ANY_OF, frozenset({"x"})),),
            ),
        ),
    )
    with pytest.raises(NonStandardPolicyError, match="conditional prohibition"):
        offer_terms(loophole)
    twice = replace(
        base,
        permissions=(
            replace(
                base.permissions[0],
                constraints=(
                    *base.permissions[0].constraints,
                    Constraint(LeftOperand.ORDER, Operator.IS_ANY_OF, frozenset({"PO-OTHER-1"})),
                ),
            ),
        ),
    )
    with pytest.raises(NonStandardPolicyError, match="twice"):
        offer_terms(twice)
    assert answer_request(PUBLISHED, twice, MINE, "c").verdict is Verdict.COUNTER


def test_an_agreed_request_carries_the_providers_own_policy_object() -> None:
    request = ask(orders=MINE, fields=OFFERED)
    answer = answer_request(PUBLISHED, request, MINE, "c")  # type: ignore[arg-type]
    assert answer.verdict is Verdict.AGREE and answer.offer is not None
    assert answer.offer is not request and answer.offer.same_terms(request)  # type: ignore[attr-defined]


def test_a_consumer_s_narrowed_request_is_agreed_as_it_stands() -> None:
    """The DSP consumer narrows the published offer (`narrowed_request`); the provider's
    own decision agrees to it unchanged, keeps its other terms, and never more."""
    one = Narrowing(
        purposes=frozenset({"quality-assurance"}),
        orders=frozenset({"PO-1"}),
        fields=frozenset({"inspection_id", "verdict"}),
        retention_days=30,
        not_after=datetime(2027, 1, 1, tzinfo=UTC),
    )
    asked = narrowed_request(PUBLISHED, one)
    assert asked.uid == PUBLISHED.uid and asked.target == PUBLISHED.target
    answer = answer_request(PUBLISHED, asked, frozenset({"PO-1", "PO-2"}), "c")
    assert answer.verdict is Verdict.AGREE and answer.offer is not None
    assert answer.offer.same_terms(asked)
    terms = offer_terms(answer.offer)
    assert (terms.orders, terms.fields, terms.retention_days) == (
        frozenset({"PO-1"}),
        frozenset({"inspection_id", "verdict"}),
        30,
    )
    assert terms.receipt and not terms.allow_distribution  # the provider's, kept
    # purposes alone: the provider's order scope decides (all of the consumer's orders)
    wide = narrowed_request(PUBLISHED, Narrowing(purposes=frozenset({"quality-assurance"})))
    countered = answer_request(PUBLISHED, wide, frozenset({"PO-1"}), "c")
    assert countered.verdict is Verdict.COUNTER and acceptable_counter(wide, countered.offer)  # type: ignore[arg-type]
    # another's order: the provider ends it
    theirs = narrowed_request(PUBLISHED, replace(one, orders=frozenset({"PO-9"})))
    assert answer_request(PUBLISHED, theirs, frozenset({"PO-1"}), "c").verdict is Verdict.TERMINATE


def test_an_offer_of_another_form_is_not_narrowed() -> None:
    foreign = replace(PUBLISHED, prohibitions=(*PUBLISHED.prohibitions, Prohibition(Action.USE)))
    with pytest.raises(NonStandardPolicyError):
        narrowed_request(foreign, Narrowing(purposes=frozenset({"quality-assurance"})))
