"""The signed member directory: who is in the data space, where to reach them, which cert.

Static ``peers`` lists in every node's configuration do not scale past one site: a new
member means editing every node. The authority service instead publishes one document
that every node fetches and follows. Trust in it is layered:

- each **entry** is written and signed by the member itself (Ed25519, the key whose
  verify key its certificate carries): member id, name, role, verify key, endpoints
  (``peer`` host:port, optionally ``operator``, ``regulator`` and ``dsp``, the
  host:port of its Dataspace Protocol listener, where alone a provider that follows
  the directory sends that member's DSP callbacks; kinds a later version adds are kept
  and not used, so a space can upgrade one node at a time), the sha256
  fingerprint and serial of its current certificate, an optional business partner
  number, and when it was published. Nobody can advertise an address or a certificate
  for a member without that member's signing key, not even the authority service;
- the **document** (space, a serial that only grows, when it was issued, the entries)
  is signed by the authority's CA key (ECDSA P-256), so a node can tell the authority's
  word from a man in the middle's and refuses a document older than the one it holds
  (a replayed directory could bring back a revoked member's address).

A node refuses a whole document with a bad authority signature, for another space or
with a lower serial than it holds; it drops (and its caller logs) single entries whose
member signature does not verify, whose member id is not ``member_id_for(name,
verify_key)``, or whose certificate serial is revoked. The certificate fingerprint is
what peers pin: a TLS peer presenting another valid certificate of the same member (an
old one, say, from a stolen backup) is refused while the directory names a newer one.

Signatures cover the canonical JSON (sorted keys, no spaces, ASCII) of the object as
received, minus its ``signature`` field, behind a domain-separation prefix, so an
entry signature can never be replayed as anything else the member's key signs.
The module is pure: no file or network I/O; the authority service and the node's
directory follower (``node.runtime.directory``) do that.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from qdspace.node.errors import IdentityError
from qdspace.node.identity.certs import ROLES, MemberIdentity
from qdspace.node.member_ids import member_id_for
from qdspace.util.numbers import decimal

ENTRY_DOMAIN = b"qdspace/directory-entry/v1\x00"
DOCUMENT_DOMAIN = b"qdspace/directory-document/v1\x00"
#: the endpoints this version publishes and uses; ``peer`` (the gRPC listener) is required.
#: An entry may also name kinds a later version adds (up to ``MAX_ENDPOINTS`` in all, each
#: a short lower-case name and a short visible-ASCII value): they are kept, so the entry's
#: signature verifies and the member stays reachable at the kinds this node knows, and
#: never used (nothing dials them). A node publishes only the kinds it knows.
ENDPOINT_KINDS = ("peer", "operator", "regulator", "dsp")
MAX_ENDPOINTS = 16
MAX_ENDPOINT_VALUE = 512
DOCUMENT_FIELDS = frozenset({"space", "serial", "issued_at", "entries", "signature"})
MAX_NAME = 128
MAX_HOST = 253
MAX_ENTRIES = 10_000
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-f]{1,64}")
_HOST = re.compile(r"[A-Za-z0-9._:\[\]-]+")
_KIND = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_VISIBLE = re.compile(r"[!-~]+")


class DirectoryError(IdentityError):
    """A directory document or entry that cannot be trusted."""


class MalformedDirectory(DirectoryError, ValueError):
    """A document or entry that is not what the directory format says (field named)."""


class BadAuthoritySignature(DirectoryError):
    """A document not signed by this data space's authority."""


class DirectoryRollback(DirectoryError):
    """A document older (lower serial) than the one a node already holds."""


class BadMemberSignature(DirectoryError):
    """An entry not signed by the member it describes."""


class MemberIdMismatch(DirectoryError):
    """An entry whose member id is not derived from its name and verify key."""


class CertificateMismatch(DirectoryError):
    """An entry that does not describe the certificate it came with (another member's)."""


class FingerprintMismatch(CertificateMismatch):
    """A peer's TLS certificate is not the one its directory entry names."""


def canonical_json(value: Any) -> bytes:
    """The one byte string a JSON value signs as (sorted keys, no spaces, ASCII only)."""
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        ).encode()
    except (TypeError, ValueError) as exc:
        raise MalformedDirectory(f"not canonical JSON: {exc}") from None


def _unsigned(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != "signature"}


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


