"""The regulator credential: a short-lived bearer token signed with the regulator's member key.

A regulator proves who it is to any member's HTTP API without an account there: the token
carries the regulator's certificate (issued by the data space's authority), the audience
(the member id of the node asked), an expiry, and an Ed25519 signature by the member key
that the certificate names. The node checks the chain to its CA, the revocation list, the
role ``regulator``, the audience, the expiry and the signature; nothing is stored.

Token: ``base64url(cert DER) "." base64url(claims JSON) "." base64url(signature)``.

This module is the token format only (issue and check, no web framework): the
regulator's side (``node.client``, the demo, ``qdspace ledger fetch-proof``) issues,
the node's API (``node.api.regulator_auth``) checks.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import time
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from qdspace.node.errors import IdentityError
from qdspace.node.identity.certs import MemberIdentity, Trust, identity_of, verify_issued_by
from qdspace.node.identity.member import MemberKeys
from qdspace.node.identity.revocation import RevocationList
from qdspace.util.json_depth import loads as bounded_json

REGULATOR_ROLE = "regulator"
DEFAULT_TTL_S = 300
MAX_TTL_S = 3600
CLOCK_SKEW_S = 30


class CredentialError(IdentityError):
    """A regulator credential is missing, malformed, expired or not a regulator's."""


@dataclass(frozen=True, slots=True)
class RegulatorPrincipal:
    """Who called: the regulator's identity as its certificate states it."""

    member_id: str
    name: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise CredentialError(f"regulator credential: {what} is not base64url") from None


def issue_credential(
    keys: MemberKeys, audience: str, ttl_s: int = DEFAULT_TTL_S, now: float | None = None
) -> str:
    """A token for the node whose member id is ``audience``, valid ``ttl_s`` seconds."""
    if keys.identity.role != REGULATOR_ROLE:
        raise CredentialError(
            f"member {keys.identity.name} has role {keys.identity.role}; "
            "only a regulator can issue a regulator credential"
        )
    issued = int(time.time() if now is None else now)
    claims = {"aud": audience, "iat": issued, "exp": issued + ttl_s, "sub": keys.identity.member_id}
    body = json.dumps(claims, sort_keys=True, separators=(",", ":")).encode()
    cert_der = keys.cert.public_bytes(Encoding.DER)
    signed = _b64(cert_der) + "." + _b64(body)
    signature = keys.signing_key.sign(signed.encode()).signature
    return signed + "." + _b64(signature)


def check_credential(
    token: str,
    *,
    ca_cert: Trust,
    revocations: RevocationList,
    audience: str,
    now: float | None = None,
) -> RegulatorPrincipal:
    """The caller if ``token`` is a valid regulator credential for ``audience``."""
    parts = token.split(".")
    if len(parts) != 3:
        raise CredentialError("regulator credential: expected three dot-separated parts")
    cert_b64, claims_b64, sig_b64 = parts
    try:
        cert = x509.load_der_x509_certificate(_unb64(cert_b64, "certificate"))
    except ValueError:
        raise CredentialError("regulator credential: certificate is not DER") from None
    verify_issued_by(cert, ca_cert)
    ident = identity_of(cert)
    _check_standing(ident, cert, revocations, now)
    try:
        VerifyKey(ident.verify_key).verify(
            f"{cert_b64}.{claims_b64}".encode(), _unb64(sig_b64, "signature")
        )
    except (BadSignatureError, ValueError):
        raise CredentialError("regulator credential: signature does not match") from None
    _check_claims(_unb64(claims_b64, "claims"), ident, audience, now)
    return RegulatorPrincipal(ident.member_id, ident.name)


def _check_standing(
    ident: MemberIdentity, cert: x509.Certificate, revocations: RevocationList, now: float | None
) -> None:
    if ident.role != REGULATOR_ROLE:
        raise CredentialError(
            f"member {ident.name} has role {ident.role}; regulator endpoints need a regulator"
        )
    if revocations.is_revoked(ident.serial):
        raise CredentialError(f"member {ident.name}: certificate {ident.serial:x} is revoked")
    moment = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.UTC)
    if not cert.not_valid_before_utc <= moment <= cert.not_valid_after_utc:
        raise CredentialError(f"member {ident.name}: certificate is not valid now")


def _check_claims(raw: bytes, ident: MemberIdentity, audience: str, now: float | None) -> None:
    try:
        claims = bounded_json(raw)
        aud, iat, exp, sub = claims["aud"], int(claims["iat"]), int(claims["exp"]), claims["sub"]
    except (ValueError, KeyError, TypeError):
        raise CredentialError("regulator credential: claims are malformed") from None
    moment = time.time() if now is None else now
    if sub != ident.member_id:
        raise CredentialError("regulator credential: subject differs from the certificate")
    if aud != audience:
        raise CredentialError(f"regulator credential is for {aud!r}, not for this node")
    if exp - iat > MAX_TTL_S or iat > moment + CLOCK_SKEW_S:
        raise CredentialError("regulator credential: validity period is not acceptable")
    if moment > exp + CLOCK_SKEW_S:
        raise CredentialError("regulator credential has expired; issue a new one")
