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

class InvestigateRequest(_message.Message):
    __slots__ = ("agreement_id", "batch_ids", "path", "depth", "trace_id", "nonce")
    AGREEMENT_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_IDS_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    agreement_id: str
    batch_ids: _containers.RepeatedScalarFieldContainer[str]
    path: _containers.RepeatedScalarFieldContainer[str]
    depth: int
    trace_id: str
    nonce: str
    def __init__(self, agreement_id: _Optional[str] = ..., batch_ids: _Optional[_Iterable[str]] = ..., path: _Optional[_Iterable[str]] = ..., depth: _Optional[int] = ..., trace_id: _Optional[str] = ..., nonce: _Optional[str] = ...) -> None: ...

class Window(_message.Message):
    __slots__ = ("start", "end", "readings", "batches", "peak_sigma")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    READINGS_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    PEAK_SIGMA_FIELD_NUMBER: _ClassVar[int]
    start: str
    end: str
    readings: int
    batches: _containers.RepeatedScalarFieldContainer[str]
    peak_sigma: float
    def __init__(self, start: _Optional[str] = ..., end: _Optional[str] = ..., readings: _Optional[int] = ..., batches: _Optional[_Iterable[str]] = ..., peak_sigma: _Optional[float] = ...) -> None: ...

class Confidence(_message.Message):
    __slots__ = ("completeness", "anchored", "calibrated")
    COMPLETENESS_FIELD_NUMBER: _ClassVar[int]
    ANCHORED_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_FIELD_NUMBER: _ClassVar[int]
    completeness: float
    anchored: float
    calibrated: float
    def __init__(self, completeness: _Optional[float] = ..., anchored: _Optional[float] = ..., calibrated: _Optional[float] = ...) -> None: ...

class Finding(_message.Message):
    __slots__ = ("key", "kind", "implicated_n", "comparable_n", "effect", "excess_out_of_control", "level_out_of_control", "p_value", "adjusted_p", "implicated_center", "comparable_center", "windows", "evidence", "confidence", "note")
    KEY_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    IMPLICATED_N_FIELD_NUMBER: _ClassVar[int]
    COMPARABLE_N_FIELD_NUMBER: _ClassVar[int]
    EFFECT_FIELD_NUMBER: _ClassVar[int]
    EXCESS_OUT_OF_CONTROL_FIELD_NUMBER: _ClassVar[int]
    LEVEL_OUT_OF_CONTROL_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    ADJUSTED_P_FIELD_NUMBER: _ClassVar[int]
    IMPLICATED_CENTER_FIELD_NUMBER: _ClassVar[int]
    COMPARABLE_CENTER_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    key: str
    kind: str
    implicated_n: int
    comparable_n: int
    effect: float
    excess_out_of_control: float
    level_out_of_control: float
    p_value: float
    adjusted_p: float
    implicated_center: float
    comparable_center: float
    windows: _containers.RepeatedCompositeFieldContainer[Window]
    evidence: _containers.RepeatedScalarFieldContainer[str]
    confidence: Confidence
    note: str
    def __init__(self, key: _Optional[str] = ..., kind: _Optional[str] = ..., implicated_n: _Optional[int] = ..., comparable_n: _Optional[int] = ..., effect: _Optional[float] = ..., excess_out_of_control: _Optional[float] = ..., level_out_of_control: _Optional[float] = ..., p_value: _Optional[float] = ..., adjusted_p: _Optional[float] = ..., implicated_center: _Optional[float] = ..., comparable_center: _Optional[float] = ..., windows: _Optional[_Iterable[_Union[Window, _Mapping]]] = ..., evidence: _Optional[_Iterable[str]] = ..., confidence: _Optional[_Union[Confidence, _Mapping]] = ..., note: _Optional[str] = ...) -> None: ...

class BatchLink(_message.Message):
    __slots__ = ("batch", "parents")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    batch: BatchRef
    parents: _containers.RepeatedCompositeFieldContainer[BatchRef]
    def __init__(self, batch: _Optional[_Union[BatchRef, _Mapping]] = ..., parents: _Optional[_Iterable[_Union[BatchRef, _Mapping]]] = ...) -> None: ...

class MissingTier(_message.Message):
    __slots__ = ("member", "batch_ids", "reason")
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    BATCH_IDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    member: str
    batch_ids: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    def __init__(self, member: _Optional[str] = ..., batch_ids: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ...) -> None: ...

class TierAnswer(_message.Message):
    __slots__ = ("member", "implicated", "comparable_n", "links", "findings", "upstream", "missing", "elapsed_ms", "member_id", "asked_by", "asked", "signature")
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    IMPLICATED_FIELD_NUMBER: _ClassVar[int]
    COMPARABLE_N_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_MS_FIELD_NUMBER: _ClassVar[int]
    MEMBER_ID_FIELD_NUMBER: _ClassVar[int]
    ASKED_BY_FIELD_NUMBER: _ClassVar[int]
    ASKED_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    member: str
    implicated: _containers.RepeatedScalarFieldContainer[str]
    comparable_n: int
    links: _containers.RepeatedCompositeFieldContainer[BatchLink]
    findings: _containers.RepeatedCompositeFieldContainer[Finding]
    upstream: _containers.RepeatedCompositeFieldContainer[TierAnswer]
    missing: _containers.RepeatedCompositeFieldContainer[MissingTier]
    elapsed_ms: float
    member_id: str
    asked_by: str
    asked: _containers.RepeatedScalarFieldContainer[str]
    signature: bytes
    def __init__(self, member: _Optional[str] = ..., implicated: _Optional[_Iterable[str]] = ..., comparable_n: _Optional[int] = ..., links: _Optional[_Iterable[_Union[BatchLink, _Mapping]]] = ..., findings: _Optional[_Iterable[_Union[Finding, _Mapping]]] = ..., upstream: _Optional[_Iterable[_Union[TierAnswer, _Mapping]]] = ..., missing: _Optional[_Iterable[_Union[MissingTier, _Mapping]]] = ..., elapsed_ms: _Optional[float] = ..., member_id: _Optional[str] = ..., asked_by: _Optional[str] = ..., asked: _Optional[_Iterable[str]] = ..., signature: _Optional[bytes] = ...) -> None: ...

class InvestigateReply(_message.Message):
    __slots__ = ("answer",)
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    answer: TierAnswer
    def __init__(self, answer: _Optional[_Union[TierAnswer, _Mapping]] = ...) -> None: ...
