"""Notifications between contract parties, and the closings and deletions they report.

What one party must tell the other after the fact travels as a notification through the
outbox (retried until delivered): an order closed (its agreements' retention starts), an
agreement terminated, a signed deletion receipt, an SPC quality alert, an investigation.
This room builds those outbox entries, acts on the ones peers send (each checked to come
from a party to the agreement it names; a repeat is recognised and changes nothing), and
holds the moves that cause them: closing an order, terminating an agreement, and the
consumer's retention sweep that deletes what expired and signs the receipts.

What a notice states is checked before anything is kept:

- the time a peer gives an act under an agreement (an order's close, a termination, a
  deletion) must lie between the agreement's signing and our clock plus the drift clocks
  may have (`connector.peer_time`); outside it is refused (`MessageOutOfTime`). The time
  decides: a close time starts the retention, so a closure dated 1970 made an agreed
  retention zero (the sweep deleted at once) and one dated 9999 had no deadline a date
  could hold; a receipt dated 1970 turned an overdue duty into one fulfilled on time.
  A receipt is not held to its order's close: a consumer that deletes early (leaving
  the data space) may date it before a closure it had not heard of;
- a closure binds the consumer only as `connector.contract_store.closures` says (under
  an agreement with an open order scope, only while something of the order is held);
- an SPC alert must name an agreement we gave its sender (as a termination names one
  between us): it says our process drifted, seen in data we gave, and it is shown to our
  operator as that member's;
- a peer's texts reach our log escaped (`%r`): a line break or a terminal escape in an
  alert's description or an investigation's subject forged whole lines in it.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from datetime import UTC, datetime, timedelta

from nacl.signing import VerifyKey
from sqlalchemy import select, update

from qdspace.connector.agreement import (
    AgreementTermination,
    OrderClosed,
    SignedReceipt,
    open_signed_receipt,
)
from qdspace.connector.contract_errors import (
    ContractDenied,
    MessageOutOfTime,
    UnauthorizedSenderError,
    UnknownContractError,
)
from qdspace.connector.contract_store import OutboxMessage, StoredAgreement
from qdspace.connector.contract_store.common import ID_LENGTH
from qdspace.connector.negotiation import Role
from qdspace.connector.peer_time import check_sent_at
from qdspace.connector.qdm import Order
from qdspace.connector.retention_sweep import SweepReport, sweep
from qdspace.connector.spc import Investigation, QualityAlert
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.member_ids import peer_name
from qdspace.node.rpc.contracts_notification_serde import (
    MAX_CLOSED_AGREEMENTS,
    Notification,
    notification_to_proto,
)
from qdspace.node.runtime.contracts_base import ContractBase
from qdspace.policies.evaluate import order_in_scope
from qdspace.util.text import to_printable_lines

logger = logging.getLogger("node.contracts")

NOTIFICATION = "notification"
#: what a kept notice costs beside its texts (its row, ids and index entries), asked of
#: the node's free disk or a tenant's storage quota before it is kept (`ContractBase._keep`)
NOTICE_ROW_BYTES = 1024


def bounded_id(notification_id: str) -> str:
    """A notification id as the outbox and the peers keep it: at most `ID_LENGTH`
    characters. An id made of member ids and an order id (``order-closed:...``, a case
    event's ``case:<opener>/<case>/<author>/<seq>``) passes that with long company names;
    such an id becomes its kind and a digest of the whole (the same id always gives the
    same digest, so a repeat is still recognised as one)."""
    if len(notification_id) <= ID_LENGTH:
        return notification_id
    kind = notification_id.partition(":")[0][:32]
    return f"{kind}:sha256:{hashlib.sha256(notification_id.encode()).hexdigest()}"


class ContractNotices(ContractBase):
    """Notifications, order closings, terminations and sweeps (a mixin of `ContractRuntime`)."""

    def notification(self, member_id: str, body: object, notification_id: str) -> OutboxMessage:
        """An outbox entry carrying `body` to the member `member_id`: addressed by its name
        (how peers are reached) and naming the member it is for, so that it goes to no
        other member that holds the name by then (`OutboxDispatcher`)."""
        notification_id = bounded_id(notification_id)
        note = Notification(
            notification_id,
            self.me.member_id,
            self.clock.now(),
            body,  # type: ignore[arg-type]
            recipient_id=member_id,
        )
        payload = notification_to_proto(note).SerializeToString()
        peer = peer_name(member_id)
        return OutboxMessage(peer, NOTIFICATION, notification_id, notification_id, payload)

    def handle_notification(self, peer: MemberIdentity, note: Notification) -> bool:
        """Act on a peer's notification; False when it had been handled before."""
        if note.sender_id != peer.member_id:
            raise UnauthorizedSenderError(f"notification {note.notification_id}: wrong sender")
        if note.recipient_id and note.recipient_id != self.me.member_id:
            # queued for a member that held this node's name before (a name a member that
            # left freed): not ours to act on
            raise ContractDenied(
                f"notification {note.notification_id} is for member {note.recipient_id}, "
                f"not {self.me.member_id}"
            )
        body = note.body
        if isinstance(body, OrderClosed):
            return self._order_closed(peer, body)
        if isinstance(body, AgreementTermination):
            stored = self._agreement_between(peer, body.agreement_id)
            self._within_agreement(body.terminated_at, stored, "the termination")
            first = stored.terminated_at is None
            self.store.terminate_agreement(body.agreement_id, body.reason, body.terminated_at)
            return first
        if isinstance(body, SignedReceipt):
            return self._receipt(peer, body)
        if isinstance(body, QualityAlert):
            return self._alert(peer, body)
        assert isinstance(body, Investigation)
        text = len(body.subject.encode("utf-8", "surrogatepass")) + len(
            body.description.encode("utf-8", "surrogatepass")
        )
        self._keep(text + NOTICE_ROW_BYTES, f"an investigation from {peer.name}")
        first = self.store.notices.record_investigation(peer.member_id, body, self.clock.now())
        if first:
            logger.warning("investigation from %s: %r", peer.name, body.subject[:200])
        return first

    def _alert(self, peer: MemberIdentity, body: QualityAlert) -> bool:
        """Keep an SPC alert a consumer sent about data we gave it under `body`'s agreement."""
        stored = self._agreement_between(peer, body.agreement_id)
        terms = stored.signed.agreement
        if stored.role is not Role.PROVIDER or terms.consumer_id != peer.member_id:
            raise ContractDenied(f"agreement {body.agreement_id} is not one we gave {peer.name}")
        size = len(body.alert.description.encode("utf-8", "surrogatepass"))
        size += NOTICE_ROW_BYTES + 64 * len(body.alert.points)  # its points as JSON
        self._keep(size, f"a quality alert from {peer.name}")
        first = self.store.notices.record_alert(peer.member_id, body, self.clock.now())
        if first:
            logger.warning("quality alert from %s: %r", peer.name, body.alert.description)
        return first

    def _within_agreement(self, at: datetime, stored: StoredAgreement, what: str) -> None:
        """Refuse a peer's `at` before the agreement was signed or ahead of our clock by
        more than clocks drift (`connector.peer_time`)."""
        agreement_id = stored.agreement_id
        check_sent_at(at, self.clock.now(), f"{what} under agreement {agreement_id}")
        signed = stored.signed.agreement.agreed_at
        if at < signed:
            raise MessageOutOfTime(
                f"{what} under agreement {agreement_id} is dated {at.isoformat()}, before "
                f"the agreement was signed ({signed.isoformat()})"
            )

    def _agreement_between(self, peer: MemberIdentity, agreement_id: str) -> StoredAgreement:
        """An agreement `peer` is a party to; one answer for unknown and foreign ids."""
        try:
            stored = self.store.agreement(agreement_id)
        except UnknownContractError:
            raise ContractDenied(f"agreement {agreement_id} is not between us") from None
        terms = stored.signed.agreement
        if peer.member_id not in (terms.provider_id, terms.consumer_id):
            raise ContractDenied(f"agreement {agreement_id} is not between us")
        return stored

    def _order_closed(self, peer: MemberIdentity, body: OrderClosed) -> bool:
        first = False
        for agreement_id in body.agreement_ids:
            stored = self._agreement_between(peer, agreement_id)
            terms = stored.signed.agreement
            if stored.role is not Role.CONSUMER or terms.provider_id != peer.member_id:
                raise ContractDenied(f"agreement {agreement_id} is not one {peer.name} gave us")
            # a closure outside the agreement's scope would start a deletion duty, and a
            # receipt we sign, for an order it never covered (and a row each, for ever)
            if not order_in_scope(terms.policy, body.order_id):
                raise ContractDenied(
                    f"order {body.order_id[:128]} is not in the scope of agreement {agreement_id}"
                )
            self._within_agreement(body.closed_at, stored, f"order {body.order_id}'s closure")
            first = first or self.store.closure(agreement_id, body.order_id) is None
            self.store.record_order_closed(
                agreement_id, body.order_id, body.closed_at, now=self.clock.now()
            )
            logger.info("order %r closed under agreement %s", body.order_id, agreement_id)
        return first

    def _receipt(self, peer: MemberIdentity, body: SignedReceipt) -> bool:
        signed = open_signed_receipt(
            body.receipt.canonical_bytes(), body.signature, VerifyKey(peer.verify_key)
        )
        receipt = signed.receipt
        if receipt.consumer_id != peer.member_id:
            raise ContractDenied(f"receipt {receipt.receipt_id} is not from {peer.name}")
        stored = self._agreement_between(peer, receipt.agreement_id)
        self._within_agreement(receipt.deleted_at, stored, f"receipt {receipt.receipt_id}")
        if not self.store.record_receipt(signed):  # its duty holds one: nothing to anchor
            return False
        self.record("deletion_receipt", signed.receipt.receipt_id, signed.receipt.canonical_bytes())
        logger.info("deletion receipt %s from %s verified", signed.receipt.receipt_id, peer.name)
        return True

    # ------------------------------------------------- closing and deletion

    def close_order(self, order_id: str) -> tuple[datetime, list[str]]:
        """Provider: close an order, start its agreements' retention, tell the consumers."""
        table = Order.__table__  # type: ignore[attr-defined]
        with self.qdm.begin() as connection:
            row = connection.execute(
                select(table.c.closed_at).where(table.c.order_id == order_id)
            ).first()
            if row is None:
                raise UnknownContractError(f"no order {order_id} here")
            closed_at = row.closed_at or self.clock.now()
            connection.execute(
                update(table)
                .where(table.c.order_id == order_id)
                .values(status="closed", closed_at=closed_at)
            )
        if closed_at.tzinfo is None:
            closed_at = closed_at.replace(tzinfo=UTC)
        ids = self.store.close_order(self.me.member_id, order_id, closed_at)
        # each consumer is told the date its closures were recorded with (the first one
        # stands; one before an agreement's signing is moved to it: `close_order`)
        by_consumer: dict[tuple[str, datetime], list[str]] = {}
        for agreement_id in ids:
            consumer = self.store.agreement(agreement_id).signed.agreement.consumer_id
            closure = self.store.closure(agreement_id, order_id)
            recorded = closed_at if closure is None else closure.closed_at
            by_consumer.setdefault((consumer, recorded), []).append(agreement_id)
        dates = Counter(consumer for consumer, _ in by_consumer)
        outbox = [
            self.notification(
                consumer,
                OrderClosed(order_id, recorded, part),
                f"order-closed:{self.me.member_id}:{order_id}:{consumer}"
                + (f":{recorded.isoformat()}" if dates[consumer] > 1 else "")
                + (f":{k}" if k else ""),
            )
            for (consumer, recorded), agreements in by_consumer.items()
            for k, part in enumerate(_parts(sorted(agreements)))
        ]
        self.store.enqueue(outbox, self.clock.now())
        return closed_at, ids

    def terminate(self, agreement_id: str, reason: str) -> StoredAgreement:
        """Either party: end an agreement and tell the other party."""
        stored = self.store.agreement(agreement_id)
        terms = stored.signed.agreement
        now = self.clock.now()
        reason = to_printable_lines(reason)  # as the other party accepts it
        ended = self.store.terminate_agreement(agreement_id, reason, now)
        other = terms.consumer_id if stored.role is Role.PROVIDER else terms.provider_id
        body = AgreementTermination(agreement_id, reason, ended.terminated_at or now)
        note = self.notification(other, body, f"terminated:{agreement_id}")
        self.store.enqueue([note], now)
        return ended

    def sweep(self, horizon: timedelta = timedelta(0)) -> SweepReport:
        """Consumer: delete what expires by now + horizon, sign receipts, queue them."""

        def outbox(signed: SignedReceipt, provider_id: str) -> list[OutboxMessage]:
            rid = signed.receipt.receipt_id
            return [self.notification(provider_id, signed, f"receipt:{rid}")]

        report = sweep(
            self.store, self.signing_key, self.clock.now(), outbox=outbox, horizon=horizon
        )
        for signed in report.receipts:
            receipt = signed.receipt
            self.record("deletion_receipt", receipt.receipt_id, receipt.canonical_bytes())
        return report


def _parts(agreement_ids: list[str]) -> list[tuple[str, ...]]:
    """`agreement_ids` in closures of at most `MAX_CLOSED_AGREEMENTS` each (a receiver
    refuses a larger one)."""
    step = MAX_CLOSED_AGREEMENTS
    return [tuple(agreement_ids[i : i + step]) for i in range(0, len(agreement_ids), step)]
