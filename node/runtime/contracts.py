"""The contract side of a node: its keys, clock, assets and stores, and the provider's moves.

`ContractRuntime` is built once in the composition root and shared by the gRPC
servicers, the REST routes and the background jobs. Everything here is
synchronous glue over the pure machines in `connector` and `policies`: it
loads state, applies one message, decides the provider's answer, saves; the
servicers and routes only decode, call one method and encode.

The clock (`ContractClock`) is the one time source of the contract machinery
(deadlines, expiry, receipts, outbox). Its offset can only be moved when the
node was started with ``QDSPACE_CLOCK_CONTROL=1`` (local demo and test
networks), so that a test can jump 181 days and a production node cannot
pretend time passed (an offset file found without clock control is ignored, with a
warning).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nacl.signing import SigningKey, VerifyKey
from sqlalchemy import Engine, func, select, update

from qdspace.connector.agreement import (
    AgreementTermination,
    OrderClosed,
    SignedReceipt,
    open_signed_receipt,
    sign_agreement,
)
from qdspace.connector.assets import Asset, AssetKind, CatalogEntry, catalog
from qdspace.connector.contract_errors import (
    ContractDenied,
    ContractError,
    UnauthorizedSenderError,
    UnknownContractError,
)
from qdspace.connector.contract_store import (
    ContractStore,
    DutyReport,
    OutboxMessage,
    StoredAgreement,
)
from qdspace.connector.encoding import StreamRequest, live_page, stream_batches
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
    draft_agreement,
    fingerprint,
    open_negotiation,
)
from qdspace.connector.offers import (
    Answer,
    Verdict,
    answer_job_request,
    answer_request,
    standard_assets,
)
from qdspace.connector.paging import incremental_refusal, parse_position
from qdspace.connector.pseudonym import Pseudonymizer
from qdspace.connector.qdm import Inspection, Order
from qdspace.connector.release_gate import ReleaseGate
from qdspace.connector.retention_sweep import SweepReport, sweep
from qdspace.connector.spc import Investigation, QualityAlert
from qdspace.connector.transfer import TransferProcess, TransferState, open_transfer
from qdspace.connector.transfer import apply as apply_transfer
from qdspace.connector.transfer_messages import TransferCompletion, TransferRequest, TransferStart
from qdspace.connector.transfer_wire import BatchRow, RowBatch
from qdspace.node.errors import NodeError
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.identity.files import read_file
from qdspace.node.layout import NodeLayout
from qdspace.node.rpc.contracts_serde import Notification, PullRequest, notification_to_proto
from qdspace.node.runtime.table_watch import TableWatch
from qdspace.policies.evaluate import Request
from qdspace.policies.model import Action, Policy
from qdspace.util.files import write_atomic

logger = logging.getLogger("node.contracts")

CLOCK_CONTROL_ENV = "QDSPACE_CLOCK_CONTROL"
NOTIFICATION = "notification"
STREAM_PAGE = 500


class ClockControlDisabled(NodeError, PermissionError):
    """Moving the contract clock is allowed only on local demo and test networks."""


class ContractClock:
    """Real UTC time plus an offset kept in the node directory (0 unless moved)."""

    def __init__(self, path: Path, *, control: bool) -> None:
        self._path = path
        self.control = control
        self.offset = timedelta(0)
        if path.exists() and not control:
            logger.warning(
                "contract clock file %s ignored: clock control is off (%s is not 1)",
                path,
                CLOCK_CONTROL_ENV,
            )
        elif path.exists():
            self.offset = timedelta(seconds=float(json.loads(path.read_text())["offset_s"]))

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def set_offset(self, offset: timedelta) -> datetime:
        if not self.control:
            raise ClockControlDisabled(
                f"the contract clock can only be moved on a node started with {CLOCK_CONTROL_ENV}=1"
            )
        self.offset = offset
        write_atomic(self._path, json.dumps({"offset_s": offset.total_seconds()}).encode())
        logger.warning("contract clock moved: offset now %s", offset)
        return self.now()


def _secret(path: Path, what: str) -> bytes:
    """A 32-byte node secret, created on first start (kept outside the database)."""
    if not path.exists():
        write_atomic(path, os.urandom(32), mode=0o600)
    data = read_file(path, what)
    if len(data) != 32:
        raise NodeError(f"{path}: {what} must be 32 bytes, found {len(data)}")
    return data


def peer_name(member_id: str) -> str:
    """The member name inside a member id (``name-<12 hex>``, see `member_id_for`)."""
    name, _, digest = member_id.rpartition("-")
    if not name or len(digest) != 12:
        raise NodeError(f"{member_id!r} is not a member id")
    return name


@dataclass
class ContractRuntime:
    """The node's contract machinery; see the module docstring."""

    me: MemberIdentity
    signing_key: SigningKey
    store: ContractStore
    qdm: Engine
    clock: ContractClock
    pseudonym_secret: bytes
    assets: dict[str, Asset]
    # (kind, ref id, canonical bytes) of each agreement in force and each verified receipt:
    # the node's ledger anchors them (see ContractJobs); a no-op without a chain
    record: Callable[[str, str, bytes], None] = field(default=lambda kind, ref, data: None)
    # wakes live streams when inspections are committed (node.runtime.table_watch); None: poll only
    new_inspections: TableWatch | None = None

    @property
    def verify_key(self) -> VerifyKey:
        return self.signing_key.verify_key

    @property
    def investigations(self) -> list[Investigation]:
        """The investigations peers opened with us (kept in the contract store)."""
        return self.store.received_investigations()

    @property
    def received_alerts(self) -> list[QualityAlert]:
        """The SPC alerts consumers sent us (kept in the contract store)."""
        return self.store.received_alerts()

    # ------------------------------------------------------------- catalog

    def catalog(self, role: str, kind: str = "") -> list[CatalogEntry]:
        entries = catalog(list(self.assets.values()), self.me.member_id, role)
        return [e for e in entries if not kind or e.kind.value == kind]

    def asset_for(self, asset_id: str, role: str) -> Asset:
        asset = self.assets.get(asset_id)
        if asset is None or not asset.visible_to(role):
            raise UnknownContractError(f"{self.me.name} offers no asset {asset_id!r} to {role}s")
        return asset

    def offer_asset(self, asset: Asset) -> None:
        """Add an asset to the catalog while running (a federated job its coordinator
        publishes); an asset of the same id is replaced."""
        self.assets[asset.asset_id] = asset
        logger.info("catalog: %s (%s) offered", asset.asset_id, asset.kind)

    def customer_orders(self, customer: str) -> frozenset[str]:
        table = Order.__table__  # type: ignore[attr-defined]
        with self.qdm.connect() as connection:
            rows = connection.execute(select(table.c.order_id).where(table.c.customer == customer))
            return frozenset(r for (r,) in rows)

    # --------------------------------------------------------- negotiation

    def _at(self, negotiation: Negotiation) -> datetime:
        return max(self.clock.now(), negotiation.updated_at)

    def _mid(self, negotiation: Negotiation) -> str:
        return f"{negotiation.negotiation_id}:p{len(negotiation.seen)}"

    def _decide(self, n: Negotiation, peer: MemberIdentity, mid: str) -> Answer:
        """What we grant for the offer on the table, decided now (orders the peer placed
        today, the asset as offered today): an AGREE carries the policy we built."""
        asset = self.asset_for(n.asset_id, peer.role)
        if asset.kind is AssetKind.FEDERATED_JOB:
            return answer_job_request(asset, n.offer, peer.name)
        return answer_request(
            asset.offer, n.offer, self.customer_orders(peer.name), f"{mid}:counter"
        )

    def _provider_move(self, negotiation: Negotiation, peer: MemberIdentity) -> Negotiation:
        """The provider's answer to the state the consumer's message left."""
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
            else:
                assert answer.offer is not None
                message = ContractOffer(mid, n.negotiation_id, me, answer.offer, at)
        elif n.state is NegotiationState.VERIFIED:
            message = Finalized(mid, n.negotiation_id, me, at)
        else:
            return n
        logger.info("negotiation %s: %s -> %s", n.negotiation_id, n.state, type(message).__name__)
        return apply(n, message, keys)

    def _agreement_message(
        self, n: Negotiation, mid: str, at: datetime, terms: Policy
    ) -> Agreement:
        draft = draft_agreement(n, f"agr-{uuid.uuid4().hex}", at, terms)
        return Agreement(
            mid, n.negotiation_id, self.me.member_id, sign_agreement(draft, self.signing_key), at
        )

    def handle_negotiation(
        self, peer: MemberIdentity, message: NegotiationMessage
    ) -> tuple[Negotiation, list[NegotiationMessage]]:
        """Apply a consumer's message, answer it at once; returns the state and the answer."""
        if message.sender_id != peer.member_id:
            raise UnauthorizedSenderError(
                f"message {message.message_id} claims sender {message.sender_id}, "
                f"but the caller is {peer.member_id}"
            )
        keys = PartyKeys(self.verify_key, VerifyKey(peer.verify_key))
        before_states: list[NegotiationState] = []

        def step(before: Negotiation) -> tuple[Negotiation, Sequence[OutboxMessage]]:
            if before.role is not Role.PROVIDER:
                raise ContractDenied(f"negotiation {before.negotiation_id}: we are its consumer")
            before_states.append(before.state)
            after = apply(before, message, keys)
            return (after if after == before else self._provider_move(after, peer)), ()

        try:  # one load and one save for a message on a known negotiation
            negotiation = self.store.update_negotiation(message.negotiation_id, step)
        except UnknownContractError:
            if before_states:  # not "no such negotiation": something the step refused
                raise
            if not isinstance(message, ContractRequest):
                raise UnknownContractError(
                    f"no negotiation {message.negotiation_id} here"
                ) from None
            if message.offer.assigner != self.me.member_id:
                raise ContractDenied(
                    f"the request is for {message.offer.assigner}'s offer"
                ) from None
            self.asset_for(message.offer.target, peer.role)
            opened = open_negotiation(message, Role.PROVIDER)
            negotiation = self._provider_move(opened, peer)
            self.store.save_negotiation(None, negotiation)
        else:
            finalized = NegotiationState.FINALIZED
            if negotiation.state is finalized and before_states[-1] is not finalized:
                self.record_agreement(negotiation)
        return negotiation, self.replies(negotiation)

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
        found = [s for s in self.store.receipts() if s.receipt.receipt_id == ref_id]
        return found[0].receipt.canonical_bytes() if found else None

    def replies(self, n: Negotiation) -> list[NegotiationMessage]:
        """The provider's last message, rebuilt from the state (a retry gets it again)."""
        if n.role is not Role.PROVIDER or not n.seen:
            return []
        mid, digest = n.seen[-1]
        if not mid.startswith(f"{n.negotiation_id}:p"):
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

    # ------------------------------------------------------------ transfer

    def provider_agreement(self, agreement_id: str, peer: MemberIdentity) -> StoredAgreement:
        """An agreement this node gave to `peer`; anything else is a denial."""
        try:
            stored = self.store.agreement(agreement_id)
        except UnknownContractError:
            raise ContractDenied(
                f"no agreement {agreement_id} between {peer.name} and us"
            ) from None
        terms = stored.signed.agreement
        if stored.role is not Role.PROVIDER or terms.consumer_id != peer.member_id:
            raise ContractDenied(f"no agreement {agreement_id} between {peer.name} and us")
        if not stored.signed.complete:
            raise ContractDenied(f"agreement {agreement_id} is not countersigned")
        return stored

    def gate(
        self,
        stored: StoredAgreement,
        action: Action,
        purpose: str | None,
        order_id: str | None,
        fields: frozenset[str] | None,
    ) -> ReleaseGate:
        """The decision and row gate for one request under a stored agreement, now.

        Besides the agreement, the consumer must still be the customer of every order
        a row belongs to (read now, not when the agreement was signed)."""
        terms = stored.signed.agreement
        asset = self.assets[terms.asset_id]
        closed = self.store.closed_orders(terms.agreement_id)
        request = Request(
            action=action,
            at=self.clock.now(),
            asset_fields=asset.fields,
            purpose=purpose,
            order_id=order_id,
            fields=fields,
            terminated=stored.terminated_at is not None,
            order_closed_at=closed.get(order_id) if order_id else None,
        )
        pseudonyms = Pseudonymizer(self.pseudonym_secret, terms.agreement_id)
        owned = self.customer_orders(peer_name(terms.consumer_id))
        return ReleaseGate(
            asset, terms.policy, request, pseudonyms, closed_orders=closed, owned_orders=owned
        )

    def open_transfer(self, peer: MemberIdentity, message: TransferRequest) -> TransferProcess:
        """Decide a transfer request; allowed: the process, STARTED at the genesis checkpoint."""
        if message.sender_id != peer.member_id or message.provider_id != self.me.member_id:
            raise UnauthorizedSenderError(f"transfer request {message.message_id}: wrong parties")
        existing = self.store.find_transfer(message.transfer_id)
        if existing is not None:
            if existing.consumer_id != peer.member_id:  # say nothing about another's transfer
                raise ContractDenied(f"transfer id {message.transfer_id} cannot be used")
            return apply_transfer(existing, message)
        stored = self.provider_agreement(message.agreement_id, peer)
        asset = self.assets[stored.signed.agreement.asset_id]
        if asset.is_stream:
            raise ContractDenied(f"asset {asset.asset_id} is a live stream: subscribe to it")
        if asset.kind is AssetKind.PROCESS_ALONG_GENEALOGY and message.order_id is None:
            raise ContractDenied(f"asset {asset.asset_id} is transferred one order at a time")
        if message.since and (refusal := incremental_refusal(asset)) is not None:
            raise ContractDenied(refusal)
        decision = self.gate(stored, Action.READ, message.purpose, message.order_id, message.fields)
        if not decision.decision.allowed:
            logger.warning("transfer %s denied: %s", message.transfer_id, decision.decision.reason)
            raise ContractDenied(decision.decision.reason)
        process = open_transfer(message, Role.PROVIDER)
        start = TransferStart(
            f"{message.transfer_id}:p-start",
            message.transfer_id,
            self.me.member_id,
            process.checkpoint,
            self.clock.now(),
        )
        process = apply_transfer(process, start)
        self.store.save_transfer(None, process)
        return process

    def _peer_transfer(self, peer: MemberIdentity, transfer_id: str) -> TransferProcess:
        """A transfer we provide to `peer`; one answer for unknown and foreign ids."""
        process = self.store.find_transfer(transfer_id)
        if (
            process is None
            or process.role is not Role.PROVIDER
            or process.consumer_id != peer.member_id
        ):
            raise ContractDenied(f"transfer {transfer_id} is not yours")
        return process

    def pull(
        self, peer: MemberIdentity, request: PullRequest, batch_rows: int
    ) -> Iterator[RowBatch]:
        """Provider side of Pull: the batches after the consumer's checkpoint."""
        process = self._peer_transfer(peer, request.transfer_id)
        save = True
        if process.state is TransferState.COMPLETED:
            save = False  # a re-read of a finished transfer: send again, change nothing
            process = replace(process, state=TransferState.STARTED, checkpoint=request.resume_from)
        elif process.state not in (TransferState.STARTED, TransferState.SUSPENDED):
            raise ContractDenied(f"transfer {process.transfer_id} is {process.state}")
        elif request.resume_from != process.checkpoint or process.state is TransferState.SUSPENDED:
            resume = TransferStart(
                f"{process.transfer_id}:c-resume-{uuid.uuid4().hex[:12]}",
                process.transfer_id,
                peer.member_id,
                request.resume_from,
                self.clock.now(),
            )
            before, process = process, apply_transfer(process, resume)
            self.store.save_transfer(before, process)
        stored = self.provider_agreement(process.agreement_id, peer)
        gate = self.gate(stored, Action.READ, process.purpose, process.order_id, process.fields)
        if not gate.decision.allowed:
            raise ContractDenied(gate.decision.reason)
        for batch, after in stream_batches(process, self.qdm, gate, batch_rows=batch_rows):
            if batch.last and save:
                done = TransferCompletion(
                    f"{process.transfer_id}:p-complete",
                    process.transfer_id,
                    self.me.member_id,
                    after.checkpoint,
                    self.clock.now(),
                )
                after = apply_transfer(after, done)
            if save:
                self.store.save_transfer(process, after)
            process = after
            yield batch

    def transfer_message(self, peer: MemberIdentity, message: object) -> TransferProcess:
        """Apply a control message (completion ack, suspension, termination) of the consumer."""
        from qdspace.connector.transfer_messages import TransferMessage

        assert isinstance(message, TransferMessage)
        if message.sender_id != peer.member_id:
            raise UnauthorizedSenderError(f"message {message.message_id}: wrong sender")
        if isinstance(message, TransferRequest):
            return self.open_transfer(peer, message)
        before = self._peer_transfer(peer, message.transfer_id)
        after = apply_transfer(before, message)
        if after != before:
            self.store.save_transfer(before, after)
        return after

    # -------------------------------------------------------- subscription

    def open_stream(self, peer: MemberIdentity, request: StreamRequest) -> tuple[ReleaseGate, int]:
        stored = self.provider_agreement(request.agreement_id, peer)
        asset = self.assets[stored.signed.agreement.asset_id]
        if not asset.is_stream:
            raise ContractDenied(f"asset {asset.asset_id} is not a live stream")
        gate = self.stream_gate(stored, request)
        if request.after_position:
            position = parse_position(request.after_position)
        elif request.from_start:
            position = 0
        else:
            position = self.last_inspection_id()
        return gate, position

    def stream_gate(self, stored: StoredAgreement, request: StreamRequest) -> ReleaseGate:
        gate = self.gate(stored, Action.STREAM, request.purpose or None, None, request.fields)
        if not gate.decision.allowed:
            raise ContractDenied(gate.decision.reason)
        return gate

    def last_inspection_id(self) -> int:
        table = Inspection.__table__  # type: ignore[attr-defined]
        with self.qdm.connect() as connection:
            value = connection.execute(select(func.max(table.c.id))).scalar_one()
        return int(value or 0)

    def stream_page(
        self, gate: ReleaseGate, position: int
    ) -> tuple[list[BatchRow], list[str], int]:
        """The next released rows of a live stream after `position`, and the new position."""
        return live_page(self.qdm, gate, position, STREAM_PAGE)

    # ------------------------------------------------------- notifications

    def notification(self, peer: str, body: object, notification_id: str) -> OutboxMessage:
        """An outbox entry carrying `body` to the member called `peer`."""
        note = Notification(notification_id, self.me.member_id, self.clock.now(), body)  # type: ignore[arg-type]
        payload = notification_to_proto(note).SerializeToString()
        return OutboxMessage(peer, NOTIFICATION, notification_id, notification_id, payload)

    def handle_notification(self, peer: MemberIdentity, note: Notification) -> bool:
        """Act on a peer's notification; False when it had been handled before."""
        if note.sender_id != peer.member_id:
            raise UnauthorizedSenderError(f"notification {note.notification_id}: wrong sender")
        body = note.body
        if isinstance(body, OrderClosed):
            return self._order_closed(peer, body)
        if isinstance(body, AgreementTermination):
            stored = self._agreement_between(peer, body.agreement_id)
            first = stored.terminated_at is None
            self.store.terminate_agreement(body.agreement_id, body.reason, body.terminated_at)
            return first
        if isinstance(body, SignedReceipt):
            return self._receipt(peer, body)
        if isinstance(body, QualityAlert):
            first = self.store.record_alert(peer.member_id, body, self.clock.now())
            if first:
                logger.warning("quality alert from %s: %s", peer.name, body.alert.description)
            return first
        assert isinstance(body, Investigation)
        first = self.store.record_investigation(peer.member_id, body, self.clock.now())
        if first:
            logger.warning("investigation from %s: %s", peer.name, body.subject[:200])
        return first

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
            first = first or self.store.closure(agreement_id, body.order_id) is None
            self.store.record_order_closed(agreement_id, body.order_id, body.closed_at)
            logger.info("order %s closed under agreement %s", body.order_id, agreement_id)
        return first

    def _receipt(self, peer: MemberIdentity, body: SignedReceipt) -> bool:
        signed = open_signed_receipt(
            body.receipt.canonical_bytes(), body.signature, VerifyKey(peer.verify_key)
        )
        if signed.receipt.consumer_id != peer.member_id:
            raise ContractDenied(f"receipt {signed.receipt.receipt_id} is not from {peer.name}")
        known = {s.receipt.receipt_id for s in self.store.receipts(signed.receipt.agreement_id)}
        self.store.record_receipt(signed)
        self.record("deletion_receipt", signed.receipt.receipt_id, signed.receipt.canonical_bytes())
        logger.info("deletion receipt %s from %s verified", signed.receipt.receipt_id, peer.name)
        return signed.receipt.receipt_id not in known

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
        by_consumer: dict[str, list[str]] = {}
        for agreement_id in ids:
            consumer = self.store.agreement(agreement_id).signed.agreement.consumer_id
            by_consumer.setdefault(consumer, []).append(agreement_id)
        outbox = [
            self.notification(
                peer_name(consumer),
                OrderClosed(order_id, closed_at, tuple(sorted(agreements))),
                f"order-closed:{self.me.member_id}:{order_id}:{consumer}",
            )
            for consumer, agreements in by_consumer.items()
        ]
        self.store.enqueue(outbox, self.clock.now())
        return closed_at, ids

    def terminate(self, agreement_id: str, reason: str) -> StoredAgreement:
        """Either party: end an agreement and tell the other party."""
        stored = self.store.agreement(agreement_id)
        terms = stored.signed.agreement
        now = self.clock.now()
        ended = self.store.terminate_agreement(agreement_id, reason, now)
        other = terms.consumer_id if stored.role is Role.PROVIDER else terms.provider_id
        body = AgreementTermination(agreement_id, reason, ended.terminated_at or now)
        note = self.notification(peer_name(other), body, f"terminated:{agreement_id}")
        self.store.enqueue([note], now)
        return ended

    def sweep(self, horizon: timedelta = timedelta(0)) -> SweepReport:
        """Consumer: delete what expires by now + horizon, sign receipts, queue them."""

        def outbox(signed: SignedReceipt, provider_id: str) -> list[OutboxMessage]:
            rid = signed.receipt.receipt_id
            return [self.notification(peer_name(provider_id), signed, f"receipt:{rid}")]

        report = sweep(
            self.store, self.signing_key, self.clock.now(), outbox=outbox, horizon=horizon
        )
        for signed in report.receipts:
            receipt = signed.receipt
            self.record("deletion_receipt", receipt.receipt_id, receipt.canonical_bytes())
        return report

    def duties(self) -> list[DutyReport]:
        return self.store.deletion_duties(self.clock.now())


def build_runtime(
    directory: Path, me: MemberIdentity, signing_key: SigningKey, qdm: Engine
) -> ContractRuntime:
    """The contract runtime over the node's own database (its contract tables come with
    the QDM schema: `open_store` migrates to the newest revision, ``0002_contracts``)."""
    files = NodeLayout(directory)
    store = ContractStore(qdm, _secret(files.contract_kek, "contract key-encryption key"))
    control = os.environ.get(CLOCK_CONTROL_ENV, "") == "1"
    clock = ContractClock(files.contract_clock, control=control)
    assets = {a.asset_id: a for a in standard_assets(me.member_id)}
    secret = _secret(files.pseudonym_secret, "pseudonym secret")
    runtime = ContractRuntime(me, signing_key, store, qdm, clock, secret, assets)
    runtime.new_inspections = TableWatch(qdm, Inspection.__tablename__)
    return runtime


def contract_error_status(exc: ContractError) -> str:
    return exc.grpc_status
