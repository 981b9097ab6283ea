"""A member's own keys: Ed25519 signing key (PyNaCl), TLS key and certificate.

The keys are made where they are used and never leave the member's directory: a member
asks for its certificate with a request (csr.py) and installs what the authority returns
(`create_member_request`, then `install_certificate`). The local path that tests, the demo
and ``qdspace node init --authority`` take (`create_member_keys`) goes the same way, the
authority only ever seeing the request. A renewal (`create_renewal_request`) keeps the
signing key, hence the member id, and puts a new TLS key aside (``tls-next.key``) until
its certificate comes back (``install_certificate(..., renew=True)``).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from nacl.exceptions import CryptoError
from nacl.signing import SigningKey

from qdspace.node.errors import IdentityError
from qdspace.node.identity.authority import MEMBER_VALID_DAYS, Authority
from qdspace.node.identity.certs import (
    MemberIdentity,
    cert_to_pem,
    identity_of,
    key_to_pem,
    load_ca_bundle,
    load_cert,
    load_key,
    new_tls_key,
    parse_ca_bundle,
    verify_issued_by,
)
from qdspace.node.identity.csr import build_request
from qdspace.node.identity.keyfiles import PLAIN, KeyFiles
from qdspace.node.layout import NodeLayout
from qdspace.node.member_ids import member_id_for
from qdspace.util.files import write_atomic

__all__ = [
    "MemberKeys",
    "create_member_keys",
    "create_member_request",
    "create_renewal_request",
    "install_certificate",
    "load_member_keys",
    "load_signing_key",
    "member_id_for",
    "random_token",
]


@dataclass(frozen=True)
class MemberKeys:
    """Everything a node needs to prove who it is and to check who others are."""

    signing_key: SigningKey
    tls_key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    ca_cert: x509.Certificate  # the authority's: it signs the revocation list
    identity: MemberIdentity
    #: the other CAs of ``ca.crt``, trusted to issue member certificates too
    other_cas: tuple[x509.Certificate, ...] = ()

    @property
    def trust(self) -> tuple[x509.Certificate, ...]:
        """Every CA a member certificate may be issued by: the authority's first."""
        return (self.ca_cert, *self.other_cas)

    @property
    def tls_key_pem(self) -> bytes:
        return key_to_pem(self.tls_key)

    @property
    def cert_pem(self) -> bytes:
        return cert_to_pem(self.cert)

    @property
    def ca_pem(self) -> bytes:
        """The trust bundle (TLS root certificates): the authority's CA and any other."""
        return b"".join(cert_to_pem(ca) for ca in self.trust)


def check_member_cert(
    signing_key: SigningKey,
    tls_key: ec.EllipticCurvePrivateKey,
    cert: x509.Certificate,
    trusted: Sequence[x509.Certificate],
    *,
    where: str,
    check_validity: bool = True,
) -> MemberIdentity:
    """The identity ``cert`` states, once it is checked to belong to these keys (and, with
    ``check_validity``, to be issued by a trusted CA and valid now)."""
    if cert.public_key() != tls_key.public_key():
        raise IdentityError(f"the TLS key does not match the certificate ({where})")
    if check_validity:
        verify_issued_by(cert, trusted)
    identity = identity_of(cert)
    if identity.verify_key != bytes(signing_key.verify_key):
        raise IdentityError(
            f"the signing key does not match the verify key in the certificate ({where})"
        )
    return identity


def _write_keys(
    files: NodeLayout,
    signing_key: SigningKey,
    tls_key: ec.EllipticCurvePrivateKey,
    key_files: KeyFiles = PLAIN,
) -> None:
    files.directory.mkdir(parents=True, exist_ok=True)
    key_files.write(files.signing_key, bytes(signing_key).hex().encode())
    key_files.write(files.tls_key, key_to_pem(tls_key))


