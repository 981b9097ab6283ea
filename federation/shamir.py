"""Shamir secret sharing over the prime field GF(2^521 - 1).

Secure aggregation splits each member's pairwise-mask secret key and self-mask seed
into ``n`` shares so that any ``t`` of them rebuild it and fewer reveal nothing.
Secrets are 32-byte strings; the Mersenne prime 2^521 - 1 is larger than any of
them, so a secret is one field element. Randomness comes from ``secrets``.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from qdspace.federation.errors import SecAggError

PRIME = 2**521 - 1
SHARE_BYTES = 66  # ceil(521 / 8)
SECRET_BYTES = 32


@dataclass(frozen=True, slots=True)
class Share:
    """The point ``(x, y)`` of the sharing polynomial; ``x`` is the holder's index (>= 1)."""

    x: int
    y: int

    def to_bytes(self) -> bytes:
        return self.y.to_bytes(SHARE_BYTES, "big")

    @classmethod
    def from_bytes(cls, x: int, data: bytes) -> Share:
        if len(data) != SHARE_BYTES:
            raise SecAggError(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
        y = int.from_bytes(data, "big")
        if y >= PRIME:
            raise SecAggError("share value is outside the field")
        return cls(x, y)


def split(secret: bytes, n: int, t: int) -> list[Share]:
    """Shares for holders ``1..n`` of a 32-byte secret, any ``t`` of which rebuild it."""
    if len(secret) != SECRET_BYTES:
        raise SecAggError(f"a shared secret is {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= t <= n:
        raise SecAggError(f"threshold {t} must be between 1 and the {n} holders")
    coeffs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(t - 1)]
    shares = []
    for x in range(1, n + 1):
        y = 0
        for c in reversed(coeffs):
            y = (y * x + c) % PRIME
        shares.append(Share(x, y))
    return shares


def combine(shares: Sequence[Share], t: int) -> bytes:
    """Rebuild the secret from at least ``t`` shares with distinct ``x`` (Lagrange at 0).

    With more than ``t`` shares only the first ``t`` are used; a share set that was
    tampered with rebuilds a wrong value, which callers detect against a public key
    or commitment.
    """
    xs = [s.x for s in shares]
    if len(set(xs)) != len(xs):
        raise SecAggError(f"shares have repeated holder indices {sorted(xs)}")
    if len(shares) < t:
        raise SecAggError(f"{len(shares)} shares cannot rebuild a secret of threshold {t}")
    use = shares[:t]
    secret = 0
    for i, si in enumerate(use):
        num, den = 1, 1
        for j, sj in enumerate(use):
            if i != j:
                num = num * (-sj.x) % PRIME
                den = den * (si.x - sj.x) % PRIME
        secret = (secret + si.y * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 2 ** (8 * SECRET_BYTES):
        raise SecAggError("shares do not rebuild a 32-byte secret (inconsistent shares)")
    return secret.to_bytes(SECRET_BYTES, "big")


def _at(shares: Sequence[Share], x: int) -> int:
    """The polynomial through ``shares`` evaluated at ``x`` (Lagrange)."""
    value = 0
    for i, si in enumerate(shares):
        num, den = 1, 1
        for j, sj in enumerate(shares):
            if i != j:
                num = num * (x - sj.x) % PRIME
                den = den * (si.x - sj.x) % PRIME
        value = (value + si.y * num * pow(den, -1, PRIME)) % PRIME
    return value


def consistent(shares: Sequence[Share], t: int) -> bool:
    """Whether all ``shares`` lie on the one polynomial of degree ``t - 1`` the first ``t`` fix.

    With exactly ``t`` shares this is always true; each share beyond ``t`` is a check
    that the dealer did not hand out shares of different polynomials.
    """
    if len(shares) < t or len({s.x for s in shares}) != len(shares):
        return False
    base = shares[:t]
    return all(_at(base, s.x) == s.y for s in shares[t:])
