"""Refused attempts per client address and per network: how often one may be told no.

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

An address's budget alone let a caller with many addresses have many budgets: an IPv6
/48 (one site's usual assignment) holds 65,536 /64s, each with a full budget. So each
address's network (`network_of`: an IPv4 /24, an IPv6 /48) has a budget of its own too,
ten addresses' worth (`DEFAULT_NETWORK_BURST` at once, then one every
`DEFAULT_NETWORK_EVERY_S`), and an attempt needs a token of both; a refusal says which
budget is spent (`Admission.network`). The network's is taken first, and the address's
only when it was there: a network over its budget is refused without touching the
address table, so new addresses of a spent network (a flood of distinct /64s) add no
address budgets, nor push anyone's out of the table; a token taken from one budget is
given back when the other refuses (a 429 spends nothing). The price: while a network is
spent, its honest callers are refused too (as today an address's are, behind one NAT),
until it has tokens again.

The budgets are `node.rpc.member_rates.MemberRates`, the node's per-member request
rate, keyed by address, and by network in a table of its own, and given back for what
was not refused (``give_back``): a budget full again is the same as none, so it is
dropped, and each table holds at most its ``max_clients`` / ``max_networks``, past which
its least recently seen entry is dropped early (it starts full on its next refusal). So
memory is bounded whatever the callers do, and as the tables are apart, no number of
addresses evicts a network's budget: that takes more networks than ``max_networks``
(10,000 /48s or /24s) refused within a minute (the time a spent network budget takes to
fill), and a caller holding so many gets a full budget at each per round, but holds no
more memory.

Callers are counted by the address they connect from. Behind a reverse proxy every
client is the proxy's address, and shares its budgets: name the proxy as trusted
(``authority serve --trusted-proxy``) and the client's address is read from the
proxy's X-Forwarded-For (`node.authority.forwarded`); from any other peer, and by
default from every peer, the header is ignored.

The log sees a flood once: an address's (or network's) first attempt over its budget is
reported, then at most one line every ``report_every_s`` with the number refused since.
Lines of all callers together go through one `LogBudget` (`util.token_bucket.TokenBucket`):
many addresses cannot flood the log either; what it holds back is counted and named by
the next line written.

Pure: no clock (``now`` arguments, seconds on any monotonic scale), no I/O; safe to call
from any thread.
"""

from __future__ import annotations

import ipaddress
import math
import threading
from dataclasses import dataclass

from qdspace.node.rpc.member_rates import MemberRates, RateVerdict
from qdspace.util.token_bucket import TokenBucket

#: refused attempts one address may make at once, then one every `DEFAULT_EVERY_S`
DEFAULT_BURST = 30
DEFAULT_EVERY_S = 2.0
#: a network's budget: ten addresses' worth, at once and over time
NETWORK_SCALE = 10
DEFAULT_NETWORK_BURST = NETWORK_SCALE * DEFAULT_BURST
DEFAULT_NETWORK_EVERY_S = DEFAULT_EVERY_S / NETWORK_SCALE
#: the prefix lengths of the networks addresses are counted in as well
IPV4_NETWORK = 24
IPV6_NETWORK = 48
#: addresses whose budgets are held at once (each about 200 bytes); as many networks
DEFAULT_MAX_CLIENTS = 10_000
DEFAULT_MAX_NETWORKS = 10_000
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


def network_of(client: str) -> str | None:
    """The network a client (as `client_key` reads it) is counted in as well: an IPv4
    address's /24, an IPv6 /64's /48; None for a client that is no address."""
    try:
        network = ipaddress.ip_network(client)
    except ValueError:
        return None
    wide = IPV4_NETWORK if network.version == 4 else IPV6_NETWORK
    if network.prefixlen <= wide:
        return str(network)
    return str(network.supernet(new_prefix=wide))


@dataclass(frozen=True)
class Budget:
    """One kind of budget (``tier``: "address" or "network"): ``burst`` refusals at once,
    then one every ``every_s``."""

    tier: str
    burst: int
    every_s: float

    def __str__(self) -> str:
        return f"{self.tier} budget: {self.burst} at once, then one every {self.every_s:g} s"


