"""Calling the authority service: what nodes and ``qdspace node join`` use (httpx only).

Everything is verified against the data space's CA, except the one call that fetches
the CA itself (`fetch_ca_unpinned`): a joining member has no trust anchor yet, so it
takes the certificate unverified and compares its sha256 with the fingerprint in its
enrollment code (kubeadm's discovery-token-ca-cert-hash) before trusting anything else.
Answers are read up to a size cap, so a hostile or broken server cannot make a node
hold an unbounded body.

The CA that signs the service's certificate signs every member's too, and a member's may
name any host it asked for (and ``localhost``): verified against the CA alone, a
member's server passed for the authority, and a joining node sent it its one-time
enrollment code. A connection to the service refuses, at the handshake and before a byte
of the request leaves, a certificate that carries a member's verify key
(`refuse_member_certificate`): the service's own certificate carries none. Failures are
one-line errors: `AuthorityUnavailable` when the service cannot be reached (or its TLS
does not verify), `AuthorityRefused` with the service's own problem detail when it said
no.

A node's ``ca.crt`` is a trust bundle: the authority's CA first, then any CA of another
PKI the operator trusts to issue *member* certificates. The service is verified against
the first alone (`service_ca`): trusting the whole bundle let any of those other CAs
issue a server certificate for the authority's host name and stand in for the service
(withhold the revocation list, answer renewals).
"""

from __future__ import annotations

import hashlib
import ssl
from typing import Any
from urllib.parse import urlsplit

import httpx

from qdspace.node.errors import ConfigError, NodeError
from qdspace.util.json_depth import loads as bounded_json

DEFAULT_TIMEOUT_S = 10.0
#: the largest answer read from the service (a directory of thousands of members fits)
MAX_RESPONSE_BYTES = 16 << 20


class AuthorityUnavailable(NodeError):
    """The authority service cannot be reached, or its TLS certificate does not verify."""


class AuthorityRefused(NodeError):
    """The authority service answered a request with an error; ``status`` is its HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def check_url(url: str) -> str:
    """An ``https://host[:port]`` base URL without a trailing slash."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(f"authority URL {url!r} must be https://HOST[:PORT]")
    return url.rstrip("/")


def ca_fingerprint(pem: bytes) -> str:
    """sha256 hex of a PEM certificate's DER (what enrollment codes pin)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    except ValueError:
        raise AuthorityRefused("the authority's /v1/ca.pem is not a PEM certificate", 502) from None
    return hashlib.sha256(der).hexdigest()


def refuse_member_certificate(der: bytes | None) -> None:
    """`ssl.SSLCertVerificationError` for a member's certificate (one carrying a member
    verify key): whatever names it holds, it is not the authority service's."""
    from cryptography import x509

    from qdspace.node.identity.certs import VERIFY_KEY_OID

    if der is None:
        raise ssl.SSLCertVerificationError("the server presented no certificate")
    cert = x509.load_der_x509_certificate(der)
    try:
        cert.extensions.get_extension_for_oid(VERIFY_KEY_OID)
    except x509.ExtensionNotFound:
        return
    names = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    who = str(names[0].value) if names else f"serial {cert.serial_number:x}"
    raise ssl.SSLCertVerificationError(
        f"the server presents member {who}'s certificate, not the authority service's"
    )


