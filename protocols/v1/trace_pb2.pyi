from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UpstreamRequest(_message.Message):
    __slots__ = ("batch_id",)
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    def __init__(self, batch_id: _Optional[str] = ...) -> None: ...

class BatchRef(_message.Message):
    __slots__ = ("batch_id", "material", "kind", "producer", "quantity")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    MATERIAL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    material: str
    kind: str
    producer: str
    quantity: float
    def __init__(self, batch_id: _Optional[str] = ..., material: _Optional[str] = ..., kind: _Optional[str] = ..., producer: _Optional[str] = ..., quantity: _Optional[float] = ...) -> None: ...

class UpstreamReply(_message.Message):
    __slots__ = ("batch", "parents")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    batch: BatchRef
    parents: _containers.RepeatedCompositeFieldContainer[BatchRef]
    def __init__(self, batch: _Optional[_Union[BatchRef, _Mapping]] = ..., parents: _Optional[_Iterable[_Union[BatchRef, _Mapping]]] = ...) -> None: ...
