"""Proto <-> domain conversion for the contract services, in one place.

Each wire message of ``catalog``, ``negotiation``, ``transfer``,
``subscription`` and ``notification`` has an ``x_to_proto`` / ``x_from_proto``
pair. Decoding refuses what the domain could not hold (a message without a
body, a malformed policy or agreement, an empty id) with `WireFormatError`
(INVALID_ARGUMENT), so servicers never see half-decoded input. Signatures are
not checked here: the negotiation machine and the receipt opener do that with
the parties' keys. Times travel as microseconds since the Unix epoch (UTC).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from qdspace.connector.agreement import (
    AgreementTermination,
    DeletionReceipt,
    OrderClosed,
    SignedAgreement,
    SignedReceipt,
    agreement_from_bytes,
    receipt_from_bytes,
)
from qdspace.connector.assets import AssetKind, CatalogEntry
from qdspace.connector.contract_errors import ContractError
from qdspace.connector.encoding import StreamEvent, StreamRequest
from qdspace.connector.negotiation import (
    Accepted,
    Agreement,
    ContractOffer,
    ContractRequest,
    Finalized,
    Negotiation,
    NegotiationMessage,
    NegotiationState,
    Role,
    Termination,
    Verification,
    awaiting,
)
from qdspace.connector.spc import Investigation, QualityAlert, SpcAlert, SpcPoint
from qdspace.connector.transfer import TransferProcess, TransferState
from qdspace.connector.transfer_messages import (
    TransferCompletion,
    TransferMessage,
    TransferRequest,
    TransferStart,
    TransferSuspension,
    TransferTermination,
)
from qdspace.connector.transfer_wire import BatchRow, Checkpoint, RowBatch
from qdspace.node.errors import WireFormatError as WireFormatError  # its home was here
from qdspace.policies.codec import parse_policy, policy_to_json
from qdspace.policies.errors import PolicyError
from qdspace.policies.model import Policy
from qdspace.protocols.v1 import (
    catalog_pb2,
    negotiation_pb2,
    notification_pb2,
    subscription_pb2,
    transfer_pb2,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# ------------------------------------------------------------------ basics


def datetime_to_us(value: datetime) -> int:
    if value.utcoffset() is None:
        raise WireFormatError(f"datetime {value.isoformat()} has no time zone")
    return (value - _EPOCH) // timedelta(microseconds=1)


def datetime_from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _required(value: str, what: str) -> str:
    if not value:
        raise WireFormatError(f"{what} is missing")
    return value


def policy_from_json(data: bytes, what: str = "policy") -> Policy:
    try:
        return parse_policy(data)
    except PolicyError as exc:
        raise WireFormatError(f"{what}: {exc}") from None


def _fields_to_proto(fields: frozenset[str] | None) -> tuple[list[str], bool]:
    return ([], True) if fields is None else (sorted(fields), False)


def _fields_from_proto(fields: Sequence[str], all_fields: bool) -> frozenset[str] | None:
    return None if all_fields else frozenset(fields)


# ----------------------------------------------------------------- catalog


def catalog_entry_to_proto(entry: CatalogEntry) -> catalog_pb2.Asset:
    return catalog_pb2.Asset(
        provider_id=entry.provider_id,
        asset_id=entry.asset_id,
        title=entry.title,
        kind=entry.kind.value,
        fields=sorted(entry.fields),
        pseudonymized_fields=sorted(entry.pseudonymized),
        offer_json=policy_to_json(entry.offer),
        description=entry.description,
    )


def catalog_entry_from_proto(message: catalog_pb2.Asset) -> CatalogEntry:
    try:
        kind = AssetKind(message.kind)
    except ValueError:
        raise WireFormatError(f"asset {message.asset_id}: unknown kind {message.kind!r}") from None
    return CatalogEntry(
        provider_id=_required(message.provider_id, "asset provider_id"),
        asset_id=_required(message.asset_id, "asset_id"),
        title=message.title,
        kind=kind,
        fields=frozenset(message.fields),
        pseudonymized=frozenset(message.pseudonymized_fields),
        offer=policy_from_json(message.offer_json, f"asset {message.asset_id} offer"),
        description=message.description,
    )


def catalog_to_proto(provider_id: str, entries: Sequence[CatalogEntry]) -> catalog_pb2.CatalogReply:
    return catalog_pb2.CatalogReply(
        provider_id=provider_id, assets=[catalog_entry_to_proto(e) for e in entries]
    )


def catalog_from_proto(message: catalog_pb2.CatalogReply) -> list[CatalogEntry]:
    return [catalog_entry_from_proto(a) for a in message.assets]


# ------------------------------------------------------------- negotiation


def signed_agreement_to_proto(signed: SignedAgreement) -> negotiation_pb2.SignedAgreement:
    return negotiation_pb2.SignedAgreement(
        agreement_json=signed.canonical_bytes,
        provider_signature=signed.provider_signature,
        consumer_signature=signed.consumer_signature or b"",
    )


def signed_agreement_from_proto(message: negotiation_pb2.SignedAgreement) -> SignedAgreement:
    """The agreement as sent; its signatures are checked by whoever applies it."""
    try:
        terms = agreement_from_bytes(message.agreement_json)
    except ContractError as exc:
        raise WireFormatError(str(exc)) from None
    return SignedAgreement(terms, message.provider_signature, message.consumer_signature or None)


def negotiation_message_to_proto(message: NegotiationMessage) -> negotiation_pb2.NegotiationMessage:
    out = negotiation_pb2.NegotiationMessage(
        message_id=message.message_id,
        negotiation_id=message.negotiation_id,
        sender_id=message.sender_id,
        at_unix_us=datetime_to_us(message.at),
    )
    if isinstance(message, ContractRequest):
        out.request.offer_json = policy_to_json(message.offer)
    elif isinstance(message, ContractOffer):
        out.offer.offer_json = policy_to_json(message.offer)
    elif isinstance(message, Accepted):
        out.accepted.SetInParent()
    elif isinstance(message, Agreement):
        out.agreement.agreement.CopyFrom(signed_agreement_to_proto(message.signed))
    elif isinstance(message, Verification):
        out.verification.consumer_signature = message.consumer_signature
    elif isinstance(message, Finalized):
        out.finalized.SetInParent()
    else:
        out.termination.reason = message.reason
    return out


def negotiation_message_from_proto(
    message: negotiation_pb2.NegotiationMessage,
) -> NegotiationMessage:
    head = (
        _required(message.message_id, "message_id"),
        _required(message.negotiation_id, "negotiation_id"),
        _required(message.sender_id, "sender_id"),
    )
    at = datetime_from_us(message.at_unix_us)
    match message.WhichOneof("body"):
        case "request":
            return ContractRequest(*head, policy_from_json(message.request.offer_json), at)
        case "offer":
            return ContractOffer(*head, policy_from_json(message.offer.offer_json), at)
        case "accepted":
            return Accepted(*head, at)
        case "agreement":
            return Agreement(*head, signed_agreement_from_proto(message.agreement.agreement), at)
        case "verification":
            return Verification(*head, message.verification.consumer_signature, at)
        case "finalized":
            return Finalized(*head, at)
        case "termination":
            return Termination(*head, message.termination.reason, at)
    raise WireFormatError(f"negotiation message {message.message_id} has no body")


def negotiation_to_proto(negotiation: Negotiation) -> negotiation_pb2.NegotiationStatus:
    whose = awaiting(negotiation)
    out = negotiation_pb2.NegotiationStatus(
        negotiation_id=negotiation.negotiation_id,
        state=negotiation.state.value,
        provider_id=negotiation.provider_id,
        consumer_id=negotiation.consumer_id,
        asset_id=negotiation.asset_id,
        offer_json=policy_to_json(negotiation.offer),
        has_agreement=negotiation.agreement is not None,
        reason=negotiation.reason or "",
        created_at_unix_us=datetime_to_us(negotiation.created_at),
        updated_at_unix_us=datetime_to_us(negotiation.updated_at),
        awaiting="" if whose is None else whose.value,
    )
    if negotiation.agreement is not None:
        out.agreement.CopyFrom(signed_agreement_to_proto(negotiation.agreement))
    return out


def negotiation_from_proto(message: negotiation_pb2.NegotiationStatus, role: Role) -> Negotiation:
    """The peer's view of a negotiation, as `role`'s copy without message history."""
    try:
        state = NegotiationState(message.state)
    except ValueError:
        raise WireFormatError(f"unknown negotiation state {message.state!r}") from None
    return Negotiation(
        negotiation_id=_required(message.negotiation_id, "negotiation_id"),
        role=role,
        provider_id=message.provider_id,
        consumer_id=message.consumer_id,
        asset_id=message.asset_id,
        state=state,
        offer=policy_from_json(message.offer_json, "offer"),
        created_at=datetime_from_us(message.created_at_unix_us),
        updated_at=datetime_from_us(message.updated_at_unix_us),
        agreement=signed_agreement_from_proto(message.agreement) if message.has_agreement else None,
        reason=message.reason or None,
    )


def negotiation_ack_to_proto(negotiation: Negotiation) -> negotiation_pb2.NegotiationAck:
    return negotiation_pb2.NegotiationAck(
        negotiation_id=negotiation.negotiation_id, state=negotiation.state.value
    )


# ---------------------------------------------------------------- transfer


def checkpoint_to_proto(checkpoint: Checkpoint) -> transfer_pb2.Checkpoint:
    return transfer_pb2.Checkpoint(
        offset=checkpoint.offset, digest=checkpoint.digest, position=checkpoint.position
    )


def checkpoint_from_proto(message: transfer_pb2.Checkpoint) -> Checkpoint:
    try:
        return Checkpoint(message.offset, message.digest, message.position)
    except ContractError as exc:
        raise WireFormatError(f"checkpoint: {exc}") from None


def transfer_message_to_proto(message: TransferMessage) -> transfer_pb2.TransferMessage:
    out = transfer_pb2.TransferMessage(
        message_id=message.message_id,
        transfer_id=message.transfer_id,
        sender_id=message.sender_id,
        at_unix_us=datetime_to_us(message.at),
    )
    if isinstance(message, TransferRequest):
        fields, all_fields = _fields_to_proto(message.fields)
        out.request.CopyFrom(
            transfer_pb2.TransferRequest(
                agreement_id=message.agreement_id,
                provider_id=message.provider_id,
                purpose=message.purpose or "",
                order_id=message.order_id or "",
                fields=fields,
                all_fields=all_fields,
                since=message.since,
            )
        )
    elif isinstance(message, TransferStart):
        out.start.checkpoint.CopyFrom(checkpoint_to_proto(message.checkpoint))
    elif isinstance(message, TransferSuspension):
        out.suspension.reason = message.reason
    elif isinstance(message, TransferCompletion):
        out.completion.checkpoint.CopyFrom(checkpoint_to_proto(message.checkpoint))
    else:
        out.termination.reason = message.reason
    return out


def transfer_message_from_proto(message: transfer_pb2.TransferMessage) -> TransferMessage:
    head = (
        _required(message.message_id, "message_id"),
        _required(message.transfer_id, "transfer_id"),
        _required(message.sender_id, "sender_id"),
    )
    at = datetime_from_us(message.at_unix_us)
    match message.WhichOneof("body"):
        case "request":
            body = message.request
            return TransferRequest(
                *head,
                agreement_id=_required(body.agreement_id, "agreement_id"),
                provider_id=_required(body.provider_id, "provider_id"),
                at=at,
                purpose=body.purpose or None,
                order_id=body.order_id or None,
                fields=_fields_from_proto(body.fields, body.all_fields),
                since=body.since,
            )
        case "start":
            return TransferStart(*head, checkpoint_from_proto(message.start.checkpoint), at)
        case "suspension":
            return TransferSuspension(*head, message.suspension.reason, at)
        case "completion":
            checkpoint = checkpoint_from_proto(message.completion.checkpoint)
            return TransferCompletion(*head, checkpoint, at)
        case "termination":
            return TransferTermination(*head, message.termination.reason, at)
    raise WireFormatError(f"transfer message {message.message_id} has no body")


def transfer_ack_to_proto(process: TransferProcess) -> transfer_pb2.TransferAck:
    return transfer_pb2.TransferAck(
        transfer_id=process.transfer_id,
        state=process.state.value,
        checkpoint=checkpoint_to_proto(process.checkpoint),
    )


@dataclass(frozen=True)
class TransferAckView:
    transfer_id: str
    state: TransferState
    checkpoint: Checkpoint


def transfer_ack_from_proto(message: transfer_pb2.TransferAck) -> TransferAckView:
    try:
        state = TransferState(message.state)
    except ValueError:
        raise WireFormatError(f"unknown transfer state {message.state!r}") from None
    return TransferAckView(message.transfer_id, state, checkpoint_from_proto(message.checkpoint))


def _rows_to_proto(rows: Sequence[BatchRow]) -> list[transfer_pb2.Row]:
    return [transfer_pb2.Row(json=r.payload, order_id=r.order_id) for r in rows]


def _rows_from_proto(rows: Sequence[transfer_pb2.Row]) -> tuple[BatchRow, ...]:
    return tuple(BatchRow(r.json, r.order_id) for r in rows)


def row_batch_to_proto(batch: RowBatch) -> transfer_pb2.RowBatch:
    return transfer_pb2.RowBatch(
        transfer_id=batch.transfer_id,
        payload=batch.payload,
        row_count=batch.count,
        order_ids=batch.order_ids,
        order_index=batch.order_index,
        checkpoint=checkpoint_to_proto(batch.checkpoint),
        last=batch.last,
    )


def row_batch_from_proto(message: transfer_pb2.RowBatch) -> RowBatch:
    try:
        return RowBatch(
            transfer_id=_required(message.transfer_id, "transfer_id"),
            payload=message.payload,
            count=message.row_count,
            order_ids=tuple(message.order_ids),
            order_index=tuple(message.order_index),
            checkpoint=checkpoint_from_proto(message.checkpoint),
            last=message.last,
        )
    except ContractError as exc:
        raise WireFormatError(f"row batch: {exc}") from None


@dataclass(frozen=True)
class PullRequest:
    transfer_id: str
    resume_from: Checkpoint
    max_batch_rows: int = 0


def pull_request_to_proto(request: PullRequest) -> transfer_pb2.PullRequest:
    return transfer_pb2.PullRequest(
        transfer_id=request.transfer_id,
        resume_from=checkpoint_to_proto(request.resume_from),
        max_batch_rows=request.max_batch_rows,
    )


def pull_request_from_proto(message: transfer_pb2.PullRequest) -> PullRequest:
    if message.max_batch_rows < 0:
        raise WireFormatError("max_batch_rows is negative")
    return PullRequest(
        _required(message.transfer_id, "transfer_id"),
        checkpoint_from_proto(message.resume_from),
        message.max_batch_rows,
    )


# ------------------------------------------------------------ subscription


def stream_request_to_proto(request: StreamRequest) -> subscription_pb2.SubscribeRequest:
    fields, all_fields = _fields_to_proto(request.fields)
    return subscription_pb2.SubscribeRequest(
        subscription_id=request.subscription_id,
        agreement_id=request.agreement_id,
        purpose=request.purpose,
        fields=fields,
        all_fields=all_fields,
        after_position=request.after_position,
        from_start=request.from_start,
    )


def stream_request_from_proto(message: subscription_pb2.SubscribeRequest) -> StreamRequest:
    return StreamRequest(
        subscription_id=_required(message.subscription_id, "subscription_id"),
        agreement_id=_required(message.agreement_id, "agreement_id"),
        purpose=message.purpose,
        fields=_fields_from_proto(message.fields, message.all_fields),
        after_position=message.after_position,
        from_start=message.from_start,
    )


def stream_event_to_proto(event: StreamEvent) -> subscription_pb2.SubscriptionEvent:
    return subscription_pb2.SubscriptionEvent(
        subscription_id=event.subscription_id,
        rows=_rows_to_proto(event.rows),
        positions=list(event.positions),
        sent_at_unix_us=datetime_to_us(event.sent_at),
        heartbeat=event.heartbeat,
    )


def stream_event_from_proto(message: subscription_pb2.SubscriptionEvent) -> StreamEvent:
    try:
        return StreamEvent(
            subscription_id=message.subscription_id,
            rows=_rows_from_proto(message.rows),
            positions=tuple(message.positions),
            sent_at=datetime_from_us(message.sent_at_unix_us),
        )
    except ContractError as exc:
        raise WireFormatError(str(exc)) from None


# ------------------------------------------------------------ notification

NotificationBody = OrderClosed | AgreementTermination | SignedReceipt | QualityAlert | Investigation


@dataclass(frozen=True)
class Notification:
    notification_id: str
    sender_id: str
    sent_at: datetime
    body: NotificationBody


def receipt_to_proto(signed: SignedReceipt) -> notification_pb2.DeletionReceipt:
    return notification_pb2.DeletionReceipt(
        receipt_json=signed.receipt.canonical_bytes(), signature=signed.signature
    )


def receipt_from_proto(message: notification_pb2.DeletionReceipt) -> SignedReceipt:
    """The receipt as sent; check it with `connector.agreement.open_signed_receipt`."""
    try:
        receipt: DeletionReceipt = receipt_from_bytes(message.receipt_json)
    except ContractError as exc:
        raise WireFormatError(str(exc)) from None
    return SignedReceipt(receipt, message.signature)


def _alert_to_proto(notice: QualityAlert) -> notification_pb2.QualityAlert:
    alert = notice.alert
    return notification_pb2.QualityAlert(
        alert_id=notice.alert_id,
        rule=alert.rule,
        description=alert.description,
        agreement_id=notice.agreement_id,
        order_id=notice.order_id,
        station=notice.station,
        characteristic=notice.characteristic,
        points=[
            notification_pb2.AlertPoint(
                index=p.index, value=p.value, at_unix_us=datetime_to_us(p.at)
            )
            for p in alert.points
        ],
        at_unix_us=datetime_to_us(alert.at),
    )


def _alert_from_proto(message: notification_pb2.QualityAlert) -> QualityAlert:
    points = tuple(
        SpcPoint(p.index, p.value, datetime_from_us(p.at_unix_us)) for p in message.points
    )
    alert = SpcAlert(
        message.rule, message.description, points, datetime_from_us(message.at_unix_us)
    )
    return QualityAlert(
        alert_id=_required(message.alert_id, "alert_id"),
        alert=alert,
        agreement_id=message.agreement_id,
        order_id=message.order_id,
        station=message.station,
        characteristic=message.characteristic,
    )


def notification_to_proto(notification: Notification) -> notification_pb2.NotificationMessage:
    out = notification_pb2.NotificationMessage(
        notification_id=notification.notification_id,
        sender_id=notification.sender_id,
        sent_at_unix_us=datetime_to_us(notification.sent_at),
    )
    body = notification.body
    if isinstance(body, OrderClosed):
        out.order_closed.CopyFrom(
            notification_pb2.OrderClosed(
                order_id=body.order_id,
                closed_at_unix_us=datetime_to_us(body.closed_at),
                agreement_ids=list(body.agreement_ids),
            )
        )
    elif isinstance(body, AgreementTermination):
        out.agreement_terminated.CopyFrom(
            notification_pb2.AgreementTerminated(
                agreement_id=body.agreement_id,
                reason=body.reason,
                terminated_at_unix_us=datetime_to_us(body.terminated_at),
            )
        )
    elif isinstance(body, SignedReceipt):
        out.deletion_receipt.CopyFrom(receipt_to_proto(body))
    elif isinstance(body, QualityAlert):
        out.quality_alert.CopyFrom(_alert_to_proto(body))
    else:
        out.investigation.CopyFrom(
            notification_pb2.Investigation(
                investigation_id=body.investigation_id,
                subject=body.subject,
                batch_id=body.batch_id,
                order_id=body.order_id,
                description=body.description,
                status=body.status,
            )
        )
    return out


def _body_from_proto(message: notification_pb2.NotificationMessage) -> NotificationBody:
    match message.WhichOneof("body"):
        case "order_closed":
            closed = message.order_closed
            return OrderClosed(
                _required(closed.order_id, "order_id"),
                datetime_from_us(closed.closed_at_unix_us),
                tuple(closed.agreement_ids),
            )
        case "agreement_terminated":
            ended = message.agreement_terminated
            return AgreementTermination(
                _required(ended.agreement_id, "agreement_id"),
                ended.reason,
                datetime_from_us(ended.terminated_at_unix_us),
            )
        case "deletion_receipt":
            return receipt_from_proto(message.deletion_receipt)
        case "quality_alert":
            return _alert_from_proto(message.quality_alert)
        case "investigation":
            opened = message.investigation
            return Investigation(
                investigation_id=_required(opened.investigation_id, "investigation_id"),
                subject=opened.subject,
                description=opened.description,
                batch_id=opened.batch_id,
                order_id=opened.order_id,
                status=opened.status,
            )
    raise WireFormatError(f"notification {message.notification_id} has no body")


def notification_from_proto(message: notification_pb2.NotificationMessage) -> Notification:
    return Notification(
        notification_id=_required(message.notification_id, "notification_id"),
        sender_id=_required(message.sender_id, "sender_id"),
        sent_at=datetime_from_us(message.sent_at_unix_us),
        body=_body_from_proto(message),
    )
