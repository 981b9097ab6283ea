"""The Dataspace Protocol contract-negotiation state machine, as pure functions.

Both parties run this same machine over the same messages: each applies the
messages it sends and the ones it receives, so both sides agree on the state
without a shared database. `role` in `Negotiation` only records which side
this copy belongs to.

States and transitions (sender in brackets)::

    (start)    --ContractRequest [consumer]-->  REQUESTED
    (start)    --ContractOffer   [provider]-->  OFFERED      provider-initiated
    REQUESTED  --ContractOffer   [provider]-->  OFFERED      counter-offer
    REQUESTED  --Agreement       [provider]-->  AGREED       request accepted as is
    OFFERED    --ContractRequest [consumer]-->  REQUESTED    counter-request
    OFFERED    --Accepted        [consumer]-->  ACCEPTED
    ACCEPTED   --Agreement       [provider]-->  AGREED
    AGREED     --Verification    [consumer]-->  VERIFIED     consumer countersigned
    VERIFIED   --Finalized       [provider]-->  FINALIZED
    any non-terminal --Termination [either]-->  TERMINATED

FINALIZED and TERMINATED are final. A second Termination of a TERMINATED
negotiation is accepted as a no-op (both sides may give up at once), and not kept: a
peer sending terminations under new ids to a negotiation that ended would otherwise
grow its history, a row each, for as long as it liked.

Every message carries a message id. Applying a message whose id was already
applied returns the negotiation unchanged (a retry after a lost reply); the
same id with different content raises `MessageReplayError`. A message from the
wrong party raises `UnauthorizedSenderError`, checked first and naming no party (an
outsider who learned a negotiation id learns neither who trades nor which message
ids they used), one the state does not accept `IllegalTransitionError` (naming state
and message), an offer or agreement that does not fit the negotiation
`OfferMismatchError`, and a bad signature `AgreementSignatureError`. Signatures
are checked here, with the parties' verify keys passed in, so no caller can forget to.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from nacl.signing import VerifyKey

from qdspace.connector.agreement import (
    ContractAgreement,
    SignedAgreement,
    add_consumer_signature,
    verify_provider_signature,
)
from qdspace.connector.agreement_memo import remember_agreement
from qdspace.connector.contract_errors import (
    AgreementSignatureError,
    IllegalTransitionError,
    MessageReplayError,
    OfferMismatchError,
    PolicyTooLarge,
    UnauthorizedSenderError,
    UnknownProcessError,
)
from qdspace.policies.canonical import (
    canonical_json,
    canonical_json_plain,
    parse_datetime,
    to_jsonable,
)
from qdspace.policies.codec import policy_to_dict
from qdspace.policies.model import Policy, PolicyType, to_agreement
from qdspace.util.json_depth import loads as bounded_json


class NegotiationState(StrEnum):
    REQUESTED = "REQUESTED"
    OFFERED = "OFFERED"
    ACCEPTED = "ACCEPTED"
    AGREED = "AGREED"
    VERIFIED = "VERIFIED"
    FINALIZED = "FINALIZED"
    TERMINATED = "TERMINATED"


FINAL_STATES = frozenset({NegotiationState.FINALIZED, NegotiationState.TERMINATED})


class Role(StrEnum):
    PROVIDER = "provider"
    CONSUMER = "consumer"


@dataclass(frozen=True)
class PartyKeys:
    """The Ed25519 verify keys of both parties (from their certificates)."""

    provider: VerifyKey
    consumer: VerifyKey


@dataclass(frozen=True)
class ContractRequest:
    """Consumer -> provider: the terms it asks for (opening, or a counter-request)."""

    message_id: str
    negotiation_id: str
    sender_id: str
    offer: Policy
    at: datetime


@dataclass(frozen=True)
class ContractOffer:
    """Provider -> consumer: terms it offers (a counter-offer, or provider-initiated)."""

    message_id: str
    negotiation_id: str
    sender_id: str
    offer: Policy
    at: datetime


@dataclass(frozen=True)
class Accepted:
    """Consumer -> provider: it accepts the offer on the table."""

    message_id: str
    negotiation_id: str
    sender_id: str
    at: datetime


@dataclass(frozen=True)
class Agreement:
    """Provider -> consumer: the agreement, signed by the provider."""

    message_id: str
    negotiation_id: str
    sender_id: str
    signed: SignedAgreement
    at: datetime


@dataclass(frozen=True)
class Verification:
    """Consumer -> provider: the consumer's countersignature over the agreement."""

    message_id: str
    negotiation_id: str
    sender_id: str
    consumer_signature: bytes
    at: datetime


