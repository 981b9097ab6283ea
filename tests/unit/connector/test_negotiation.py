"""The Dataspace Protocol negotiation machine: paths, counter-offers, idempotency, refusals."""

from __future__ import annotations

import hashlib
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from qdspace.connector.agreement import (
    SignedAgreement,
    agreement_from_bytes,
    countersign,
    sign_agreement,
)
from qdspace.connector.contract_errors import (
    AgreementSignatureError,
    IllegalTransitionError,
    MessageReplayError,
    OfferMismatchError,
    UnauthorizedSenderError,
    UnknownProcessError,
)
from qdspace.connector.negotiation import (
    Accepted,
    Agreement,
    ContractOffer,
    ContractRequest,
    Finalized,
    Negotiation,
    NegotiationMessage,
    NegotiationState,
    PartyKeys,
    Role,
    Termination,
    Verification,
    _plain,
    apply,
    awaiting,
    draft_agreement,
    expect_agreement,
    fingerprint,
    offer_json,
    open_negotiation,
)
from qdspace.policies.canonical import canonical_json
from qdspace.policies.codec import policy_to_json
from qdspace.policies.model import OfferTerms, Policy, make_offer

T0 = datetime(2026, 5, 1, tzinfo=UTC)
P_KEY = SigningKey(b"p" * 32)
C_KEY = SigningKey(b"c" * 32)
KEYS = PartyKeys(P_KEY.verify_key, C_KEY.verify_key)
S = NegotiationState


def offer(uid: str = "offer-1", days: int = 180, assignee: str | None = None) -> Policy:
    terms = OfferTerms(
        purposes=frozenset({"quality-assurance"}),
        orders=frozenset({"ORD-1"}),
        retention_days=days,
    )
    policy = make_offer(uid, "cellex", "inspections", terms)
    return replace(policy, assignee=assignee) if assignee else policy


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def request(mid: str = "m1", policy: Policy | None = None, t: int = 0) -> ContractRequest:
    return ContractRequest(mid, "neg-1", "sunarc", policy or offer(), at(t))


def both(messages: list[NegotiationMessage]) -> tuple[Negotiation, Negotiation]:
    """Run the same messages on the provider's and the consumer's copy."""
    first = messages[0]
    assert isinstance(first, ContractRequest | ContractOffer)
    sides = [open_negotiation(first, Role.PROVIDER), open_negotiation(first, Role.CONSUMER)]
    for message in messages[1:]:
        sides = [apply(side, message, KEYS) for side in sides]
    return sides[0], sides[1]


def agree(negotiation: Negotiation, mid: str = "m-agr", t: int = 5) -> Agreement:
    terms = draft_agreement(negotiation, "agr-1", at(t))
    return Agreement(mid, "neg-1", "cellex", sign_agreement(terms, P_KEY), at(t))


def verification(agreement: Agreement, t: int = 6) -> Verification:
    signed = countersign(agreement.signed, C_KEY, P_KEY.verify_key)
    assert signed.consumer_signature is not None
    return Verification("m-ver", "neg-1", "sunarc", signed.consumer_signature, at(t))


def test_request_accepted_as_is_ends_finalized_with_both_signatures() -> None:
    start = open_negotiation(request(), Role.PROVIDER)
    assert start.state is S.REQUESTED and awaiting(start) is Role.PROVIDER
    agreement = agree(start)
    messages: list[NegotiationMessage] = [
        request(),
        agreement,
        verification(agreement),
        Finalized("m-fin", "neg-1", "cellex", at(7)),
    ]
    provider, consumer = both(messages)
    assert provider.state is consumer.state is S.FINALIZED
    assert provider.agreement == consumer.agreement
    assert provider.agreement is not None and provider.agreement.complete
    assert awaiting(provider) is None and provider.is_final
    assert provider.agreement.agreement.policy.assignee == "sunarc"