@dataclass(frozen=True)
class Admission:
    """What one attempt gets: admitted (``wait_s`` 0.0, a token of each budget held), or
    refused with the seconds until the spent ``budget`` has a token again; ``network``:
    the network that is spent, None when it is the address's own budget. ``report``:
    whether to log this refusal, for the ``refused`` attempts refused since its budget's
    last logged one (this included)."""

    wait_s: float
    report: bool = False
    refused: int = 0
    network: str | None = None
    budget: Budget | None = None

    @property
    def admitted(self) -> bool:
        return self.wait_s == 0.0


ADMITTED = Admission(0.0)


def _checked(burst: int, every_s: float, what: str) -> tuple[int, float]:
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise ValueError(
            f"{what} refusal burst must be a whole number of at least 1, not {burst!r}"
        )
    if not (isinstance(every_s, int | float) and math.isfinite(every_s) and every_s > 0):
        raise ValueError(f"{what} seconds between refusals must be above 0, not {every_s!r}")
    return burst, float(every_s)


class AttemptRates:
    """A budget of refusals per client address, ``burst`` at once, then one every
    ``every_s``, in a table of at most ``max_clients`` addresses; and one per network,
    ``network_burst`` / ``network_every_s`` (ten addresses' worth unless given), in a
    table of at most ``max_networks`` (the module)."""

    def __init__(
        self,
        burst: int = DEFAULT_BURST,
        every_s: float = DEFAULT_EVERY_S,
        *,
        network_burst: int | None = None,
        network_every_s: float | None = None,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        max_networks: int = DEFAULT_MAX_NETWORKS,
        report_every_s: float = DEFAULT_REPORT_EVERY_S,
    ) -> None:
        self.burst, self.every_s = _checked(burst, every_s, "an address's")
        self.network_burst, self.network_every_s = _checked(
            NETWORK_SCALE * burst if network_burst is None else network_burst,
            every_s / NETWORK_SCALE if network_every_s is None else network_every_s,
            "a network's",
        )
        if max_clients < 1 or max_networks < 1:
            raise ValueError(
                f"the tables must hold at least one address and one network, not "
                f"{max_clients} and {max_networks}"
            )
        self.address_budget = Budget("address", self.burst, self.every_s)
        self.network_budget = Budget("network", self.network_burst, self.network_every_s)
        self._addresses = MemberRates(
            1.0 / self.every_s, self.burst, max_members=max_clients, report_every_s=report_every_s
        )
        self._networks = MemberRates(
            1.0 / self.network_every_s,
            self.network_burst,
            max_members=max_networks,
            report_every_s=report_every_s,
        )

    def __len__(self) -> int:
        """The address budgets held (`networks`: the network budgets)."""
        return len(self._addresses)

    @property
    def networks(self) -> int:
        """The network budgets held."""
        return len(self._networks)

    def admit(self, client: str, now: float) -> Admission:
        """A token of ``client``'s network's budget and of its own for one attempt, or
        the refusal (`Admission`): the network's is asked first (the module)."""
        network = network_of(client)
        if network is not None:
            verdict = self._networks.take(network, now)
            if not verdict.admitted:
                return _refused(verdict, self.network_budget, network)
        verdict = self._addresses.take(client, now)
        if not verdict.admitted:
            if network is not None:
                self._networks.give_back(network, now)  # a 429 spends nothing
            return _refused(verdict, self.address_budget, None)
        return ADMITTED

    def spare(self, client: str, now: float) -> None:
        """Give back the tokens an admitted attempt held: it was not refused."""
        self._addresses.give_back(client, now)
        network = network_of(client)
        if network is not None:
            self._networks.give_back(network, now)


def _refused(verdict: RateVerdict, budget: Budget, network: str | None) -> Admission:
    return Admission(verdict.wait_s, verdict.report, verdict.refused, network, budget)


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