@dataclass(frozen=True)
class Finalized:
    """Provider -> consumer: both signatures are stored; the agreement is in force."""

    message_id: str
    negotiation_id: str
    sender_id: str
    at: datetime


@dataclass(frozen=True)
class Termination:
    """Either party: the negotiation ends without (or before) an agreement."""

    message_id: str
    negotiation_id: str
    sender_id: str
    reason: str
    at: datetime


NegotiationMessage = (
    ContractRequest | ContractOffer | Accepted | Agreement | Verification | Finalized | Termination
)

_S = NegotiationState
_TRANSITIONS: dict[tuple[NegotiationState, type], NegotiationState] = {
    (_S.REQUESTED, ContractOffer): _S.OFFERED,
    (_S.REQUESTED, Agreement): _S.AGREED,
    (_S.OFFERED, ContractRequest): _S.REQUESTED,
    (_S.OFFERED, Accepted): _S.ACCEPTED,
    (_S.ACCEPTED, Agreement): _S.AGREED,
    (_S.AGREED, Verification): _S.VERIFIED,
    (_S.VERIFIED, Finalized): _S.FINALIZED,
}
_CONSUMER_SENDS = (ContractRequest, Accepted, Verification)
_PROVIDER_SENDS = (ContractOffer, Agreement, Finalized)


@dataclass(frozen=True)
class Negotiation:
    """One side's copy of a negotiation; `offer` is the offer currently on the table."""

    negotiation_id: str
    role: Role
    provider_id: str
    consumer_id: str
    asset_id: str
    state: NegotiationState
    offer: Policy
    created_at: datetime
    updated_at: datetime
    agreement: SignedAgreement | None = None
    reason: str | None = None
    seen: tuple[tuple[str, str], ...] = ()  # (message id, content fingerprint)
    # False: the peer does not sign (the DSP binding with a standard connector): the
    # agreement and its verification carry no signatures, fixed when the negotiation opens
    signed: bool = True

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES


def _plain(value: Any) -> Any:
    if isinstance(value, Policy):
        return policy_to_dict(value)
    if isinstance(value, SignedAgreement):
        plain: dict[str, Any] = {
            "agreement": value.canonical_bytes.hex(),
            "provider": value.provider_signature.hex(),
            "consumer": None
            if value.consumer_signature is None
            else value.consumer_signature.hex(),
        }
        if not value.signed:  # only then: fingerprints of signed messages stay as they were
            plain["signed"] = False
        return plain
    return to_jsonable(value)


#: the largest policy (its canonical JSON, `offer_json`) a negotiation message may carry.
#: Why: a provider keeps what a member requests (the request's policy with the
#: negotiation, refused or not), and a request naming 1,900 orders made 234 KB stored per
#: call, at 600 calls an hour. A published offer is held to the same in the catalog
#: (`node.rpc.contracts_serde.MAX_OFFER_BYTES`), and a request narrows an offer.
MAX_POLICY_BYTES = 64 * 1024


def check_policy_size(policy: Policy, what: str) -> int:
    """The size of `policy`'s canonical JSON, or `PolicyTooLarge` over `MAX_POLICY_BYTES`."""
    size = len(offer_json(policy))
    if size > MAX_POLICY_BYTES:
        raise PolicyTooLarge(
            f"{what}: its policy is {size} bytes of JSON, more than the {MAX_POLICY_BYTES} a "
            "negotiation takes (ask for fewer orders at a time)"
        )
    return size


def offer_json(policy: Policy) -> bytes:
    """The policy's canonical JSON (`policy_to_json`), computed once per policy object.

    A negotiation writes the offer on the table several times (its message's fingerprint,
    the stored row, the wire): the policy is immutable, so the bytes are kept with it."""
    cached = policy.__dict__.get("_canonical_json")
    if cached is None:  # `policy_to_json`, without walking what is JSON types already
        cached = canonical_json_plain(policy_to_dict(policy))
        object.__setattr__(policy, "_canonical_json", cached)
    assert isinstance(cached, bytes)
    return cached


#: each message class's field names, sorted as canonical JSON sorts an object's keys, with
#: "type" among them
_KEYS: dict[type, tuple[str, ...]] = {}


def _keys(kind: type) -> tuple[str, ...]:
    found = _KEYS.get(kind)
    if found is None:
        found = _KEYS[kind] = tuple(sorted([*(f.name for f in fields(kind)), "type"]))
    return found


