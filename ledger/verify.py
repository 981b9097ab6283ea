"""The offline verifier behind ``qdspace verify``: a document plus chain read access.

Reads a proof (JSON or binary) or a passport, connects to the RPC URLs given (nothing else:
no node, no database), and returns a :class:`~ledger.proofs.Verdict`. Malformed documents raise a
DocumentFormatError naming the field; an unreachable chain raises ChainUnavailable.

Which contract is read is the verifier's to say (``contract``: the data space's anchor
contract), not the document's: anyone can deploy a contract that emits an ``Anchored``
log for any root, with any anchorer in it, and a proof naming such a contract checked
out VALID, ``--anchorer`` pinned or not. Without ``contract`` the document's own contract
is read, and the verdict says only that this contract logged the root.

Why several endpoints: everything the chain checks read comes from the endpoint, so one
endpoint that lies consistently (a forged receipt whose ``Anchored`` log carries the
forged root, the member's account and the proof's block) made a forged proof VALID. Given
several, the document is verified against each on its own, with the same contract and
anchorer, and is VALID only if every one finds it valid *and* they all report the same
anchor (block number and hash, the log's fields; for a passport, the account's events):
a verifier then trusts the endpoints only together. An unreachable one fails the whole
verification (ChainUnavailable naming it) instead of being skipped: the verifier asked
for all of them.

Endpoints are named in what is shown (the verdict's reasons, an unreachable endpoint's
error) as `qdspace.util.redact.redact_url` shows them: a hosted endpoint's URL carries
its API key, and a verdict ends up in tickets and logs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qdspace.ledger.client import AnchoredEvent, LedgerClient, TxReceipt
from qdspace.ledger.errors import ChainUnavailable, ProofFormatError
from qdspace.ledger.passport import PASSPORT_TYPE, Passport, verify_passport
from qdspace.ledger.proofs import (
    BINARY_MAGIC,
    PROOF_DEPTH,
    PROOF_TYPE,
    Check,
    InclusionProof,
    Verdict,
    hex32,
    unhex,
    verify_proof,
)
from qdspace.util.json_depth import loads as bounded_json
from qdspace.util.redact import redact_url, redact_url_in

#: what an endpoint reports when the document failed before any chain read
NOTHING_ASKED = "nothing asked (the document fails without the chain)"


@dataclass(frozen=True, slots=True)
class EndpointVerdict:
    """One endpoint's verdict on the document, and what it reported of the anchor (the
    `report`s of all endpoints must be the same for the document to be valid)."""

    rpc_url: str
    verdict: Verdict
    report: str

    @property
    def shown_url(self) -> str:
        """The endpoint as it may be printed (its API key left out)."""
        return redact_url(self.rpc_url)


@dataclass(frozen=True, slots=True)
class Verification:
    """A document verified against every endpoint given: `verdict` is the one to act on
    (with one endpoint, that endpoint's own; with several, also their agreement)."""

    kind: str
    verdict: Verdict
    endpoints: tuple[EndpointVerdict, ...]


class _Witness(LedgerClient):
    """A read-only client that keeps what its endpoint answered about the anchor, so that
    what endpoints said can be compared, not only whether each found the document good
    (the checks of `ledger.proofs` and `ledger.passport` read through it unchanged)."""

    def __init__(self, rpc_url: str, contract_address: str) -> None:
        super().__init__(rpc_url, contract_address)
        self.answered: list[TxReceipt | None] = []
        self.events: list[AnchoredEvent] | None = None

    def receipts(self, tx_hashes: Sequence[bytes]) -> list[TxReceipt | None]:
        out = super().receipts(tx_hashes)
        self.answered.extend(out)
        return out

    def anchored_by(self, anchorer: str, from_block: int, to_block: int) -> list[AnchoredEvent]:
        out = super().anchored_by(anchorer, from_block, to_block)
        self.events = [*(self.events or []), *out]
        return out

    def other_chain(self, chain_id: int) -> str | None:
        """The chain the endpoint said it serves, if it was asked and is not `chain_id`."""
        asked = self._chain_id
        return None if asked is None or asked == chain_id else f"serves chain {asked}"

    def proof_report(self, proof: InclusionProof) -> str:
        """What the endpoint said of the proof's transaction and its log of the root."""
        if (other := self.other_chain(proof.chain_id)) is not None:
            return other
        if not self.answered:
            return NOTHING_ASKED
        receipt = self.answered[-1]
        if receipt is None:
            return f"transaction {proof.tx_hash} not found"
        where = f"block {receipt.block_number} hash {hex32(receipt.block_hash)}"
        if not receipt.succeeded:
            return f"{where}, the transaction reverted"
        event = receipt.event_for(unhex(proof.root))
        if event is None:
            return f"{where}, no Anchored log of the root"
        return (
            f"{where}, {event.leaf_count} leaves of kind {event.kind} anchored by "
            f"{event.anchorer} (logged for block {event.block_number} at {event.timestamp})"
        )

    def passport_report(self, passport: Passport) -> str:
        """What the endpoint said of the account's anchoring in the passport's period."""
        if (other := self.other_chain(passport.chain_id)) is not None:
            return other
        if self.events is None:
            return NOTHING_ASKED
        period = f"blocks {passport.period.from_block}..{passport.period.to_block}"
        if not self.events:
            return f"no anchoring by {passport.anchorer} in {period}"
        digest = hashlib.sha256()
        for e in self.events:
            digest.update(
                f"{e.block_number}:{e.log_index}:{e.tx_hash.hex()}:{e.root.hex()}:"
                f"{e.kind}:{e.leaf_count}:{e.anchorer}:{e.timestamp};".encode()
            )
        last = self.events[-1]
        return (
            f"{len(self.events)} anchors by {passport.anchorer} in {period}, the last in "
            f"block {last.block_number} (tx {hex32(last.tx_hash)}), events "
            f"sha256 {digest.hexdigest()[:32]}"
        )


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
    rpc_url: str | Sequence[str] | None,
    *,
    verify_key: bytes | None = None,
    anchorer: str | None = None,
    contract: str | None = None,
) -> tuple[str, Verdict]:
    """Verify a proof or passport; returns its type and the verdict. `rpc_url`: one
    endpoint or several (see :func:`verify_across`). `anchorer`: the member's chain
    account, which must have anchored a proof's root (anyone can anchor a root: without it
    a proof says only that some account did). `contract`: the anchor contract read (a
    document naming another is not valid; see the module docstring)."""
    urls = [] if rpc_url is None else [rpc_url] if isinstance(rpc_url, str) else list(rpc_url)
    done = verify_across(data, urls, verify_key=verify_key, anchorer=anchorer, contract=contract)
    return done.kind, done.verdict


