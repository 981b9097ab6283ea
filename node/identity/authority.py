"""The data space's authority: a CA that issues member certificates and revokes them.

The authority directory holds ``ca.key`` (private, 0600), ``ca.crt``, ``members.json``
(what was issued) and ``crl.pem`` (a signed revocation list that nodes reload when it
changes). A CRL is valid for ``CRL_VALID_DAYS``; nodes refuse every call once it is past
its nextUpdate, so the authority re-issues it (``qdspace authority crl``, e.g. daily from
cron) well before then. Every file is written atomically, so an interrupted command leaves the
directory as it was.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from qdspace.node.errors import IdentityError
from qdspace.node.identity.certs import (
    ROLES,
    build_member_cert,
    cert_to_pem,
    key_to_pem,
    load_cert,
    load_key,
    member_subject,
    new_tls_key,
)
from qdspace.node.identity.files import read_file
from qdspace.node.layout import AuthorityLayout
from qdspace.util.files import write_atomic

CA_VALID_DAYS = 3650
MEMBER_VALID_DAYS = 825
CRL_VALID_DAYS = 7


@dataclass(frozen=True)
class IssuedMember:
    """One line of the authority's register."""

    member_id: str
    name: str
    role: str
    serial: str
    not_after: str
    revoked_at: str | None = None
    revocation_reason: str | None = None


class Authority:
    """A loaded authority directory."""

    def __init__(self, directory: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey):
        self.directory = directory
        self.cert = cert
        self._key = key

    @property
    def files(self) -> AuthorityLayout:
        """The paths of this authority's directory."""
        return AuthorityLayout(self.directory)

    @property
    def space(self) -> str:
        return str(self.cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value)

    @classmethod
    def init(cls, directory: Path, space: str = "qdspace") -> Authority:
        """Create a new authority; refuses to overwrite an existing one."""
        files = AuthorityLayout(directory)
        if files.ca_key.exists() or files.ca_cert.exists():
            raise IdentityError(f"an authority already exists in {directory}")
        key = new_tls_key()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, space),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{space} authority"),
            ]
        )
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    key_encipherment=False,
                    content_commitment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        authority = cls(directory, cert, key)
        # The register and CRL first, the key and cert last: a half-done init is re-runnable.
        write_atomic(files.members, b"[]\n")
        authority._write_crl([])
        write_atomic(files.ca_key, key_to_pem(key), mode=0o600)
        write_atomic(files.ca_cert, cert_to_pem(cert))
        return authority

    @classmethod
    def load(cls, directory: Path) -> Authority:
        if not directory.is_dir():
            raise IdentityError(f"authority directory not found: {directory}")
        files = AuthorityLayout(directory)
        cert = load_cert(files.ca_cert, "authority certificate")
        key = load_key(files.ca_key, "authority key")
        if cert.public_key() != key.public_key():
            raise IdentityError(f"{files.ca_key} does not match {files.ca_cert}")
        return cls(directory, cert, key)

    # -- register -------------------------------------------------------------------------

    def members(self) -> list[IssuedMember]:
        path = self.files.members
        try:
            rows = json.loads(read_file(path, "authority register"))
            return [IssuedMember(**row) for row in rows]
        except (ValueError, TypeError) as exc:
            raise IdentityError(f"authority register {path} is corrupt: {exc}") from None

    def _save_members(self, members: list[IssuedMember]) -> None:
        data = json.dumps([asdict(m) for m in members], indent=2).encode() + b"\n"
        write_atomic(self.files.members, data)

    # -- issuing --------------------------------------------------------------------------

    def issue(
        self,
        *,
        name: str,
        member_id: str,
        role: str,
        public_key: ec.EllipticCurvePublicKey,
        verify_key: bytes,
        valid_days: int = MEMBER_VALID_DAYS,
        not_before: dt.datetime | None = None,
    ) -> x509.Certificate:
        """Issue a member certificate and record it in the register."""
        if role not in ROLES:
            raise IdentityError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        if len(verify_key) != 32:
            raise IdentityError("an Ed25519 verify key has 32 bytes")
        members = self.members()
        active = [m for m in members if m.name == name and m.revoked_at is None]
        if any(m.member_id != member_id for m in active):
            raise IdentityError(f"the name {name!r} is already taken by another member")
        start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        cert = build_member_cert(
            ca_cert=self.cert,
            ca_key=self._key,
            subject=member_subject(self.space, name, member_id, role),
            public_key=public_key,
            verify_key=verify_key,
            hostnames=["localhost", name],
            not_before=start,
            not_after=start + dt.timedelta(days=valid_days),
        )
        members.append(
            IssuedMember(
                member_id=member_id,
                name=name,
                role=role,
                serial=f"{cert.serial_number:x}",
                not_after=cert.not_valid_after_utc.isoformat(),
            )
        )
        self._save_members(members)
        return cert

    # -- revocation -----------------------------------------------------------------------

    def revoke(self, name_or_id: str, reason: str = "unspecified") -> list[IssuedMember]:
        """Revoke every certificate of a member and publish a new CRL."""
        members = self.members()
        now = dt.datetime.now(dt.UTC).isoformat()
        hits = [m for m in members if name_or_id in (m.name, m.member_id) and m.revoked_at is None]
        if not hits:
            raise IdentityError(f"no active member named {name_or_id!r} in {self.directory}")
        updated = [
            IssuedMember(**{**asdict(m), "revoked_at": now, "revocation_reason": reason})
            if m in hits
            else m
            for m in members
        ]
        self._write_crl([m for m in updated if m.revoked_at])
        self._save_members(updated)
        return hits

    def issue_crl(self, valid: dt.timedelta = dt.timedelta(days=CRL_VALID_DAYS)) -> Path:
        """Re-issue the CRL from the register with a new nextUpdate (now + `valid`)."""
        if valid <= dt.timedelta(0):
            raise IdentityError("a revocation list must be valid for some time")
        self._write_crl([m for m in self.members() if m.revoked_at], valid)
        return self.files.crl

    def _write_crl(
        self, revoked: list[IssuedMember], valid: dt.timedelta = dt.timedelta(days=CRL_VALID_DAYS)
    ) -> None:
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now)
            .next_update(now + valid)
        )
        for m in revoked:
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(int(m.serial, 16))
                .revocation_date(dt.datetime.fromisoformat(m.revoked_at or now.isoformat()))
                .build()
            )
            builder = builder.add_revoked_certificate(entry)
        crl = builder.sign(self._key, hashes.SHA256())
        from cryptography.hazmat.primitives import serialization

        write_atomic(self.files.crl, crl.public_bytes(serialization.Encoding.PEM))
