"""The authority's signed directory document: the entries of a data space, and which a node takes.

The **document** (space, a serial that only grows, when it was issued, the members'
entries as they signed them, and what the authority attests of them: the framework
agreements each signed, `node.identity.attestations`) is signed by the authority's CA
key (ECDSA P-256), so a node can tell the authority's word from a man in the middle's
and refuses a document older than the one it holds (a replayed directory could bring
back a revoked member's address). Each entry is the member's own, signed by it
(`node.identity.directory`).

A node refuses a whole document with a bad authority signature, for another space or
with a lower serial than it holds; it drops (and its caller logs) single entries that do
not parse, whose member signature does not verify, whose member id is not
``member_id_for(name, verify_key)``, whose certificate serial is revoked, or that share a
name with another entry (peers are called by name); it reads attestations only of the
entries it takes. A field a later version adds to the document (at most
``MAX_EXTRA_FIELDS``) is kept, covered by the signature, and not read, so an authority can
be upgraded before its nodes. Pure, like the entries' module.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from qdspace.node.identity.attestations import Attested, attested_json, parse_attested
from qdspace.node.identity.directory import (
    MAX_NAME,
    DirectoryEntry,
    DirectoryError,
    MalformedDirectory,
    canonical_json,
    now_text,
    timestamp_field,
    verify_entry,
)

DOCUMENT_DOMAIN = b"qdspace/directory-document/v1\x00"
DOCUMENT_FIELDS = frozenset({"space", "serial", "issued_at", "entries", "signature", "attested"})
MAX_ENTRIES = 10_000
#: fields of a later version's document kept (signed, unread) beside this version's
MAX_EXTRA_FIELDS = 8
_FIELD = re.compile(r"[a-z][a-z0-9_]{0,31}")


class BadAuthoritySignature(DirectoryError):
    """A document not signed by this data space's authority."""


class DirectoryRollback(DirectoryError):
    """A document older (lower serial) than the one a node already holds."""


@dataclass(frozen=True)
class DirectoryDocument:
    """The authority's signed list of entries (see the module docstring)."""

    space: str
    serial: int
    issued_at: str
    entries: tuple[DirectoryEntry, ...] = ()
    signature: str = ""  # hex DER ECDSA-SHA256 by the CA key; "" while unsigned
    #: member id -> the frameworks the authority attests for it (`node.identity.attestations`)
    attested: Attested = field(default_factory=dict)
    #: the entries as received (what the signature covers); empty for a built document
    raw_entries: tuple[Any, ...] = field(default=(), compare=False, repr=False)
    #: ``attested`` and a later version's fields as received (signed); None when built
    raw_rest: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    def body(self) -> dict[str, Any]:
        entries = list(self.raw_entries) or [e.to_json() for e in self.entries]
        if self.raw_rest is not None:
            rest = dict(self.raw_rest)
        else:  # no attestation at all: the document a node before attestations reads
            rest = {"attested": attested_json(self.attested)} if self.attested else {}
        return {
            **rest,
            "space": self.space,
            "serial": self.serial,
            "issued_at": self.issued_at,
            "entries": entries,
        }

    def to_json(self) -> dict[str, Any]:
        return {**self.body(), "signature": self.signature}

    def signed_bytes(self) -> bytes:
        return DOCUMENT_DOMAIN + canonical_json(self.body())

    def entry(self, member_id: str) -> DirectoryEntry | None:
        return next((e for e in self.entries if e.member_id == member_id), None)


def sign_document(
    space: str,
    serial: int,
    entries: Sequence[DirectoryEntry],
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    issued_at: str | None = None,
    attested: Attested | None = None,
) -> DirectoryDocument:
    """A document of ``entries`` (sorted by member id) and what the authority attests of
    them (``attested``; members with nothing attested are left out), signed with the CA key."""
    ordered = tuple(sorted(entries, key=lambda e: e.member_id))
    kept = {m: tuple(f) for m, f in sorted((attested or {}).items()) if f}
    document = DirectoryDocument(space, serial, issued_at or now_text(), ordered, attested=kept)
    signature = ca_key.sign(document.signed_bytes(), ec.ECDSA(hashes.SHA256()))
    return replace(document, signature=signature.hex())


