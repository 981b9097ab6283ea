"""The API's one error table and its bearer parsing, without a socket."""

from __future__ import annotations

import pytest

from qdspace.connector.contract_errors import (
    ContractDenied,
    OfferMismatchError,
    PseudonymError,
    SpcError,
    UnknownContractError,
)
from qdspace.connector.errors import IngestFileError, StorageError, UnknownKind
from qdspace.connector.ingest import UnsupportedCharset
from qdspace.ledger.errors import ChainUnavailable, NotAnchored, ProofFormatError, UnknownLeaf
from qdspace.node.api.gate import CredentialRejected, bearer_token
from qdspace.node.api.problems import BodyTooLarge, problem_response, status_of
from qdspace.node.errors import ConfigError, PeerError, UnknownPeerError
from qdspace.node.runtime.contracts_clock import ClockControlDisabled


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (UnknownPeerError("unknown peer 'x'"), 404),
        (PeerError("refused", "PERMISSION_DENIED"), 403),
        (PeerError("down"), 502),
        (PeerError("slow", "DEADLINE_EXCEEDED"), 504),
        (UnknownContractError("no agreement"), 404),
        (ContractDenied("outside the agreement"), 403),
        (OfferMismatchError("bent offer"), 400),
        (SpcError("lsl above usl"), 400),
        (PseudonymError("bad key"), 500),
        (ClockControlDisabled("off"), 403),
        (ConfigError("bad"), 400),
        (UnknownKind("photo"), 404),
        (UnsupportedCharset("utf-16"), 415),
        (IngestFileError("empty"), 400),
        (StorageError("disk full"), 503),
        (UnknownLeaf("x"), 404),
        (NotAnchored("x"), 409),
        (ProofFormatError("x"), 422),
        (ChainUnavailable("x"), 503),
        (BodyTooLarge("big"), 413),
        (ValueError("a caller's value"), 400),
        (RuntimeError("a bug"), 500),
    ],
)
def test_one_table_maps_every_error_family(error: Exception, status: int) -> None:
    assert status_of(error) == status


def test_a_problem_has_the_rfc_9457_members() -> None:
    response = problem_response(404, "no agreement agr-1 here", "/v1/contracts/agreements/agr-1")
    assert response.media_type == "application/problem+json"
    assert response.body.startswith(b'{"type":"https://')
    for member in (b'"title":"Not Found"', b'"status":404', b'"instance":"/v1/contracts/'):
        assert member in response.body


@pytest.mark.parametrize(
    "header",
    [
        "Bearer tökén".encode("latin-1"),
        b"Bearer \xff",
        b"Bearer",
        b"Bearer a b",
        b"Basic dXNlcjpwdw==",
        b"Bearer " + b"t" * 9000,
    ],
)
def test_malformed_bearer_headers_are_rejected(header: bytes) -> None:
    with pytest.raises(CredentialRejected):
        bearer_token([(b"authorization", header)])


def test_a_bearer_token_is_read_from_the_header() -> None:
    assert bearer_token([(b"Authorization", b"Bearer abc.def-1")]) == "abc.def-1"
    assert bearer_token([(b"authorization", b"bearer   abc  ")]) == "abc"
    with pytest.raises(CredentialRejected, match="required"):
        bearer_token([])
    with pytest.raises(CredentialRejected, match="more than one"):
        bearer_token([(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")])
