"""The provider's side of contract negotiation: answer each consumer message at once.

A consumer's negotiation message is applied to the stored state and answered in the
same call (one load and one save for a message on a known negotiation): a request is
decided against today's offer and the orders the consumer holds today, an accepted
counter-offer is decided again (only terms built now are signed), a verification is
finalized. A consumer's counter-request (its terms in answer to our offer) is decided
like a request: agreed on the policy we rebuild when it is within what we grant,
answered with our own offer when it asks for more, terminated when nothing of it can be
granted or after `MAX_ROUNDS` rounds; the peer's policy object is never what we sign.
A retry gets the same answer, rebuilt from the state (`replies`). An agreement in
force is handed to the ledger hook (`record`), which is also where a regulator's
request for its canonical bytes comes back (`load_record`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime

from nacl.signing import VerifyKey

from qdspace.connector.agreement import SignedAgreement, sign_agreement
from qdspace.connector.assets import AssetKind
from qdspace.connector.contract_errors import (
    ContractDenied,
    NegotiationQuotaError,
    UnauthorizedSenderError,
    UnknownContractError,
)
from qdspace.connector.contract_store import OutboxMessage
from qdspace.connector.negotiation import (
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
    apply,
    check_policy_size,
    draft_agreement,
    fingerprint,
    open_negotiation,
)
from qdspace.connector.offers import Answer, Verdict, answer_job_request, answer_request
from qdspace.connector.peer_time import check_fresh, check_sent_at
from qdspace.node.errors import NodeError
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.runtime.contracts_base import QUOTA_WINDOW, ContractBase, over_quota
from qdspace.node.runtime.member_locks import locks_of
from qdspace.policies.model import Policy

logger = logging.getLogger("node.contracts")

#: how a transport has the replies to a negotiation delivered later (the DSP binding's
#: callbacks): the outbox messages, committed with the state that owes them
Deliver = Callable[[Negotiation, list[NegotiationMessage]], Sequence[OutboxMessage]]
#: counter-request and counter-offer rounds before the provider stops countering and ends
#: the negotiation (a consumer countering for ever would keep it, and us, busy)
MAX_ROUNDS = 8


class ProviderNegotiation(ContractBase):
    """The provider's negotiation moves (a mixin of `ContractRuntime`)."""

    def _at(self, negotiation: Negotiation) -> datetime:
        return max(self.clock.now(), negotiation.updated_at)

    def _mid(self, negotiation: Negotiation) -> str:
        return f"{negotiation.negotiation_id}:p{len(negotiation.seen)}"

    def _decide(self, n: Negotiation, peer: MemberIdentity, mid: str) -> Answer:
        """What we grant for the offer on the table, decided now (orders the peer placed
        today, the asset as offered today): an AGREE carries the policy we built."""
        asset = self.asset_for_peer(n.asset_id, peer)
        if asset.kind is AssetKind.FEDERATED_JOB:
            return answer_job_request(asset, n.offer, peer.name)
        frameworks = self.frameworks_for(asset.offer, peer.member_id)
        return answer_request(
            asset.offer, n.offer, self.customer_orders(peer.name), f"{mid}:counter", frameworks
        )

    def _provider_move(
        self, negotiation: Negotiation, peer: MemberIdentity
    ) -> tuple[Negotiation, list[NegotiationMessage]]:
        """The provider's answer to the state the consumer's message left: the state after
        it, and the answer (none when it is not our move)."""
        n = negotiation
        keys = PartyKeys(self.verify_key, VerifyKey(peer.verify_key))
        me, at, mid = self.me.member_id, self._at(n), self._mid(n)
        message: NegotiationMessage
        if n.state in (NegotiationState.REQUESTED, NegotiationState.ACCEPTED):
            # ACCEPTED: the consumer took our counter-offer; it is decided again, so that
            # only terms we build now are signed (and no order it no longer holds).
            answer = self._decide(n, peer, mid)
            if answer.verdict is Verdict.AGREE:
                assert answer.offer is not None
                message = self._agreement_message(n, mid, at, answer.offer)
            elif n.state is NegotiationState.ACCEPTED or answer.verdict is Verdict.TERMINATE:
                reason = answer.reason or "the accepted offer is no longer granted"
                message = Termination(mid, n.negotiation_id, me, reason, at)
            elif len(n.seen) >= 2 * MAX_ROUNDS:
                reason = f"no agreement after {MAX_ROUNDS} rounds of counter-offers"
                message = Termination(mid, n.negotiation_id, me, reason, at)
            else:
                assert answer.offer is not None
                message = ContractOffer(mid, n.negotiation_id, me, answer.offer, at)
        elif n.state is NegotiationState.VERIFIED:
            message = Finalized(mid, n.negotiation_id, me, at)
        else:
            return n, []
        logger.info("negotiation %s: %s -> %s", n.negotiation_id, n.state, type(message).__name__)
        return apply(n, message, keys), [message]

    def _agreement_message(
        self, n: Negotiation, mid: str, at: datetime, terms: Policy
    ) -> Agreement:
        draft = draft_agreement(n, f"agr-{uuid.uuid4().hex}", at, terms)
        signed = (
            sign_agreement(draft, self.signing_key)
            if n.signed
            else SignedAgreement(draft, b"", signed=False)  # a peer that does not sign
        )
        return Agreement(mid, n.negotiation_id, self.me.member_id, signed, at)

    def handle_negotiation(
        self,
        peer: MemberIdentity,
        message: NegotiationMessage,
        *,
        deliver: Deliver | None = None,
        signed: bool = True,
    ) -> tuple[Negotiation, list[NegotiationMessage]]:
        """Apply a consumer's message, answer it at once; returns the state and the answer.

        `deliver`: the transport sends the answer later (the DSP binding's callbacks); its
        outbox messages are committed with the new state. `signed` False opens a
        negotiation with a peer that does not sign (see `Negotiation.signed`)."""

        def queued(n: Negotiation, answer: list[NegotiationMessage]) -> Sequence[OutboxMessage]:
            return () if deliver is None else deliver(n, answer)

        if message.sender_id != peer.member_id:
            raise UnauthorizedSenderError(
                f"message {message.message_id} claims sender {message.sender_id}, "
                f"but the caller is {peer.member_id}"
            )
        if _is_provider_id(message.negotiation_id, message.message_id):
            raise UnauthorizedSenderError(
                f"message id {message.message_id}: ids <negotiation>:p<number> are the "
                "provider's own (its answers); a consumer's message needs another"
            )
        check_sent_at(message.at, self.clock.now(), f"message {message.message_id[:128]}")
        keys = PartyKeys(self.verify_key, VerifyKey(peer.verify_key))
        before_states: list[NegotiationState] = []
        # the answer this call built, None when the message was a retry (its answer is then
        # rebuilt from the state, `replies`); what `replies` would rebuild, without rebuilding
        answers: list[list[NegotiationMessage] | None] = [None]

        def step(before: Negotiation) -> tuple[Negotiation, Sequence[OutboxMessage]]:
            if peer.member_id not in (before.provider_id, before.consumer_id):
                # an outsider who learned the id is answered as for an id not in use: not
                # told that it is, nor which side of it this node is
                raise UnknownContractError(f"no negotiation {before.negotiation_id} here")
            if before.role is not Role.PROVIDER:
                raise ContractDenied(f"negotiation {before.negotiation_id}: we are its consumer")
            before_states.append(before.state)
            answers[0] = None
            after = apply(before, message, keys)
            if after == before:
                return after, ()
            moved, answer = self._provider_move(after, peer)
            answers[0] = answer
            return moved, queued(moved, answer)

        def opening() -> tuple[Negotiation, Sequence[OutboxMessage]]:
            """No negotiation of that id here: only a request for our offer opens one."""
            if not isinstance(message, ContractRequest):
                raise UnknownContractError(f"no negotiation {message.negotiation_id} here")
            if message.offer.assigner != self.me.member_id:
                raise ContractDenied(f"the request is for {message.offer.assigner}'s offer")
            self.asset_for(message.offer.target, peer.role)
            # the request's time is the agreement's requestedAt (both sides check it), so it
            # stands; it must be now, give or take the drift (quotas count by it)
            check_fresh(message.at, self.clock.now(), f"request {message.message_id[:128]}")
            opened = open_negotiation(message, Role.PROVIDER, signed=signed)
            negotiation, answer = self._provider_move(opened, peer)
            answers[0] = answer
            return negotiation, queued(negotiation, answer)

        if isinstance(message, ContractRequest):
            # the quota's count and the negotiation it lets open: one step per member
            with self.opening(peer):
                self._within_quota(peer, message.negotiation_id)
                # kept with the negotiation (twice at most: the row and its reason), so
                # bounded, and asked of the node's free disk or a tenant's storage quota
                size = check_policy_size(message.offer, f"request {message.message_id[:128]}")
                self._keep(2 * size, f"a negotiation request of {peer.name}")
                negotiation = self.store.update_negotiation(message.negotiation_id, step, opening)
        else:  # one load and one save, in one transaction
            negotiation = self.store.update_negotiation(message.negotiation_id, step, opening)
        finalized = NegotiationState.FINALIZED
        if negotiation.state is finalized and before_states and before_states[-1] is not finalized:
            self.record_agreement(negotiation)
        sent = answers[0]
        return negotiation, self.replies(negotiation) if sent is None else sent

    def opening(self, peer: MemberIdentity) -> AbstractContextManager[None]:
        """Held while `peer`'s quota is counted and what it allows is opened (blocking):
        one request of a member at a time, so that requests sent side by side cannot
        all pass the count before any of them is written (`node.runtime.member_locks`).
        Reentrant: a transport may hold it around its own part of an opening."""
        return locks_of(self).hold(peer.member_id)

    def _within_quota(self, peer: MemberIdentity, negotiation_id: str) -> None:
        """Refuse a request that would open `peer`'s negotiation over
        ``negotiations_per_hour`` opened within the hour (`NegotiationQuotaError`,
        `over_quota`); a request on a negotiation it holds (a retry, a counter-request)
        always passes. Called under `opening`, with the save that opens it."""
        why = self._negotiation_quota_spent(peer)
        if why is not None and self.store.find_negotiation(negotiation_id) is None:
            raise NegotiationQuotaError(why)

    def within_negotiation_quota(self, peer: MemberIdentity) -> None:
        """Refuse `peer` any request for a negotiation once it opened
        ``negotiations_per_hour`` within the hour (`NegotiationQuotaError`), a retry
        too: for a transport that asks before it reads the request (the DSP binding,
        which would otherwise read and parse every request of a member over its quota)."""
        why = self._negotiation_quota_spent(peer)
        if why is not None:
            raise NegotiationQuotaError(why)

    def _negotiation_quota_spent(self, peer: MemberIdentity) -> str | None:
        since = self.clock.now() - QUOTA_WINDOW
        opened = self.store.negotiations_opened_by(peer.member_id, since)
        return over_quota(
            peer.member_id,
            "negotiations",
            opened,
            "negotiations_per_member_hour",
            self.negotiations_per_hour,
        )

    def record_agreement(self, negotiation: Negotiation) -> None:
        signed = negotiation.agreement
        if signed is not None and signed.complete:
            self.record("agreement", signed.agreement.agreement_id, signed.canonical_bytes)

    def load_record(self, kind: str, ref_id: str) -> bytes | None:
        """The canonical bytes of an agreement or deletion receipt held here (for a regulator)."""
        if kind == "agreement":
            try:
                return self.store.agreement(ref_id).signed.canonical_bytes
            except UnknownContractError:
                return None
        found = self.store.receipt(ref_id)
        return None if found is None else found.receipt.canonical_bytes()

    def replies(self, n: Negotiation) -> list[NegotiationMessage]:
        """The provider's last message, rebuilt from the state (a retry gets it again)."""
        if n.role is not Role.PROVIDER or not n.seen:
            return []
        mid, digest = n.seen[-1]
        if not _is_provider_id(n.negotiation_id, mid):
            return []
        me, at = self.me.member_id, n.updated_at
        message: NegotiationMessage
        if n.state is NegotiationState.OFFERED:
            message = ContractOffer(mid, n.negotiation_id, me, n.offer, at)
        elif n.state is NegotiationState.AGREED and n.agreement is not None:
            message = Agreement(
                mid, n.negotiation_id, me, replace(n.agreement, consumer_signature=None), at
            )
        elif n.state is NegotiationState.FINALIZED:
            message = Finalized(mid, n.negotiation_id, me, at)
        elif n.state is NegotiationState.TERMINATED:
            message = Termination(mid, n.negotiation_id, me, n.reason or "", at)
        else:
            return []
        if fingerprint(message) != digest:
            raise NodeError(f"negotiation {n.negotiation_id}: cannot rebuild message {mid}")
        return [message]


def _is_provider_id(negotiation_id: str, message_id: str) -> bool:
    """Whether `message_id` has the form of the provider's own messages (`_mid`)."""
    prefix = f"{negotiation_id}:p"
    return message_id.startswith(prefix) and message_id[len(prefix) :].isdigit()
