"""A token bucket: a rate with a burst, for limits on what one caller may do how often.

The clock is the caller's (``now`` arguments, seconds on any monotonic scale), so tests
drive time by hand. Used by a host's per-tenant request rate (`node.host.admission`);
`TokenBuckets`, one bucket per caller made on its first call, by the authority service's
limit on how often a member republishes its directory entry (`node.authority.service`)
and a producer's limit on a customer's root-cause questions
(`node.runtime.trace_producer`).
"""

from __future__ import annotations

import threading


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` held; it starts full."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at = now
        self._lock = threading.Lock()

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
            self._at = now

    def take(self, now: float) -> float:
        """0.0 when a token was taken; else the seconds until one will be there."""
        with self._lock:
            self._refill(now)
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            return (1.0 - self._tokens) / self.rate

    def change(self, rate: float, burst: int, now: float) -> None:
        """New limits; the tokens held are kept (up to the new burst)."""
        with self._lock:
            self._refill(now)
            self.rate, self.burst = rate, burst
            self._tokens = min(self._tokens, float(burst))


class TokenBuckets:
    """One `TokenBucket` per key (a member id), each made full on the key's first take."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def take(self, key: str, now: float) -> float:
        """`TokenBucket.take` of `key`'s bucket."""
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        return bucket.take(now)
