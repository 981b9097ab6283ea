"""The consumer's side of contract negotiation: what it answers to each provider message.

Why here and not in a transport: the gRPC client gets the provider's answers in the
reply to its own call, the DSP binding gets them later at its callback endpoints; both
decide the consumer's next move with `consumer_answer` (accept a counter-offer that
grants no more than was asked, answer one that grants more with a counter-request of the
counter-offer narrowed to what was asked, countersign an agreement, or give up), so the
rule exists once.

Why a counter-request, and only one: a provider's counter-offer may grant more in one
term and less in another (another connector answers a request for two purposes with its
own offer of one purpose and every field). Taking it would agree to more than the
operator asked; giving up would lose what both allow. The consumer asks once for what
both allow (`connector.offers.counter_request`), never for more than it first asked; a
second counter-offer that still grants more ends the negotiation (a provider countering
for ever would otherwise keep both busy).

`handle_provider_message` is the DSP side's one move: apply the provider's message,
answer, and queue the answer for delivery in the same commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from nacl.signing import VerifyKey

from qdspace.connector.agreement import countersign
from qdspace.connector.contract_errors import UnknownContractError
from qdspace.connector.contract_store import OutboxMessage
from qdspace.connector.negotiation import (
    Accepted,
    ContractRequest,
    Negotiation,
    NegotiationMessage,
    NegotiationState,
    PartyKeys,
    Role,
    Termination,
    Verification,
    apply,
)
from qdspace.connector.offers import acceptable_counter, counter_request
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.runtime.contracts_negotiation import Deliver, ProviderNegotiation

#: the end of our counter-request's message id (and of its terms' uid): one a negotiation
COUNTER_REQUEST = ":counter-request"


class ConsumerNegotiation(ProviderNegotiation):
    """The consumer's negotiation moves (a mixin of `ContractRuntime`)."""

    def consumer_answer(
        self, n: Negotiation, asked: Any, provider_vk: VerifyKey | None
    ) -> NegotiationMessage | None:
        """The consumer's next message in state `n`, or None when there is nothing to say."""
        mid = f"{n.negotiation_id}:c{len(n.seen)}"
        at = max(self.clock.now(), n.updated_at)
        me = self.me.member_id
        if n.state is NegotiationState.OFFERED:
            if acceptable_counter(asked, n.offer):
                return Accepted(mid, n.negotiation_id, me, at)
            if any(seen.endswith(COUNTER_REQUEST) for seen, _ in n.seen):
                reason = "the counter-offer grants more than was asked, after our counter-request"
                return Termination(mid, n.negotiation_id, me, reason, at)
            narrowed = counter_request(asked, n.offer, f"{n.negotiation_id}{COUNTER_REQUEST}")
            if isinstance(narrowed, str):
                return Termination(mid, n.negotiation_id, me, narrowed, at)
            return ContractRequest(f"{mid}{COUNTER_REQUEST}", n.negotiation_id, me, narrowed, at)
        if n.state is NegotiationState.AGREED:
            assert n.agreement is not None
            if not n.signed:
                return Verification(mid, n.negotiation_id, me, b"", at)
            assert provider_vk is not None
            signed = countersign(n.agreement, self.signing_key, provider_vk)
            assert signed.consumer_signature is not None
            return Verification(mid, n.negotiation_id, me, signed.consumer_signature, at)
        return None

    def handle_provider_message(
        self, peer: MemberIdentity, message: NegotiationMessage, asked: Any, deliver: Deliver
    ) -> Negotiation:
        """Apply the provider's message to our negotiation and queue our answer with it."""
        provider_vk = VerifyKey(peer.verify_key)
        keys = PartyKeys(provider_vk, self.verify_key)
        finished: list[bool] = []

        def step(before: Negotiation) -> tuple[Negotiation, Sequence[OutboxMessage]]:
            if before.role is not Role.CONSUMER or before.provider_id != peer.member_id:
                # answered as for an id not in use (the store's words): whoever learned the
                # id is not told that it is, nor which side of it this node is
                raise UnknownContractError(f"no negotiation {before.negotiation_id} here")
            after = apply(before, message, keys)
            if after == before:
                return after, ()
            answer = self.consumer_answer(after, asked, provider_vk)
            if answer is not None:
                after = apply(after, answer, keys)
            finished.append(after.state is NegotiationState.FINALIZED)
            return after, deliver(after, [answer] if answer is not None else [])

        negotiation = self.store.update_negotiation(message.negotiation_id, step)
        if finished and finished[-1]:
            self.record_agreement(negotiation)
        return negotiation
