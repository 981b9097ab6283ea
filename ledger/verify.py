"""The offline verifier behind ``qdspace verify``: a document plus chain read access.

Reads a proof (JSON or binary) or a passport, connects to the RPC URL given (nothing else:
no node, no database), and returns a :class:`~ledger.proofs.Verdict`. Malformed documents raise a
DocumentFormatError naming the field; an unreachable chain raises ChainUnavailable.

Which contract is read is the verifier's to say (``contract``: the data space's anchor
contract), not the document's: anyone can deploy a contract that emits an ``Anchored``
log for any root, with any anchorer in it, and a proof naming such a contract checked
out VALID, ``--anchorer`` pinned or not. Without ``contract`` the document's own contract
is read, and the verdict says only that this contract logged the root.
"""

from __future__ import annotations

from qdspace.ledger.client import LedgerClient
from qdspace.ledger.errors import ProofFormatError
from qdspace.ledger.passport import PASSPORT_TYPE, Passport, verify_passport
from qdspace.ledger.proofs import (
    BINARY_MAGIC,
    PROOF_DEPTH,
    PROOF_TYPE,
    InclusionProof,
    Verdict,
    verify_proof,
)
from qdspace.util.json_depth import loads as bounded_json


def document_type(data: str | bytes) -> str:
    """The ``type`` of a proof or passport document; ProofFormatError if it has none."""
    try:
        doc = bounded_json(data, limit=PROOF_DEPTH)
    except ValueError as exc:
        raise ProofFormatError(f"not JSON: {exc}") from None
    kind = doc.get("type") if isinstance(doc, dict) else None
    if not isinstance(kind, str):
        raise ProofFormatError("document has no 'type' field")
    return kind


def verify_document(
    data: str | bytes,
    rpc_url: str | None,
    *,
    verify_key: bytes | None = None,
    anchorer: str | None = None,
    contract: str | None = None,
) -> tuple[str, Verdict]:
    """Verify a proof or passport; returns its type and the verdict. `anchorer`: the
    member's chain account, which must have anchored a proof's root (anyone can anchor
    a root: without it a proof says only that some account did). `contract`: the anchor
    contract read (a document naming another is not valid; see the module docstring)."""
    binary = isinstance(data, bytes) and data.startswith(BINARY_MAGIC)
    kind = PROOF_TYPE if binary else document_type(data)
    if kind == PROOF_TYPE:
        proof = InclusionProof.parse(data)
        client = None if rpc_url is None else LedgerClient(rpc_url, contract or proof.contract)
        return kind, verify_proof(proof, client, anchorer=anchorer)
    if kind == PASSPORT_TYPE:
        passport = Passport.parse(data)
        client = None if rpc_url is None else LedgerClient(rpc_url, contract or passport.contract)
        return kind, verify_passport(passport, client, verify_key)
    raise ProofFormatError(
        f"unknown document type {kind!r}; expected {PROOF_TYPE} or {PASSPORT_TYPE}"
    )
