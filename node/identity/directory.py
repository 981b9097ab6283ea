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
  is signed by the authority's CA key (`node.identity.directory_document`, which also
  decides which entries of a fetched document a node takes).

This module is the entries: their fields and bounds, signing and verifying them, and
whether one describes a given certificate. The certificate fingerprint is what peers
pin: a TLS peer presenting another valid certificate of the same member (an old one,
say, from a stolen backup) is refused while the directory names a newer one.

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
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from qdspace.node.errors import IdentityError
from qdspace.node.identity.certs import ROLES, MemberIdentity
from qdspace.node.member_ids import member_id_for
from qdspace.util.hosts import is_host_port

ENTRY_DOMAIN = b"qdspace/directory-entry/v1\x00"
#: the endpoints this version publishes and uses; ``peer`` (the gRPC listener) is required.
#: An entry may also name kinds a later version adds (up to ``MAX_ENDPOINTS`` in all, each
#: a short lower-case name and a short visible-ASCII value): they are kept, so the entry's
#: signature verifies and the member stays reachable at the kinds this node knows, and
#: never used (nothing dials them). A node publishes only the kinds it knows.
ENDPOINT_KINDS = ("peer", "operator", "regulator", "dsp")
MAX_ENDPOINTS = 16
MAX_ENDPOINT_VALUE = 512
MAX_NAME = 128
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-f]{1,64}")
_KIND = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_VISIBLE = re.compile(r"[!-~]+")


class DirectoryError(IdentityError):
    """A directory document or entry that cannot be trusted."""


class MalformedDirectory(DirectoryError, ValueError):
    """A document or entry that is not what the directory format says (field named)."""


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


def now_text() -> str:
    """Now, as an entry's or a document's time (UTC, microseconds)."""
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
            published_at=timestamp_field(data, "published_at"),
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


def timestamp_field(data: Mapping[str, Any], key: str) -> str:
    """``data[key]``, an ISO 8601 time with a time zone (`MalformedDirectory` otherwise)."""
    value = data.get(key)
    parsed: dt.datetime | None = None
    if isinstance(value, str) and len(value) <= 64:
        with contextlib.suppress(ValueError):
            parsed = dt.datetime.fromisoformat(value)
    if parsed is None or parsed.tzinfo is None:
        raise MalformedDirectory(f"{key} must be an ISO 8601 time with a time zone")
    return str(value)


def check_address(address: str, what: str = "address") -> str:
    """``host:port`` with a port in 1..65535: a DNS name or an IPv4 address, or an IPv6
    address in brackets; never a gRPC target naming a local socket (`util.hosts`)."""
    if not is_host_port(address):
        raise MalformedDirectory(
            f"{what} {address[:300]!r} is not host:port (a DNS name, an IPv4 address or "
            "a bracketed IPv6 address, and a port 1-65535)"
        )
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
        published_at=published_at or now_text(),
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
