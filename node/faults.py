"""One table: what each domain error means to a peer (gRPC), a caller (HTTP) and a shell.

The lower packages raise errors that say what went wrong (`UnknownContractError`,
`NotAnchored`, `StaleRevocationList`); they never say how a transport should answer.
The node's adapters each answer in their own currency: the gRPC services abort with a
status code, the REST API answers an RFC 9457 problem with an HTTP status, the CLI
exits with a code. This module is where an error class is given all three, once, so a
newcomer reads one literal instead of six ``except`` ladders, and the three transports
cannot drift apart without the table showing it.

The lookup walks the error's MRO and the first class with an entry wins, so a subclass
refines its family (`UnknownPeerError` is 404 although `PeerError` is 502). A blank
cell (``None``) means "no opinion on this transport": the walk goes on up the MRO, to
a built-in row (``PermissionError`` 403, ``LookupError`` 404, ``ValueError`` 400) and
finally to the transport's default (HTTP 500 and a logged traceback; gRPC INTERNAL from
the interceptor; CLI exit 1). Cells are blank where no transport maps the class today:
filling one changes what a caller sees, which is a behaviour change, not a refactoring.

Two kinds of error carry their status with them: a `PeerError` relays the gRPC status a
peer refused with (``code``; HTTP maps it through `HTTP_OF_GRPC`, 502 when none fits),
and a federation `UpdateRefused` names a `RefusalReason` (`REFUSAL_GRPC`).

Where transports disagree, on purpose, the row says so: ``UnknownBatch`` is 404 to the
operator but PERMISSION_DENIED to a peer (a peer must not learn which batch ids exist);
``StaleRevocationList`` is UNAVAILABLE to a peer (retry later) but 403 to a regulator's
HTTP credential (the HTTP gate treats every identity failure alike); ``PolicyError`` is
INVALID_ARGUMENT on the contract service even for ``PolicyDenied``, which HTTP answers 403.

This module is pure: it imports no grpc, FastAPI or Typer. gRPC codes are held as
``grpc.StatusCode`` *names* (``"NOT_FOUND"``); `qdspace.node.rpc` turns them into codes.

CLI exit codes (``qdspace ...``):

====  =====================================================================
code  meaning
====  =====================================================================
0     done; for ``qdspace verify``: the document is valid
1     a domain error or a refusal (message on stderr, one line); for
      ``qdspace verify``: the document is invalid
2     unusable input: a malformed proof or passport, an unreachable chain,
      rows rejected by ``qdspace ingest``, or a usage error (Typer's own)
====  =====================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus

from qdspace.connector.contract_errors import (
    AgreementError,
    AgreementSignatureError,
    ContractDenied,
    ContractError,
    ContractStoreError,
    ForeignRecordError,
    IllegalTransitionError,
    KeyShreddedError,
    MessageReplayError,
    NotificationQuotaError,
    OfferMismatchError,
    PseudonymError,
    ReceiptSignatureError,
    RecordEnvelopeError,
    SignatureError,
    SpcError,
    TransferCursorError,
    TransferIntegrityError,
    UnauthorizedSenderError,
    UnknownContractError,
    UnknownProcessError,
    ViewError,
)
from qdspace.connector.contract_store import ConcurrentUpdateError
from qdspace.connector.errors import (
    ConnectorError,
    IngestFileError,
    StorageError,
    UnknownKind,
)
from qdspace.connector.genealogy import GenealogyError, NotYourBatch, UnknownBatch
from qdspace.connector.ingest import UnsupportedCharset
from qdspace.federation.errors import (
    FederationError,
    RefusalReason,
    RosterRefused,
    SecAggAbort,
    UpdateRefused,
)
from qdspace.inference.errors import InferenceError, RegistryError
from qdspace.ledger.errors import (
    ChainUnavailable,
    DocumentFormatError,
    LedgerError,
    NotAnchored,
    UnknownLeaf,
    WrongChain,
)
from qdspace.ledger.leaves import UnknownKind as UnknownLeafKind
from qdspace.node.errors import (
    AnchoringBlocked,
    ConfigError,
    IdentityError,
    LimitExceeded,
    NodeError,
    NumberOutOfRange,
    PeerError,
    UnknownPeerError,
    WireFormatError,
)
from qdspace.node.identity.revocation import StaleRevocationList
from qdspace.policies.errors import PolicyError

#: the base of every problem ``type`` URI (RFC 9457); the slug names the HTTP status
PROBLEM_TYPE_BASE = "https://qdspace.dev/problems/"
#: the default of each transport when no row has an opinion
DEFAULT_HTTP = 500
DEFAULT_EXIT = 1


@dataclass(frozen=True)
class Fault:
    """How one error class answers on each transport; ``None``: ask the next class up."""

    grpc: str | None  # a grpc.StatusCode name
    http: int | None
    exit: int | None
    relay: bool = False  # the error carries a peer's gRPC status name in ``.code``


def F(grpc: str | None, http: int | None, exit: int | None = None) -> Fault:
    """A row of the table (short, so the literal below reads as a table)."""
    return Fault(grpc, http, exit)


#: the one table: domain error class -> (gRPC status name, HTTP status, CLI exit code)
FAULTS: Mapping[type[BaseException], Fault] = {
    # -- node (composition root) ------------------------------------------- grpc, http, exit
    NodeError: F(None, None, 1),
    ConfigError: F(None, 400, 1),
    AnchoringBlocked: F("FAILED_PRECONDITION", 409, 1),  # an operator's flush
    IdentityError: F("UNAUTHENTICATED", 403, 1),  # gRPC: a bad certificate
    StaleRevocationList: F("UNAVAILABLE", 403, 1),  # gRPC: retry when the CRL is renewed
    PeerError: Fault(None, 502, 1, relay=True),  # the peer's own status, relayed
    UnknownPeerError: F("NOT_FOUND", 404, 1),
    WireFormatError: F("INVALID_ARGUMENT", 400, 1),
    LimitExceeded: F("RESOURCE_EXHAUSTED", None),
    NumberOutOfRange: F("INVALID_ARGUMENT", 400),
    # -- connector: records, ingest, genealogy -----------------------------
    ConnectorError: F(None, None, 1),
    UnknownKind: F(None, 404, 1),
    IngestFileError: F(None, 400, 1),
    UnsupportedCharset: F(None, 415, 1),
    StorageError: F(None, 503, 1),
    GenealogyError: F("INVALID_ARGUMENT", None, 1),
    UnknownBatch: F("PERMISSION_DENIED", 404, 1),  # a peer may not probe which ids exist
    NotYourBatch: F("PERMISSION_DENIED", 403, 1),
    # -- connector: usage contracts (grpc = the class's own ``grpc_status``) -
    ContractError: F("FAILED_PRECONDITION", 409, 1),
    IllegalTransitionError: F("FAILED_PRECONDITION", 409, 1),
    UnknownProcessError: F("NOT_FOUND", 404, 1),
    UnauthorizedSenderError: F("PERMISSION_DENIED", 403, 1),
    MessageReplayError: F("ALREADY_EXISTS", 409, 1),
    OfferMismatchError: F("INVALID_ARGUMENT", 400, 1),
    AgreementError: F("INVALID_ARGUMENT", 400, 1),
    SignatureError: F("UNAUTHENTICATED", 403, 1),
    AgreementSignatureError: F("UNAUTHENTICATED", 403, 1),
    ReceiptSignatureError: F("UNAUTHENTICATED", 403, 1),
    TransferIntegrityError: F("DATA_LOSS", 502, 1),
    RecordEnvelopeError: F("DATA_LOSS", 502, 1),
    ForeignRecordError: F("PERMISSION_DENIED", 403, 1),
    TransferCursorError: F("OUT_OF_RANGE", 400, 1),
    PseudonymError: F("INTERNAL", 500, 1),
    ContractDenied: F("PERMISSION_DENIED", 403, 1),
    ContractStoreError: F("INTERNAL", 500, 1),
    UnknownContractError: F("NOT_FOUND", 404, 1),
    KeyShreddedError: F("FAILED_PRECONDITION", 409, 1),
    ConcurrentUpdateError: F("ABORTED", 409, 1),
    SpcError: F("INVALID_ARGUMENT", 400, 1),
    ViewError: F("INVALID_ARGUMENT", 400, 1),
    NotificationQuotaError: F("RESOURCE_EXHAUSTED", 429, 1),
    # -- policies ------------------------------------------------------------
    PolicyError: F("INVALID_ARGUMENT", None, 1),  # HTTP: PolicyDenied 403, others 400
    # -- ledger --------------------------------------------------------------
    LedgerError: F(None, 400, 1),
    WrongChain: F(None, 400, 1),
    UnknownLeaf: F(None, 404, 1),
    UnknownLeafKind: F(None, 404, 1),
    NotAnchored: F(None, 409, 1),
    DocumentFormatError: F(None, 422, 2),
    ChainUnavailable: F(None, 503, 2),
    # -- federation (gRPC as `node.rpc.federation_service` answers today) ----
    FederationError: F("INVALID_ARGUMENT", None, 1),
    UpdateRefused: F("FAILED_PRECONDITION", None, 1),  # by its reason: REFUSAL_GRPC
    RosterRefused: F("PERMISSION_DENIED", None, 1),
    SecAggAbort: F("ABORTED", None, 1),
    # -- inference -----------------------------------------------------------
    InferenceError: F(None, None, 1),
    RegistryError: F(None, 404, 1),
    # -- what any other error says about whose fault it is --------------------
    PermissionError: F(None, 403),
    LookupError: F(None, 404),
    ValueError: F(None, 400),
}

#: a refused federation update: its reason -> gRPC status name (others FAILED_PRECONDITION)
REFUSAL_GRPC: Mapping[RefusalReason, str] = {
    RefusalReason.NOT_A_MEMBER: "PERMISSION_DENIED",
    RefusalReason.NO_AGREEMENT: "PERMISSION_DENIED",
    RefusalReason.BAD_SIGNATURE: "PERMISSION_DENIED",
    RefusalReason.WRONG_SHAPE: "INVALID_ARGUMENT",
    RefusalReason.NOT_FINITE: "INVALID_ARGUMENT",
    RefusalReason.DUPLICATE: "ALREADY_EXISTS",
    RefusalReason.WRONG_JOB: "NOT_FOUND",
    RefusalReason.BUSY: "RESOURCE_EXHAUSTED",
    RefusalReason.OUT_OF_RANGE: "INVALID_ARGUMENT",
}

#: a gRPC status name (a peer's refusal) -> HTTP status
HTTP_OF_GRPC: Mapping[str, int] = {
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 403,
    "NOT_FOUND": 404,
    "INVALID_ARGUMENT": 400,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 409,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "RESOURCE_EXHAUSTED": 429,
    "DEADLINE_EXCEEDED": 504,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 502,
}

ErrorOrClass = BaseException | type[BaseException]


def _mro(error: ErrorOrClass) -> tuple[type, ...]:
    return (error if isinstance(error, type) else type(error)).__mro__


def fault_of(error: ErrorOrClass) -> Fault | None:
    """The most specific row of ``error`` (an instance or a class), if any."""
    for cls in _mro(error):
        if cls in FAULTS:
            return FAULTS[cls]
    return None


def grpc_status_name(error: ErrorOrClass) -> str | None:
    """The ``grpc.StatusCode`` name ``error`` answers with; None: not a mapped fault."""
    if isinstance(error, UpdateRefused):
        return REFUSAL_GRPC.get(error.reason, "FAILED_PRECONDITION")
    for cls in _mro(error):
        row = FAULTS.get(cls)
        if row is None:
            continue
        relayed = getattr(error, "code", None) if row.relay else None
        if isinstance(error, BaseException) and relayed:
            return str(relayed)
        if row.grpc is not None:
            return row.grpc
    return None


def http_status(error: ErrorOrClass) -> int:
    """The HTTP status of ``error``; 500 (the node's own bug) when no row has an opinion."""
    for cls in _mro(error):
        row = FAULTS.get(cls)
        if row is None:
            continue
        if row.relay and isinstance(error, BaseException):
            relayed = HTTP_OF_GRPC.get(getattr(error, "code", None) or "")
            if relayed is not None:
                return relayed
        if row.http is not None:
            return row.http
    return DEFAULT_HTTP


def http_of_grpc(name: str, fallback: int) -> int:
    """The HTTP status of a gRPC status name a peer answered with."""
    return HTTP_OF_GRPC.get(name, fallback)


def exit_code(error: ErrorOrClass) -> int:
    """The CLI exit code of ``error`` (see the table in this module's docstring)."""
    for cls in _mro(error):
        row = FAULTS.get(cls)
        if row is not None and row.exit is not None:
            return row.exit
    return DEFAULT_EXIT


def problem_title(status: int) -> str:
    """The RFC 9457 ``title`` of a status: its reason phrase (``Not Found``)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_type(status: int) -> str:
    """The RFC 9457 ``type`` URI of a status: the base and its slug (``.../not-found``)."""
    return PROBLEM_TYPE_BASE + problem_title(status).lower().replace(" ", "-")
