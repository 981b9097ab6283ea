"""A member's own keys: Ed25519 signing key (PyNaCl), TLS key and certificate."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from nacl.exceptions import CryptoError
from nacl.signing import SigningKey

from qdspace.node.errors import IdentityError
from qdspace.node.identity.authority import Authority
from qdspace.node.identity.certs import (
    MemberIdentity,
    cert_to_pem,
    identity_of,
    key_to_pem,
    load_cert,
    load_key,
    new_tls_key,
    verify_issued_by,
)
from qdspace.node.identity.files import read_file
from qdspace.node.layout import NodeLayout
from qdspace.util.files import write_atomic


def member_id_for(name: str, verify_key: bytes) -> str:
    """A stable, collision-resistant member id that still reads as the member's name."""
    return f"{name}-{hashlib.sha256(verify_key).hexdigest()[:12]}"


@dataclass(frozen=True)
class MemberKeys:
    """Everything a node needs to prove who it is and to check who others are."""

    signing_key: SigningKey
    tls_key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    ca_cert: x509.Certificate
    identity: MemberIdentity

    @property
    def tls_key_pem(self) -> bytes:
        return key_to_pem(self.tls_key)

    @property
    def cert_pem(self) -> bytes:
        return cert_to_pem(self.cert)

    @property
    def ca_pem(self) -> bytes:
        return cert_to_pem(self.ca_cert)


def create_member_keys(
    directory: Path,
    authority: Authority,
    *,
    name: str,
    role: str,
    valid_days: int | None = None,
    not_before: dt.datetime | None = None,
) -> MemberKeys:
    """Create keys and have the authority certify them; nothing is written if that fails."""
    signing_key = SigningKey.generate()
    verify_key = bytes(signing_key.verify_key)
    tls_key = new_tls_key()
    member_id = member_id_for(name, verify_key)
    kwargs = {} if valid_days is None else {"valid_days": valid_days}
    cert = authority.issue(
        name=name,
        member_id=member_id,
        role=role,
        public_key=tls_key.public_key(),
        verify_key=verify_key,
        not_before=not_before,
        **kwargs,
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = NodeLayout(directory)
    write_atomic(files.signing_key, bytes(signing_key).hex().encode(), mode=0o600)
    write_atomic(files.tls_key, key_to_pem(tls_key), mode=0o600)
    write_atomic(files.tls_cert, cert_to_pem(cert))
    write_atomic(files.ca_cert, cert_to_pem(authority.cert))
    return MemberKeys(signing_key, tls_key, cert, authority.cert, identity_of(cert))


def load_signing_key(path: Path) -> SigningKey:
    raw = read_file(path, "signing key").strip()
    try:
        seed = bytes.fromhex(raw.decode())
        return SigningKey(seed)
    except (ValueError, UnicodeDecodeError, CryptoError, TypeError):
        raise IdentityError(
            f"signing key {path} is corrupt: expected 64 hex characters (an Ed25519 seed)"
        ) from None


def load_member_keys(directory: Path, *, check_validity: bool = True) -> MemberKeys:
    """Load and cross-check a member's keys; any mismatch is an error naming the file."""
    if not directory.is_dir():
        raise IdentityError(f"node directory not found: {directory}")
    files = NodeLayout(directory)
    signing_key = load_signing_key(files.signing_key)
    tls_key = load_key(files.tls_key, "TLS key")
    cert = load_cert(files.tls_cert, "TLS certificate")
    ca_cert = load_cert(files.ca_cert, "authority certificate")
    if cert.public_key() != tls_key.public_key():
        raise IdentityError(f"{files.tls_key} does not match {files.tls_cert}")
    if check_validity:
        verify_issued_by(cert, ca_cert)
    identity = identity_of(cert)
    if identity.verify_key != bytes(signing_key.verify_key):
        raise IdentityError(
            f"{files.signing_key} does not match the verify key in {files.tls_cert}"
        )
    return MemberKeys(signing_key, tls_key, cert, ca_cert, identity)


def random_token() -> str:
    return os.urandom(24).hex()