def create_member_keys(
    directory: Path,
    authority: Authority,
    *,
    name: str,
    role: str,
    valid_days: int | None = None,
    not_before: dt.datetime | None = None,
    key_files: KeyFiles = PLAIN,
) -> MemberKeys:
    """Create keys and have a local authority certify them by a request (the authority sees
    no private key); nothing is written if that fails."""
    signing_key = SigningKey.generate()
    tls_key = new_tls_key()
    csr = build_request(
        space=authority.space, name=name, role=role, tls_key=tls_key, signing_key=signing_key
    )
    cert = authority.sign_request(
        csr,
        approve_name=name,
        approve_role=role,
        valid_days=MEMBER_VALID_DAYS if valid_days is None else valid_days,
        not_before=not_before,
    )
    where = f"issued by {authority.directory}"
    identity = check_member_cert(
        signing_key, tls_key, cert, [authority.cert], where=where, check_validity=False
    )
    files = NodeLayout(directory)
    _write_keys(files, signing_key, tls_key, key_files)
    write_atomic(files.tls_cert, cert_to_pem(cert))
    write_atomic(files.ca_cert, cert_to_pem(authority.cert))
    return MemberKeys(signing_key, tls_key, cert, authority.cert, identity)


def create_member_request(
    directory: Path,
    *,
    space: str,
    name: str,
    role: str,
    hostnames: Sequence[str] = (),
    key_files: KeyFiles = PLAIN,
) -> Path:
    """Make a member's keys in ``directory`` (0600) and the request to send the authority;
    returns the request's path. Refuses a directory that already holds a member."""
    files = NodeLayout(directory)
    for existing in (files.config, files.signing_key, files.tls_key):
        if existing.exists():
            raise IdentityError(
                f"{existing} exists: {directory} already holds a member "
                "(`qdspace node renew` makes a new request for it)"
            )
    signing_key = SigningKey.generate()
    tls_key = new_tls_key()
    csr = build_request(
        space=space,
        name=name,
        role=role,
        tls_key=tls_key,
        signing_key=signing_key,
        hostnames=hostnames,
    )
    _write_keys(files, signing_key, tls_key, key_files)
    write_atomic(files.request, csr, mode=0o644)
    return files.request


def requested_hostnames(cert: x509.Certificate, name: str) -> tuple[str, ...]:
    """The hostnames a certificate carries beyond what every member certificate has."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    always = {"localhost", name, "127.0.0.1"}
    hosts = [str(v) for v in san.get_values_for_type(x509.DNSName)]
    hosts += [str(v) for v in san.get_values_for_type(x509.IPAddress)]
    return tuple(h for h in hosts if h not in always)


def create_renewal_request(
    directory: Path, *, hostnames: Sequence[str] | None = None, key_files: KeyFiles = PLAIN
) -> Path:
    """A request for a new certificate over a new TLS key, same signing key (same member id);
    the new key waits in ``tls-next.key`` (written through ``key_files``: a hosted tenant's
    is sealed). Hostnames default to the current certificate's."""
    files = NodeLayout(directory)
    keys = load_member_keys(directory, check_validity=False, key_files=key_files)
    ident = keys.identity
    space = keys.cert.subject.get_attributes_for_oid(x509.oid.NameOID.ORGANIZATION_NAME)
    if len(space) != 1:
        raise IdentityError(f"{files.tls_cert} names no single data space (O)")
    tls_key = new_tls_key()
    csr = build_request(
        space=str(space[0].value),
        name=ident.name,
        role=ident.role,
        tls_key=tls_key,
        signing_key=keys.signing_key,
        hostnames=requested_hostnames(keys.cert, ident.name) if hostnames is None else hostnames,
    )
    key_files.write(files.next_tls_key, key_to_pem(tls_key))
    write_atomic(files.request, csr, mode=0o644)
    return files.request