def fingerprint(message: NegotiationMessage) -> str:
    """sha256 of the message's canonical content: tells a retry from a forgery.

    The content is the object {field: value, ..., "type": class name} in canonical JSON.
    An object's canonical form is its members in key order, so it is written in runs:
    the members up to an offer in one encoding, the offer's key and `offer_json` (its
    bytes as already encoded), then the rest; a message without an offer is one run."""
    kind = type(message)
    runs: list[bytes] = []
    plain: dict[str, Any] = {}
    for name in _keys(kind):
        value = kind.__name__ if name == "type" else getattr(message, name)
        if isinstance(value, Policy):
            if plain:
                runs.append(canonical_json(plain)[1:-1])
                plain = {}
            runs.append(canonical_json(name) + b":" + offer_json(value))
        else:
            plain[name] = _plain(value)
    if plain:
        runs.append(canonical_json(plain)[1:-1])
    return hashlib.sha256(b"{" + b",".join(runs) + b"}").hexdigest()


def _describe(message: NegotiationMessage) -> str:
    return f"{type(message).__name__} message {message.message_id}"


def _check_offer(offer: Policy, provider_id: str, consumer_id: str, asset_id: str) -> None:
    if offer.type is not PolicyType.OFFER:
        raise OfferMismatchError(f"offer {offer.uid} is an {offer.type}, not an Offer")
    if offer.assigner != provider_id or offer.target != asset_id:
        raise OfferMismatchError(
            f"offer {offer.uid} is {offer.assigner}'s {offer.target}; "
            f"the negotiation is about {provider_id}'s {asset_id}"
        )
    if offer.assignee is not None and offer.assignee != consumer_id:
        raise OfferMismatchError(f"offer {offer.uid} is addressed to {offer.assignee}")


def open_negotiation(
    message: ContractRequest | ContractOffer, role: Role, *, signed: bool = True
) -> Negotiation:
    """Start a negotiation from its first message (consumer request or provider offer);
    `signed` False for a peer that does not sign (see `Negotiation.signed`)."""
    offer = message.offer
    if isinstance(message, ContractRequest):
        provider_id, consumer_id, state = offer.assigner, message.sender_id, _S.REQUESTED
    else:
        if offer.assignee is None:
            raise OfferMismatchError(f"offer {offer.uid} opens a negotiation but names no assignee")
        if message.sender_id != offer.assigner:
            raise UnauthorizedSenderError(
                f"{_describe(message)} from {message.sender_id}: only {offer.assigner} may offer"
            )
        provider_id, consumer_id, state = offer.assigner, offer.assignee, _S.OFFERED
    _check_offer(offer, provider_id, consumer_id, offer.target)
    return Negotiation(
        negotiation_id=message.negotiation_id,
        role=role,
        provider_id=provider_id,
        consumer_id=consumer_id,
        asset_id=offer.target,
        state=state,
        offer=offer,
        created_at=message.at,
        updated_at=message.at,
        seen=((message.message_id, fingerprint(message)),),
        signed=signed,
    )


def _check_sender(negotiation: Negotiation, message: NegotiationMessage) -> None:
    """Refuse a message its sender may not send. The refusal names roles, never the
    parties: an outsider who learned a negotiation id must not learn who trades with whom."""
    allowed: tuple[str, ...]
    if isinstance(message, _CONSUMER_SENDS):
        allowed, who = (negotiation.consumer_id,), "its consumer"
    elif isinstance(message, _PROVIDER_SENDS):
        allowed, who = (negotiation.provider_id,), "its provider"
    else:
        allowed, who = (negotiation.consumer_id, negotiation.provider_id), "one of its parties"
    if message.sender_id not in allowed:
        raise UnauthorizedSenderError(
            f"negotiation {negotiation.negotiation_id}: {_describe(message)} from "
            f"{message.sender_id}, but only {who} may send it"
        )


def draft_agreement(
    negotiation: Negotiation,
    agreement_id: str,
    agreed_at: datetime,
    terms: Policy | None = None,
) -> ContractAgreement:
    """The agreement for the offer on the table, bound to the consumer.

    The provider passes `terms`, the policy it built itself from what it decided to
    grant (`connector.offers.answer_request`): that object is what gets signed, and
    it must say exactly what the offer on the table says. The consumer checks an
    agreement it receives against its own copy of the offer (`terms` omitted).
    """
    policy = negotiation.offer if terms is None else terms
    if not policy.same_terms(negotiation.offer):
        raise OfferMismatchError(
            f"negotiation {negotiation.negotiation_id}: the terms to sign ({policy.uid}) "
            f"differ from the offer on the table ({negotiation.offer.uid})"
        )
    return ContractAgreement(
        agreement_id=agreement_id,
        negotiation_id=negotiation.negotiation_id,
        provider_id=negotiation.provider_id,
        consumer_id=negotiation.consumer_id,
        asset_id=negotiation.asset_id,
        policy=to_agreement(policy, agreement_id, negotiation.consumer_id),
        requested_at=negotiation.created_at,
        agreed_at=agreed_at,
    )