def service_ca(ca_pem: bytes) -> str:
    """The authority's CA out of a trust bundle (its first certificate): the one CA the
    service's own certificate may be verified against (module docstring)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        first = x509.load_pem_x509_certificates(ca_pem)[0]
    except (ValueError, IndexError):
        raise ConfigError("the authority's CA certificate is not PEM") from None
    return first.public_bytes(serialization.Encoding.PEM).decode()


class _ServiceSocket(ssl.SSLSocket):
    """A TLS connection that refuses a member's certificate once the handshake is done,
    before the request is written (httpx wraps every connection it opens with it)."""

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        try:
            refuse_member_certificate(self.getpeercert(binary_form=True))
        except ssl.SSLCertVerificationError:
            self.close()  # the caller never gets this socket to close
            raise


class AuthorityClient:
    """A verified HTTPS client of one authority service."""

    def __init__(self, url: str, ca_pem: bytes, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.url = check_url(url)
        context = ssl.create_default_context(cadata=service_ca(ca_pem))
        context.sslsocket_class = _ServiceSocket  # the service's certificate, no member's
        self._http = httpx.Client(base_url=self.url, verify=context, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AuthorityClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: Any = None) -> bytes:
        return _exchange(self._http, method, path, body, self.url)

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        raw = self._call(method, path, body)
        try:
            return bounded_json(raw)
        except ValueError:
            raise AuthorityRefused(f"{self.url}{path} answered with no JSON", 502) from None

    def preview(self, code: str) -> dict[str, str]:
        """``{name, role, space}`` of an enrollment code (not spent)."""
        answer = self._json("POST", "/v1/enrollment/preview", {"code": code})
        return _fields(answer, ("name", "role", "space"), "/v1/enrollment/preview")

    def enroll(self, code: str, csr_pem: bytes) -> dict[str, str]:
        """``{cert_pem, ca_pem, crl_pem, member_id}`` for a request admitted by ``code``."""
        answer = self._json("POST", "/v1/enrollment", {"code": code, "csr_pem": csr_pem.decode()})
        names = ("cert_pem", "ca_pem", "crl_pem", "member_id")
        return _fields(answer, names, "/v1/enrollment")

    def renew(self, csr_pem: bytes) -> bytes:
        """The new certificate (PEM) for a renewal request."""
        answer = self._json("POST", "/v1/renewal", {"csr_pem": csr_pem.decode()})
        return _fields(answer, ("cert_pem",), "/v1/renewal")["cert_pem"].encode()

    def crl_pem(self) -> bytes:
        return self._call("GET", "/v1/crl.pem")

    def directory(self) -> Any:
        return self._json("GET", "/v1/directory")

    def publish(self, entry: dict[str, Any], cert_pem: bytes) -> int:
        """Publish this member's signed entry; the directory serial that holds it."""
        answer = self._json(
            "POST", "/v1/directory/entries", {"entry": entry, "cert_pem": cert_pem.decode()}
        )
        serial = answer.get("serial") if isinstance(answer, dict) else None
        if not isinstance(serial, int):
            raise AuthorityRefused("/v1/directory/entries answered without a serial", 502)
        return serial


def fetch_ca_unpinned(url: str, timeout: float = DEFAULT_TIMEOUT_S) -> bytes:
    """The service's CA certificate, fetched WITHOUT verifying TLS: pin it by fingerprint."""
    base = check_url(url)
    with httpx.Client(base_url=base, verify=False, timeout=timeout) as http:
        return _exchange(http, "GET", "/v1/ca.pem", None, base)


def _exchange(http: httpx.Client, method: str, path: str, body: Any, base: str) -> bytes:
    where = f"{base}{path}"
    try:
        with http.stream(method, path, json=body) as response:
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > MAX_RESPONSE_BYTES:
                    raise AuthorityRefused(
                        f"{where} answered more than {MAX_RESPONSE_BYTES} bytes", 502
                    )
            status = response.status_code
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        raise AuthorityUnavailable(f"authority service {where} unreachable: {reason}") from None
    if status >= 400:
        detail = _detail(bytes(data))
        raise AuthorityRefused(f"authority service refused {method} {path}: {detail}", status)
    return bytes(data)


def _fields(answer: Any, names: tuple[str, ...], path: str) -> dict[str, str]:
    """The string fields ``names`` of a JSON answer, or `AuthorityRefused` naming the gap."""
    if not isinstance(answer, dict):
        raise AuthorityRefused(f"{path} answered with no JSON object", 502)
    missing = [n for n in names if not isinstance(answer.get(n), str)]
    if missing:
        raise AuthorityRefused(f"{path} answered without {', '.join(missing)}", 502)
    return {n: answer[n] for n in names}


def _detail(data: bytes) -> str:
    try:
        problem = bounded_json(data)
        return str(problem.get("detail") or problem.get("title"))[:500]
    except (ValueError, AttributeError):
        return data[:200].decode("utf-8", "replace") or "no detail"
