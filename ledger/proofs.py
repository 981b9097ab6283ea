"""Inclusion proofs: build one from the node's queue, check one with only chain read access.

A proof document carries the leaf (kind, reference id, record hash and, optionally, the
record itself), its RFC 6962 audit path, the batch root and the anchoring transaction. The
verifier recomputes everything it can offline, then asks the chain whether the contract
recorded that root with that leaf count, kind and block, and whether the named transaction
emitted it. Every value in the document is checked, so changing any byte of record, proof
or root makes verification fail. Hex is lowercase and ``0x``-prefixed, base64 canonical:
there is exactly one spelling of each value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ledger.client import LedgerClient
from ledger.errors import NotAnchored, ProofFormatError, WrongChain
from ledger.leaves import KIND_CODES, leaf_preimage
from ledger.merkle import MerkleTree, leaf_hash, verify_inclusion
from ledger.queue import ANCHORED, LeafQueue

PROOF_TYPE: Literal["qdspace.inclusion-proof"] = "qdspace.inclusion-proof"
PROOF_VERSION: Literal[1] = 1

Hash32 = Annotated[str, Field(pattern=r"^0x[0-9a-f]{64}$")]
Address = Annotated[str, Field(pattern=r"^0x[0-9a-f]{40}$")]


def hex32(data: bytes) -> str:
    """The document spelling of a 32-byte value."""
    return "0x" + data.hex()


def unhex(text: str) -> bytes:
    """Inverse of :func:`hex32` (and of addresses); the pattern was checked on parsing."""
    return bytes.fromhex(text[2:])


class _Doc(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class LeafPart(_Doc):
    """What the leaf commits to."""

    kind: Literal["inspection", "agreement", "deletion_receipt", "model_version", "record_batch"]
    ref_id: str = Field(min_length=1, max_length=200)
    record_sha256: Hash32
    leaf_hash: Hash32
    record_b64: str | None = None

    @field_validator("record_b64")
    @classmethod
    def _canonical_b64(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("record_b64 is not base64") from None
        if base64.b64encode(raw).decode() != value:
            raise ValueError("record_b64 is not canonical base64")
        return value


class TreePart(_Doc):
    """Where the leaf sits in its batch tree."""

    size: int = Field(ge=1, lt=2**64)
    index: int = Field(ge=0)
    path: list[Hash32] = Field(max_length=64)
    root: Hash32


class AnchorPart(_Doc):
    """Where the batch root went on chain."""

    chain_id: int = Field(ge=1)
    contract: Address
    tx_hash: Hash32
    block_number: int = Field(ge=1)
    block_hash: Hash32


class InclusionProof(_Doc):
    """The proof document (``qdspace verify`` reads this)."""

    type: Literal["qdspace.inclusion-proof"] = PROOF_TYPE
    version: Literal[1] = PROOF_VERSION
    leaf: LeafPart
    tree: TreePart
    anchor: AnchorPart

    def to_json(self) -> str:
        """Canonical JSON text of the proof."""
        return self.model_dump_json(indent=2)

    @classmethod
    def parse(cls, data: str | bytes | dict[str, Any]) -> InclusionProof:
        """Parse a proof; ProofFormatError names the first offending field."""
        try:
            if isinstance(data, dict):
                return cls.model_validate(data)
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise ProofFormatError(f"malformed proof: {describe(exc)}") from None


def describe(exc: ValidationError) -> str:
    """The first validation error as ``field.path: message``."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "document"
    return f"{where}: {first['msg']}"


