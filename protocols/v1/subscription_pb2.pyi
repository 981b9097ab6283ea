from qdspace.protocols.v1 import transfer_pb2 as _transfer_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubscribeRequest(_message.Message):
    __slots__ = ("subscription_id", "agreement_id", "purpose", "fields", "all_fields", "after_position", "from_start")
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELDS_FIELD_NUMBER: _ClassVar[int]
    AFTER_POSITION_FIELD_NUMBER: _ClassVar[int]
    FROM_START_FIELD_NUMBER: _ClassVar[int]
    subscription_id: str
    agreement_id: str
    purpose: str
    fields: _containers.RepeatedScalarFieldContainer[str]
    all_fields: bool
    after_position: str
    from_start: bool
    def __init__(self, subscription_id: _Optional[str] = ..., agreement_id: _Optional[str] = ..., purpose: _Optional[str] = ..., fields: _Optional[_Iterable[str]] = ..., all_fields: _Optional[bool] = ..., after_position: _Optional[str] = ..., from_start: _Optional[bool] = ...) -> None: ...

class SubscriptionEvent(_message.Message):
    __slots__ = ("subscription_id", "rows", "positions", "sent_at_unix_us", "heartbeat", "position")
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    subscription_id: str
    rows: _containers.RepeatedCompositeFieldContainer[_transfer_pb2.Row]
    positions: _containers.RepeatedScalarFieldContainer[str]
    sent_at_unix_us: int
    heartbeat: bool
    position: str
    def __init__(self, subscription_id: _Optional[str] = ..., rows: _Optional[_Iterable[_Union[_transfer_pb2.Row, _Mapping]]] = ..., positions: _Optional[_Iterable[str]] = ..., sent_at_unix_us: _Optional[int] = ..., heartbeat: _Optional[bool] = ..., position: _Optional[str] = ...) -> None: ...
