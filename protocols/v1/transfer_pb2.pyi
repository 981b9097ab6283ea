from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Checkpoint(_message.Message):
    __slots__ = ("offset", "digest", "position")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    offset: int
    digest: bytes
    position: str
    def __init__(self, offset: _Optional[int] = ..., digest: _Optional[bytes] = ..., position: _Optional[str] = ...) -> None: ...

class TransferRequest(_message.Message):
    __slots__ = ("agreement_id", "provider_id", "purpose", "order_id", "fields", "all_fields", "since")
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELDS_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    provider_id: str
    purpose: str
    order_id: str
    fields: _containers.RepeatedScalarFieldContainer[str]
    all_fields: bool
    since: str
    def __init__(self, agreement_id: _Optional[str] = ..., provider_id: _Optional[str] = ..., purpose: _Optional[str] = ..., order_id: _Optional[str] = ..., fields: _Optional[_Iterable[str]] = ..., all_fields: _Optional[bool] = ..., since: _Optional[str] = ...) -> None: ...

class TransferStart(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: Checkpoint
    def __init__(self, checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ...) -> None: ...

class TransferSuspension(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class TransferCompletion(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: Checkpoint
    def __init__(self, checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ...) -> None: ...

class TransferTermination(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class TransferMessage(_message.Message):
    __slots__ = ("message_id", "transfer_id", "sender_id", "at_unix_us", "request", "start", "suspension", "completion", "termination")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_ID_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    SUSPENSION_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    TERMINATION_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    transfer_id: str
    sender_id: str
    at_unix_us: int
    request: TransferRequest
    start: TransferStart
    suspension: TransferSuspension
    completion: TransferCompletion
    termination: TransferTermination
    def __init__(self, message_id: _Optional[str] = ..., transfer_id: _Optional[str] = ..., sender_id: _Optional[str] = ..., at_unix_us: _Optional[int] = ..., request: _Optional[_Union[TransferRequest, _Mapping]] = ..., start: _Optional[_Union[TransferStart, _Mapping]] = ..., suspension: _Optional[_Union[TransferSuspension, _Mapping]] = ..., completion: _Optional[_Union[TransferCompletion, _Mapping]] = ..., termination: _Optional[_Union[TransferTermination, _Mapping]] = ...) -> None: ...

class TransferAck(_message.Message):
    __slots__ = ("transfer_id", "state", "checkpoint")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    state: str
    checkpoint: Checkpoint
    def __init__(self, transfer_id: _Optional[str] = ..., state: _Optional[str] = ..., checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ...) -> None: ...

class Row(_message.Message):
    __slots__ = ("json", "order_id")
    JSON_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    json: bytes
    order_id: str
    def __init__(self, json: _Optional[bytes] = ..., order_id: _Optional[str] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("transfer_id", "resume_from", "max_batch_rows")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_ROWS_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    resume_from: Checkpoint
    max_batch_rows: int
    def __init__(self, transfer_id: _Optional[str] = ..., resume_from: _Optional[_Union[Checkpoint, _Mapping]] = ..., max_batch_rows: _Optional[int] = ...) -> None: ...

class RowBatch(_message.Message):
    __slots__ = ("transfer_id", "checkpoint", "last", "payload", "row_count", "order_ids", "order_index")
    TRANSFER_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    ORDER_IDS_FIELD_NUMBER: _ClassVar[int]
    ORDER_INDEX_FIELD_NUMBER: _ClassVar[int]
    transfer_id: str
    checkpoint: Checkpoint
    last: bool
    payload: bytes
    row_count: int
    order_ids: _containers.RepeatedScalarFieldContainer[str]
    order_index: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, transfer_id: _Optional[str] = ..., checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ..., last: _Optional[bool] = ..., payload: _Optional[bytes] = ..., row_count: _Optional[int] = ..., order_ids: _Optional[_Iterable[str]] = ..., order_index: _Optional[_Iterable[int]] = ...) -> None: ...
