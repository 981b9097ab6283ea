"""Quality investigations and alerts with their life cycle: this node's moves and a peer's.

A case (`connector.investigation`) is opened by one member with one other; every move
is an event signed by its author, appended to this node's copy of the log and queued
for the other party in the same commit (`CaseStore.append`), so it is
delivered through the outbox with retries. A peer's event arrives as a notification:
it is verified with the peer's key before it is parsed, must be authored by the peer
that sent it, must belong to a case between the peer and us (an unknown case and
somebody else's get the same answer, so a non-party learns nothing), must be the
author's next legal move, dated no further ahead of our clock than clocks drift and not
before the event it follows (`investigation.check_order`); our own moves are dated
``max(now, that event)``. The same event again is acknowledged and changes nothing.

A case needs no agreement, so what a peer makes us keep of cases has bounds of its own
(`CaseBudget`, refused with RESOURCE_EXHAUSTED and nothing kept): at most
``cases_per_member_hour`` cases opened within any hour and ``case_bytes_per_member``
bytes of the events it authored, all its cases together.

The receiver's node answers an arriving case by itself with RECEIVE, so both logs, and
both states, agree once delivery is done. A closed case is anchored on the ledger (when
the node has one) by its closure record, the same bytes on both sides.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime

from nacl.signing import VerifyKey

from qdspace.connector.contract_errors import CaseDenied, CaseReplayError, UnknownCaseError
from qdspace.connector.contract_store import CaseLog, OutboxMessage
from qdspace.connector.contract_store.cases import CaseBudget, event_cost
from qdspace.connector.investigation import (
    CaseEvent,
    CaseState,
    CaseTerms,
    Step,
    apply,
    closure_record,
    next_event,
    opening,
)
from qdspace.connector.investigation_time import not_before
from qdspace.connector.investigation_wire import (
    SealedEvent,
    SignedEvent,
    open_signed_event,
    sign_event,
)
from qdspace.connector.peer_time import check_sent_at
from qdspace.node.config import DEFAULT_CASE_BYTES_PER_MEMBER, DEFAULT_CASES_PER_HOUR
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.member_ids import peer_name
from qdspace.node.rpc.contracts_notification_serde import Notification
from qdspace.node.runtime.contracts_notices import ContractNotices, bounded_id

logger = logging.getLogger("node.contracts")

#: the ledger leaf kind of a closed case's record
CASE_KIND = "quality_case"


class QualityCases(ContractNotices):
    """Open cases, make our moves, take the peer's (a mixin of `ContractRuntime`)."""

    #: cases one member may open here within any hour (setting ``cases_per_member_hour``)
    cases_per_hour: int = DEFAULT_CASES_PER_HOUR
    #: bytes of case data kept here from one member (setting ``case_bytes_per_member``)
    case_bytes_per_member: int = DEFAULT_CASE_BYTES_PER_MEMBER

    def _dated(self, log: Iterable[CaseEvent], step: Step) -> datetime:
        """When our next `step` is made: now, or the event it follows if the peer's clock
        ran ahead of ours (within the skew we accept), so that the peer takes it too."""
        now = self.clock.now()
        after = not_before(log, self.me.member_id, step)
        return now if after is None else max(now, after)

    def _case_note(self, signed: SignedEvent, other_id: str) -> OutboxMessage:
        """The outbox entry of our event, one process per case: the outbox delivers a
        case's events in the order they were made, so a SEND never overtakes its OPEN
        while the peer holds that back (its hourly cap: RESOURCE_EXHAUSTED, retried) and
        is refused as an event of a case it does not know."""
        event = signed.event
        note = self.notification(other_id, signed, f"case:{event.event_id}")
        return replace(note, process_id=bounded_id(f"case:{event.opener_id}/{event.case_id}"))

    def open_case(self, terms: CaseTerms) -> CaseLog:
        """Open a case with `terms.receiver_id` and send it (OPEN and SEND)."""
        if terms.opener_id != self.me.member_id:
            raise CaseDenied("a case is opened by this node's own member")
        case_id = f"qc-{uuid.uuid4().hex}"
        now = self.clock.now()
        signed = [sign_event(e, self.signing_key) for e in opening(case_id, terms, now)]
        outbox = [self._case_note(s, terms.receiver_id) for s in signed]
        self._keep(sum(map(event_cost, signed)), "this quality case")
        self.store.cases.append(signed, outbox, now)
        logger.info("quality case %s opened with %s", case_id, peer_name(terms.receiver_id))
        return self.store.cases.case_log(self.me.member_id, case_id)

    def case_step(self, case_id: str, step: Step, action_id: str = "", note: str = "") -> CaseLog:
        """Our next move in a case held here (acknowledge, accept, an action done, close)."""
        log = self.store.cases.find_case(case_id)
        case, me = log.case, self.me.member_id
        if step in (Step.OPEN, Step.SEND, Step.RECEIVE):
            raise CaseDenied(f"{step.value} is made by the node itself, not asked for")
        at = self._dated((s.event for s in log.events), step)
        event = next_event(case, me, step, at, action_id, note)
        signed = sign_event(event, self.signing_key)
        other = case.receiver_id if me == case.opener_id else case.opener_id
        self._keep(event_cost(signed), "this move of a quality case")
        self.store.cases.append([signed], [self._case_note(signed, other)], self.clock.now())
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
        # a retry (the sender's outbox sends again until it hears back): known by one row,
        # before the case's log is read and parsed (8.5 ms for a case opened with 213 KB)
        known = self.store.cases.held_event(
            event.opener_id, event.case_id, event.author_id, event.seq
        )
        if known is not None:
            if known != event.canonical_bytes():
                raise CaseReplayError(
                    f"event {event.event_id} was received before with other content"
                )
            return False
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
        if log is not None and {me, peer.member_id} != set(log.case.parties()):
            raise refused
        return self._take(peer, signed, log)

    def _take(self, peer: MemberIdentity, signed: SignedEvent, log: CaseLog | None) -> bool:
        event, me = signed.event, self.me.member_id
        now = self.clock.now()
        check_sent_at(event.at, now, f"quality case event {event.event_id}")
        after = apply(None if log is None else log.case, event)
        events, outbox = [signed], []
        if after.state is CaseState.SENT and after.receiver_id == me:
            held = () if log is None else tuple(s.event for s in log.events)
            at = self._dated((*held, event), Step.RECEIVE)
            received = sign_event(next_event(after, me, Step.RECEIVE, at), self.signing_key)
            events.append(received)
            outbox.append(self._case_note(received, peer.member_id))
        budget = CaseBudget(peer.member_id, self.case_bytes_per_member, self.cases_per_hour)
        self._keep(sum(map(event_cost, events)), f"quality case data from {peer.name}")
        first = self.store.cases.append(events, outbox, now, budget)
        if first:
            logger.info("quality case %s: %s by %s", event.case_id, event.step.value, peer.name)
            self._anchor_if_closed(self.store.cases.case_log(event.opener_id, event.case_id))
        return first
