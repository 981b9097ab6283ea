"""Refused attempts per client address: how often one address may be told no.

Enrollment preview, enrollment and renewal are open to anyone who reaches the service
(what authorises them is in the request), and each refusal cost a lock, a read of the
book or the register, a request's signatures checked, and a line in the log: a caller
trying codes (or garbage) as fast as the service answered kept it busy and flooded its
log. Guessing is hopeless (a code's secret is 256 bits); the work and the log are not.

So each client address has a budget of refusals, a token bucket of `DEFAULT_BURST`
refusals at once and then one every `DEFAULT_EVERY_S`. An attempt takes a token before
the work (`AttemptRates.admit`) and gives it back when it was not refused
(`AttemptRates.spare`): an honest member enrolling or renewing, or a host renewing many
tenants from one address, never pays; attempts in flight at once cannot overdraw the
budget, since each holds its token while it runs. Without a token the attempt is
refused before any work, with the seconds until the next one (the service answers 429
and Retry-After). Addresses are counted as `client_key` reads them: an IPv6 address by
its /64 (one subscriber holds a whole prefix, and would otherwise have 2^64 budgets).
Behind a reverse proxy every client is the proxy's address: the service trusts no
forwarded-for header, so run it where it sees its callers.

The budgets are `node.rpc.member_rates.MemberRates`, the node's per-member request
rate, keyed by address and given back for what was not refused (``give_back``): a
budget full again is the same as none, so it is dropped, and the table holds at most
``max_clients``, past which the least recently seen address is dropped early (it starts
full on its next refusal). An attacker with more addresses than that gets a full budget
at each of them per round, but holds no more memory.

The log sees a flood once: an address's first attempt over its budget is reported,
then at most one line every ``report_every_s`` with the number refused since. Lines of
all addresses together go through one `LogBudget` (`util.token_bucket.TokenBucket`):
many addresses cannot flood the log either; what it holds back is counted and named by
the next line written.

Pure: no clock (``now`` arguments, seconds on any monotonic scale), no I/O; safe to call
from any thread.
"""

from __future__ import annotations

import ipaddress
import math
import threading

from qdspace.node.rpc.member_rates import MemberRates, RateVerdict
from qdspace.util.token_bucket import TokenBucket

#: refused attempts one address may make at once, then one every `DEFAULT_EVERY_S`
DEFAULT_BURST = 30
DEFAULT_EVERY_S = 2.0
#: addresses whose budgets are held at once (each about 200 bytes)
DEFAULT_MAX_CLIENTS = 10_000
#: an address over its budget is logged once, then summed up at most this often
DEFAULT_REPORT_EVERY_S = 10.0
#: refusal lines written at once, then one every `LOG_EVERY_S` (all addresses together)
LOG_BURST = 100
LOG_EVERY_S = 1.0
#: the key of a caller whose address the server does not know
UNKNOWN_CLIENT = "unknown"


def client_key(host: str | None) -> str:
    """The address ``host`` is counted by: an IPv4 address (an IPv4-mapped IPv6 one as
    IPv4), an IPv6 address's /64 network; anything else as given (or `UNKNOWN_CLIENT`)."""
    if not host:
        return UNKNOWN_CLIENT
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:100]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


#: what one attempt gets: admitted (``wait_s`` 0.0, a token held), or refused with the
#: seconds until the address has a token again; ``report``: whether to log this refusal,
#: for the ``refused`` attempts of the address refused since its last logged one
Admission = RateVerdict


class AttemptRates:
    """A budget of refusals per client address (the module): ``burst`` at once, then one
    every ``every_s``, in a table of at most ``max_clients`` addresses."""

    def __init__(
        self,
        burst: int = DEFAULT_BURST,
        every_s: float = DEFAULT_EVERY_S,
        *,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        report_every_s: float = DEFAULT_REPORT_EVERY_S,
    ) -> None:
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ValueError(f"a refusal burst must be a whole number of at least 1, not {burst!r}")
        if not (isinstance(every_s, int | float) and math.isfinite(every_s) and every_s > 0):
            raise ValueError(f"the seconds between refusals must be above 0, not {every_s!r}")
        if max_clients < 1:
            raise ValueError(f"the table must hold at least one address, not {max_clients}")
        self.burst = burst
        self.every_s = float(every_s)
        self._rates = MemberRates(
            1.0 / self.every_s, burst, max_members=max_clients, report_every_s=report_every_s
        )

    def __len__(self) -> int:
        return len(self._rates)

    def admit(self, client: str, now: float) -> Admission:
        """A token of ``client``'s budget for one attempt, or the refusal (`Admission`)."""
        return self._rates.take(client, now)

    def spare(self, client: str, now: float) -> None:
        """Give back the token an admitted attempt held: it was not refused."""
        self._rates.give_back(client, now)


class LogBudget:
    """Log lines of all callers together: ``burst`` at once, then one every ``every_s``;
    a line over it is held back (not written) and counted (module docstring)."""

    def __init__(self, burst: int = LOG_BURST, every_s: float = LOG_EVERY_S) -> None:
        self.burst, self.every_s = burst, every_s
        self._bucket: TokenBucket | None = None  # made full at the first line
        self._held = 0
        self._lock = threading.Lock()

    def line(self, now: float) -> int | None:
        """None: hold this line back; else write it, saying that the returned number of
        lines were held back before it (0: none)."""
        with self._lock:
            if self._bucket is None:
                self._bucket = TokenBucket(1.0 / self.every_s, self.burst, now)
            if self._bucket.take(now) > 0.0:
                self._held += 1
                return None
            held, self._held = self._held, 0
            return held
