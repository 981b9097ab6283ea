"""Which DSP providers a hosted member's staff may have the node call, and what they learn
when one cannot be reached.

``POST /v1/dsp/negotiations`` names a provider by URL, and the consumer's first call
(the discovery read, `node.dsp.consumer`) goes to whoever answers there. On a node of
its own that is the operator's business: it owns the machine and its network, and its
errors may say what went wrong. On a managed host the caller is a tenant's staff, and
the machine and its network are the host's: each failure was relayed as it happened
(a closed port ``ConnectError: All connection attempts failed``, a plain TCP service
``WRONG_VERSION_NUMBER``, a TLS service of another CA ``CERTIFICATE_VERIFY_FAILED``),
so a tenant mapped the host's loopback and private network port by port.

So a hosted member calls only where a provider of its space is published to be, as
a provider sends a consumer's callbacks (`node.dsp.callbacks`) and a consumer fetches
data (`connector.dsp_transfer.check_endpoint`) only there:

- the ``host:port`` of a DSP endpoint the signed member directory lists (any path under
  it: a DSP base URL), for a member that follows a directory;
- a host its static ``peers`` name (as written, never resolved; any port: the member's
  own machine, as a static peer's callbacks are taken), which only the host's operator
  sets for a tenant.

Anything else is refused before a connection is opened, and any failure to reach an
allowed one is answered alike, `ProviderNotReachable` (409), without the transport's
detail (the host's log keeps it). A refusal an allowed provider's server itself
answers (a 4xx over an established, verified connection) is still relayed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from qdspace.node.errors import PeerError
from qdspace.util.urls import host_port, https_origin, split_host_port

#: the status a refused or unreachable provider is answered with (`node.faults` relays
#: a `PeerError`'s gRPC status name: FAILED_PRECONDITION is 409)
NOT_REACHABLE_CODE = "FAILED_PRECONDITION"


class ProviderNotReachable(PeerError):
    """A hosted member's staff named a provider it may not call, or one it may call did
    not answer as a DSP server of the space (409): the same answer for every such
    failure, naming only the URL the caller gave."""

    def __init__(self, url: str) -> None:
        super().__init__(
            f"provider not reachable: provider_url {url[:200]!r} is not a DSP provider "
            "this member may call, or did not answer as one (a hosted member calls only "
            "the DSP addresses members publish in the member directory, and its static "
            "peers' hosts)",
            NOT_REACHABLE_CODE,
        )


@dataclass(frozen=True)
class ProviderReach:
    """The providers a hosted member may call: the DSP ``host:port`` endpoints of the
    directory it follows (`published`), and the hosts of its static peers (`hosts`)."""

    published: frozenset[str]
    hosts: frozenset[str]

    @classmethod
    def of(cls, published: Iterable[str], static: Iterable[str]) -> ProviderReach:
        """From the directory's ``dsp`` endpoints and the static peers' ``host:port``."""
        return cls(
            frozenset(p.lower() for p in published),
            frozenset(split_host_port(a)[0].lower() for a in static),
        )

    def allows(self, url: str) -> bool:
        """Whether `url` is served at a published DSP endpoint or on a static peer's host."""
        origin = https_origin(url)
        if origin is None:
            return False
        return host_port(*origin) in self.published or origin[0] in self.hosts
