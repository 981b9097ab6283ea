"""Proto <-> domain conversion for the notifications between contract parties.

A notification is what one party tells the other after the fact, through the outbox:
an order closed, an agreement terminated, a signed deletion receipt, an SPC quality
alert, an investigation, a signed move of a quality case. One envelope (`Notification`)
carries one of these bodies. The receipt is decoded as sent; its signature is checked by
whoever opens it (`connector.agreement.open_signed_receipt`); a quality case event
arrives sealed (`SealedEvent`) and is opened by `connector.investigation.open_signed_event`.
The basics come from `contracts_serde`.

A notice's ids and codes must be printable and its texts printable but for line breaks
(as a quality case's texts, `connector.investigation`): they are kept, shown to the
operator and named in the log, and a carriage return, a terminal escape or another
control character in them is no part of what they say (an alert's description with
one forged lines in the receiving node's log).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from qdspace.connector.agreement import (
    AgreementTermination,
    DeletionReceipt,
    OrderClosed,
    SignedReceipt,
    receipt_from_bytes,
)
from qdspace.connector.contract_errors import ContractError
from qdspace.connector.investigation_wire import SealedEvent, SignedEvent
from qdspace.connector.spc import (
    MAX_ALERT_POINTS,
    Investigation,
    QualityAlert,
    SpcAlert,
    SpcPoint,
)
from qdspace.node.errors import WireFormatError
from qdspace.node.rpc.contracts_serde import datetime_from_us, datetime_to_us, required
from qdspace.protocols.v1 import notification_pb2
from qdspace.util.text import printable_lines

NotificationBody = (
    OrderClosed
    | AgreementTermination
    | SignedReceipt
    | QualityAlert
    | Investigation
    | SignedEvent
    | SealedEvent
)


@dataclass(frozen=True)
class Notification:
    notification_id: str
    sender_id: str
    sent_at: datetime
    body: NotificationBody
    #: the member id it is for ("" from a sender before the field: not checked)
    recipient_id: str = ""


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
    for name in ("agreement_id", "consumer_id", "order_id"):
        if not getattr(receipt, name).isprintable():
            raise WireFormatError(f"receipt {name} has control characters")
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


#: a notice's texts and ids, as a peer may send them: each is kept here, up to
#: `MAX_RECEIVED_PER_SENDER` of a kind per sender, so their size is what bounds the
#: space a member may fill (10,000 alerts of 256 KB each were 2.5 GB)
NOTICE_TEXT = 4000
#: ... and at most this many bytes of UTF-8: 4,000 characters of 4 bytes each made an
#: investigation of 33 KB, 330 MB for the 10,000 one member may have kept
NOTICE_TEXT_BYTES = 8000
NOTICE_ID = 128
#: agreements one order closure may name, each once. Each costs the receiver its reads
#: and a transaction: 6,000 copies of one id (228 KB, under the call's size cap) cost
#: 6.1 s of the receiver's CPU per call. A provider with more agreements with one
#: consumer concerning one order sends several closures (`ContractNotices.close_order`).
MAX_CLOSED_AGREEMENTS = 64
NOTICE_CODE = 16  # an SPC rule's or an investigation status's name


def _bounded(value: str, what: str, limit: int) -> str:
    """An id or a code a peer sent: at most `limit` printable characters."""
    if len(value) > limit:
        raise WireFormatError(f"{what}: {len(value)} characters (at most {limit})")
    if not value.isprintable():
        raise WireFormatError(f"{what} has control characters")
    return value


def _text(value: str, what: str) -> str:
    """A text a peer sent: at most `NOTICE_TEXT` characters and `NOTICE_TEXT_BYTES` bytes,
    printable but for line breaks."""
    if len(value) > NOTICE_TEXT:
        raise WireFormatError(f"{what}: {len(value)} characters (at most {NOTICE_TEXT})")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > NOTICE_TEXT_BYTES:
        raise WireFormatError(f"{what}: {size} bytes of UTF-8 (at most {NOTICE_TEXT_BYTES})")
    if not printable_lines(value):
        raise WireFormatError(f"{what} has control characters")
    return value


def _alert_from_proto(message: notification_pb2.QualityAlert) -> QualityAlert:
    if len(message.points) > MAX_ALERT_POINTS:
        raise WireFormatError(
            f"quality alert: {len(message.points)} points (at most {MAX_ALERT_POINTS})"
        )
    for name in ("alert_id", "agreement_id", "order_id", "station", "characteristic"):
        _bounded(getattr(message, name), f"quality alert {name}", NOTICE_ID)
    _bounded(message.rule, "quality alert rule", NOTICE_CODE)
    _text(message.description, "quality alert description")
    points = tuple(
        SpcPoint(p.index, p.value, datetime_from_us(p.at_unix_us)) for p in message.points
    )
    alert = SpcAlert(
        message.rule, message.description, points, datetime_from_us(message.at_unix_us)
    )
    return QualityAlert(
        alert_id=required(message.alert_id, "alert_id"),
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
        recipient_id=notification.recipient_id,
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
    elif isinstance(body, SignedEvent | SealedEvent):
        sealed = (
            SealedEvent(body.event.canonical_bytes(), body.signature)
            if isinstance(body, SignedEvent)
            else body
        )
        out.quality_case_event.CopyFrom(
            notification_pb2.QualityCaseEvent(event_json=sealed.data, signature=sealed.signature)
        )
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
            ids = tuple(required(a, "agreement_ids") for a in closed.agreement_ids)
            if len(ids) > MAX_CLOSED_AGREEMENTS or len(set(ids)) != len(ids):
                raise WireFormatError(
                    f"order closure: {len(ids)} agreement ids ({len(set(ids))} distinct); a "
                    f"closure names at most {MAX_CLOSED_AGREEMENTS}, each once"
                )
            return OrderClosed(
                required(closed.order_id, "order_id"),
                datetime_from_us(closed.closed_at_unix_us),
                ids,
            )
        case "agreement_terminated":
            ended = message.agreement_terminated
            return AgreementTermination(
                required(ended.agreement_id, "agreement_id"),
                _text(ended.reason, "termination reason"),
                datetime_from_us(ended.terminated_at_unix_us),
            )
        case "deletion_receipt":
            return receipt_from_proto(message.deletion_receipt)
        case "quality_alert":
            return _alert_from_proto(message.quality_alert)
        case "investigation":
            opened = message.investigation
            for name in ("investigation_id", "batch_id", "order_id"):
                _bounded(getattr(opened, name), f"investigation {name}", NOTICE_ID)
            _bounded(opened.status, "investigation status", NOTICE_CODE)
            for name in ("subject", "description"):
                _text(getattr(opened, name), f"investigation {name}")
            return Investigation(
                investigation_id=required(opened.investigation_id, "investigation_id"),
                subject=opened.subject,
                description=opened.description,
                batch_id=opened.batch_id,
                order_id=opened.order_id,
                status=opened.status,
            )
        case "quality_case_event":
            sealed = message.quality_case_event
            if not sealed.event_json or not sealed.signature:
                raise WireFormatError("quality case event without its bytes or signature")
            return SealedEvent(sealed.event_json, sealed.signature)
    raise WireFormatError(f"notification {message.notification_id} has no body")


def notification_from_proto(message: notification_pb2.NotificationMessage) -> Notification:
    return Notification(
        notification_id=required(message.notification_id, "notification_id"),
        sender_id=required(message.sender_id, "sender_id"),
        sent_at=datetime_from_us(message.sent_at_unix_us),
        body=_body_from_proto(message),
        recipient_id=message.recipient_id and required(message.recipient_id, "recipient_id"),
    )
