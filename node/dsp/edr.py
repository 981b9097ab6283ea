"""Data-plane tokens of the DSP binding: EDC's "EDR" (endpoint data reference) tokens.

A TransferStartMessage gives the consumer an HTTP pull endpoint (``/data/<providerPid>``)
and a short-lived bearer token for it. The token is an HMAC over its claims (the
provider pid, the consumer's member id, a generation and an expiry), keyed by a secret
derived from the node's own signing key, so it survives a restart and no one else can
make one. It is good only

- for that pid and presented by that consumer over mutual TLS (a token lifted from one
  connection is worthless on another member's),
- until ``dsp_token_ttl_s`` seconds after it was issued,
- while the transfer's *generation* is the one it was issued at: every DSP start,
  suspension or termination applied to the transfer (their message ids carry
  ``:dsp-``) moves the generation on, so a suspension or a termination revokes every
  token handed out before it, and a resume hands out a new one (a completion does not:
  a completed transfer may be read again until the token expires). The generation is
  read from the stored process, so revocation holds across restarts and needs no table
  of its own.

Refusals are `DataTokenError` (HTTP 401 through `node.faults`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass

from nacl.signing import SigningKey

from qdspace.connector.transfer import TransferProcess

_CONTEXT = b"qdspace.v1/dsp-edr\x00"
MAX_TOKEN = 1024
CONTROL_MARK = ":dsp-"


class DataTokenError(PermissionError):
    """A data-plane token that is missing, forged, expired, revoked or someone else's."""


@dataclass(frozen=True)
class DataClaims:
    pid: str
    consumer: str
    generation: int
    expires: int


def generation(process: TransferProcess) -> int:
    """How many DSP control messages the transfer has applied (see the module docstring)."""
    return sum(1 for message_id, _ in process.seen if CONTROL_MARK in message_id)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class DataTokens:
    """Issue and check data-plane tokens (one per node)."""

    def __init__(self, signing_key: SigningKey, ttl_s: int) -> None:
        self._key = hashlib.sha256(_CONTEXT + bytes(signing_key)).digest()
        self.ttl_s = ttl_s

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()

    def issue(self, pid: str, consumer: str, gen: int, now: float | None = None) -> str:
        expires = int(time.time() if now is None else now) + self.ttl_s
        claims = {"pid": pid, "sub": consumer, "gen": gen, "exp": expires}
        body = json.dumps(claims, separators=(",", ":"), sort_keys=True).encode()
        return f"{_b64(body)}.{_b64(self._mac(body))}"

    def verify(self, token: str, pid: str, consumer: str, now: float | None = None) -> DataClaims:
        """The claims of `token` when it is ours, current, for `pid` and for `consumer`
        (the generation is the caller's to compare with the stored process)."""
        if not token or len(token) > MAX_TOKEN or token.count(".") != 1:
            raise DataTokenError("no valid data-plane token (Authorization: Bearer <token>)")
        body_text, mac_text = token.split(".")
        try:
            body, mac = _unb64(body_text), _unb64(mac_text)
        except ValueError:
            raise DataTokenError("the data-plane token is not base64url") from None
        if not hmac.compare_digest(mac, self._mac(body)):
            raise DataTokenError("the data-plane token was not issued here")
        claims = json.loads(body)  # ours: the MAC proves it is the JSON we wrote
        found = DataClaims(claims["pid"], claims["sub"], claims["gen"], claims["exp"])
        if found.pid != pid or found.consumer != consumer:
            raise DataTokenError("the data-plane token is for another transfer or member")
        if found.expires <= int(time.time() if now is None else now):
            raise DataTokenError("the data-plane token has expired: resume the transfer")
        return found

    def check_current(self, claims: DataClaims, process: TransferProcess) -> None:
        """Refuse a token issued before the transfer's last control message."""
        if claims.generation != generation(process):
            raise DataTokenError(
                f"the data-plane token was revoked (transfer {process.state.value.lower()} since)"
            )
