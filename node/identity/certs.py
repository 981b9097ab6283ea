"""X.509 plumbing shared by the authority and the members.

A member certificate carries who the member is, as the authority vouches for it:
subject CN = display name, UID = member id, OU = role, and a private extension
holding the member's Ed25519 verify key, so a peer learns the key that signs
agreements from the same chain it authenticated over TLS.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from qdspace.node.errors import IdentityError
from qdspace.node.identity.files import read_file
from qdspace.node.member_ids import member_id_for

ROLES = ("oem", "supplier", "host", "regulator")
# 2.25.<uuid> is the registration-free OID arc (ITU-T X.667).
VERIFY_KEY_OID = x509.ObjectIdentifier("2.25.161843220883410707447425040398612040751")


#: the CAs a member certificate may be issued by: the authority's, or a bundle (ca.crt)
Trust = x509.Certificate | Sequence[x509.Certificate]


@dataclass(frozen=True)
class MemberIdentity:
    """What a certificate says about a member."""

    member_id: str
    name: str
    role: str
    verify_key: bytes
    serial: int
    not_after: dt.datetime
    fingerprint: str


def new_tls_key() -> ec.EllipticCurvePrivateKey:
    """TLS keys are P-256: every gRPC/BoringSSL build and browser accepts them."""
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(path: Path, what: str, data: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    """The EC private key of the PEM file ``path`` (or of ``data``, its contents already
    read, e.g. decrypted by `identity.keyfiles`); errors name the file."""
    if data is None:
        data = read_file(path, what)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"{what} {path} is corrupt or not a PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise IdentityError(f"{what} {path} is not an EC private key")
    return key


def load_cert(path: Path, what: str) -> x509.Certificate:
    data = read_file(path, what)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise IdentityError(f"{what} {path} is corrupt or not a PEM certificate: {exc}") from None


def load_ca_bundle(path: Path, what: str) -> tuple[x509.Certificate, ...]:
    """Every certificate of a PEM file (a trust bundle: the authority's CA first, then any
    other CA the operator trusts to issue member certificates)."""
    return parse_ca_bundle(read_file(path, what), f"{what} {path}")


def parse_ca_bundle(data: bytes, label: str) -> tuple[x509.Certificate, ...]:
    try:
        certs = tuple(x509.load_pem_x509_certificates(data))
    except ValueError as exc:
        raise IdentityError(f"{label} is corrupt or not PEM certificates: {exc}") from None
    for ca in certs:
        try:
            is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise IdentityError(
                f"{label} holds a certificate that is not a CA ({ca.subject.rfc4514_string()})"
            )
    return certs


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def build_ca_cert(
    space: str, key: ec.EllipticCurvePrivateKey, *, valid_days: int, common_name: str = ""
) -> x509.Certificate:
    """A self-signed CA certificate for the data space ``space`` (issues member certificates
    and signs the revocation list; path length 0: no intermediates below it)."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, space),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name or f"{space} authority"),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=valid_days))
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


def build_crl(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    revoked: list[tuple[int, dt.datetime]],
    valid: dt.timedelta,
) -> bytes:
    """A PEM revocation list of (serial, revoked at), valid from now for ``valid``."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + valid)
    )
    for serial, when in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def san_of(hostnames: Sequence[str]) -> list[x509.GeneralName]:
    """SubjectAltName entries of hostnames: IP addresses as IPAddress, the rest as DNSName."""
    names: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def member_subject(space: str, name: str, member_id: str, role: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, space),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.USER_ID, member_id),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )


def build_member_cert(
    *,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    verify_key: bytes,
    hostnames: list[str],
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.Certificate:
    """Issue a certificate usable for both ends of mutual TLS."""
    sans = san_of(list(dict.fromkeys([*hostnames, "127.0.0.1"])))
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .add_extension(x509.UnrecognizedExtension(VERIFY_KEY_OID, verify_key), critical=False)
    )
    return builder.sign(ca_key, hashes.SHA256())


def _attr(name: x509.Name, oid: x509.ObjectIdentifier, cert_label: str) -> str:
    values = name.get_attributes_for_oid(oid)
    if len(values) != 1:
        raise IdentityError(f"certificate {cert_label} has no single {oid._name} attribute")
    value = values[0].value
    return value if isinstance(value, str) else value.decode()


def identity_of(cert: x509.Certificate) -> MemberIdentity:
    """Read the member's identity out of a certificate the authority issued."""
    label = f"serial {cert.serial_number:x}"
    role = _attr(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME, label)
    if role not in ROLES:
        raise IdentityError(f"certificate {label} carries unknown role {role!r}")
    try:
        ext = cert.extensions.get_extension_for_oid(VERIFY_KEY_OID).value
    except x509.ExtensionNotFound:
        raise IdentityError(f"certificate {label} carries no member verify key") from None
    assert isinstance(ext, x509.UnrecognizedExtension)
    name = _attr(cert.subject, NameOID.COMMON_NAME, label)
    member_id = _attr(cert.subject, NameOID.USER_ID, label)
    verify_key = bytes(ext.value)
    if len(verify_key) != 32:
        raise IdentityError(f"certificate {label}: the member verify key is not 32 bytes")
    # a CA of another PKI (ca.crt may trust one) does not derive the id itself: check it
    if member_id != member_id_for(name, verify_key):
        raise IdentityError(
            f"certificate {label} binds member id {member_id!r} to a verify key that is not "
            f"its own (expected {member_id_for(name, verify_key)!r})"
        )
    return MemberIdentity(
        member_id=member_id,
        name=name,
        role=role,
        verify_key=verify_key,
        serial=cert.serial_number,
        not_after=cert.not_valid_after_utc,
        fingerprint=fingerprint(cert),
    )


def verify_issued_by(cert: x509.Certificate, ca_cert: Trust) -> None:
    """Check that ``cert`` was signed by the authority, or by one of the CAs of a trust
    bundle (signature and validity period)."""
    cas = [ca_cert] if isinstance(ca_cert, x509.Certificate) else list(ca_cert)
    problem = "no CA of the trust bundle is its issuer"
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
            break
        except (ValueError, TypeError, InvalidSignature) as exc:
            problem = str(exc) if len(cas) == 1 else problem
    else:
        raise IdentityError(
            f"certificate serial {cert.serial_number:x} was not issued by "
            f"this data space's authority: {problem}"
        )
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise IdentityError(
            f"certificate serial {cert.serial_number:x} is not valid now "
            f"(valid {cert.not_valid_before_utc} .. {cert.not_valid_after_utc})"
        )
