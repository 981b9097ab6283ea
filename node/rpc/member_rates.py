"""Each member's request rate on this node: a token bucket per member, in a bounded table.

The call caps (`node.rpc.limits`) bound what a member holds at once, not how often it
asks: a member that keeps one cheap call in flight and sends the next the moment it is
answered (a negotiation's state, the catalog, a DSP message on a process it holds, a
unary call in a tight loop) never meets a cap and takes the node's CPU from everybody
else. A managed host has worker shares per tenant; a standalone node has this: every
request a member sends (a gRPC call, a stream counting once, or a DSP request) takes a
token of the member's bucket, ``rate`` tokens a second up to ``burst``
(`util.token_bucket.TokenBucket`, the bucket the host and the authority use). A request
without one is refused with the seconds until the next: past what the transport spent
on it (TLS, the HTTP/2 or HTTP/1.1 framing, the client certificate read; on the DSP
listener a body of at most 64 KiB read and dropped), it costs a lock and a dictionary
look-up, not the servicer's or route's work (database reads, worker threads, pyld).

The table is bounded without changing what anyone is allowed: a bucket nobody took from
for ``burst / rate`` seconds is full again, the same as a new one, so it is dropped
(the least recently used are checked first, so each take drops at most what is due);
one that was given a token back (`give_back`) may be full sooner, and is read then.
Members are known (certificates of the space's authority), but the table still holds at
most ``max_members``: past that, the least recently seen member's bucket is dropped early
(it starts full again on its next request); with the default that takes more members
calling within ``burst / rate`` seconds than a data space has.

Refusals come in floods, so the adapters are told which ones to log (`RateVerdict`): a
member's first refusal, then at most one line every ``report_every_s`` with the number
refused since (a count not yet logged goes with its bucket when that is dropped).

Pure: no clock (``now`` arguments, seconds on any monotonic scale), no I/O; safe to call
from any thread.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

from qdspace.util.token_bucket import TokenBucket

#: members whose buckets are held at once (each a few hundred bytes)
DEFAULT_MAX_MEMBERS = 10_000
#: a flooding member's refusals are logged once, then summed up at most this often
DEFAULT_REPORT_EVERY_S = 10.0


@dataclass(frozen=True)
class RateVerdict:
    """What one request of a member gets: admitted (``wait_s`` 0.0), or refused with the
    seconds until its next token; ``report``: whether to log this refusal, for the
    ``refused`` requests of the member refused since its last logged one (this included)."""

    wait_s: float
    report: bool = False
    refused: int = 0

    @property
    def admitted(self) -> bool:
        return self.wait_s == 0.0


ADMITTED = RateVerdict(0.0)


class _Member:
    __slots__ = ("bucket", "given_back", "reported_at", "seen", "unreported")

    def __init__(self, bucket: TokenBucket, now: float) -> None:
        self.bucket = bucket
        self.seen = now
        self.given_back = False  # a token came back: it may be full before full_after_s
        self.unreported = 0
        self.reported_at: float | None = None


class MemberRates:
    """One `TokenBucket` per member (``rate`` a second, ``burst`` at most), made full on
    the member's first request, in a table of at most ``max_members`` (the module)."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_members: int = DEFAULT_MAX_MEMBERS,
        report_every_s: float = DEFAULT_REPORT_EVERY_S,
    ) -> None:
        if not (isinstance(rate, int | float) and math.isfinite(rate) and rate > 0):
            raise ValueError(f"a member's request rate must be a number above 0, not {rate!r}")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ValueError(
                f"a member's burst must be a whole number of at least 1, not {burst!r}"
            )
        if max_members < 1:
            raise ValueError(f"the rate table must hold at least one member, not {max_members}")
        self.rate = float(rate)
        self.burst = burst
        self.max_members = max_members
        self.report_every_s = report_every_s
        #: a bucket untouched this long is full again: it is the same as a new one
        self.full_after_s = burst / self.rate
        self._members: OrderedDict[str, _Member] = OrderedDict()  # least recently seen first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._members)

    def take(self, member: str, now: float) -> RateVerdict:
        """A token of `member`'s bucket at time `now`, or the refusal (`RateVerdict`)."""
        with self._lock:
            self._forget_full(now)
            entry = self._members.get(member)
            if entry is None:
                if len(self._members) >= self.max_members:
                    self._members.popitem(last=False)  # the least recently seen
                entry = self._members[member] = _Member(
                    TokenBucket(self.rate, self.burst, now), now
                )
            else:
                self._members.move_to_end(member)
                entry.seen = max(entry.seen, now)
            wait = entry.bucket.take(now)
            if wait == 0.0:
                return ADMITTED
            return self._refusal(entry, wait, now)

    def give_back(self, member: str, now: float) -> None:
        """Return the token `member` took for a request that turned out not to count
        (`util.token_bucket.TokenBucket.give_back`); nothing if it holds no bucket."""
        with self._lock:
            entry = self._members.get(member)
            if entry is not None:
                entry.bucket.give_back(now)
                entry.given_back = True

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that are full again (the least recently seen come first)."""
        members = self._members
        while members:
            entry = next(iter(members.values()))
            # full again: untouched for full_after_s, or sooner for a token given back
            # (read from the bucket only then: a lock, on every request otherwise)
            if now - entry.seen < self.full_after_s and not (
                entry.given_back and entry.bucket.level(now) >= self.burst
            ):
                return
            members.popitem(last=False)

    def _refusal(self, entry: _Member, wait: float, now: float) -> RateVerdict:
        entry.unreported += 1
        last = entry.reported_at
        if last is not None and now - last < self.report_every_s:
            return RateVerdict(wait)
        refused, entry.unreported, entry.reported_at = entry.unreported, 0, now
        return RateVerdict(wait, report=True, refused=refused)
