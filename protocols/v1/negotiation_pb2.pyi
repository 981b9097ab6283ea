from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SignedAgreement(_message.Message):
    __slots__ = ("agreement_json", "provider_signature", "consumer_signature")
    AGREEMENT_JSON_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    agreement_json: bytes
    provider_signature: bytes
    consumer_signature: bytes
    def __init__(self, agreement_json: _Optional[bytes] = ..., provider_signature: _Optional[bytes] = ..., consumer_signature: _Optional[bytes] = ...) -> None: ...

class ContractRequest(_message.Message):
    __slots__ = ("offer_json",)
    OFFER_JSON_FIELD_NUMBER: _ClassVar[int]
    offer_json: bytes
    def __init__(self, offer_json: _Optional[bytes] = ...) -> None: ...

class ContractOffer(_message.Message):
    __slots__ = ("offer_json",)
    OFFER_JSON_FIELD_NUMBER: _ClassVar[int]
    offer_json: bytes
    def __init__(self, offer_json: _Optional[bytes] = ...) -> None: ...

class ContractAccepted(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ContractAgreementMessage(_message.Message):
    __slots__ = ("agreement",)
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    agreement: SignedAgreement
    def __init__(self, agreement: _Optional[_Union[SignedAgreement, _Mapping]] = ...) -> None: ...

class ContractVerification(_message.Message):
    __slots__ = ("consumer_signature",)
    CONSUMER_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    consumer_signature: bytes
    def __init__(self, consumer_signature: _Optional[bytes] = ...) -> None: ...

class ContractFinalized(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ContractTermination(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class NegotiationMessage(_message.Message):
    __slots__ = ("message_id", "negotiation_id", "sender_id", "at_unix_us", "request", "offer", "accepted", "agreement", "verification", "finalized", "termination")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    NEGOTIATION_ID_FIELD_NUMBER: _ClassVar[int]
    SENDER_ID_FIELD_NUMBER: _ClassVar[int]
    AT_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    OFFER_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    FINALIZED_FIELD_NUMBER: _ClassVar[int]
    TERMINATION_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    negotiation_id: str
    sender_id: str
    at_unix_us: int
    request: ContractRequest
    offer: ContractOffer
    accepted: ContractAccepted
    agreement: ContractAgreementMessage
    verification: ContractVerification
    finalized: ContractFinalized
    termination: ContractTermination
    def __init__(self, message_id: _Optional[str] = ..., negotiation_id: _Optional[str] = ..., sender_id: _Optional[str] = ..., at_unix_us: _Optional[int] = ..., request: _Optional[_Union[ContractRequest, _Mapping]] = ..., offer: _Optional[_Union[ContractOffer, _Mapping]] = ..., accepted: _Optional[_Union[ContractAccepted, _Mapping]] = ..., agreement: _Optional[_Union[ContractAgreementMessage, _Mapping]] = ..., verification: _Optional[_Union[ContractVerification, _Mapping]] = ..., finalized: _Optional[_Union[ContractFinalized, _Mapping]] = ..., termination: _Optional[_Union[ContractTermination, _Mapping]] = ...) -> None: ...

class NegotiationAck(_message.Message):
    __slots__ = ("negotiation_id", "state", "replies")
    NEGOTIATION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    negotiation_id: str
    state: str
    replies: _containers.RepeatedCompositeFieldContainer[NegotiationMessage]
    def __init__(self, negotiation_id: _Optional[str] = ..., state: _Optional[str] = ..., replies: _Optional[_Iterable[_Union[NegotiationMessage, _Mapping]]] = ...) -> None: ...

class NegotiationQuery(_message.Message):
    __slots__ = ("negotiation_id",)
    NEGOTIATION_ID_FIELD_NUMBER: _ClassVar[int]
    negotiation_id: str
    def __init__(self, negotiation_id: _Optional[str] = ...) -> None: ...

class NegotiationStatus(_message.Message):
    __slots__ = ("negotiation_id", "state", "provider_id", "consumer_id", "asset_id", "offer_json", "agreement", "has_agreement", "reason", "created_at_unix_us", "updated_at_unix_us", "awaiting")
    NEGOTIATION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_ID_FIELD_NUMBER: _ClassVar[int]
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    OFFER_JSON_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    HAS_AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_UNIX_US_FIELD_NUMBER: _ClassVar[int]
    AWAITING_FIELD_NUMBER: _ClassVar[int]
    negotiation_id: str
    state: str
    provider_id: str
    consumer_id: str
    asset_id: str
    offer_json: bytes
    agreement: SignedAgreement
    has_agreement: bool
    reason: str
    created_at_unix_us: int
    updated_at_unix_us: int
    awaiting: str
    def __init__(self, negotiation_id: _Optional[str] = ..., state: _Optional[str] = ..., provider_id: _Optional[str] = ..., consumer_id: _Optional[str] = ..., asset_id: _Optional[str] = ..., offer_json: _Optional[bytes] = ..., agreement: _Optional[_Union[SignedAgreement, _Mapping]] = ..., has_agreement: _Optional[bool] = ..., reason: _Optional[str] = ..., created_at_unix_us: _Optional[int] = ..., updated_at_unix_us: _Optional[int] = ..., awaiting: _Optional[str] = ...) -> None: ...