def test_counter_offers_go_back_and_forth_until_accepted() -> None:
    counter = offer("offer-2", days=90)
    counter_request = offer("offer-3", days=120)
    first = request()
    n = open_negotiation(first, Role.CONSUMER)
    n = apply(n, ContractOffer("m2", "neg-1", "cellex", counter, at(1)), KEYS)
    assert n.state is S.OFFERED and n.offer == counter and awaiting(n) is Role.CONSUMER
    n = apply(n, request("m3", counter_request, 2), KEYS)
    assert n.state is S.REQUESTED and n.offer == counter_request
    final_offer = offer("offer-4", days=150)
    n = apply(n, ContractOffer("m4", "neg-1", "cellex", final_offer, at(3)), KEYS)
    n = apply(n, Accepted("m5", "neg-1", "sunarc", at(4)), KEYS)
    assert n.state is S.ACCEPTED and awaiting(n) is Role.PROVIDER
    agreement = agree(n)
    n = apply(n, agreement, KEYS)
    assert n.state is S.AGREED
    assert n.agreement is not None
    # The agreement carries the terms that were accepted, not the first request's.
    assert n.agreement.agreement.policy.permissions == final_offer.permissions
    n = apply(n, verification(agreement), KEYS)
    assert n.state is S.VERIFIED


def test_provider_initiated_offer_opens_in_offered() -> None:
    first = ContractOffer("m1", "neg-1", "cellex", offer(assignee="sunarc"), T0)
    n = open_negotiation(first, Role.CONSUMER)
    assert (n.state, n.provider_id, n.consumer_id) == (S.OFFERED, "cellex", "sunarc")
    with pytest.raises(OfferMismatchError, match="names no assignee"):
        open_negotiation(replace(first, offer=offer()), Role.CONSUMER)
    with pytest.raises(UnauthorizedSenderError):
        open_negotiation(replace(first, sender_id="polycell"), Role.CONSUMER)


def test_every_message_is_idempotent_and_ids_cannot_be_reused() -> None:
    n = open_negotiation(request(), Role.PROVIDER)
    counter = ContractOffer("m2", "neg-1", "cellex", offer("offer-2", days=30), at(1))
    once = apply(n, counter, KEYS)
    assert apply(once, counter, KEYS) == once
    with pytest.raises(MessageReplayError, match="m2"):
        apply(once, replace(counter, offer=offer("offer-9")), KEYS)
    # The opening request, sent again, is a no-op too.
    assert apply(once, request(), KEYS) == once
    agreement = agree(apply(once, Accepted("m3", "neg-1", "sunarc", at(2)), KEYS))
    done = apply(apply(once, Accepted("m3", "neg-1", "sunarc", at(2)), KEYS), agreement, KEYS)
    assert apply(done, agreement, KEYS) == done


def test_wrong_sender_wrong_state_and_wrong_process_are_refused() -> None:
    n = open_negotiation(request(), Role.PROVIDER)
    with pytest.raises(UnauthorizedSenderError, match="only its provider"):
        apply(n, ContractOffer("m2", "neg-1", "sunarc", offer(), at(1)), KEYS)
    with pytest.raises(UnauthorizedSenderError, match="only one of its parties"):
        apply(n, Termination("m2", "neg-1", "mallory", "x", at(1)), KEYS)
    with pytest.raises(IllegalTransitionError, match="REQUESTED: Accepted message m2"):
        apply(n, Accepted("m2", "neg-1", "sunarc", at(1)), KEYS)
    with pytest.raises(UnknownProcessError):
        apply(n, Accepted("m2", "neg-2", "sunarc", at(1)), KEYS)
    other_asset = replace(offer(), target="images")
    with pytest.raises(OfferMismatchError):
        apply(n, ContractOffer("m2", "neg-1", "cellex", other_asset, at(1)), KEYS)


def test_an_outsider_learns_neither_the_parties_nor_the_message_ids_used() -> None:
    """Mallory, no party, sends into sunarc's negotiation with cellex: under a fresh
    message id and under the ids sunarc and cellex used, every kind of message. Each is
    refused as a wrong sender (not a replay, which would confirm the id), in words that
    name neither party."""
    n = open_negotiation(request(), Role.PROVIDER)
    n = apply(n, ContractOffer("m2", "neg-1", "cellex", offer("offer-2", days=30), at(1)), KEYS)
    forged: list[NegotiationMessage] = []
    for mid in ("m-new", "m1", "m2"):
        forged += [
            Termination(mid, "neg-1", "mallory", "x", at(2)),
            Accepted(mid, "neg-1", "mallory", at(2)),
            ContractOffer(mid, "neg-1", "mallory", offer(), at(2)),
            replace(request(mid), sender_id="mallory"),
        ]
    for message in forged:
        with pytest.raises(UnauthorizedSenderError) as refused:
            apply(n, message, KEYS)
        said = str(refused.value)
        assert "sunarc" not in said and "cellex" not in said, said
        assert f"message {message.message_id} from mallory, but only " in said, said


