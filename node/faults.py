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

The table names each class by its dotted path (``module.QualName``) instead of
importing it, and the lookup compares the paths along the error's MRO. So the module
imports nothing of the project: the CLI consults it on every error without loading the
stores, the chain client or the crypto stack, and a test resolves every path to a real
exception class (a renamed or moved class fails there, not silently here).

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

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus

#: the federation error whose gRPC status depends on its ``reason`` (`REFUSAL_GRPC`)
UPDATE_REFUSED = "qdspace.federation.errors.UpdateRefused"

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
FAULTS: Mapping[str, Fault] = {
    # -- node (composition root) ------------------------------------------- grpc, http, exit
    "qdspace.node.errors.NodeError": F(None, None, 1),
    "qdspace.node.errors.ConfigError": F(None, 400, 1),
    "qdspace.node.errors.AnchoringBlocked": F("FAILED_PRECONDITION", 409, 1),  # an operator's flush
    "qdspace.node.errors.DspNotServed": F("FAILED_PRECONDITION", 409, 1),
    "qdspace.node.errors.OfferNotNarrowable": F("FAILED_PRECONDITION", 409, 1),
    "qdspace.node.errors.PurgeNotConfirmed": F(None, 400, 1),  # an operator's purge
    "qdspace.node.errors.OutsideTenantFiles": F(None, 403, 1),  # a hosted tenant's path
    "qdspace.node.errors.IdentityError": F("UNAUTHENTICATED", 403, 1),  # gRPC: a bad certificate
    "qdspace.node.identity.revocation.StaleRevocationList": F(
        "UNAVAILABLE", 403, 1
    ),  # gRPC: retry when the CRL is renewed
    # the signed member directory (node.identity.directory): a node's or the authority's refusal
    "qdspace.node.identity.directory.DirectoryError": F("UNAUTHENTICATED", 403, 1),
    "qdspace.node.identity.directory.MalformedDirectory": F("INVALID_ARGUMENT", 400, 1),
    "qdspace.node.identity.directory_document.BadAuthoritySignature": F("UNAUTHENTICATED", 403, 1),
    "qdspace.node.identity.directory_document.DirectoryRollback": F("FAILED_PRECONDITION", 409, 1),
    "qdspace.node.identity.directory.BadMemberSignature": F("UNAUTHENTICATED", 403, 1),
    "qdspace.node.identity.directory.MemberIdMismatch": F("UNAUTHENTICATED", 403, 1),
    "qdspace.node.identity.directory.CertificateMismatch": F("PERMISSION_DENIED", 403, 1),
    "qdspace.node.identity.directory.FingerprintMismatch": F("UNAUTHENTICATED", 403, 1),
    "qdspace.node.rpc.pins.PeerRevoked": F("UNAUTHENTICATED", 403, 1),
    # the authority service (node.authority): its refusals, and a node or CLI calling it
    "qdspace.node.authority.service.NotAMember": F("PERMISSION_DENIED", 403, 1),
    "qdspace.node.authority.service.StaleEntry": F("FAILED_PRECONDITION", 409, 1),
    "qdspace.node.authority.service.PublishedTooOften": F("RESOURCE_EXHAUSTED", 429, 1),
    "qdspace.node.authority.client.AuthorityUnavailable": F("UNAVAILABLE", 503, 2),
    "qdspace.node.authority.client.AuthorityRefused": F(None, 502, 1),
    "qdspace.node.join.CaPinMismatch": F("UNAUTHENTICATED", 403, 1),  # node join: not our CA
    # a managed host (node.host): its tenants, their names and their sealed key files
    "qdspace.node.host.errors.HostError": F(None, 503, 1),  # e.g. a tenant that is not serving
    "qdspace.node.host.errors.TenantNameRefused": F("INVALID_ARGUMENT", 400, 1),
    "qdspace.node.host.errors.UnknownTenant": F("NOT_FOUND", 404, 1),
    "qdspace.node.host.errors.TenantExists": F("ALREADY_EXISTS", 409, 1),
    "qdspace.node.host.errors.TenantSuspended": F("UNAVAILABLE", 423, 1),  # HTTP 423 Locked
    "qdspace.node.host.errors.SealedFileError": F(None, 500, 1),  # the host's fault, not a caller's
    "qdspace.node.host.errors.TenantActive": F("FAILED_PRECONDITION", 409, 1),
    "qdspace.node.host.errors.TenantBusy": F("FAILED_PRECONDITION", 409, 1),
    "qdspace.node.host.errors.HostNotRunning": F("FAILED_PRECONDITION", 409, 1),
    "qdspace.node.host.errors.RemovalNotConfirmed": F("INVALID_ARGUMENT", 400, 1),
    # per-tenant quotas (node.host.quotas): rate and slots 429 (with Retry-After), space 507
    "qdspace.node.host.errors.QuotaValueRefused": F("INVALID_ARGUMENT", 400, 1),
    "qdspace.node.host.errors.QuotaExceeded": F("RESOURCE_EXHAUSTED", 429, 1),
    "qdspace.node.host.errors.RowQuotaExceeded": F("RESOURCE_EXHAUSTED", 507, 1),
    "qdspace.node.host.errors.StorageQuotaExceeded": F("RESOURCE_EXHAUSTED", 507, 1),
    "qdspace.node.errors.DiskLow": F("RESOURCE_EXHAUSTED", 507, 1),  # node.disk_room
    # enrollment (the authority's CLI and HTTPS service): the caller's request, not the node
    "qdspace.node.identity.errors.CertificateRequestError": F("INVALID_ARGUMENT", 400, 1),
    "qdspace.node.identity.errors.EnrollmentError": F("PERMISSION_DENIED", 403, 1),
    "qdspace.node.identity.errors.MalformedEnrollmentCode": F("INVALID_ARGUMENT", 400, 1),
    "qdspace.node.identity.errors.EnrollmentCodeRefused": F("PERMISSION_DENIED", 403, 1),
    "qdspace.node.identity.errors.EnrollmentCodeUsed": F("FAILED_PRECONDITION", 409, 1),
    "qdspace.node.identity.errors.EnrollmentCodeExpired": F("FAILED_PRECONDITION", 410, 1),
    "qdspace.node.identity.errors.RequestNotGranted": F("PERMISSION_DENIED", 403, 1),
    "qdspace.node.identity.errors.NameTaken": F("ALREADY_EXISTS", 409, 1),
    "qdspace.node.identity.errors.RenewalRefused": F("PERMISSION_DENIED", 403, 1),
    # the DSP binding (node.dsp): a caller without a valid certificate and ID token, and
    # a body over the binding's limit (the connection is closed with that answer)
    "qdspace.node.dsp.auth.DspAuthError": F("UNAUTHENTICATED", 401, 1),
    "qdspace.node.dsp.app.BodyTooLarge": F("RESOURCE_EXHAUSTED", 413, 1),
    "qdspace.node.errors.PeerError": Fault(
        None, 502, 1, relay=True
    ),  # the peer's own status, relayed
    "qdspace.node.errors.UnknownPeerError": F("NOT_FOUND", 404, 1),
    # one member session per job at a coordinator (``POST /v1/federation/sessions``)
    "qdspace.node.runtime.federation_member.SessionConflict": F(None, 409, 1),
    # the DSP binding's data plane (node.dsp.edr): a missing, forged, expired or revoked token
    "qdspace.node.dsp.edr.DataTokenError": F("UNAUTHENTICATED", 401, 1),
    "qdspace.node.errors.WireFormatError": F("INVALID_ARGUMENT", 400, 1),
    # a member over its calls or streams in flight (gRPC; the DSP listener: 429)
    "qdspace.node.errors.LimitExceeded": F("RESOURCE_EXHAUSTED", 429),
    "qdspace.node.errors.NumberOutOfRange": F("INVALID_ARGUMENT", 400),
    "qdspace.node.errors.NulInString": F("INVALID_ARGUMENT", 400),
    # -- connector: records, ingest, genealogy -----------------------------
    "qdspace.connector.errors.ConnectorError": F(None, None, 1),
    "qdspace.connector.errors.UnknownKind": F(None, 404, 1),
    "qdspace.connector.errors.IngestFileError": F(None, 400, 1),
    "qdspace.connector.ingest.UnsupportedCharset": F(None, 415, 1),
    "qdspace.connector.errors.StorageError": F(None, 503, 1),
    "qdspace.connector.genealogy.GenealogyError": F("INVALID_ARGUMENT", None, 1),
    "qdspace.connector.genealogy.UnknownBatch": F(
        "PERMISSION_DENIED", 404, 1
    ),  # a peer may not probe which ids exist
    "qdspace.connector.genealogy.NotYourBatch": F("PERMISSION_DENIED", 403, 1),
    # -- connector: root-cause traces ---------------------------------------
    "qdspace.connector.rootcause.RootCauseError": F("INVALID_ARGUMENT", 400, 1),
    "qdspace.connector.trace.TraceError": F("INVALID_ARGUMENT", 400, 1),
    "qdspace.connector.trace.TraceRefused": F(
        "PERMISSION_DENIED", 403, 1
    ),  # one refusal: no agreement, not bought, no such batch
    "qdspace.connector.trace_store.UnknownTrace": F("NOT_FOUND", 404, 1),
    "qdspace.connector.trace_store.TraceNotFinished": F("FAILED_PRECONDITION", 409, 1),
    # -- connector: usage contracts (grpc = the class's own ``grpc_status``) -
    "qdspace.connector.contract_errors.ContractError": F("FAILED_PRECONDITION", 409, 1),
    # a DSP transfer request this node does not serve (a push): only HTTP pulls
    "qdspace.connector.dsp_transfer.PushRefused": F("INVALID_ARGUMENT", 400, 1),
    "qdspace.connector.contract_errors.IllegalTransitionError": F("FAILED_PRECONDITION", 409, 1),
    "qdspace.connector.contract_errors.UnknownProcessError": F("NOT_FOUND", 404, 1),
    "qdspace.connector.contract_errors.UnauthorizedSenderError": F("PERMISSION_DENIED", 403, 1),
    "qdspace.connector.contract_errors.MessageReplayError": F("ALREADY_EXISTS", 409, 1),
    "qdspace.connector.contract_errors.OfferMismatchError": F("INVALID_ARGUMENT", 400, 1),
    "qdspace.connector.contract_errors.AgreementError": F("INVALID_ARGUMENT", 400, 1),
    "qdspace.connector.contract_errors.SignatureError": F("UNAUTHENTICATED", 403, 1),
    "qdspace.connector.contract_errors.AgreementSignatureError": F("UNAUTHENTICATED", 403, 1),
    "qdspace.connector.contract_errors.ReceiptSignatureError": F("UNAUTHENTICATED", 403, 1),
    "qdspace.connector.contract_errors.TransferIntegrityError": F("DATA_LOSS", 502, 1),
    "qdspace.connector.contract_errors.RecordEnvelopeError": F("DATA_LOSS", 502, 1),
    "qdspace.connector.contract_errors.ForeignRecordError": F("PERMISSION_DENIED", 403, 1),
    "qdspace.connector.contract_errors.TransferCursorError": F("OUT_OF_RANGE", 400, 1),
    "qdspace.connector.contract_errors.TransferHistoryFull": F("FAILED_PRECONDITION", 409, 1),
    "qdspace.connector.contract_errors.PseudonymError": F("INTERNAL", 500, 1),
    "qdspace.connector.contract_errors.ContractDenied": F("PERMISSION_DENIED", 403, 1),
    "qdspace.connector.contract_errors.ContractStoreError": F("INTERNAL", 500, 1),
    "qdspace.connector.contract_errors.UnknownContractError": F("NOT_FOUND", 404, 1),
    "qdspace.connector.contract_errors.KeyShreddedError": F("FAILED_PRECONDITION", 409, 1),
    "qdspace.connector.contract_errors.MessageOutOfTime": F("INVALID_ARGUMENT", 400, 1),
    "qdspace.connector.contract_store.common.ConcurrentUpdateError": F("ABORTED", 409, 1),
    "qdspace.connector.contract_errors.SpcError": F("INVALID_ARGUMENT", 400, 1),
    "qdspace.connector.contract_errors.ViewError": F("INVALID_ARGUMENT", 400, 1),
    "qdspace.connector.contract_errors.NotificationQuotaError": F("RESOURCE_EXHAUSTED", 429, 1),
    "qdspace.connector.contract_errors.NegotiationQuotaError": F("RESOURCE_EXHAUSTED", 429, 1),
    "qdspace.connector.contract_errors.TransferQuotaError": F("RESOURCE_EXHAUSTED", 429, 1),
    "qdspace.connector.contract_errors.CaseError": F("FAILED_PRECONDITION", 409, 1),
    "qdspace.connector.contract_errors.CaseFormatError": F("INVALID_ARGUMENT", 400, 1),
    "qdspace.connector.contract_errors.CaseTransitionError": F("FAILED_PRECONDITION", 409, 1),
    "qdspace.connector.contract_errors.CaseDenied": F("PERMISSION_DENIED", 403, 1),
    "qdspace.connector.contract_errors.CaseOrderError": F("UNAVAILABLE", 503, 1),
    "qdspace.connector.contract_errors.CaseReplayError": F("ALREADY_EXISTS", 409, 1),
    "qdspace.connector.contract_errors.CaseSignatureError": F("UNAUTHENTICATED", 403, 1),
    "qdspace.connector.contract_errors.UnknownCaseError": F("NOT_FOUND", 404, 1),
    # -- policies ------------------------------------------------------------
    "qdspace.policies.errors.PolicyError": F(
        "INVALID_ARGUMENT", None, 1
    ),  # HTTP: PolicyDenied 403, others 400
    # a policy needing a business partner number the authority attested none for (DSP
    # access; an authority refusing a directory entry that names an unattested one)
    "qdspace.policies.errors.BpnNotAttested": F("PERMISSION_DENIED", 403, 1),
    "qdspace.policies.errors.FrameworkNotAttested": F("PERMISSION_DENIED", 403, 1),
    # -- ledger --------------------------------------------------------------
    "qdspace.ledger.errors.LedgerError": F(None, 400, 1),
    "qdspace.ledger.errors.WrongChain": F(None, 400, 1),
    "qdspace.ledger.errors.UnknownLeaf": F(None, 404, 1),
    "qdspace.ledger.leaves.UnknownKind": F(None, 404, 1),
    "qdspace.ledger.errors.NotAnchored": F(None, 409, 1),
    "qdspace.ledger.errors.DocumentFormatError": F(None, 422, 2),
    "qdspace.ledger.errors.ChainUnavailable": F(None, 503, 2),
    # -- federation (the Federation gRPC service answers by these rows) -------
    # HTTP: a job's terms, a member's data or a model that does not fit: the caller's to fix
    "qdspace.federation.errors.FederationError": F("INVALID_ARGUMENT", 400, 1),
    "qdspace.federation.errors.UpdateRefused": F(
        "FAILED_PRECONDITION", None, 1
    ),  # by its reason: REFUSAL_GRPC
    "qdspace.federation.errors.RosterRefused": F("PERMISSION_DENIED", None, 1),
    "qdspace.federation.errors.SecAggAbort": F("ABORTED", None, 1),
    "qdspace.federation.host.UnknownJob": F("NOT_FOUND", None, 1),
    "qdspace.federation.host.JobExists": F("ALREADY_EXISTS", None, 1),
    "qdspace.node.runtime.federation_jobs.NotOperator": F("PERMISSION_DENIED", None, 1),
    "qdspace.node.runtime.federation_jobs.UnknownVersion": F("NOT_FOUND", None, 1),
    "qdspace.node.runtime.federation_jobs.NoChain": F("FAILED_PRECONDITION", None, 1),
    "qdspace.node.runtime.federation_jobs.ProofPending": F("UNAVAILABLE", None, 1),
    # -- inference -----------------------------------------------------------
    "qdspace.inference.errors.InferenceError": F(None, None, 1),
    "qdspace.inference.errors.RegistryError": F(None, 404, 1),
    # own images (labels.csv, files, split manifest): the operator's to fix
    "qdspace.inference.errors.DatasetError": F(None, 400, 1),
    "qdspace.node.runtime.own_training.TrainingBusy": F(None, 409, 1),
    "qdspace.node.runtime.own_training.UnknownTraining": F(None, 404, 1),
    # -- what any other error says about whose fault it is --------------------
    "builtins.PermissionError": F(None, 403),
    "builtins.LookupError": F(None, 404),
    "builtins.ValueError": F(None, 400),
}

