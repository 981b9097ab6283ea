"""DSP negotiation messages <-> `connector.negotiation` messages (pure; see `dsp_codec`).

Incoming: each DSP message becomes the state machine's message for our local process
id, with a message id derived from that id and the DSP message kind (`message_id`), so
a retry is the same message (a counter-request's id also names the terms it asks).
Outgoing: each message the machine produced for the peer becomes the DSP message and
the path under the peer's address it is POSTed to.

Every id made here fits the 128-character id columns (`codec.MAX_PID`). The local id is
always our own ``urn:uuid`` (45 characters), but part of a message id comes from the peer:
its offer's ``@id`` (up to 128 characters, `Policy`'s bound) and its member id. A message
id that would be longer keeps its kind and takes a digest of the rest (`message_id`): a
provider's offer with a 200-character ``@id`` was a 500 on PostgreSQL. The agreement id
is the provider's ``policy.uid``, bounded by `Policy` itself.

A provider's agreement is dated by the provider, and that date is what we countersign,
keep and anchor: one dated ahead of our clock by more than clocks drift is refused
(`peer_time.check_sent_at`, as the gRPC wire refuses a reply), or an agreement dated
9999 was taken, and every notice and closure under it refused as dated before it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from qdspace.connector import dsp_codec as codec
from qdspace.connector.agreement import ContractAgreement, SignedAgreement
from qdspace.connector.contract_errors import AgreementError, MessageOutOfTime
from qdspace.connector.negotiation import (
    Accepted,
    Agreement,
    ContractOffer,
    ContractRequest,
    Finalized,
    NegotiationMessage,
    Termination,
    Verification,
)
from qdspace.connector.peer_time import check_sent_at
from qdspace.policies.codec import policy_to_json
from qdspace.policies.odrl.vocab import PolicyKind


@dataclass(frozen=True)
class Pids:
    provider: str
    consumer: str


def message_id(local_id: str, kind: str) -> str:
    """``<local id>:dsp-<kind>``; where that is longer than an id may be, the part of
    `kind` after its first ``:`` (a peer's offer id, a member id) is a digest of `kind`,
    so that a retry still gets the same id."""
    made = f"{local_id}:dsp-{kind}"
    if len(made) <= codec.MAX_PID:
        return made
    head = kind.partition(":")[0]
    return f"{local_id}:dsp-{head}:{hashlib.sha256(kind.encode()).hexdigest()[:32]}"


def request_in(
    body: Mapping[str, Any], local_id: str, sender: str, at: datetime
) -> ContractRequest:
    offer = codec.read_policy(body, "offer", PolicyKind.OFFER)
    return ContractRequest(message_id(local_id, "request"), local_id, sender, offer, at)


def counter_request_in(
    body: Mapping[str, Any], local_id: str, sender: str, at: datetime
) -> ContractRequest:
    """A consumer's counter-request (its answer to our offer with terms of its own).

    DSP messages carry no ids, so the id is derived from the terms asked: a retry of the
    same counter-request is the same message, a different one is a new round."""
    offer = codec.read_policy(body, "offer", PolicyKind.OFFER)
    digest = hashlib.sha256(policy_to_json(offer)).hexdigest()[:32]
    return ContractRequest(message_id(local_id, f"request:{digest}"), local_id, sender, offer, at)


def offer_in(body: Mapping[str, Any], local_id: str, sender: str, at: datetime) -> ContractOffer:
    offer = codec.read_policy(body, "offer", PolicyKind.OFFER)
    return ContractOffer(message_id(local_id, f"offer:{offer.uid}"), local_id, sender, offer, at)


def agreement_in(
    body: Mapping[str, Any], local_id: str, sender: str, requested_at: datetime, at: datetime
) -> Agreement:
    """A provider's agreement for our negotiation `local_id` (unsigned: the DSP form)."""
    policy = codec.read_policy(body, "agreement", PolicyKind.AGREEMENT)
    agreed_at = codec.agreement_time(body)
    try:  # `at`: our clock (or the negotiation's last time, never ahead of it)
        check_sent_at(agreed_at, at, "the agreement's timestamp")
    except MessageOutOfTime as exc:
        raise codec.DspMessageError("$.agreement.timestamp", str(exc)) from None
    if policy.assignee is None:
        raise codec.DspMessageError("$.agreement.assignee", "an agreement names its assignee")
    try:
        terms = ContractAgreement(
            agreement_id=policy.uid,
            negotiation_id=local_id,
            provider_id=policy.assigner,
            consumer_id=policy.assignee,
            asset_id=policy.target,
            policy=policy,
            requested_at=requested_at,
            agreed_at=agreed_at,
        )
    except AgreementError as exc:
        raise codec.DspMessageError("$.agreement", str(exc)) from None
    signed = SignedAgreement(terms, b"", signed=False)
    return Agreement(message_id(local_id, "agreement"), local_id, sender, signed, at)


def event_in(
    body: Mapping[str, Any], local_id: str, sender: str, at: datetime
) -> Accepted | Finalized:
    event = body.get("eventType")
    if event in ("ACCEPTED", "dspace:ACCEPTED", "https://w3id.org/dspace/2025/1/ACCEPTED"):
        return Accepted(message_id(local_id, "accepted"), local_id, sender, at)
    if event in ("FINALIZED", "dspace:FINALIZED", "https://w3id.org/dspace/2025/1/FINALIZED"):
        return Finalized(message_id(local_id, "finalized"), local_id, sender, at)
    raise codec.DspMessageError("$.eventType", "must be ACCEPTED or FINALIZED")


def verification_in(local_id: str, sender: str, at: datetime) -> Verification:
    return Verification(message_id(local_id, "verification"), local_id, sender, b"", at)


def termination_in(
    body: Mapping[str, Any], local_id: str, sender: str, at: datetime
) -> Termination:
    mid = message_id(local_id, f"termination:{sender}")
    return Termination(mid, local_id, sender, codec.reason(body), at)


def outgoing(
    message: NegotiationMessage, pids: Pids, *, from_provider: bool
) -> tuple[str, dict[str, Any]]:
    """The path (under the peer's address) and DSP body of one of our messages."""
    p, c = pids.provider, pids.consumer
    if isinstance(message, ContractOffer):
        return f"/negotiations/{c}/offers", codec.offer_message(p, c, message.offer)
    if isinstance(message, ContractRequest) and not from_provider:  # a counter-request
        return f"/negotiations/{p}/request", codec.counter_request_message(p, c, message.offer)
    if isinstance(message, Agreement):
        terms = message.signed.agreement
        body = codec.agreement_message(p, c, terms.policy, terms.agreed_at)
        return f"/negotiations/{c}/agreement", body
    if isinstance(message, Finalized):
        return f"/negotiations/{c}/events", codec.event_message(p, c, "FINALIZED")
    if isinstance(message, Accepted):
        return f"/negotiations/{p}/events", codec.event_message(p, c, "ACCEPTED")
    if isinstance(message, Verification):
        body = codec.pids_message("ContractAgreementVerificationMessage", p, c)
        return f"/negotiations/{p}/agreement/verification", body
    if isinstance(message, Termination):
        path = f"/negotiations/{c if from_provider else p}/termination"
        return path, codec.termination_message(p, c, message.reason)
    raise codec.DspMessageError("$", f"{type(message).__name__} has no DSP form here")