def test_agreement_that_differs_from_the_terms_or_is_forged_is_refused() -> None:
    n = open_negotiation(request(), Role.CONSUMER)
    good = agree(n)
    for_someone_else = draft_agreement(replace(n, consumer_id="polycell"), "agr-1", at(5))
    with pytest.raises(OfferMismatchError):
        apply(n, replace(good, signed=sign_agreement(for_someone_else, P_KEY)), KEYS)
    other_terms = draft_agreement(replace(n, offer=offer(days=999)), "agr-1", at(5))
    with pytest.raises(OfferMismatchError):
        apply(n, replace(good, signed=sign_agreement(other_terms, P_KEY)), KEYS)
    forged = replace(good, signed=sign_agreement(good.signed.agreement, SigningKey.generate()))
    with pytest.raises(AgreementSignatureError):
        apply(n, forged, KEYS)
    agreed = apply(n, good, KEYS)
    bad_counter = Verification("m-ver", "neg-1", "sunarc", b"\0" * 64, at(6))
    with pytest.raises(AgreementSignatureError):
        apply(agreed, bad_counter, KEYS)
    assert apply(agreed, verification(good), KEYS).state is S.VERIFIED


def test_termination_from_any_open_state_and_never_after_finalized() -> None:
    n = open_negotiation(request(), Role.PROVIDER)
    ended = apply(n, Termination("m2", "neg-1", "sunarc", "changed our mind", at(1)), KEYS)
    assert ended.state is S.TERMINATED and ended.reason == "changed our mind"
    again = apply(ended, Termination("m3", "neg-1", "cellex", "too", at(2)), KEYS)
    assert again.state is S.TERMINATED and again.reason == "changed our mind"
    # a no-op, and not kept: terminations under ever new ids do not grow its history
    for i in range(50):
        again = apply(again, Termination(f"t{i}", "neg-1", "sunarc", "again", at(3)), KEYS)
    assert again == ended
    with pytest.raises(IllegalTransitionError):
        apply(ended, Accepted("m4", "neg-1", "sunarc", at(3)), KEYS)
    agreement = agree(n)
    final, _ = both(
        [
            request(),
            agreement,
            verification(agreement),
            Finalized("m-fin", "neg-1", "cellex", at(7)),
        ]
    )
    with pytest.raises(IllegalTransitionError, match="FINALIZED"):
        apply(final, Termination("m9", "neg-1", "sunarc", "late", at(9)), KEYS)


_ALLOWED = {
    (S.REQUESTED, "ContractOffer"): S.OFFERED,
    (S.REQUESTED, "Agreement"): S.AGREED,
    (S.OFFERED, "ContractRequest"): S.REQUESTED,
    (S.OFFERED, "Accepted"): S.ACCEPTED,
    (S.ACCEPTED, "Agreement"): S.AGREED,
    (S.AGREED, "Verification"): S.VERIFIED,
    (S.VERIFIED, "Finalized"): S.FINALIZED,
}
KINDS = ["request", "offer", "accepted", "agreement", "verification", "finalized", "terminate"]


def _message(kind: str, n: Negotiation, step: int) -> NegotiationMessage:
    mid, t = f"m{step}", at(step)
    if kind == "request":
        return ContractRequest(mid, "neg-1", "sunarc", offer(f"o{step}"), t)
    if kind == "offer":
        return ContractOffer(mid, "neg-1", "cellex", offer(f"o{step}"), t)
    if kind == "accepted":
        return Accepted(mid, "neg-1", "sunarc", t)
    if kind == "agreement":
        return replace(agree(n, mid, step), at=t)
    if kind == "verification":
        if n.agreement is None:
            return Verification(mid, "neg-1", "sunarc", b"\0" * 64, t)
        signed = countersign(n.agreement, C_KEY, P_KEY.verify_key)
        assert signed.consumer_signature is not None
        return Verification(mid, "neg-1", "sunarc", signed.consumer_signature, t)
    if kind == "finalized":
        return Finalized(mid, "neg-1", "cellex", t)
    return Termination(mid, "neg-1", "sunarc", "stop", t)


