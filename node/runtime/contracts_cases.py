"""Quality investigations and alerts with their life cycle: this node's moves and a peer's.

A case (`connector.investigation`) is opened by one member with one other; every move
is an event signed by its author, appended to this node's copy of the log and queued
for the other party in the same commit (`CaseStore.append`), so it is
delivered through the outbox with retries. A peer's event arrives as a notification:
it is verified with the peer's key before it is parsed, must be authored by the peer
that sent it, must belong to a case between the peer and us (an unknown case and
somebody else's get the same answer, so a non-party learns nothing), and must be the
author's next legal move. The same event again is acknowledged and changes nothing.

The receiver's node answers an arriving case by itself with RECEIVE, so both logs, and
both states, agree once delivery is done. A closed case is anchored on the ledger (when
the node has one) by its closure record, the same bytes on both sides.
"""

from __future__ import annotations

import logging
import uuid

from nacl.signing import VerifyKey

from qdspace.connector.contract_errors import CaseDenied, CaseReplayError, UnknownCaseError
from qdspace.connector.contract_store import CaseLog, OutboxMessage
from qdspace.connector.investigation import (
    CaseState,
    CaseTerms,
    Step,
    apply,
    closure_record,
    next_event,
    opening,
)
from qdspace.connector.investigation_wire import (
    SealedEvent,
    SignedEvent,
    open_signed_event,
    sign_event,
)
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.member_ids import peer_name
from qdspace.node.rpc.contracts_notification_serde import Notification
from qdspace.node.runtime.contracts_notices import ContractNotices

logger = logging.getLogger("node.contracts")

#: the ledger leaf kind of a closed case's record
CASE_KIND = "quality_case"


class QualityCases(ContractNotices):
    """Open cases, make our moves, take the peer's (a mixin of `ContractRuntime`)."""

    def _case_note(self, signed: SignedEvent, other_id: str) -> OutboxMessage:
        event = signed.event
        return self.notification(other_id, signed, f"case:{event.event_id}")

    def open_case(self, terms: CaseTerms) -> CaseLog:
        """Open a case with `terms.receiver_id` and send it (OPEN and SEND)."""
        if terms.opener_id != self.me.member_id:
            raise CaseDenied("a case is opened by this node's own member")
        case_id = f"qc-{uuid.uuid4().hex}"
        now = self.clock.now()
        signed = [sign_event(e, self.signing_key) for e in opening(case_id, terms, now)]
        outbox = [self._case_note(s, terms.receiver_id) for s in signed]
        self.store.cases.append(signed, outbox, now)
        logger.info("quality case %s opened with %s", case_id, peer_name(terms.receiver_id))
        return self.store.cases.case_log(self.me.member_id, case_id)

    def case_step(self, case_id: str, step: Step, action_id: str = "", note: str = "") -> CaseLog:
        """Our next move in a case held here (acknowledge, accept, an action done, close)."""
        log = self.store.cases.find_case(case_id)
        case, me = log.case, self.me.member_id
        if step in (Step.OPEN, Step.SEND, Step.RECEIVE):
            raise CaseDenied(f"{step.value} is made by the node itself, not asked for")
        event = next_event(case, me, step, self.clock.now(), action_id, note)
        signed = sign_event(event, self.signing_key)
        other = case.receiver_id if me == case.opener_id else case.opener_id
        self.store.cases.append([signed], [self._case_note(signed, other)], event.at)
        after = self.store.cases.case_log(case.opener_id, case_id)
        self._anchor_if_closed(after)
        return after

    def _anchor_if_closed(self, log: CaseLog) -> None:
        if log.case.state is CaseState.CLOSED:
            ref = f"{log.case.opener_id}:{log.case.case_id}"
            self.record(CASE_KIND, ref, closure_record(log.case, (s.event for s in log.events)))

    def case_record(self, ref_id: str) -> bytes | None:
        """The closure record of a closed case held here, by its ledger ref
        (``<opener id>:<case id>``, one URL path segment), for a regulator."""
        opener_id, _, case_id = ref_id.partition(":")
        try:
            log = self.store.cases.case_log(opener_id, case_id)
        except UnknownCaseError:
            return None
        if log.case.state is not CaseState.CLOSED:
            return None
        return closure_record(log.case, (s.event for s in log.events))

    def handle_notification(self, peer: MemberIdentity, note: Notification) -> bool:
        if isinstance(note.body, SealedEvent):
            if note.sender_id != peer.member_id:
                raise CaseDenied(f"notification {note.notification_id}: wrong sender")
            return self._peer_case_event(peer, note.body)
        return super().handle_notification(peer, note)

    def _peer_case_event(self, peer: MemberIdentity, sealed: SealedEvent) -> bool:
        """Take a peer's signed event; False when it was held already (a retry)."""
        signed = open_signed_event(sealed.data, sealed.signature, VerifyKey(peer.verify_key))
        event, me = signed.event, self.me.member_id
        if event.author_id != peer.member_id:
            raise CaseDenied(f"event {event.event_id} is not {peer.name}'s own")
        refused = CaseDenied(f"no quality case {event.case_id} between us")
        log: CaseLog | None = None
        if event.step is Step.OPEN:
            assert event.terms is not None
            if event.terms.receiver_id != me:
                raise refused
        try:
            log = self.store.cases.case_log(event.opener_id, event.case_id)
        except UnknownCaseError:
            if event.step is not Step.OPEN:
                raise refused from None
        if log is not None:
            if {me, peer.member_id} != set(log.case.parties()):
                raise refused
            for held in log.events:
                if (held.event.author_id, held.event.seq) == (event.author_id, event.seq):
                    if held.event.canonical_bytes() != event.canonical_bytes():
                        raise CaseReplayError(
                            f"event {event.event_id} was received before with other content"
                        )
                    return False
        return self._take(peer, signed, log)

    def _take(self, peer: MemberIdentity, signed: SignedEvent, log: CaseLog | None) -> bool:
        event, me = signed.event, self.me.member_id
        after = apply(None if log is None else log.case, event)
        events, outbox = [signed], []
        if after.state is CaseState.SENT and after.receiver_id == me:
            received = sign_event(
                next_event(after, me, Step.RECEIVE, self.clock.now()), self.signing_key
            )
            events.append(received)
            outbox.append(self._case_note(received, peer.member_id))
        quota = peer.member_id if log is None else None
        first = self.store.cases.append(events, outbox, self.clock.now(), quota)
        if first:
            logger.info("quality case %s: %s by %s", event.case_id, event.step.value, peer.name)
            self._anchor_if_closed(self.store.cases.case_log(event.opener_id, event.case_id))
        return first