def install_certificate(
    directory: Path,
    cert_pem: bytes,
    ca_pem: bytes,
    *,
    renew: bool = False,
    key_files: KeyFiles = PLAIN,
) -> MemberKeys:
    """Install the certificate the authority returned for this directory's request, with the
    trust bundle ``ca_pem`` (the authority's CA first). Checks that it certifies these keys,
    is issued by a CA of the bundle and valid now. With ``renew`` it is the certificate of
    ``tls-next.key``, which then replaces ``tls.key`` (the member id must not change)."""
    files = NodeLayout(directory)
    signing_key = load_signing_key(files.signing_key, key_files)
    key_path = files.next_tls_key if renew else files.tls_key
    what = "new TLS key" if renew else "TLS key"
    tls_key = load_key(key_path, what, key_files.read(key_path, what))
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise IdentityError(f"the certificate to install is not PEM: {exc}") from None
    trusted = parse_ca_bundle(ca_pem, "the authority certificate to install")
    if not trusted:
        raise IdentityError("the authority certificate to install is empty")
    identity = check_member_cert(
        signing_key, tls_key, cert, trusted, where=f"{key_path} and the certificate to install"
    )
    if renew:
        current = identity_of(load_cert(files.tls_cert, "TLS certificate"))
        if current.member_id != identity.member_id:
            raise IdentityError(
                f"the renewed certificate is for {identity.member_id}, this node is "
                f"{current.member_id}"
            )
    write_atomic(files.ca_cert, ca_pem)
    # The certificate first, then the key: a crash between the two leaves tls-next.key
    # matching tls.crt, which load_member_keys completes (see _finish_renewal).
    write_atomic(files.tls_cert, cert_to_pem(cert))
    if renew:
        _take_next_key(files, tls_key, key_files)
    files.request.unlink(missing_ok=True)
    return MemberKeys(signing_key, tls_key, cert, trusted[0], identity, trusted[1:])


def _finish_renewal(
    files: NodeLayout, cert: x509.Certificate, key_files: KeyFiles
) -> ec.EllipticCurvePrivateKey | None:
    """The renewed key, moved into place, if a renewal stopped between its two renames."""
    if not files.next_tls_key.exists():
        return None
    what = "new TLS key"
    pending = load_key(files.next_tls_key, what, key_files.read(files.next_tls_key, what))
    if pending.public_key() != cert.public_key():
        return None
    _take_next_key(files, pending, key_files)
    return pending


def _take_next_key(files: NodeLayout, key: ec.EllipticCurvePrivateKey, key_files: KeyFiles) -> None:
    """``tls-next.key`` becomes ``tls.key``: written anew (a sealed file is bound to its
    name, so it cannot be renamed), then the waiting copy removed; a crash between the two
    leaves both holding the new key, which the next load completes the same way."""
    key_files.write(files.tls_key, key_to_pem(key))
    files.next_tls_key.unlink(missing_ok=True)


def load_signing_key(path: Path, key_files: KeyFiles = PLAIN) -> SigningKey:
    raw = key_files.read(path, "signing key").strip()
    try:
        seed = bytes.fromhex(raw.decode())
        return SigningKey(seed)
    except (ValueError, UnicodeDecodeError, CryptoError, TypeError):
        raise IdentityError(
            f"signing key {path} is corrupt: expected 64 hex characters (an Ed25519 seed)"
        ) from None


def load_member_keys(
    directory: Path, *, check_validity: bool = True, key_files: KeyFiles = PLAIN
) -> MemberKeys:
    """Load and cross-check a member's keys; any mismatch is an error naming the file.
    ``key_files`` reads the private ones (a managed host's decrypt in memory)."""
    if not directory.is_dir():
        raise IdentityError(f"node directory not found: {directory}")
    files = NodeLayout(directory)
    signing_key = load_signing_key(files.signing_key, key_files)
    tls_key = load_key(files.tls_key, "TLS key", key_files.read(files.tls_key, "TLS key"))
    cert = load_cert(files.tls_cert, "TLS certificate")
    trusted = load_ca_bundle(files.ca_cert, "authority certificate")
    if not trusted:
        raise IdentityError(f"authority certificate {files.ca_cert} is empty")
    if cert.public_key() != tls_key.public_key():
        tls_key = _finish_renewal(files, cert, key_files) or tls_key
    if cert.public_key() != tls_key.public_key():
        raise IdentityError(f"{files.tls_key} does not match {files.tls_cert}")
    identity = check_member_cert(
        signing_key,
        tls_key,
        cert,
        trusted,
        where=f"{files.signing_key}, {files.tls_cert}",
        check_validity=check_validity,
    )
    return MemberKeys(signing_key, tls_key, cert, trusted[0], identity, trusted[1:])


def random_token() -> str:
    return os.urandom(24).hex()
