"""Regulator endpoints: read-only proofs, verification and passports from the ledger.

Every route needs only the regulator credential (the dependency passed in) and changes
nothing. Errors map by the node's fault table (`qdspace.node.faults`), each to a 4xx with a
clear detail (503 when the chain is unreachable), never a 500: unknown ids 404, not yet
anchored 409, malformed documents 422, documents for another chain 400. A proof is built
(and an unknown id refused) before the record it covers is loaded: a ``record_batch`` id
names a row range, and nobody may make the node read a range it never anchored.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Annotated, Any, NoReturn

from fastapi import APIRouter, Body, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from qdspace.ledger.client import LedgerClient
from qdspace.ledger.errors import ChainUnavailable, LedgerError, NotAnchored, WrongChain
from qdspace.ledger.leaves import KIND_CODES
from qdspace.ledger.passport import PASSPORT_TYPE, Passport, verify_passport
from qdspace.ledger.proofs import (
    PROOF_TYPE,
    ConfirmationCache,
    InclusionProof,
    Verdict,
    build_proof,
    hex32,
    verify_proof,
)
from qdspace.ledger.queue import LeafQueue
from qdspace.node import faults
from qdspace.node.runtime.ledger import RecordLoader, with_record

PassportIssuer = Callable[[int | None, int | None], Passport]

# Path segment -> leaf kind, for the per-kind routes a regulator reads most.
KIND_ROUTES = {
    "inspections": "inspection",
    "agreements": "agreement",
    "deletion-receipts": "deletion_receipt",
    "model-versions": "model_version",
}


class CheckPublic(BaseModel):
    """One verification step."""

    name: str
    ok: bool
    detail: str


class VerdictPublic(BaseModel):
    """Whether a document holds up against the chain, and why (not)."""

    valid: bool
    reason: str
    checks: list[CheckPublic]


class ProofPublic(BaseModel):
    """A record's place on the ledger: leaf, proof, root, transaction, block and verdict."""

    kind: str
    ref_id: str
    leaf: str
    root: str
    chain_id: int
    contract: str
    tx_hash: str
    block_number: int
    proof: InclusionProof
    proof_binary_b64: str = Field(
        description="the same proof in its binary spelling (a .qdp file), base64"
    )
    verdict: VerdictPublic


class VerifyResult(BaseModel):
    """Verdict on a posted document."""

    type: str
    verdict: VerdictPublic


#: the highest block number a caller may name (a 64-bit integer in the databases)
MAX_BLOCK = 2**63 - 1


#: a proof's root (hex) -> the account that must have anchored it for this member
AnchorerOf = Callable[[str], str]


def verdict_public(verdict: Verdict) -> VerdictPublic:
    """Domain verdict to its API model."""
    return VerdictPublic(
        valid=verdict.valid,
        reason=verdict.reason,
        checks=[CheckPublic(name=c.name, ok=c.ok, detail=c.detail) for c in verdict.checks],
    )


def raise_http(exc: LedgerError) -> NoReturn:
    """A ledger error as the HTTP status of the node's fault table (`qdspace.node.faults`).

    The router raises `HTTPException` rather than the ledger error itself so that it keeps
    its 4xx answers when mounted on an app without the node's problem handlers.
    """
    status = faults.http_status(exc)
    if isinstance(exc, NotAnchored):
        raise HTTPException(status, f"{exc}; ask again after the next anchoring") from None
    if isinstance(exc, ChainUnavailable):
        raise HTTPException(status, "the ledger chain is unreachable; try again later") from None
    raise HTTPException(status, str(exc)) from None


def proof_public(
    queue: LeafQueue,
    client: LedgerClient,
    record_loader: RecordLoader | None,
    kind: str,
    ref_id: str,
    confirmations: ConfirmationCache | None = None,
    anchorer_of: AnchorerOf | None = None,
) -> ProofPublic:
    """The proof of an anchored leaf, verified against the chain now (the regulator's
    ``/proofs`` and the operator console's ledger page)."""
    try:
        proof = build_proof(queue, kind, ref_id)  # an unknown id is 404 before any load
        record = record_loader(kind, ref_id) if record_loader is not None else None
        proof = with_record(proof, record)
        anchorer = None if anchorer_of is None else anchorer_of(proof.root)
        verdict = verify_proof(proof, client, confirmations, anchorer)
    except LedgerError as exc:
        raise_http(exc)
    return ProofPublic(
        kind=kind,
        ref_id=ref_id,
        leaf=hex32(proof.leaf_hash()),
        root=proof.root,
        chain_id=proof.chain_id,
        contract=proof.contract,
        tx_hash=proof.tx_hash,
        block_number=proof.block_number,
        proof=proof,
        proof_binary_b64=base64.b64encode(proof.to_bytes()).decode(),
        verdict=verdict_public(verdict),
    )


