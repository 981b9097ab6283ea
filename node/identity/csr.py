"""Certificate requests: how a member asks for a certificate without giving away a key.

A joining member makes its two keys on its own machine (the Ed25519 signing key that signs
agreements, the P-256 TLS key) and sends the authority a PKCS#10 request: subject
O=space, OU=role, UID=member id, CN=name, the Ed25519 verify key in the project's
extension (`VERIFY_KEY_OID`, as in the certificates) and the hostnames it wants in the
certificate's SubjectAltName. The request is signed with the TLS key (PKCS#10's own proof
that the requester holds it); that alone would let anyone ask for a certificate carrying
*another* member's verify key (it is public: it sits in that member's certificate). So the
request also carries a proof of possession of the signing key (`POP_OID`): an Ed25519
signature over a domain-separated message that binds the TLS key's SubjectPublicKeyInfo,
the space, the name and the role. The authority signs only requests that carry both.

`read_request` checks all of it and says what is wrong; it is pure (bytes in, a
`CertificateRequest` or a `CertificateRequestError` out), so the CLI's ``authority sign``
and the authority service check requests the same way. A request is an applicant's bytes,
so every way `cryptography` can refuse one (a duplicated extension, a key of a kind it
does not know) is a `CertificateRequestError` too: before, those escaped as the service's
500. Names and hostnames are matched whole (``fullmatch``: a ``$`` also matches before a
final newline, and ``victim.example\n`` passed as a hostname, slipping past the check that
it is another member's). A member is never called ``localhost`` nor an IP address: every
member certificate carries ``localhost`` and ``127.0.0.1``, and one name as an IP address
becomes an address SAN, so such a name is not the member's own.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import nacl.signing
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from nacl.exceptions import BadSignatureError

from qdspace.node.identity.certs import (
    ROLES,
    VERIFY_KEY_OID,
    member_subject,
    san_of,
)
from qdspace.node.identity.errors import CertificateRequestError
from qdspace.node.member_ids import member_id_for

# 2.25.<uuid> is the registration-free OID arc (ITU-T X.667), as for VERIFY_KEY_OID.
POP_OID = x509.ObjectIdentifier("2.25.305179266244514816305902347768138538317")
POP_DOMAIN = b"qdspace certificate request v1"
#: a member name: it is a DNS name in the certificate and gRPC's target name for the member
NAME_PATTERN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62})$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63})*$")
MAX_HOSTNAMES = 16
MAX_REQUEST_BYTES = 16 * 1024


@dataclass(frozen=True)
class CertificateRequest:
    """What a verified request asks for; the authority builds the certificate from this."""

    space: str
    name: str
    role: str
    member_id: str
    verify_key: bytes
    public_key: ec.EllipticCurvePublicKey
    hostnames: tuple[str, ...]


def pop_message(*, space: str, name: str, role: str, spki: bytes) -> bytes:
    """What the signing key signs: the domain, then each field length-prefixed (so no
    two different requests share a message)."""
    parts = [POP_DOMAIN, space.encode(), name.encode(), role.encode(), spki]
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def _spki(public_key: ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise CertificateRequestError(
            f"member name {name!r} is not usable: 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if name.lower() == "localhost" or _is_ip(name):
        raise CertificateRequestError(
            f"member name {name!r} is not usable: it is localhost or an IP address, which "
            "is no member's own name (every member certificate carries localhost and "
            "127.0.0.1)"
        )
    return name


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def check_role(role: str) -> str:
    if role not in ROLES:
        raise CertificateRequestError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    return role


def check_hostnames(hostnames: Sequence[str]) -> tuple[str, ...]:
    """Hostnames and IP addresses a member may ask for; wildcards are refused."""
    if len(hostnames) > MAX_HOSTNAMES:
        raise CertificateRequestError(f"at most {MAX_HOSTNAMES} hostnames in a request")
    out: list[str] = []
    for host in hostnames:
        try:
            out.append(str(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        if not _HOSTNAME.fullmatch(host):
            raise CertificateRequestError(
                f"hostname {host!r} is not a DNS name or IP address (no wildcards)"
            )
        out.append(host.lower())
    return tuple(dict.fromkeys(out))


def build_request(
    *,
    space: str,
    name: str,
    role: str,
    tls_key: ec.EllipticCurvePrivateKey,
    signing_key: nacl.signing.SigningKey,
    hostnames: Sequence[str] = (),
) -> bytes:
    """A PEM certificate request for ``name`` as ``role``, signed by both of its keys."""
    check_name(name)
    check_role(role)
    hosts = check_hostnames(hostnames)
    verify_key = bytes(signing_key.verify_key)
    pop = signing_key.sign(
        pop_message(space=space, name=name, role=role, spki=_spki(tls_key.public_key()))
    ).signature
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(member_subject(space, name, member_id_for(name, verify_key), role))
        .add_extension(x509.UnrecognizedExtension(VERIFY_KEY_OID, verify_key), critical=False)
        .add_extension(x509.UnrecognizedExtension(POP_OID, bytes(pop)), critical=False)
    )
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName(san_of(hosts)), False)
    csr = builder.sign(tls_key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def _one(subject: x509.Name, oid: x509.ObjectIdentifier, what: str) -> str:
    values = subject.get_attributes_for_oid(oid)
    if len(values) != 1:
        raise CertificateRequestError(f"certificate request has no single {what} in its subject")
    value = values[0].value
    return value if isinstance(value, str) else value.decode()


def _extension(csr: x509.CertificateSigningRequest, oid: x509.ObjectIdentifier, what: str) -> bytes:
    try:
        ext = csr.extensions.get_extension_for_oid(oid).value
    except x509.ExtensionNotFound:
        raise CertificateRequestError(f"certificate request carries no {what}") from None
    if not isinstance(ext, x509.UnrecognizedExtension):
        raise CertificateRequestError(f"certificate request's {what} is malformed")
    return bytes(ext.value)


def _requested_hosts(csr: x509.CertificateSigningRequest) -> tuple[str, ...]:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    hosts: list[str] = []
    for entry in san:
        if isinstance(entry, x509.DNSName | x509.IPAddress):
            hosts.append(str(entry.value))
        else:
            raise CertificateRequestError(
                "certificate request asks for a SubjectAltName that is not a DNS name "
                "or an IP address"
            )
    return check_hostnames(hosts)


def read_request(pem: bytes) -> CertificateRequest:
    """Parse and verify a certificate request; `CertificateRequestError` says what is wrong."""
    if len(pem) > MAX_REQUEST_BYTES:
        raise CertificateRequestError(f"certificate request is over {MAX_REQUEST_BYTES} bytes")
    try:
        csr = x509.load_pem_x509_csr(pem)
        _ = csr.extensions  # parsed on first access: a malformed extension raises here
    except ValueError as exc:
        raise CertificateRequestError(f"not a PEM certificate request: {exc}") from None
    except x509.DuplicateExtension as exc:  # not a ValueError
        raise CertificateRequestError(f"certificate request is malformed: {exc}") from None
    try:
        signed, public_key = csr.is_signature_valid, csr.public_key()
    except UnsupportedAlgorithm as exc:
        raise CertificateRequestError(
            f"certificate request's key must be an EC P-256 key ({exc})"
        ) from None
    if not signed:
        raise CertificateRequestError("certificate request's signature does not verify")
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise CertificateRequestError("certificate request's key must be an EC P-256 key")
    space = _one(csr.subject, NameOID.ORGANIZATION_NAME, "O (space)")
    name = check_name(_one(csr.subject, NameOID.COMMON_NAME, "CN (member name)"))
    role = check_role(_one(csr.subject, NameOID.ORGANIZATIONAL_UNIT_NAME, "OU (role)"))
    member_id = _one(csr.subject, NameOID.USER_ID, "UID (member id)")
    verify_key = _extension(csr, VERIFY_KEY_OID, "member verify key")
    if len(verify_key) != 32:
        raise CertificateRequestError("certificate request's verify key is not 32 bytes")
    pop = _extension(csr, POP_OID, "proof of possession of the signing key")
    message = pop_message(space=space, name=name, role=role, spki=_spki(public_key))
    try:
        nacl.signing.VerifyKey(verify_key).verify(message, pop)
    except (BadSignatureError, ValueError, TypeError):
        raise CertificateRequestError(
            "certificate request's proof of possession does not verify: it was not signed "
            "by the signing key whose verify key it carries, for this TLS key, name and role"
        ) from None
    expected = member_id_for(name, verify_key)
    if member_id != expected:
        raise CertificateRequestError(
            f"certificate request's member id {member_id!r} is not {expected!r} "
            "(name and sha256 of the verify key)"
        )
    return CertificateRequest(
        space=space,
        name=name,
        role=role,
        member_id=member_id,
        verify_key=verify_key,
        public_key=public_key,
        hostnames=_requested_hosts(csr),
    )
