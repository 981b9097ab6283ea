"""Keyed pseudonyms per agreement, applied before rows leave the provider.

An operator id must not leave the company, but a consumer still needs to see
that two defects came from the same (unnamed) operator. So each value is
replaced by ``HMAC-SHA256(k_a, value)`` where ``k_a`` is derived (HKDF-SHA256,
RFC 5869) from the provider's secret and the agreement id: stable within one
agreement, unlinkable across agreements (two consumers cannot join their data
on it), and irreversible without the provider's secret.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from qdspace.connector.contract_errors import PseudonymError

MIN_SECRET_BYTES = 32
PSEUDONYM_PREFIX = "psn_"
_INFO = b"qdspace.v1/pseudonym/"
_SALT = b"qdspace.v1/pseudonym-salt"


def derive_agreement_key(provider_secret: bytes, agreement_id: str) -> bytes:
    """HKDF-SHA256(secret, salt, info = context + agreement id), 32 bytes."""
    if len(provider_secret) < MIN_SECRET_BYTES:
        raise PseudonymError(
            f"the provider's pseudonym secret has {len(provider_secret)} bytes; "
            f"at least {MIN_SECRET_BYTES} are needed"
        )
    if not agreement_id:
        raise PseudonymError("pseudonyms need an agreement id")
    prk = hmac.new(_SALT, provider_secret, hashlib.sha256).digest()
    return hmac.new(prk, _INFO + agreement_id.encode() + b"\x01", hashlib.sha256).digest()


class Pseudonymizer:
    """Pseudonyms for one agreement; holds only the derived key, never the provider secret."""

    def __init__(self, provider_secret: bytes, agreement_id: str) -> None:
        self.agreement_id = agreement_id
        self._key = derive_agreement_key(provider_secret, agreement_id)

    def __repr__(self) -> str:
        return f"Pseudonymizer(agreement_id={self.agreement_id!r})"

    def pseudonym(self, value: object) -> str:
        """The pseudonym of one value (its text form), e.g. ``psn_3f0c...`` (32 hex digits)."""
        if isinstance(value, bytes):
            data = b"b:" + value
        elif isinstance(value, str | int) and not isinstance(value, bool):
            data = b"s:" + str(value).encode()
        else:
            raise PseudonymError(f"cannot pseudonymise a {type(value).__name__}")
        return PSEUDONYM_PREFIX + hmac.new(self._key, data, hashlib.sha256).hexdigest()[:32]

    def apply(
        self, row: Mapping[str, Any], fields: Iterable[str], drop: Iterable[str] = ()
    ) -> dict[str, Any]:
        """A copy of `row` with `fields` pseudonymised (None stays None) and `drop` removed."""
        dropped = frozenset(drop)
        out = {k: v for k, v in row.items() if k not in dropped}
        for name in fields:
            value = out.get(name)
            if value is not None:
                out[name] = self.pseudonym(value)
        return out

    def apply_rows(
        self, rows: Iterable[Mapping[str, Any]], fields: Iterable[str], drop: Iterable[str] = ()
    ) -> Iterator[dict[str, Any]]:
        names = tuple(fields)
        dropped = tuple(drop)
        for row in rows:
            yield self.apply(row, names, dropped)