@dataclass(frozen=True, slots=True)
class Check:
    """One verification step and its outcome."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """The result of verifying a document: valid only if every check passed."""

    valid: bool
    checks: tuple[Check, ...]

    @property
    def reason(self) -> str:
        """The first failed check, or a one-line summary when valid."""
        for check in self.checks:
            if not check.ok:
                return f"{check.name}: {check.detail}"
        return f"all {len(self.checks)} checks passed"

    @classmethod
    def of(cls, checks: list[Check]) -> Verdict:
        """A verdict over ``checks``."""
        return cls(all(c.ok for c in checks) and bool(checks), tuple(checks))


def build_proof(
    queue: LeafQueue, kind: str, ref_id: str, record: bytes | None = None
) -> InclusionProof:
    """The proof for ``(kind, ref_id)``; UnknownLeaf or NotAnchored when there is none yet."""
    stored = queue.leaf(kind, ref_id)
    batch = queue.batch_of(stored)
    if batch.state != ANCHORED or batch.tx_hash is None or not batch.tx_hash:
        raise NotAnchored(f"{kind} {ref_id!r} is in batch {batch.id}, not anchored yet")
    assert batch.chain_id and batch.contract and batch.block_number and batch.block_hash
    tree = MerkleTree.from_leaf_hashes(queue.leaf_hashes(batch))
    index = stored.seq - batch.seq_from
    if record is not None and hashlib.sha256(record).digest() != stored.record_sha256:
        raise ProofFormatError(f"the record given for {kind} {ref_id!r} is not the one anchored")
    return InclusionProof(
        leaf=LeafPart(
            kind=kind,  # type: ignore[arg-type]
            ref_id=ref_id,
            record_sha256=hex32(stored.record_sha256),
            leaf_hash=hex32(stored.leaf_hash),
            record_b64=None if record is None else base64.b64encode(record).decode(),
        ),
        tree=TreePart(
            size=tree.size,
            index=index,
            path=[hex32(h) for h in tree.audit_path(index)],
            root=hex32(tree.root),
        ),
        anchor=AnchorPart(
            chain_id=int(batch.chain_id),
            contract=batch.contract.lower(),
            tx_hash=hex32(batch.tx_hash),
            block_number=int(batch.block_number),
            block_hash=hex32(batch.block_hash),
        ),
    )


def offline_checks(proof: InclusionProof) -> list[Check]:
    """Everything that needs no chain: record hash, leaf hash, audit path."""
    leaf, tree = proof.leaf, proof.tree
    checks: list[Check] = []
    if leaf.record_b64 is not None:
        digest = hashlib.sha256(base64.b64decode(leaf.record_b64)).digest()
        ok = hex32(digest) == leaf.record_sha256
        checks.append(
            Check(
                "record",
                ok,
                "record matches its hash"
                if ok
                else "the record's SHA-256 differs from record_sha256",
            )
        )
    computed = leaf_hash(leaf_preimage(leaf.kind, leaf.ref_id, unhex(leaf.record_sha256)))
    ok = hex32(computed) == leaf.leaf_hash
    checks.append(
        Check(
            "leaf",
            ok,
            "leaf hash commits to kind, id and record"
            if ok
            else "leaf_hash is not the hash of kind, ref_id and record_sha256",
        )
    )
    included = verify_inclusion(
        computed, tree.index, tree.size, [unhex(p) for p in tree.path], unhex(tree.root)
    )
    checks.append(
        Check(
            "inclusion",
            included,
            f"leaf {tree.index} of {tree.size} leads to the root"
            if included
            else "the audit path does not lead from the leaf to the root",
        )
    )
    return checks


def chain_checks(proof: InclusionProof, client: LedgerClient) -> list[Check]:
    """What the chain must confirm: the root, its size, kind, block and transaction."""
    anchor, tree = proof.anchor, proof.tree
    root = unhex(tree.root)
    if client.chain_id != anchor.chain_id:
        return [
            Check(
                "chain",
                False,
                f"proof is for chain {anchor.chain_id}, the RPC endpoint "
                f"serves chain {client.chain_id}",
            )
        ]
    if client.address.lower() != anchor.contract:
        return [
            Check(
                "contract",
                False,
                f"proof names contract {anchor.contract}, the client "
                f"reads {client.address.lower()}",
            )
        ]
    try:
        entry = client.lookup(root)
    except WrongChain as exc:
        return [Check("contract", False, str(exc))]
    if entry is None:
        return [
            Check(
                "anchored",
                False,
                f"root {tree.root} was never anchored at "
                f"{anchor.contract} on chain {anchor.chain_id}",
            )
        ]
    checks = [
        Check("anchored", True, f"root anchored by {entry.anchorer}"),
        _eq("leaf_count", entry.leaf_count, tree.size, "leaves in the anchored batch"),
        _eq("kind", entry.kind, KIND_CODES[proof.leaf.kind], "kind code on chain"),
        _eq("block", entry.block_number, anchor.block_number, "block of the anchor"),
    ]
    receipt = client.receipt(unhex(anchor.tx_hash))
    tx_ok = receipt is not None and receipt.succeeded and root in receipt.anchored_roots
    tx_ok = tx_ok and receipt is not None and receipt.block_number == anchor.block_number
    checks.append(
        Check(
            "transaction",
            tx_ok,
            "the transaction emitted this root"
            if tx_ok
            else f"transaction {anchor.tx_hash} did not anchor this root there",
        )
    )
    block_hash = client.block_hash(anchor.block_number)
    ok = block_hash is not None and hex32(block_hash) == anchor.block_hash
    checks.append(
        Check(
            "block_hash",
            ok,
            "block is canonical"
            if ok
            else f"block {anchor.block_number} on chain has another hash",
        )
    )
    return checks


def _eq(name: str, on_chain: int, claimed: int, what: str) -> Check:
    ok = on_chain == claimed
    return Check(
        name,
        ok,
        f"{what}: {on_chain}" if ok else f"{what}: chain says {on_chain}, proof says {claimed}",
    )


class ConfirmationCache:
    """The chain's confirmations of anchors already checked, for ``ttl_s`` seconds.

    Many proofs share one batch root; asking the chain once per root instead of once per
    proof is what makes verifying a whole inspection batch cheap. Only confirmations that
    passed are kept, and only for a while, so a reorganised chain is noticed again soon.
    """

    def __init__(self, ttl_s: float = 60.0, max_entries: int = 4096) -> None:
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._entries: OrderedDict[tuple[str, ...], tuple[float, list[Check]]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(proof: InclusionProof, client: LedgerClient) -> tuple[str, ...]:
        """Everything the chain checks depend on."""
        tree = proof.tree
        return (
            client.rpc_url,
            client.address,
            proof.leaf.kind,
            tree.root,
            str(tree.size),
            proof.anchor.model_dump_json(),
        )

    def get(self, key: tuple[str, ...]) -> list[Check] | None:
        """Cached passing checks for ``key``, if still fresh."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or time.monotonic() - entry[0] > self.ttl_s:
                self._entries.pop(key, None)
                return None
            return list(entry[1])

    def put(self, key: tuple[str, ...], checks: list[Check]) -> None:
        """Remember ``checks`` if they all passed."""
        if not checks or not all(c.ok for c in checks):
            return
        with self._lock:
            self._entries[key] = (time.monotonic(), list(checks))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)


def verify_proof(
    proof: InclusionProof,
    client: LedgerClient | None,
    cache: ConfirmationCache | None = None,
) -> Verdict:
    """Offline checks, then (with a client) the chain's confirmation (cached per root)."""
    checks = offline_checks(proof)
    if all(c.ok for c in checks):
        if client is None:
            checks.append(Check("chain", False, "no chain access given; anchoring unchecked"))
        else:
            key = ConfirmationCache.key(proof, client) if cache is not None else None
            confirmed = cache.get(key) if cache is not None and key is not None else None
            if confirmed is None:
                confirmed = chain_checks(proof, client)
                if cache is not None and key is not None:
                    cache.put(key, confirmed)
            checks.extend(confirmed)
    return Verdict.of(checks)


def document_type(data: str | bytes) -> str:
    """The ``type`` of a proof or passport document; ProofFormatError if it has none."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise ProofFormatError(f"not JSON: {exc}") from None
    kind = doc.get("type") if isinstance(doc, dict) else None
    if not isinstance(kind, str):
        raise ProofFormatError("document has no 'type' field")
    return kind
