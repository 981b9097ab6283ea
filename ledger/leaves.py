"""What one leaf commits to: its kind, its reference id and the hash of the caller's record.

The ledger never reads the record; the caller hands in canonical bytes and the leaf commits
to their SHA-256. Binding kind and reference id into the leaf means a proof for
``("agreement", "a-17")`` cannot be passed off as one for another id, and a proof can be
checked without the record itself (only its hash) where the record is confidential.

Kinds are opaque tags with a fixed small code for the contract's ``uint8 kind``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ledger.errors import LedgerError
from ledger.merkle import leaf_hash

LEAF_DOMAIN = b"qdspace/leaf/v1\x00"
MAX_REF_ID = 200

KIND_CODES: dict[str, int] = {
    "inspection": 1,
    "agreement": 2,
    "deletion_receipt": 3,
    "model_version": 4,
    "record_batch": 5,
}
KIND_NAMES: dict[int, str] = {code: name for name, code in KIND_CODES.items()}


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
