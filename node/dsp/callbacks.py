"""Where a provider sends a consumer's DSP callbacks: only where the consumer's member
publishes its DSP listener in the signed member directory.

A DSP consumer names its own callback address in its first message (a
ContractRequestMessage, a TransferRequestMessage), and the provider's outbox then calls
it, again after every failure, for as long as the message stays queued. The client's
handshake check (`node.dsp.client`) keeps a callback from being written to a server
that is not that member, and a server that answers as someone else is set aside after a
few refusals; but an address where nothing listens looks like a consumer that is down
and is retried: a member could make the provider open connections to hosts and ports of
its choosing (a port scan of the provider's network, one try a minute, each a TCP
connect) and resolve names of its choosing. The address cannot be checked against
anything the consumer controls, only against what the member published under its own
signature and the authority's: the ``dsp`` endpoint of its directory entry
(`node.identity.directory`).

So a node that follows a directory (``authority_url``) takes a callback address only at
the published host and port (any path under it: a DSP base URL); a member that is not
listed, or publishes no DSP address, has its requests refused before anything is opened
or queued (400 at ``$.callbackAddress``, naming where the callback must be).

A node with static ``peers`` and no directory has only what its operator wrote: the
member's gRPC address (``NAME=HOST:PORT``). A callback is taken only on that host (the
same name or address, as written; any port: the member's own machine), so a member
cannot point the provider into the provider's own network either; a member that is
not among the static peers is refused, as an unlisted one is above. A name is compared
as written, never resolved (resolving a name of the member's choosing is what the rule
keeps the provider from doing).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from qdspace.connector import dsp_codec as codec
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.identity.directory import DirectoryEntry

#: a member's directory entry by member id (None: not listed)
Listed = Callable[[str], DirectoryEntry | None]
#: the ``host:port`` a static peer is configured at, by name (None: not a static peer)
StaticAddress = Callable[[str], str | None]


@dataclass(frozen=True)
class CallbackCheck:
    """The callback rule of one node: ``listed`` when it follows a directory, else
    ``static`` (its static peers' addresses); with neither (a test's bare binding) any
    address is taken."""

    listed: Listed | None = None
    static: StaticAddress | None = None

    def check(self, callback: str, peer: MemberIdentity) -> None:
        """Refuse `peer`'s `callback` unless its directory entry publishes it, or, with
        static peers, unless it is on the host the peer is configured at (see the module
        docstring)."""
        if self.listed is None:
            if self.static is not None:
                codec.check_static_callback(callback, self.static(peer.name), peer.name)
            return
        entry = self.listed(peer.member_id)
        if entry is None:
            raise codec.DspMessageError(
                "$.callbackAddress",
                f"member {peer.member_id[:128]} is not in the member directory this node "
                "follows yet, so its callback address cannot be checked: ask again once its "
                "entry is published",
            )
        codec.check_callback(callback, entry.endpoints.get("dsp"), peer.member_id)