#: a refused federation update: its reason -> gRPC status name (others FAILED_PRECONDITION)
REFUSAL_GRPC: Mapping[str, str] = {
    "NOT_A_MEMBER": "PERMISSION_DENIED",
    "NO_AGREEMENT": "PERMISSION_DENIED",
    "BAD_SIGNATURE": "PERMISSION_DENIED",
    "WRONG_SHAPE": "INVALID_ARGUMENT",
    "NOT_FINITE": "INVALID_ARGUMENT",
    "DUPLICATE": "ALREADY_EXISTS",
    "WRONG_JOB": "NOT_FOUND",
    "BUSY": "RESOURCE_EXHAUSTED",
    "OUT_OF_RANGE": "INVALID_ARGUMENT",
    "WRONG_PROTOCOL": "FAILED_PRECONDITION",
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


def class_path(cls: type) -> str:
    """The table's key of a class: ``module.QualName`` (``builtins.ValueError``)."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _rows(error: ErrorOrClass) -> Iterator[Fault]:
    """The rows of ``error``'s classes, most specific first (its MRO, by class path)."""
    for cls in (error if isinstance(error, type) else type(error)).__mro__:
        row = FAULTS.get(class_path(cls))
        if row is not None:
            yield row


def _is_refusal(error: ErrorOrClass) -> bool:
    return isinstance(error, BaseException) and any(
        class_path(cls) == UPDATE_REFUSED for cls in type(error).__mro__
    )


def fault_of(error: ErrorOrClass) -> Fault | None:
    """The most specific row of ``error`` (an instance or a class), if any."""
    return next(_rows(error), None)


def grpc_status_name(error: ErrorOrClass) -> str | None:
    """The ``grpc.StatusCode`` name ``error`` answers with; None: not a mapped fault."""
    if _is_refusal(error):
        reason = getattr(error, "reason", None)
        return REFUSAL_GRPC.get(getattr(reason, "name", ""), "FAILED_PRECONDITION")
    for row in _rows(error):
        relayed = getattr(error, "code", None) if row.relay else None
        if isinstance(error, BaseException) and relayed:
            return str(relayed)
        if row.grpc is not None:
            return row.grpc
    return None


def http_status(error: ErrorOrClass) -> int:
    """The HTTP status of ``error``; 500 (the node's own bug) when no row has an opinion."""
    for row in _rows(error):
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
    for row in _rows(error):
        if row.exit is not None:
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
