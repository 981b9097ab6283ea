"""The authority service's own TLS certificate, issued by the data space's CA.

Members already trust the CA (``ca.crt``), so the service needs no public PKI: it
issues itself a server certificate for the hostnames and IP addresses it is reached
at, stores it beside the CA (``server.key`` 0600, ``server.crt``), and reissues it when
the names change or it nears its end. A joining member pins the CA by the fingerprint
in its enrollment code, and from then on verifies this certificate like any other.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from qdspace.node.identity.certs import cert_to_pem, key_to_pem, load_cert, new_tls_key
from qdspace.node.layout import AuthorityLayout
from qdspace.util.files import write_atomic

SERVER_VALID_DAYS = 365
#: reissue when less than this is left
RENEW_BEFORE = dt.timedelta(days=30)
DEFAULT_HOSTNAMES = ("localhost", "127.0.0.1")


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _names_of(cert: x509.Certificate) -> set[str]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    names = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    return names | set(sans.get_values_for_type(x509.DNSName))


def _current(files: AuthorityLayout, ca_cert: x509.Certificate, names: set[str]) -> bool:
    """Whether the stored server certificate is this CA's, for ``names``, and not ending."""
    if not (files.server_cert.exists() and files.server_key.exists()):
        return False
    cert = load_cert(files.server_cert, "authority server certificate")
    if cert.issuer != ca_cert.subject or _names_of(cert) != names:
        return False
    return cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > RENEW_BEFORE


def ensure_server_cert(
    files: AuthorityLayout,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    hostnames: Sequence[str],
) -> bool:
    """Issue ``server.crt``/``server.key`` unless the stored pair already fits; True if issued."""
    names = {h.strip() for h in hostnames if h.strip()} or set(DEFAULT_HOSTNAMES)
    if _current(files, ca_cert, names):
        return False
    key = new_tls_key()
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name(
        [
            *ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME),
            x509.NameAttribute(NameOID.COMMON_NAME, sorted(names)[0]),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in sorted(names)]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    write_atomic(files.server_key, key_to_pem(key), mode=0o600)
    write_atomic(files.server_cert, cert_to_pem(cert), mode=0o644)
    return True