def verify_across(
    data: str | bytes,
    rpc_urls: Sequence[str],
    *,
    verify_key: bytes | None = None,
    anchorer: str | None = None,
    contract: str | None = None,
) -> Verification:
    """Verify a proof or passport against each endpoint in `rpc_urls` on its own (none:
    offline checks only); valid only if every endpoint finds it valid and all report the
    same anchor. ChainUnavailable names an endpoint that did not answer."""
    urls = list(dict.fromkeys(rpc_urls))  # the same endpoint twice is one witness
    binary = isinstance(data, bytes) and data.startswith(BINARY_MAGIC)
    kind = PROOF_TYPE if binary else document_type(data)
    if kind == PROOF_TYPE:
        proof = InclusionProof.parse(data)
        if not urls:
            return Verification(kind, verify_proof(proof, None, anchorer=anchorer), ())
        results = _ask_each(
            urls,
            contract or proof.contract,
            lambda client: verify_proof(proof, client, anchorer=anchorer),
            lambda client: client.proof_report(proof),
        )
        return Verification(kind, combine(results), results)
    if kind == PASSPORT_TYPE:
        passport = Passport.parse(data)
        if not urls:
            return Verification(kind, verify_passport(passport, None, verify_key), ())
        results = _ask_each(
            urls,
            contract or passport.contract,
            lambda client: verify_passport(passport, client, verify_key),
            lambda client: client.passport_report(passport),
        )
        return Verification(kind, combine(results), results)
    raise ProofFormatError(
        f"unknown document type {kind!r}; expected {PROOF_TYPE} or {PASSPORT_TYPE}"
    )


def _ask_each(
    urls: Sequence[str],
    contract: str,
    verify: Callable[[_Witness], Verdict],
    report: Callable[[_Witness], str],
) -> tuple[EndpointVerdict, ...]:
    """Each endpoint's verdict and report, in the order given (one after the other: the
    first that does not answer ends the verification, named)."""
    results = []
    for url in urls:
        client = _Witness(url, contract)
        try:
            verdict = verify(client)
        except ChainUnavailable as exc:
            said, shown = redact_url_in(str(exc), url), redact_url(url)
            raise ChainUnavailable(said if shown in said else f"endpoint {shown}: {said}") from None
        results.append(EndpointVerdict(url, verdict, report(client)))
    return tuple(results)


def combine(results: Sequence[EndpointVerdict]) -> Verdict:
    """The verdict over several endpoints' (one endpoint: its own, unchanged): an
    ``endpoints`` check that they agree (same validity, same report), then one
    ``endpoint`` check per endpoint carrying its reason."""
    if len(results) == 1:
        return results[0].verdict
    said = {(r.verdict.valid, r.report) for r in results}
    if len(said) == 1:
        agree = Check("endpoints", True, f"all {len(results)} endpoints report {results[0].report}")
    else:
        agree = Check(
            "endpoints",
            False,
            "endpoints disagree: "
            + "; ".join(
                f"{r.shown_url} ({'valid' if r.verdict.valid else 'invalid'}): {r.report}"
                for r in results
            ),
        )
    each = [
        Check("endpoint", r.verdict.valid, f"{r.shown_url}: {r.verdict.reason}") for r in results
    ]
    return Verdict.of([agree, *each])