def expect_agreement(negotiation: Negotiation, data: bytes) -> bool:
    """Before the provider's agreement bytes are parsed: when they are exactly the
    agreement this negotiation expects (`draft_agreement` of the offer on the table, with
    the id and time the bytes name), that agreement is what they parse to
    (`remember_agreement`), so they are not parsed again. True if so. Anything else in
    the bytes (malformed, other terms) is left to the parser and the checks of `apply`,
    which refuse it as before; this only ever skips work."""
    try:
        raw = bounded_json(data)
        agreed_at = parse_datetime(raw["agreedAt"])
        expected = draft_agreement(negotiation, raw["agreementId"], agreed_at)
        return remember_agreement(expected, data)
    except Exception:  # whatever is wrong with the bytes: the parser will say what
        return False


def _check_agreement(negotiation: Negotiation, signed: SignedAgreement, keys: PartyKeys) -> None:
    terms = signed.agreement
    expected = draft_agreement(negotiation, terms.agreement_id, terms.agreed_at)
    if terms != expected:
        raise OfferMismatchError(
            f"negotiation {negotiation.negotiation_id}: agreement {terms.agreement_id} "
            "does not match the parties, asset, terms or request time of the negotiation"
        )
    if signed.signed != negotiation.signed:  # no downgrade: the profile is fixed at opening
        raise AgreementSignatureError(
            f"negotiation {negotiation.negotiation_id}: agreement {terms.agreement_id} is "
            f"{'signed' if signed.signed else 'unsigned'}, the negotiation is not"
        )
    if signed.signed:
        verify_provider_signature(signed, keys.provider)


def _next(negotiation: Negotiation, message: NegotiationMessage, keys: PartyKeys) -> dict[str, Any]:
    """The fields that change when `message` moves the negotiation on."""
    if isinstance(message, ContractRequest | ContractOffer):
        n = negotiation
        _check_offer(message.offer, n.provider_id, n.consumer_id, n.asset_id)
        return {"offer": message.offer}
    if isinstance(message, Agreement):
        _check_agreement(negotiation, message.signed, keys)
        return {"agreement": message.signed}
    if isinstance(message, Verification):
        assert negotiation.agreement is not None  # AGREED always holds one
        if not negotiation.signed:
            if message.consumer_signature:
                raise AgreementSignatureError(
                    f"negotiation {negotiation.negotiation_id} is unsigned: no signature expected"
                )
            return {"agreement": replace(negotiation.agreement, consumer_signature=b"")}
        signed = add_consumer_signature(
            negotiation.agreement, message.consumer_signature, keys.consumer
        )
        return {"agreement": signed}
    if isinstance(message, Termination):
        return {"reason": message.reason}
    return {}


def apply(negotiation: Negotiation, message: NegotiationMessage, keys: PartyKeys) -> Negotiation:
    """The negotiation after `message` (see the module docstring for the rules)."""
    if message.negotiation_id != negotiation.negotiation_id:
        raise UnknownProcessError(
            f"{_describe(message)} is for negotiation {message.negotiation_id}, "
            f"not {negotiation.negotiation_id}"
        )
    # the sender before the replay: an outsider's message is refused the same way whether
    # or not its id was used (MessageReplayError would tell it the ids the parties used)
    _check_sender(negotiation, message)
    digest = fingerprint(message)
    for seen_id, seen_digest in negotiation.seen:
        if seen_id == message.message_id:
            if seen_digest == digest:
                return negotiation
            raise MessageReplayError(
                f"negotiation {negotiation.negotiation_id}: message id {seen_id} "
                "was already used for a different message"
            )
    seen = (*negotiation.seen, (message.message_id, digest))
    state = negotiation.state
    if isinstance(message, Termination):
        if state is _S.TERMINATED:
            return negotiation
        target = None if state is _S.FINALIZED else _S.TERMINATED
    else:
        target = _TRANSITIONS.get((state, type(message)))
    if target is None:
        raise IllegalTransitionError(
            f"negotiation {negotiation.negotiation_id}", state.value, _describe(message)
        )
    changes = _next(negotiation, message, keys)
    return replace(negotiation, state=target, updated_at=message.at, seen=seen, **changes)


def awaiting(negotiation: Negotiation) -> Role | None:
    """Whose move it is: who has to send the next message (None when final)."""
    consumer_moves = {_S.OFFERED, _S.AGREED}
    if negotiation.is_final:
        return None
    return Role.CONSUMER if negotiation.state in consumer_moves else Role.PROVIDER
