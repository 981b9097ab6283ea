from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OrderClosed(_message.Message):
    __slots__ = ("order_id", "closed_at_unix_us", "agreement_ids")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    CLOSED_AT_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    closed_at_unix_us: int
    agreement_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, order_id: _Optional[str] = ..., closed_at_unix_us: _Optional[int] = ..., agreement_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class AgreementTerminated(_message.Message):
    __slots__ = ("agreement_id", "reason", "terminated_at_unix_us")
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TERMINATED_AT_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    reason: str
    terminated_at_unix_us: int
    def __init__(self, agreement_id: _Optional[str] = ..., reason: _Optional[str] = ..., terminated_at_unix_us: _Optional[int] = ...) -> None: ...

class DeletionReceipt(_message.Message):
    __slots__ = ("receipt_json", "signature")
    RECEIPT_JSON_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    receipt_json: bytes
    signature: bytes
    def __init__(self, receipt_json: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class AlertPoint(_message.Message):
    __slots__ = ("index", "value", "at_unix_us")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    index: int
    value: float
    at_unix_us: int
    def __init__(self, index: _Optional[int] = ..., value: _Optional[float] = ..., at_unix_us: _Optional[int] = ...) -> None: ...

class QualityAlert(_message.Message):
    __slots__ = ("alert_id", "rule", "description", "agreement_id", "order_id", "station", "characteristic", "points", "at_unix_us")
    ALERT_ID_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    STATION_FIELD_NUMBER: _ClassVar[int]
    CHARACTERISTIC_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    alert_id: str
    rule: str
    description: str
    agreement_id: str
    order_id: str
    station: str
    characteristic: str
    points: _containers.RepeatedCompositeFieldContainer[AlertPoint]
    at_unix_us: int
    def __init__(self, alert_id: _Optional[str] = ..., rule: _Optional[str] = ..., description: _Optional[str] = ..., agreement_id: _Optional[str] = ..., order_id: _Optional[str] = ..., station: _Optional[str] = ..., characteristic: _Optional[str] = ..., points: _Optional[_Iterable[_Union[AlertPoint, _Mapping]]] = ..., at_unix_us: _Optional[int] = ...) -> None: ...

class Investigation(_message.Message):
    __slots__ = ("investigation_id", "subject", "batch_id", "order_id", "description", "status")
    INVESTIGATION_ID_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    investigation_id: str
    subject: str
    batch_id: str
    order_id: str
    description: str
    status: str
    def __init__(self, investigation_id: _Optional[str] = ..., subject: _Optional[str] = ..., batch_id: _Optional[str] = ..., order_id: _Optional[str] = ..., description: _Optional[str] = ..., status: _Optional[str] = ...) -> None: ...

class QualityCaseEvent(_message.Message):
    __slots__ = ("event_json", "signature")
    EVENT_JSON_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    event_json: bytes
    signature: bytes
    def __init__(self, event_json: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class NotificationMessage(_message.Message):
    __slots__ = ("notification_id", "sender_id", "sent_at_unix_us", "recipient_id", "order_closed", "agreement_terminated", "deletion_receipt", "quality_alert", "investigation", "quality_case_event")
    NOTIFICATION_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_ID_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_CLOSED_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_TERMINATED_FIELD_NUMBER: _ClassVar[int]
    DELETION_RECEIPT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_ALERT_FIELD_NUMBER: _ClassVar[int]
    INVESTIGATION_FIELD_NUMBER: _ClassVar[int]
    QUALITY_CASE_EVENT_FIELD_NUMBER: _ClassVar[int]
    notification_id: str
    sender_id: str
    sent_at_unix_us: int
    recipient_id: str
    order_closed: OrderClosed
    agreement_terminated: AgreementTerminated
    deletion_receipt: DeletionReceipt
    quality_alert: QualityAlert
    investigation: Investigation
    quality_case_event: QualityCaseEvent
    def __init__(self, notification_id: _Optional[str] = ..., sender_id: _Optional[str] = ..., sent_at_unix_us: _Optional[int] = ..., recipient_id: _Optional[str] = ..., order_closed: _Optional[_Union[OrderClosed, _Mapping]] = ..., agreement_terminated: _Optional[_Union[AgreementTerminated, _Mapping]] = ..., deletion_receipt: _Optional[_Union[DeletionReceipt, _Mapping]] = ..., quality_alert: _Optional[_Union[QualityAlert, _Mapping]] = ..., investigation: _Optional[_Union[Investigation, _Mapping]] = ..., quality_case_event: _Optional[_Union[QualityCaseEvent, _Mapping]] = ...) -> None: ...

class NotificationAck(_message.Message):
    __slots__ = ("notification_id", "first_delivery")
    NOTIFICATION_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_DELIVERY_FIELD_NUMBER: _ClassVar[int]
    notification_id: str
    first_delivery: bool
    def __init__(self, notification_id: _Optional[str] = ..., first_delivery: _Optional[bool] = ...) -> None: ...