# -- entries ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DirectoryEntry:
    """One member as it describes itself (see the module docstring)."""

    member_id: str
    name: str
    role: str
    verify_key: str  # hex of the 32-byte Ed25519 verify key
    endpoints: Mapping[str, str]
    cert_fingerprint: str  # sha256 hex of the member's current certificate (DER)
    cert_serial: str  # hex serial of that certificate (what the CRL lists)
    published_at: str  # ISO 8601, UTC
    bpn: str | None = None
    signature: str = ""  # hex Ed25519 signature; "" while unsigned

    @property
    def peer(self) -> str:
        """The host:port of the member's gRPC listener."""
        return self.endpoints["peer"]

    @property
    def published(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.published_at)

    @property
    def serial(self) -> int:
        return int(self.cert_serial, 16)

    def to_json(self) -> dict[str, Any]:
        return {
            "member_id": self.member_id,
            "name": self.name,
            "role": self.role,
            "verify_key": self.verify_key,
            "endpoints": dict(self.endpoints),
            "cert_fingerprint": self.cert_fingerprint,
            "cert_serial": self.cert_serial,
            "bpn": self.bpn,
            "published_at": self.published_at,
            "signature": self.signature,
        }

    def signed_bytes(self) -> bytes:
        return ENTRY_DOMAIN + canonical_json(_unsigned(self.to_json()))

    @classmethod
    def from_json(cls, data: Any) -> DirectoryEntry:
        """Parse an entry; `MalformedDirectory` names the first field that is wrong."""
        if not isinstance(data, Mapping):
            raise MalformedDirectory("a directory entry is a JSON object")
        unknown = sorted(set(data) - ENTRY_FIELDS)
        if unknown:
            raise MalformedDirectory(f"directory entry: unknown field {unknown[0]!r}")
        entry = cls(
            member_id=_text(data, "member_id", MAX_NAME),
            name=_text(data, "name", MAX_NAME),
            role=_text(data, "role", 32),
            verify_key=_hex64(data, "verify_key"),
            endpoints=_endpoints(data.get("endpoints")),
            cert_fingerprint=_hex64(data, "cert_fingerprint"),
            cert_serial=_serial(data.get("cert_serial")),
            published_at=_timestamp(data, "published_at"),
            bpn=_optional_text(data, "bpn", MAX_NAME),
            signature=_signature(data.get("signature")),
        )
        if entry.role not in ROLES:
            raise MalformedDirectory(
                f"directory entry {entry.name}: role must be one of {', '.join(ROLES)}"
            )
        return entry


#: the JSON fields of an entry: exactly the dataclass's
ENTRY_FIELDS = frozenset(f.name for f in fields(DirectoryEntry))


def _text(data: Mapping[str, Any], key: str, limit: int) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise MalformedDirectory(f"directory entry: {key} must be a string of 1..{limit} chars")
    if not value.isprintable():
        raise MalformedDirectory(f"directory entry: {key} has unprintable characters")
    return value


def _optional_text(data: Mapping[str, Any], key: str, limit: int) -> str | None:
    return None if data.get(key) is None else _text(data, key, limit)