@settings(max_examples=150)
@given(st.lists(st.sampled_from(KINDS), max_size=10))
def test_random_message_sequences_only_take_protocol_transitions(kinds: list[str]) -> None:
    n = open_negotiation(request("m0"), Role.PROVIDER)
    for step, kind in enumerate(kinds, start=1):
        message = _message(kind, n, step)
        before = n.state
        try:
            after = apply(n, message, KEYS)
        except (IllegalTransitionError, AgreementSignatureError):
            assert (before, type(message).__name__) not in _ALLOWED
            continue
        if isinstance(message, Termination):
            assert before not in (S.FINALIZED,)
            assert after.state is S.TERMINATED
        else:
            assert _ALLOWED[(before, type(message).__name__)] is after.state
        # Re-delivery of the same message never moves the state again.
        assert apply(after, message, KEYS) == after
        n = after


def _fingerprint_as_defined(message: NegotiationMessage) -> str:
    """The definition: sha256 of the canonical JSON of {field: value, ..., "type": name}."""
    content = {f.name: _plain(getattr(message, f.name)) for f in fields(message)}
    content["type"] = type(message).__name__
    return hashlib.sha256(canonical_json(content)).hexdigest()


@pytest.mark.parametrize("text", ["m", "é€😀\u2028", '"\\', "\x00OFFER\x00", "type", "x" * 100])
def test_fingerprints_are_the_canonical_json_of_the_whole_message(text: str) -> None:
    """`fingerprint` writes the object member by member with the offer's cached bytes
    (round 3 of bench/PROFILE-negotiation.md); the digests stored with every negotiation
    must stay exactly those of the whole object's canonical JSON."""
    terms = OfferTerms(
        purposes=frozenset({"quality-assurance", text}),
        orders=frozenset({"ORD-1"}),
        fields=frozenset({"a", text}),
        not_after=datetime(2027, 1, 1, 12, tzinfo=timezone(timedelta(hours=2))),
    )
    policy = make_offer(f"{text}-offer", "cellex", "inspections", terms)
    opening = ContractRequest(text, "neg-1", "sunarc", policy, at(1))
    signed = sign_agreement(
        draft_agreement(open_negotiation(opening, Role.PROVIDER), text, at(2)), P_KEY
    )
    messages: list[NegotiationMessage] = [
        opening,
        ContractOffer(text, text, text, policy, T0.astimezone(timezone(timedelta(hours=-5)))),
        Accepted(text, "neg-1", text, at(3)),
        Agreement(text, "neg-1", "cellex", signed, at(4)),
        Agreement(text, "neg-1", "cellex", replace(signed, consumer_signature=b"\x00\xff"), at(4)),
        Agreement(
            text, "neg-1", "cellex", SignedAgreement(signed.agreement, b"", signed=False), at(4)
        ),
        Verification(text, "neg-1", text, text.encode(), at(5)),
        Finalized(text, "neg-1", "cellex", at(6)),
        Termination(text, "neg-1", text, text, at(7)),
    ]
    for message in messages:
        assert fingerprint(message) == _fingerprint_as_defined(message)
    assert offer_json(policy) == policy_to_json(policy)  # kept with the policy, as encoded


def test_an_expected_agreement_is_compared_and_anything_else_left_to_the_parser() -> None:
    """`expect_agreement` only skips a parse: the exact bytes of the agreement the
    consumer expects are remembered as it; other terms, junk and foreign shapes are not,
    and still fail where they failed (the parser, then `apply`)."""
    consumer = open_negotiation(request(), Role.CONSUMER)
    honest = agree(consumer).signed
    data = honest.canonical_bytes
    assert expect_agreement(consumer, data)
    assert agreement_from_bytes(data) == honest.agreement
    other = draft_agreement(consumer, "agr-2", at(5))
    bent = replace(other, policy=replace(other.policy, target="wafers"), asset_id="wafers")
    assert not expect_agreement(consumer, bent.canonical_bytes())
    for junk in (b"", b"[[[", b"{}", b'{"agreementId": 1, "agreedAt": 2}', data + b" ", b"\xff"):
        assert not expect_agreement(consumer, junk)
    assert not expect_agreement(consumer, data.replace(b"sunarc", b"polyco"))
