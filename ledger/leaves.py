"""What one leaf commits to: its kind, its reference id and the hash of the caller's record.

The ledger never reads the record; the caller hands in canonical bytes and the leaf commits
to their SHA-256. Binding kind and reference id into the leaf means a proof for
``("agreement", "a-17")`` cannot be passed off as one for another id, and a proof can be
checked without the record itself (only its hash) where the record is confidential.

Kinds are opaque tags with a fixed small code for the contract's ``uint8 kind``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from qdspace.ledger.errors import LedgerError
from qdspace.ledger.merkle import LEAF_PREFIX, leaf_hash

LEAF_DOMAIN = b"qdspace/leaf/v1\x00"
MAX_REF_ID = 200

KIND_CODES: dict[str, int] = {
    "inspection": 1,
    "agreement": 2,
    "deletion_receipt": 3,
    "model_version": 4,
    "record_batch": 5,
    "quality_case": 6,
    "trace_report": 7,
}
KIND_NAMES: dict[int, str] = {code: name for name, code in KIND_CODES.items()}
# two-byte big-endian lengths of every UTF-8 reference id (at most 4 bytes per character)
_LENGTH_PREFIX = [n.to_bytes(2, "big") for n in range(4 * MAX_REF_ID + 1)]


class UnknownKind(LedgerError, ValueError):
    """A leaf kind that the ledger has no code for."""


def kind_code(kind: str) -> int:
    """The contract's code for ``kind``."""
    try:
        return KIND_CODES[kind]
    except KeyError:
        raise UnknownKind(f"unknown leaf kind {kind!r}; one of: {', '.join(KIND_CODES)}") from None


def check_ref_id(ref_id: str) -> str:
    """A reference id is 1..200 characters of printable text."""
    if not 0 < len(ref_id) <= MAX_REF_ID or not ref_id.isprintable():
        raise LedgerError(f"reference id {ref_id[:40]!r} must be 1..{MAX_REF_ID} printable chars")
    return ref_id


def check_ref_ids(ref_ids: Sequence[str]) -> None:
    """:func:`check_ref_id` over many ids at once (one pass, no per-id call unless one fails)."""
    if not ref_ids:
        return
    lengths = set(map(len, ref_ids))
    if min(lengths) < 1 or max(lengths) > MAX_REF_ID or not all(map(str.isprintable, ref_ids)):
        for r in ref_ids:
            check_ref_id(r)


def record_digests(records: Sequence[bytes]) -> list[bytes]:
    """SHA-256 of each record (what a leaf commits to)."""
    sha = hashlib.sha256
    return [sha(r).digest() for r in records]


def packed_leaf_hashes(kind: str, ref_ids: Sequence[str], record_sha256s: Sequence[bytes]) -> bytes:
    """The leaf hashes of ``(kind, ref_id, record_sha256)`` triples, packed (32 bytes each).

    The same bytes as ``Leaf.hash()`` per leaf, but the kind's part of the preimage is built
    once and no object is made per leaf: this is the queue's bulk path.
    """
    if len(ref_ids) != len(record_sha256s):
        raise LedgerError(f"{len(ref_ids)} reference ids but {len(record_sha256s)} record hashes")
    if record_sha256s and set(map(len, record_sha256s)) != {32}:
        raise LedgerError("every record hash must be 32 bytes (a SHA-256 digest)")
    k = kind.encode("utf-8")
    prefix = LEAF_PREFIX + LEAF_DOMAIN + len(k).to_bytes(2, "big") + k
    sha, size = hashlib.sha256, _LENGTH_PREFIX
    return b"".join(
        [
            sha(prefix + size[len(rb)] + rb + s).digest()
            for rb, s in zip(map(str.encode, ref_ids), record_sha256s, strict=True)
        ]
    )


@dataclass(frozen=True, slots=True)
class Leaf:
    """One anchorable item: its identity and the hash of its canonical record bytes."""

    kind: str
    ref_id: str
    record_sha256: bytes

    @classmethod
    def of(cls, kind: str, ref_id: str, record: bytes) -> Leaf:
        """A leaf for ``record`` (the caller's canonical bytes)."""
        kind_code(kind)
        return cls(kind, check_ref_id(ref_id), hashlib.sha256(record).digest())

    def preimage(self) -> bytes:
        """The bytes whose RFC 6962 leaf hash goes into the tree."""
        return leaf_preimage(self.kind, self.ref_id, self.record_sha256)

    def hash(self) -> bytes:
        """The RFC 6962 leaf hash."""
        return leaf_hash(self.preimage())


def leaf_preimage(kind: str, ref_id: str, record_sha256: bytes) -> bytes:
    """Length-prefixed ``domain || kind || ref_id || sha256(record)``: unambiguous to parse."""
    k, r = kind.encode("utf-8"), ref_id.encode("utf-8")
    return b"".join(
        (LEAF_DOMAIN, len(k).to_bytes(2, "big"), k, len(r).to_bytes(2, "big"), r, record_sha256)
    )
