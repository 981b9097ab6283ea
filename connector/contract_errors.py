"""Errors of the contract machinery (negotiation, agreements, transfer, SPC, views).

One base, `ContractError`, itself a `connector.errors.ConnectorError` (the
room's one base), so the node can map the contract family in one place. Every
class names the gRPC status it should become in `grpc_status` (a plain string:
`connector` never imports grpc), and the message is safe to send to the peer.
"""

from __future__ import annotations

from qdspace.connector.errors import ConnectorError


class ContractError(ConnectorError):
    """Base of every error raised by the contract machinery."""

    grpc_status = "FAILED_PRECONDITION"


class IllegalTransitionError(ContractError):
    """A message that the current state does not accept (names both)."""

    def __init__(self, process: str, state: str, message: str) -> None:
        super().__init__(f"{process} is {state}: {message} is not allowed in that state")
        self.state = state
        self.message = message


class UnknownProcessError(ContractError, LookupError):
    """A message for a negotiation or transfer other than the one it was applied to."""

    grpc_status = "NOT_FOUND"


class UnauthorizedSenderError(ContractError, PermissionError):
    """The peer that sent a message is not the party allowed to send it."""

    grpc_status = "PERMISSION_DENIED"


class MessageReplayError(ContractError):
    """A message id seen before, now with different content."""

    grpc_status = "ALREADY_EXISTS"


class OfferMismatchError(ContractError, ValueError):
    """An offer or agreement that does not fit the negotiation (asset, parties, terms)."""

    grpc_status = "INVALID_ARGUMENT"


class PolicyTooLarge(OfferMismatchError):
    """A negotiation message whose policy is larger than a negotiation takes (its
    canonical JSON over `connector.negotiation.MAX_POLICY_BYTES`)."""


class AgreementError(ContractError, ValueError):
    """Agreement or receipt bytes that are not a well-formed canonical document."""

    grpc_status = "INVALID_ARGUMENT"


class SignatureError(ContractError):
    """A signature that does not verify."""

    grpc_status = "UNAUTHENTICATED"


class AgreementSignatureError(SignatureError):
    """An agreement signature that is forged, replayed from another agreement, or tampered."""


class ReceiptSignatureError(SignatureError):
    """A deletion receipt signature that does not verify."""


class TransferIntegrityError(ContractError):
    """The running digest of a transfer differs between provider and consumer."""

    grpc_status = "DATA_LOSS"


class RecordEnvelopeError(TransferIntegrityError, ValueError):
    """A received row without a well-formed record key, version or tombstone mark."""

    grpc_status = "DATA_LOSS"


class ForeignRecordError(ContractError, PermissionError):
    """A peer's row (or tombstone) for an order its agreement does not cover."""

    grpc_status = "PERMISSION_DENIED"


class TransferCursorError(ContractError, ValueError):
    """A resume or progress offset that would skip or duplicate rows."""

    grpc_status = "OUT_OF_RANGE"


class TransferHistoryFull(ContractError):
    """A transfer process that holds as many messages as one keeps (`connector.transfer.
    MAX_MESSAGES`): it takes no more but its termination; a new transfer is the way on."""


class PseudonymError(ContractError, ValueError):
    """A pseudonymisation key or input that cannot give unlinkable pseudonyms."""

    grpc_status = "INTERNAL"


class ContractDenied(ContractError, PermissionError):
    """A request outside its agreement (order, field, purpose, time, termination, expiry)."""

    grpc_status = "PERMISSION_DENIED"


class ContractStoreError(ContractError):
    """The contract store cannot find, decrypt or write what it was asked to."""

    grpc_status = "INTERNAL"


class UnknownContractError(ContractStoreError, LookupError):
    """No negotiation, agreement or transfer with that id here."""

    grpc_status = "NOT_FOUND"


class KeyShreddedError(ContractStoreError):
    """The data key of an agreement was destroyed: its rows are gone for good."""

    grpc_status = "FAILED_PRECONDITION"


class SpcError(ContractError, ValueError):
    """An SPC specification or value that cannot be monitored."""

    grpc_status = "INVALID_ARGUMENT"


class ViewError(ContractError, ValueError):
    """An asset declaration that contradicts itself or its offer."""

    grpc_status = "INVALID_ARGUMENT"


class NotificationQuotaError(ContractError):
    """A peer has as many notices kept here as it may have; a new one is refused."""

    grpc_status = "RESOURCE_EXHAUSTED"


class NegotiationQuotaError(ContractError):
    """A member opened as many negotiations here within the hour as it may; a new one
    is refused (a retry of one it opened, or a counter-request, is not)."""

    grpc_status = "RESOURCE_EXHAUSTED"


class TransferQuotaError(ContractError):
    """A member opened as many transfers here within the hour as it may; a new one is
    refused (a retried request of one it opened is not)."""

    grpc_status = "RESOURCE_EXHAUSTED"


class MessageOutOfTime(ContractError, ValueError):
    """A peer's message dated further ahead of our clock than clocks drift, or a request
    opening a negotiation dated further behind it (`connector.peer_time`)."""

    grpc_status = "INVALID_ARGUMENT"


class CaseError(ContractError):
    """Base of the quality investigation / alert errors (`connector.investigation`)."""


class CaseFormatError(CaseError, ValueError):
    """Case terms or event bytes that are not well formed (a field, a bound, the form)."""

    grpc_status = "INVALID_ARGUMENT"


class CaseTransitionError(CaseError):
    """A move the case's state does not allow (a state jump, closing with open actions)."""


class CaseDenied(CaseError, PermissionError):
    """A move by a member who may not make it: a non-party, the wrong party, not the owner."""

    grpc_status = "PERMISSION_DENIED"


class CaseOrderError(CaseError):
    """An event that arrived before its author's previous one (the sender retries it)."""

    grpc_status = "UNAVAILABLE"


class CaseReplayError(CaseError):
    """An event number already used, now with different content."""

    grpc_status = "ALREADY_EXISTS"


class CaseSignatureError(SignatureError):
    """A quality case event whose signature does not verify."""


class UnknownCaseError(CaseError, LookupError):
    """No quality case with that id here."""

    grpc_status = "NOT_FOUND"
