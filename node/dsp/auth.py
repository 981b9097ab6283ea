"""Who is calling over the DSP binding: mutual TLS, then a self-issued ID token.

Two proofs, as the Decentralized Claims Protocol pairs them: the TLS handshake has
verified the caller's certificate against the data space's CA (the listener requires
one), and ``Authorization: Bearer <JWT>`` carries an ID token the caller signed with its
Ed25519 member key (EdDSA, PyJWT): issuer and subject its member id, audience the member
it calls, at most `MAX_TOKEN_S` seconds valid. The token is checked with the verify key
the member directory attests for that member (the key in its certificate, which the
directory pins by fingerprint: `PeerAuthenticator.check_standing`, which also refuses
revoked members), and its issuer must be the certificate's member: a token lifted from
one connection is worthless on another member's.

uvicorn does not hand the client certificate to the app, so `PeerCertH11` (its HTTP
protocol, one instance per connection) reads it off the TLS object and puts it in the
ASGI scope (``scope["extensions"]["tls"]["client_cert_der"]``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nacl.signing import SigningKey

from qdspace.node.errors import IdentityError
from qdspace.node.http_listener import HeadDeadlineH11
from qdspace.node.identity.certs import MemberIdentity, identity_of
from qdspace.node.rpc.auth import PeerAuthenticator, Refused

TOKEN_TTL_S = 60
MAX_TOKEN_S = 300
LEEWAY_S = 5


class DspAuthError(PermissionError):
    """A DSP caller without a valid certificate or ID token (HTTP 401)."""


def issue_token(key: SigningKey, issuer: str, audience: str, now: float | None = None) -> str:
    """A self-issued ID token for a call to `audience` (a member id)."""
    at = int(time.time() if now is None else now)
    claims = {
        "iss": issuer,
        "sub": issuer,
        "aud": audience,
        "iat": at,
        "exp": at + TOKEN_TTL_S,
        "jti": uuid.uuid4().hex,
    }
    private = Ed25519PrivateKey.from_private_bytes(bytes(key))
    return jwt.encode(claims, private, algorithm="EdDSA")


def verify_token(token: str, caller: MemberIdentity, audience: str) -> dict[str, Any]:
    """The token's claims, when `caller` issued it for `audience` and it is current."""
    public = Ed25519PublicKey.from_public_bytes(caller.verify_key)
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            public,
            algorithms=["EdDSA"],
            audience=audience,
            issuer=caller.member_id,
            leeway=LEEWAY_S,
            options={"require": ["iss", "sub", "aud", "iat", "exp"]},
        )
    except jwt.PyJWTError as exc:
        raise DspAuthError(f"ID token refused: {exc}") from None
    if claims["sub"] != caller.member_id:
        raise DspAuthError("ID token refused: its subject is not the certificate's member")
    if not isinstance(claims["iat"], int) or claims["exp"] - claims["iat"] > MAX_TOKEN_S:
        raise DspAuthError(f"ID token refused: valid for more than {MAX_TOKEN_S} s")
    return claims


def peer_of(scope: Mapping[str, Any], authenticator: PeerAuthenticator) -> MemberIdentity:
    """The member whose certificate the TLS handshake verified (in good standing)."""
    der = scope.get("extensions", {}).get("tls", {}).get("client_cert_der")
    if not der:
        raise DspAuthError("no client certificate")
    try:
        identity = identity_of(x509.load_der_x509_certificate(der))
        authenticator.check_standing(identity)
    except (ValueError, IdentityError) as exc:
        raise DspAuthError(f"bad client certificate: {exc}") from None
    except Refused as exc:
        raise DspAuthError(exc.reason) from None
    return identity


def bearer(header: str | None) -> str:
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token or len(token) > 4096:
        raise DspAuthError("Authorization: Bearer <ID token> is required")
    return token.strip()


class PeerCertH11(HeadDeadlineH11):
    """uvicorn's h11 protocol, passing the verified client certificate to the app (and
    closing a connection whose request head is late: `HeadDeadlineH11`)."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        inner = self.app

        async def with_peer(scope: Any, receive: Any, send: Any) -> None:
            if scope.get("type") == "http":
                extensions = {**scope.get("extensions", {}), "tls": {"client_cert_der": der}}
                scope = {**scope, "extensions": extensions}
            await inner(scope, receive, send)

        self.app = with_peer
