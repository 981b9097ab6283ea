"""Inclusion proofs: build one from the node's queue, check one with only chain read access.

A proof carries the leaf (kind, reference id, record hash and, optionally, the record
itself), its RFC 6962 audit path, the batch root and where the root was anchored (chain id,
contract, transaction, block). Nothing derivable is repeated: the leaf hash is recomputed
from kind, id and record hash, the block hash is the chain's. The verifier recomputes
everything it can offline, then asks the chain whether the contract recorded that root with
that leaf count, kind and block, and whether the named transaction emitted it. Every value
is checked, so changing any byte of record, proof or root makes verification fail.

Two spellings of the same content, both read by ``qdspace verify``:

* JSON (version 2): flat, hashes as lowercase ``0x`` hex, the audit path as one canonical
  base64 string of the concatenated hashes (~1.2 KB at 1M leaves);
* binary (``.qdp``): fixed-width fields behind the magic ``QDSP``, 810 bytes at 1M leaves
  with a 12-character id. Encoding is canonical both ways: one spelling per value, no slack.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from qdspace.ledger.errors import NotAnchored, ProofFormatError
from qdspace.ledger.leaves import KIND_CODES, KIND_NAMES, leaf_preimage
from qdspace.ledger.merkle import HASH_SIZE, MerkleTree, leaf_hash, verify_inclusion
from qdspace.ledger.queue import LeafQueue
from qdspace.ledger.queue_schema import ANCHORED

if TYPE_CHECKING:
    from qdspace.ledger.client import LedgerClient

PROOF_TYPE: Literal["qdspace.inclusion-proof"] = "qdspace.inclusion-proof"
PROOF_VERSION: Literal[2] = 2
BINARY_MAGIC = b"QDSP"
MAX_PATH = 64

Hash32 = Annotated[str, Field(pattern=r"^0x[0-9a-f]{64}$")]
Address = Annotated[str, Field(pattern=r"^0x[0-9a-f]{40}$")]
Kind = Literal[
    "inspection",
    "agreement",
    "deletion_receipt",
    "model_version",
    "record_batch",
    "quality_case",
    "trace_report",
]

# magic, version, kind code, chain id, contract, tx hash, block, size, index, record hash, root
_FIXED = struct.Struct(">4sBBQ20s32sQQQ32s32s")


def hex32(data: bytes) -> str:
    """The document spelling of a 32-byte value."""
    return "0x" + data.hex()


def unhex(text: str) -> bytes:
    """Inverse of :func:`hex32` (and of addresses); the pattern was checked on parsing."""
    return bytes.fromhex(text[2:])


def _canonical_b64(value: str, name: str) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{name} is not base64") from None
    if base64.b64encode(raw).decode() != value:
        raise ValueError(f"{name} is not canonical base64")
    return raw


class InclusionProof(BaseModel):
    """The proof document (``qdspace verify`` reads this, as JSON or binary)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    type: Literal["qdspace.inclusion-proof"] = PROOF_TYPE
    version: Literal[2] = PROOF_VERSION
    kind: Kind
    ref_id: str = Field(min_length=1, max_length=200)
    record_sha256: Hash32
    index: int = Field(ge=0, lt=2**64)
    size: int = Field(ge=1, lt=2**64)
    path: str = Field(description="the audit path, bottom first: base64 of 32-byte hashes")
    root: Hash32
    chain_id: int = Field(ge=1, lt=2**64)
    contract: Address
    tx_hash: Hash32
    block_number: int = Field(ge=1, lt=2**64)
    record_b64: str | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        raw = _canonical_b64(value, "path")
        if len(raw) % HASH_SIZE or len(raw) > MAX_PATH * HASH_SIZE:
            raise ValueError(f"path must hold at most {MAX_PATH} hashes of 32 bytes each")
        return value

    @field_validator("record_b64")
    @classmethod
    def _record(cls, value: str | None) -> str | None:
        if value is not None:
            _canonical_b64(value, "record_b64")
        return value

    # -- derived values ----------------------------------------------------------------

    def path_hashes(self) -> list[bytes]:
        """The audit path as hashes."""
        raw = base64.b64decode(self.path)
        return [raw[i : i + HASH_SIZE] for i in range(0, len(raw), HASH_SIZE)]

    def leaf_hash(self) -> bytes:
        """The leaf hash this proof's kind, id and record hash commit to."""
        return leaf_hash(leaf_preimage(self.kind, self.ref_id, unhex(self.record_sha256)))

    def record(self) -> bytes | None:
        """The record carried along, if any."""
        return None if self.record_b64 is None else base64.b64decode(self.record_b64)

    def with_record(self, record: bytes | None) -> InclusionProof:
        """This proof carrying ``record`` (or none)."""
        rec = None if record is None else base64.b64encode(record).decode()
        return self.model_copy(update={"record_b64": rec})

    # -- spellings ---------------------------------------------------------------------

    def to_json(self) -> str:
        """Canonical JSON text of the proof (compact; no absent record)."""
        return self.model_dump_json(exclude_none=True)

    def to_bytes(self) -> bytes:
        """The binary spelling (``.qdp``): fixed-width big-endian fields, nothing to spare."""
        ref = self.ref_id.encode("utf-8")
        path = base64.b64decode(self.path)
        record = self.record()
        fixed = _FIXED.pack(
            BINARY_MAGIC,
            PROOF_VERSION,
            KIND_CODES[self.kind],
            self.chain_id,
            unhex(self.contract),
            unhex(self.tx_hash),
            self.block_number,
            self.size,
            self.index,
            unhex(self.record_sha256),
            unhex(self.root),
        )
        tail = b"\x00" if record is None else b"\x01" + len(record).to_bytes(4, "big") + record
        return b"".join(
            (fixed, len(ref).to_bytes(2, "big"), ref, bytes([len(path) // HASH_SIZE]), path, tail)
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> InclusionProof:
        """Parse the binary spelling; ProofFormatError names what is wrong."""
        if len(data) < _FIXED.size + 4:
            raise ProofFormatError(f"malformed proof: binary proof of {len(data)} bytes is short")
        magic, version, code, chain_id, contract, tx, block, size, index, sha, root = (
            _FIXED.unpack_from(data)
        )
        if magic != BINARY_MAGIC:
            raise ProofFormatError("malformed proof: not a binary qdspace proof (magic)")
        if version != PROOF_VERSION:
            raise ProofFormatError(f"malformed proof: version: binary version {version}, not 2")
        if code not in KIND_NAMES:
            raise ProofFormatError(f"malformed proof: kind: unknown kind code {code}")
        pos = _FIXED.size
        ref_len = int.from_bytes(data[pos : pos + 2], "big")
        pos += 2
        try:
            ref_id = data[pos : pos + ref_len].decode("utf-8")
        except UnicodeDecodeError:
            raise ProofFormatError("malformed proof: ref_id: not UTF-8") from None
        pos += ref_len
        n = data[pos] if pos < len(data) else 0
        path = data[pos + 1 : pos + 1 + n * HASH_SIZE]
        pos += 1 + n * HASH_SIZE
        flag = data[pos] if pos < len(data) else -1
        record: bytes | None = None
        if flag == 1 and pos + 5 <= len(data):
            rec_len = int.from_bytes(data[pos + 1 : pos + 5], "big")
            record = data[pos + 5 : pos + 5 + rec_len]
            pos += 5 + rec_len
        elif flag == 0:
            pos += 1
        else:
            raise ProofFormatError("malformed proof: record: bad presence flag or truncated")
        if pos != len(data) or len(path) != n * HASH_SIZE:
            raise ProofFormatError(
                f"malformed proof: binary length {len(data)} does not match its fields"
            )
        return cls.parse(
            {
                "kind": KIND_NAMES[code],
                "ref_id": ref_id,
                "record_sha256": hex32(sha),
                "index": index,
                "size": size,
                "path": base64.b64encode(path).decode(),
                "root": hex32(root),
                "chain_id": chain_id,
                "contract": "0x" + contract.hex(),
                "tx_hash": hex32(tx),
                "block_number": block,
                "record_b64": None if record is None else base64.b64encode(record).decode(),
            }
        )

    @classmethod
    def parse(cls, data: str | bytes | dict[str, Any]) -> InclusionProof:
        """Parse a proof (JSON text, binary, or a dict); ProofFormatError names the field."""
        if isinstance(data, bytes) and data.startswith(BINARY_MAGIC):
            return cls.from_bytes(data)
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
    assert batch.chain_id and batch.contract and batch.block_number
    tree = MerkleTree.from_packed(queue.packed_leaf_hashes(batch))
    index = stored.seq - batch.seq_from
    if record is not None and hashlib.sha256(record).digest() != stored.record_sha256:
        raise ProofFormatError(f"the record given for {kind} {ref_id!r} is not the one anchored")
    return InclusionProof(
        kind=kind,  # type: ignore[arg-type]
        ref_id=ref_id,
        record_sha256=hex32(stored.record_sha256),
        index=index,
        size=tree.size,
        path=base64.b64encode(b"".join(tree.audit_path(index))).decode(),
        root=hex32(tree.root),
        chain_id=int(batch.chain_id),
        contract=batch.contract.lower(),
        tx_hash=hex32(batch.tx_hash),
        block_number=int(batch.block_number),
        record_b64=None if record is None else base64.b64encode(record).decode(),
    )


def offline_checks(proof: InclusionProof) -> list[Check]:
    """Everything that needs no chain: record hash, leaf hash, audit path."""
    checks: list[Check] = []
    record = proof.record()
    if record is not None:
        ok = hex32(hashlib.sha256(record).digest()) == proof.record_sha256
        checks.append(
            Check(
                "record",
                ok,
                "record matches its hash"
                if ok
                else "the record's SHA-256 differs from record_sha256",
            )
        )
    leaf = proof.leaf_hash()
    included = verify_inclusion(
        leaf, proof.index, proof.size, proof.path_hashes(), unhex(proof.root)
    )
    checks.append(
        Check(
            "inclusion",
            included,
            f"leaf {hex32(leaf)[:18]}... ({proof.kind} {proof.ref_id!r}) is leaf {proof.index} "
            f"of {proof.size} under the root"
            if included
            else "the audit path does not lead from the leaf (kind, ref_id, record_sha256) "
            "to the root",
        )
    )
    return checks


def chain_checks(
    proof: InclusionProof, client: LedgerClient, anchorer: str | None = None
) -> list[Check]:
    """What the chain must confirm: the root, its size, kind, block and transaction, and,
    with `anchorer`, that this account anchored it.

    Why the account: the contract takes a root from anyone who can send a transaction,
    and a one-leaf root of (kind, any ref id, any hash) with an empty audit path is a
    valid proof of a record nobody kept: a stranger on a shared chain made 'deletion
    receipt dr-victim-0001' verify. A proof says something about a member only when the
    member's own account anchored its root; a node verifies proofs for its own account."""
    root = unhex(proof.root)
    if client.chain_id != proof.chain_id:
        return [
            Check(
                "chain",
                False,
                f"proof is for chain {proof.chain_id}, the RPC endpoint "
                f"serves chain {client.chain_id}",
            )
        ]
    if client.address.lower() != proof.contract:
        return [
            Check(
                "contract",
                False,
                f"proof names contract {proof.contract}, the client reads {client.address.lower()}",
            )
        ]
    # One receipt says it all: the contract's Anchored log in it carries what the contract
    # stores for the root (count, kind, anchorer, block), and the contract refuses a known
    # root, so that log is the root's only record. (Asking the contract too, an eth_call,
    # cost an EVM execution per proof: ~8 of ~10 ms on the embedded chain.)
    receipt = client.receipt(unhex(proof.tx_hash))
    event = receipt.event_for(root) if receipt is not None and receipt.succeeded else None
    if receipt is None or event is None:
        return [
            Check(
                "anchored",
                False,
                f"transaction {proof.tx_hash} did not anchor root {proof.root} at "
                f"{proof.contract} on chain {proof.chain_id}",
            )
        ]
    checks = [Check("anchored", True, f"root anchored by {event.anchorer}")]
    if anchorer is not None:
        ours = event.anchorer.lower() == anchorer.lower()
        checks.append(
            Check(
                "anchorer",
                ours,
                f"anchored by the member's account {anchorer}"
                if ours
                else f"anchored by {event.anchorer}, not by the member's account {anchorer}",
            )
        )
    block = _eq("block", event.block_number, proof.block_number, "block of the anchor")
    if event.block_number == receipt.block_number != proof.block_number:
        # The proof's own transaction, in another block than the proof names: a
        # reorganisation replaced that block and the same transaction was mined again
        # (the anchorer resends the same signed bytes, `ledger.reorg`). The proof still
        # fails (every byte of it is checked), saying so, and where to get one that holds.
        block = Check(
            "block",
            False,
            f"block of the anchor: chain says {event.block_number}, proof says "
            f"{proof.block_number}: the chain holds this transaction in another block now "
            "(a reorganisation since the proof was made); fetch the proof again",
        )
    return [
        *checks,
        _eq("leaf_count", event.leaf_count, proof.size, "leaves in the anchored batch"),
        _eq("kind", event.kind, KIND_CODES[proof.kind], "kind code on chain"),
        block,
        Check(
            "transaction",
            receipt.block_number == proof.block_number,
            f"the transaction emitted this root in block {receipt.block_number} "
            f"({hex32(receipt.block_hash)[:18]}...)",
        ),
    ]


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
    def key(
        proof: InclusionProof, client: LedgerClient, anchorer: str | None = None
    ) -> tuple[str, ...]:
        """Everything the chain checks depend on."""
        return (
            (anchorer or "").lower(),
            client.rpc_url,
            client.address,
            proof.kind,
            proof.root,
            str(proof.size),
            str(proof.chain_id),
            proof.contract,
            proof.tx_hash,
            str(proof.block_number),
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
    anchorer: str | None = None,
) -> Verdict:
    """Offline checks, then (with a client) the chain's confirmation (cached per root);
    `anchorer`: the account that must have anchored the root (`chain_checks`)."""
    checks = offline_checks(proof)
    if all(c.ok for c in checks):
        if client is None:
            checks.append(Check("chain", False, "no chain access given; anchoring unchecked"))
        else:
            key = ConfirmationCache.key(proof, client, anchorer) if cache is not None else None
            confirmed = cache.get(key) if cache is not None and key is not None else None
            if confirmed is None:
                confirmed = chain_checks(proof, client, anchorer)
                if cache is not None and key is not None:
                    cache.put(key, confirmed)
            checks.extend(confirmed)
    return Verdict.of(checks)


#: how deep a proof or passport document may nest (its Merkle paths are lists of lists)
PROOF_DEPTH = 64
