from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobRef(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobTerms(_message.Message):
    __slots__ = ("terms", "job_digest")
    TERMS_FIELD_NUMBER: _ClassVar[int]
    JOB_DIGEST_FIELD_NUMBER: _ClassVar[int]
    terms: bytes
    job_digest: bytes
    def __init__(self, terms: _Optional[bytes] = ..., job_digest: _Optional[bytes] = ...) -> None: ...

class RoundRecord(_message.Message):
    __slots__ = ("round", "version", "members", "bounded", "has_epsilon", "epsilon", "sum_bounded")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    BOUNDED_FIELD_NUMBER: _ClassVar[int]
    HAS_EPSILON_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    SUM_BOUNDED_FIELD_NUMBER: _ClassVar[int]
    round: int
    version: int
    members: _containers.RepeatedScalarFieldContainer[str]
    bounded: _containers.RepeatedScalarFieldContainer[str]
    has_epsilon: bool
    epsilon: float
    sum_bounded: bool
    def __init__(self, round: _Optional[int] = ..., version: _Optional[int] = ..., members: _Optional[_Iterable[str]] = ..., bounded: _Optional[_Iterable[str]] = ..., has_epsilon: _Optional[bool] = ..., epsilon: _Optional[float] = ..., sum_bounded: _Optional[bool] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "round", "attempt", "phase", "deadline_in_s", "version", "detail", "rounds", "history", "job_digest", "delta", "agreement_asset", "secagg_protocol")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_IN_S_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    JOB_DIGEST_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_ASSET_FIELD_NUMBER: _ClassVar[int]
    SECAGG_PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    attempt: int
    phase: str
    deadline_in_s: float
    version: int
    detail: str
    rounds: int
    history: _containers.RepeatedCompositeFieldContainer[RoundRecord]
    job_digest: bytes
    delta: float
    agreement_asset: str
    secagg_protocol: str
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., attempt: _Optional[int] = ..., phase: _Optional[str] = ..., deadline_in_s: _Optional[float] = ..., version: _Optional[int] = ..., detail: _Optional[str] = ..., rounds: _Optional[int] = ..., history: _Optional[_Iterable[_Union[RoundRecord, _Mapping]]] = ..., job_digest: _Optional[bytes] = ..., delta: _Optional[float] = ..., agreement_asset: _Optional[str] = ..., secagg_protocol: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("job_id", "known_round", "known_attempt", "known_phase", "known_version", "wait_s")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    KNOWN_ROUND_FIELD_NUMBER: _ClassVar[int]
    KNOWN_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    KNOWN_PHASE_FIELD_NUMBER: _ClassVar[int]
    KNOWN_VERSION_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    known_round: int
    known_attempt: int
    known_phase: str
    known_version: int
    wait_s: float
    def __init__(self, job_id: _Optional[str] = ..., known_round: _Optional[int] = ..., known_attempt: _Optional[int] = ..., known_phase: _Optional[str] = ..., known_version: _Optional[int] = ..., wait_s: _Optional[float] = ...) -> None: ...

class ListJobsReply(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobStatus]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobStatus, _Mapping]]] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("job_id", "version")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    version: int
    def __init__(self, job_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class VersionRef(_message.Message):
    __slots__ = ("job_id", "version")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    version: int
    def __init__(self, job_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class VersionProof(_message.Message):
    __slots__ = ("proof",)
    PROOF_FIELD_NUMBER: _ClassVar[int]
    proof: str
    def __init__(self, proof: _Optional[str] = ...) -> None: ...

class ModelHeader(_message.Message):
    __slots__ = ("record", "signature", "total_bytes", "sha256")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    record: bytes
    signature: bytes
    total_bytes: int
    sha256: bytes
    def __init__(self, record: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: ModelHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[ModelHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("job_id", "round", "attempt", "total_bytes", "sha256", "num_examples", "terms")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    TERMS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    attempt: int
    total_bytes: int
    sha256: bytes
    num_examples: int
    terms: bytes
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., attempt: _Optional[int] = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[bytes] = ..., num_examples: _Optional[int] = ..., terms: _Optional[bytes] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Accepted(_message.Message):
    __slots__ = ("detail", "status")
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    detail: str
    status: JobStatus
    def __init__(self, detail: _Optional[str] = ..., status: _Optional[_Union[JobStatus, _Mapping]] = ...) -> None: ...

class RoundRef(_message.Message):
    __slots__ = ("job_id", "round", "attempt")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    attempt: int
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., attempt: _Optional[int] = ...) -> None: ...

class KeyAdvert(_message.Message):
    __slots__ = ("member", "cipher_pk", "mask_pk", "seed_commitment", "signature", "certificate", "protocol")
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    CIPHER_PK_FIELD_NUMBER: _ClassVar[int]
    MASK_PK_FIELD_NUMBER: _ClassVar[int]
    SEED_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    member: str
    cipher_pk: bytes
    mask_pk: bytes
    seed_commitment: bytes
    signature: bytes
    certificate: bytes
    protocol: str
    def __init__(self, member: _Optional[str] = ..., cipher_pk: _Optional[bytes] = ..., mask_pk: _Optional[bytes] = ..., seed_commitment: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., certificate: _Optional[bytes] = ..., protocol: _Optional[str] = ...) -> None: ...

class AdvertiseRequest(_message.Message):
    __slots__ = ("ref", "advert")
    REF_FIELD_NUMBER: _ClassVar[int]
    ADVERT_FIELD_NUMBER: _ClassVar[int]
    ref: RoundRef
    advert: KeyAdvert
    def __init__(self, ref: _Optional[_Union[RoundRef, _Mapping]] = ..., advert: _Optional[_Union[KeyAdvert, _Mapping]] = ...) -> None: ...

class Roster(_message.Message):
    __slots__ = ("adverts",)
    ADVERTS_FIELD_NUMBER: _ClassVar[int]
    adverts: _containers.RepeatedCompositeFieldContainer[KeyAdvert]
    def __init__(self, adverts: _Optional[_Iterable[_Union[KeyAdvert, _Mapping]]] = ...) -> None: ...

class EncryptedShare(_message.Message):
    __slots__ = ("sender", "receiver", "ciphertext")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECEIVER_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    sender: str
    receiver: str
    ciphertext: bytes
    def __init__(self, sender: _Optional[str] = ..., receiver: _Optional[str] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class ShareKeysRequest(_message.Message):
    __slots__ = ("ref", "shares")
    REF_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    ref: RoundRef
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShare]
    def __init__(self, ref: _Optional[_Union[RoundRef, _Mapping]] = ..., shares: _Optional[_Iterable[_Union[EncryptedShare, _Mapping]]] = ...) -> None: ...

class Inbox(_message.Message):
    __slots__ = ("shares",)
    SHARES_FIELD_NUMBER: _ClassVar[int]
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShare]
    def __init__(self, shares: _Optional[_Iterable[_Union[EncryptedShare, _Mapping]]] = ...) -> None: ...

class Confirmation(_message.Message):
    __slots__ = ("member", "signature")
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    member: str
    signature: bytes
    def __init__(self, member: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class UnmaskRequest(_message.Message):
    __slots__ = ("survivors", "dropped", "confirmations")
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    CONFIRMATIONS_FIELD_NUMBER: _ClassVar[int]
    survivors: _containers.RepeatedScalarFieldContainer[str]
    dropped: _containers.RepeatedScalarFieldContainer[str]
    confirmations: _containers.RepeatedCompositeFieldContainer[Confirmation]
    def __init__(self, survivors: _Optional[_Iterable[str]] = ..., dropped: _Optional[_Iterable[str]] = ..., confirmations: _Optional[_Iterable[_Union[Confirmation, _Mapping]]] = ...) -> None: ...

class ConfirmRequest(_message.Message):
    __slots__ = ("ref", "confirmation")
    REF_FIELD_NUMBER: _ClassVar[int]
    CONFIRMATION_FIELD_NUMBER: _ClassVar[int]
    ref: RoundRef
    confirmation: Confirmation
    def __init__(self, ref: _Optional[_Union[RoundRef, _Mapping]] = ..., confirmation: _Optional[_Union[Confirmation, _Mapping]] = ...) -> None: ...

class RevealedShare(_message.Message):
    __slots__ = ("share", "signature")
    SHARE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    share: bytes
    signature: bytes
    def __init__(self, share: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class UnmaskResponse(_message.Message):
    __slots__ = ("ref", "member", "seed_shares", "key_shares")
    class SeedSharesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: RevealedShare
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[RevealedShare, _Mapping]] = ...) -> None: ...
    class KeySharesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: RevealedShare
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[RevealedShare, _Mapping]] = ...) -> None: ...
    REF_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    SEED_SHARES_FIELD_NUMBER: _ClassVar[int]
    KEY_SHARES_FIELD_NUMBER: _ClassVar[int]
    ref: RoundRef
    member: str
    seed_shares: _containers.MessageMap[str, RevealedShare]
    key_shares: _containers.MessageMap[str, RevealedShare]
    def __init__(self, ref: _Optional[_Union[RoundRef, _Mapping]] = ..., member: _Optional[str] = ..., seed_shares: _Optional[_Mapping[str, RevealedShare]] = ..., key_shares: _Optional[_Mapping[str, RevealedShare]] = ...) -> None: ...

class BadSharesReport(_message.Message):
    __slots__ = ("ref", "accused")
    REF_FIELD_NUMBER: _ClassVar[int]
    ACCUSED_FIELD_NUMBER: _ClassVar[int]
    ref: RoundRef
    accused: str
    def __init__(self, ref: _Optional[_Union[RoundRef, _Mapping]] = ..., accused: _Optional[str] = ...) -> None: ...