def verify_posted(
    document: dict[str, Any], client: LedgerClient, anchorer_of: AnchorerOf | None = None
) -> VerifyResult:
    """A posted proof or passport verified against ``client``'s chain (the regulator's
    ``/verify`` and the console's drop zone); `HTTPException` for what is no document.
    A proof's root must have been anchored by the account `anchorer_of` names for it
    (this node's, or the member's whose anchoring of the same leaves it adopted): a node
    answers for its own records (`ledger.proofs.chain_checks`)."""
    doc_type = document.get("type")
    try:
        if doc_type == PROOF_TYPE:
            proof = InclusionProof.parse(document)
            _same_chain(client, proof.chain_id)
            return VerifyResult(
                type=PROOF_TYPE,
                verdict=verdict_public(
                    verify_proof(
                        proof,
                        client,
                        anchorer=None if anchorer_of is None else anchorer_of(proof.root),
                    )
                ),
            )
        if doc_type == PASSPORT_TYPE:
            passport = Passport.model_validate(document)
            _same_chain(client, passport.chain_id)
            return VerifyResult(
                type=PASSPORT_TYPE, verdict=verdict_public(verify_passport(passport, client))
            )
    except LedgerError as exc:
        raise_http(exc)
    except ValueError as exc:  # pydantic's ValidationError
        raise HTTPException(422, f"malformed passport: {exc}") from None
    raise HTTPException(422, f"'type' must be {PROOF_TYPE!r} or {PASSPORT_TYPE!r}")


def regulator_router(
    *,
    queue: LeafQueue,
    client: LedgerClient,
    require_regulator: Callable[..., Any],
    record_loader: RecordLoader | None = None,
    passport_issuer: PassportIssuer | None = None,
    anchorer_of: AnchorerOf | None = None,
) -> APIRouter:
    """Routes under ``/v1/regulator``; ``require_regulator`` is a FastAPI dependency;
    ``anchorer_of``: the account that must have anchored a root (`verify_posted`)."""
    confirmations = ConfirmationCache()  # a batch's proofs share one root: ask the chain once
    router = APIRouter(
        prefix="/v1/regulator", tags=["regulator"], dependencies=[Depends(require_regulator)]
    )

    def proof_of(kind: str, ref_id: str) -> ProofPublic:
        return proof_public(queue, client, record_loader, kind, ref_id, confirmations, anchorer_of)

    @router.get("/proofs/{kind}/{ref_id:path}", response_model=ProofPublic)
    def get_proof(kind: str, ref_id: str) -> ProofPublic:
        """The inclusion proof of any anchored leaf, verified against the chain now."""
        if kind not in KIND_CODES:
            raise HTTPException(404, f"unknown kind {kind!r}; one of: {', '.join(KIND_CODES)}")
        return proof_of(kind, ref_id)

    for segment, kind in KIND_ROUTES.items():
        router.add_api_route(
            f"/{segment}/{{ref_id}}/proof",
            _kind_route(proof_of, kind),
            methods=["GET"],
            response_model=ProofPublic,
            name=f"{kind}_proof",
            summary=f"Proof that a {kind.replace('_', ' ')} was anchored",
        )

    @router.post("/verify", response_model=VerifyResult)
    def verify(document: Annotated[dict[str, Any], Body()]) -> VerifyResult:
        """Verify a posted proof or passport against this node's chain."""
        return verify_posted(document, client, anchorer_of)

    if passport_issuer is not None:
        issuer = passport_issuer

        @router.get("/passport", response_model=Passport)
        def passport(
            from_block: Annotated[int | None, Query(ge=0, le=MAX_BLOCK)] = None,
            to_block: Annotated[int | None, Query(ge=0, le=MAX_BLOCK)] = None,
        ) -> Passport:
            """This member's signed quality data passport for a block range (by default
            the longest a passport may cover, up to the chain's head)."""
            if to_block is not None and from_block is not None and to_block < from_block:
                raise HTTPException(422, "to_block must not be before from_block")
            try:
                return issuer(from_block, to_block)
            except LedgerError as exc:
                raise_http(exc)

    return router


def _kind_route(
    proof_of: Callable[[str, str], ProofPublic], kind: str
) -> Callable[[str], ProofPublic]:
    def route(ref_id: str) -> ProofPublic:
        return proof_of(kind, ref_id)

    route.__doc__ = f"The inclusion proof of {kind.replace('_', ' ')} ``ref_id``."
    return route


def _same_chain(client: LedgerClient, chain_id: int) -> None:
    if client.chain_id != chain_id:
        raise WrongChain(
            f"document is for chain {chain_id}; this node reads chain {client.chain_id}"
        )