def _hex64(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise MalformedDirectory(f"directory entry: {key} must be 64 lowercase hex characters")
    return value


def _serial(value: Any) -> str:
    if not isinstance(value, str) or not _HEX.fullmatch(value):
        raise MalformedDirectory("directory entry: cert_serial must be lowercase hex")
    return value


def _signature(value: Any) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{128}", value):
        raise MalformedDirectory("directory entry: signature must be 128 hex characters")
    return value


def _timestamp(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    parsed: dt.datetime | None = None
    if isinstance(value, str) and len(value) <= 64:
        with contextlib.suppress(ValueError):
            parsed = dt.datetime.fromisoformat(value)
    if parsed is None or parsed.tzinfo is None:
        raise MalformedDirectory(f"{key} must be an ISO 8601 time with a time zone")
    return str(value)


def check_address(address: str, what: str = "address") -> str:
    """``host:port`` with a port in 1..65535 (an IPv6 host in brackets)."""
    host, sep, port = address.rpartition(":")
    if (
        not sep
        or not host
        or len(host) > MAX_HOST
        or not _HOST.fullmatch(host)
        or not 0 < (decimal(port, 5) or 0) < 65536
    ):
        raise MalformedDirectory(f"{what} {address!r} is not host:port")
    return address


def _endpoints(value: Any, *, known_only: bool = False) -> dict[str, str]:
    """An entry's endpoints: the known kinds' ``host:port`` checked, a later version's
    kinds kept within bounds (see `ENDPOINT_KINDS`), or all known (``known_only``)."""
    if not isinstance(value, Mapping) or "peer" not in value:
        raise MalformedDirectory("directory entry: endpoints must be an object with a 'peer'")
    if len(value) > MAX_ENDPOINTS:
        raise MalformedDirectory(
            f"directory entry: {len(value)} endpoints, more than the {MAX_ENDPOINTS} allowed"
        )
    out: dict[str, str] = {}
    for kind, address in value.items():
        if kind in ENDPOINT_KINDS:
            if not isinstance(address, str):
                raise MalformedDirectory(f"directory entry: endpoint {kind} must be host:port")
            out[kind] = check_address(address, f"endpoint {kind}")
            continue
        shown = repr(kind)[:40]
        if known_only:
            raise MalformedDirectory(
                f"directory entry: unknown endpoint {shown}; one of: {', '.join(ENDPOINT_KINDS)}"
            )
        if not isinstance(kind, str) or not _KIND.fullmatch(kind):
            raise MalformedDirectory(
                f"directory entry: endpoint name {shown} is not 1-32 lower-case letters, "
                "digits, '_' or '-' starting with a letter"
            )
        if (
            not isinstance(address, str)
            or len(address) > MAX_ENDPOINT_VALUE
            or not _VISIBLE.fullmatch(address)
        ):
            raise MalformedDirectory(
                f"directory entry: endpoint {kind} must be 1-{MAX_ENDPOINT_VALUE} visible "
                "ASCII characters"
            )
        out[kind] = address
    return out


def new_entry(
    identity: MemberIdentity,
    signing_key: SigningKey,
    endpoints: Mapping[str, str],
    *,
    bpn: str | None = None,
    published_at: str | None = None,
) -> DirectoryEntry:
    """The member's own entry for its current certificate, signed with its key."""
    entry = DirectoryEntry(
        member_id=identity.member_id,
        name=identity.name,
        role=identity.role,
        verify_key=identity.verify_key.hex(),
        endpoints=_endpoints(endpoints, known_only=True),
        cert_fingerprint=identity.fingerprint,
        cert_serial=f"{identity.serial:x}",
        published_at=published_at or _now(),
        bpn=bpn,
    )
    return sign_entry(entry, signing_key)


def sign_entry(entry: DirectoryEntry, signing_key: SigningKey) -> DirectoryEntry:
    unsigned = replace(entry, signature="")
    signature = signing_key.sign(unsigned.signed_bytes()).signature
    return replace(entry, signature=signature.hex())


def verify_entry(entry: DirectoryEntry) -> None:
    """Raise unless the entry is signed by its own verify key, which its id derives from."""
    verify_key = bytes.fromhex(entry.verify_key)
    if member_id_for(entry.name, verify_key) != entry.member_id:
        raise MemberIdMismatch(
            f"directory entry {entry.member_id}: member id is not derived from name "
            f"{entry.name!r} and its verify key"
        )
    if not entry.signature:
        raise BadMemberSignature(f"directory entry {entry.member_id} is not signed")
    try:
        VerifyKey(verify_key).verify(entry.signed_bytes(), bytes.fromhex(entry.signature))
    except BadSignatureError:
        raise BadMemberSignature(
            f"directory entry {entry.member_id}: the signature is not its member's"
        ) from None


def entry_matches_certificate(entry: DirectoryEntry, identity: MemberIdentity) -> None:
    """Raise unless ``entry`` describes the member and certificate ``identity`` reads."""
    if entry.cert_fingerprint != identity.fingerprint:
        raise FingerprintMismatch(
            f"directory entry {entry.member_id}: cert_fingerprint is not the certificate's"
        )
    checks = (
        ("member_id", entry.member_id, identity.member_id),
        ("name", entry.name, identity.name),
        ("role", entry.role, identity.role),
        ("verify_key", entry.verify_key, identity.verify_key.hex()),
        ("cert_serial", entry.serial, identity.serial),
    )
    for what, said, certified in checks:
        if said != certified:
            raise CertificateMismatch(
                f"directory entry {entry.member_id}: {what} is not the certificate's"
            )


# -- documents -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DirectoryDocument:
    """The authority's signed list of entries (see the module docstring)."""

    space: str
    serial: int
    issued_at: str
    entries: tuple[DirectoryEntry, ...] = ()
    signature: str = ""  # hex DER ECDSA-SHA256 by the CA key; "" while unsigned
    #: the entries as received (what the signature covers); empty for a built document
    raw_entries: tuple[Any, ...] = field(default=(), compare=False, repr=False)

    def body(self) -> dict[str, Any]:
        entries = list(self.raw_entries) or [e.to_json() for e in self.entries]
        return {
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
) -> DirectoryDocument:
    """A document of ``entries`` (sorted by member id), signed with the CA key."""
    ordered = tuple(sorted(entries, key=lambda e: e.member_id))
    document = DirectoryDocument(space, serial, issued_at or _now(), ordered)
    signature = ca_key.sign(document.signed_bytes(), ec.ECDSA(hashes.SHA256()))
    return replace(document, signature=signature.hex())


def parse_document(data: Any) -> DirectoryDocument:
    """The document's envelope; the entries are parsed one by one by `accept_document`
    (a bad entry is dropped, not the whole document)."""
    if not isinstance(data, Mapping):
        raise MalformedDirectory("a directory document is a JSON object")
    unknown = sorted(set(data) - DOCUMENT_FIELDS)
    if unknown:
        raise MalformedDirectory(f"directory document: unknown field {unknown[0]!r}")
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
    issued_at = _timestamp(data, "issued_at")
    return DirectoryDocument(space, serial, issued_at, (), signature, tuple(entries))


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
    return AcceptedDirectory(document, tuple(kept), tuple(dropped))


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