def parse_document(data: Any) -> DirectoryDocument:
    """The document's envelope; the entries are parsed one by one by `accept_document`
    (a bad entry is dropped, not the whole document)."""
    if not isinstance(data, Mapping):
        raise MalformedDirectory("a directory document is a JSON object")
    unknown = sorted(set(data) - DOCUMENT_FIELDS)
    if len(unknown) > MAX_EXTRA_FIELDS or not all(_FIELD.fullmatch(str(k)) for k in unknown):
        raise MalformedDirectory(
            f"directory document: unknown fields {unknown[:3]} (at most {MAX_EXTRA_FIELDS} "
            "a later version adds, each a short lower-case name)"
        )
    space, serial, entries = data.get("space"), data.get("serial"), data.get("entries")
    signature = data.get("signature")
    if not isinstance(space, str) or not space:
        raise MalformedDirectory("directory document: space must be a string")
    if not isinstance(serial, int) or isinstance(serial, bool) or serial < 0:
        raise MalformedDirectory("directory document: serial must be a non-negative integer")
    if not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
        raise MalformedDirectory(f"directory document: entries must be a list (<= {MAX_ENTRIES})")
    if not isinstance(signature, str) or not re.fullmatch(r"[0-9a-f]{2,512}", signature):
        raise MalformedDirectory("directory document: signature must be hex")
    issued_at = timestamp_field(data, "issued_at")
    attested = parse_attested(data.get("attested"), MAX_ENTRIES)
    rest = {k: data[k] for k in (*unknown, "attested") if k in data}
    return DirectoryDocument(
        space, serial, issued_at, (), signature, attested, tuple(entries), rest
    )


def verify_document(document: DirectoryDocument, ca_cert: x509.Certificate) -> None:
    public_key = ca_cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise BadAuthoritySignature("the authority's key is not an EC key")
    try:
        public_key.verify(
            bytes.fromhex(document.signature), document.signed_bytes(), ec.ECDSA(hashes.SHA256())
        )
    except (InvalidSignature, ValueError):
        raise BadAuthoritySignature(
            f"directory document serial {document.serial} is not signed by the authority"
        ) from None


@dataclass(frozen=True)
class Dropped:
    """An entry a node did not take, and why (for its log)."""

    member: str
    reason: str


@dataclass(frozen=True)
class AcceptedDirectory:
    """A verified document and the entries a node may use."""

    document: DirectoryDocument
    entries: tuple[DirectoryEntry, ...]
    dropped: tuple[Dropped, ...]
    #: the frameworks the authority attests, of the entries taken only
    attested: Attested = field(default_factory=dict)

    @property
    def serial(self) -> int:
        return self.document.serial


def accept_document(
    data: Any,
    *,
    ca_cert: x509.Certificate,
    space: str,
    held_serial: int | None,
    is_revoked: Callable[[int], bool],
) -> AcceptedDirectory:
    """Verify a fetched document (whole-document refusals raise) and sort its entries
    into the usable and the dropped (module docstring)."""
    document = parse_document(data)
    verify_document(document, ca_cert)
    if document.space != space:
        raise MalformedDirectory(
            f"directory document is for space {document.space!r}, not {space!r}"
        )
    if held_serial is not None and document.serial < held_serial:
        raise DirectoryRollback(
            f"directory document serial {document.serial} is older than the held {held_serial}"
        )
    kept: list[DirectoryEntry] = []
    dropped: list[Dropped] = []
    for raw in document.raw_entries:
        named = raw if isinstance(raw, Mapping) else {}
        label = str(named.get("member_id") or named.get("name") or "?")[:MAX_NAME]
        try:
            entry = DirectoryEntry.from_json(raw)
            verify_entry(entry)
            if is_revoked(entry.serial):
                raise DirectoryError(f"certificate serial {entry.cert_serial} is revoked")
        except DirectoryError as exc:
            dropped.append(Dropped(label, str(exc)))
            continue
        kept.append(entry)
    kept, ambiguous = _unique_names(kept)
    dropped += ambiguous
    document = replace(document, entries=tuple(kept))
    listed = {e.member_id for e in kept}
    attested = {m: f for m, f in document.attested.items() if m in listed}
    return AcceptedDirectory(document, tuple(kept), tuple(dropped), attested)


def _unique_names(entries: list[DirectoryEntry]) -> tuple[list[DirectoryEntry], list[Dropped]]:
    """Peers are called by name: two members under one name are both dropped."""
    by_name: dict[str, list[DirectoryEntry]] = {}
    for entry in entries:
        by_name.setdefault(entry.name, []).append(entry)
    kept = [e for e in entries if len(by_name[e.name]) == 1]
    dropped = [
        Dropped(e.member_id, f"name {e.name!r} is claimed by {len(by_name[e.name])} entries")
        for e in entries
        if len(by_name[e.name]) > 1
    ]
    return kept, dropped
