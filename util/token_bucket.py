"""A token bucket: a rate with a burst, for limits on what one caller may do how often.

The clock is the caller's (``now`` arguments, seconds on any monotonic scale), so tests
drive time by hand. Used by a host's per-tenant request rate (`node.host.admission`,
with `SharedBuckets` for the share each calling member may take of it); `TokenBuckets`,
one bucket per caller made on its first call, by the authority service's limit on how
often a member republishes its directory entry (`node.authority.service`) and a
producer's limit on a customer's root-cause questions (`node.runtime.trace_producer`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict


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

    def level(self, now: float) -> float:
        """The tokens held at ``now`` (nothing taken)."""
        with self._lock:
            self._refill(now)
            return self._tokens

    def give_back(self, now: float) -> None:
        """Return a token taken for something that turned out not to count (up to the
        burst): an attempt admitted on a token and then not refused."""
        with self._lock:
            self._refill(now)
            self._tokens = min(float(self.burst), self._tokens + 1.0)

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


class SharedBuckets:
    """One `TokenBucket` per key, the rate and burst shared equally among the keys that
    took (or tried to take) a token within the last ``window`` seconds, in at least
    ``least`` shares.

    Why shares of the callers *now*, not a fixed fraction each: with each member held to
    a fixed half of a tenant's rate, two members flooding together still took all of it,
    and a third member's calls were refused for as long as they kept at it. Here a
    third caller's first try (refused or not) makes it one of three: from their next
    call the two flooding ones get a third each, and what they leave of the tenant's
    rate is the third one's. A caller's bucket takes its new share when it next calls
    (a flooding one calls at once); one that stops calling for ``window`` seconds is
    forgotten, and the others' shares grow again. Memory is bounded by the callers of
    one window.
    """

    def __init__(self, rate: float, burst: int, *, window: float = 30.0, least: int = 2) -> None:
        self.rate = rate
        self.burst = burst
        self.window = window
        self.least = least
        #: key -> (its bucket, when it last called), the least recent first
        self._callers: OrderedDict[str, tuple[TokenBucket, float]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def shares(self) -> int:
        """How many shares the rate is cut into now (callers of the window, at least
        ``least``)."""
        return max(self.least, len(self._callers))

    def take(self, key: str, now: float) -> float:
        """`TokenBucket.take` of `key`'s bucket, at its share of the rate."""
        with self._lock:
            found = self._callers.pop(key, None)
            while self._callers:
                oldest, (_, seen) = next(iter(self._callers.items()))
                if seen >= now - self.window:
                    break
                del self._callers[oldest]
            shares = max(self.least, len(self._callers) + 1)
            rate, burst = self.rate / shares, max(1, self.burst // shares)
            if found is None:
                bucket = TokenBucket(rate, burst, now)
            else:
                bucket = found[0]
                if bucket.rate != rate or bucket.burst != burst:
                    bucket.change(rate, burst, now)
            self._callers[key] = (bucket, now)
        return bucket.take(now)
