"""Which endpoints a member may publish in the directory: none that every follower would
dial on its own machine or network.

Every node that follows the directory dials the endpoints it lists, so an entry naming
``127.0.0.1:5432`` or ``169.254.169.254:80`` had every follower call its own database or
its cloud's metadata service (`util.hosts.local_kind` reads an address as the resolver
does: ``127.1``, ``2130706433`` and ``localhost`` are loopback too). Loopback and
private addresses are what a data space on one machine or one LAN publishes (``qdspace
demo``, the tests, `node.localnet.authority`): the operator opts in to them (``authority
serve --allow-local-endpoints``). Link-local, unspecified and multicast addresses are
refused always. A DNS name is taken as it is: where it points is its owner's business
and the follower's resolver's.
"""

from __future__ import annotations

from qdspace.node.identity.directory import DirectoryEntry, MalformedDirectory
from qdspace.util.hosts import is_host_port, local_kind

#: the kinds of address an entry may publish only where the operator opted in
LOCAL_KINDS = ("loopback", "private")


class LocalEndpoint(MalformedDirectory):
    """An entry naming an address of the dialler's own machine or network (module)."""


def check_endpoints(entry: DirectoryEntry, *, allow_local: bool) -> None:
    """Refuse an endpoint every follower would dial on its own machine or network;
    loopback and private ones pass with ``allow_local`` (module docstring)."""
    for kind, address in entry.endpoints.items():
        if not is_host_port(address):
            continue  # a later version's endpoint kind, not an address this one dials
        local = local_kind(address.rpartition(":")[0])
        if local is None or (local in LOCAL_KINDS and allow_local):
            continue
        hint = (
            " (an authority of a local network takes them: `authority serve "
            "--allow-local-endpoints`)"
            if local in LOCAL_KINDS
            else ""
        )
        raise LocalEndpoint(
            f"entry of {entry.name}: endpoint {kind} {address} is a {local} address, which "
            "every node following the directory would dial on its own machine or network: "
            f"publish an address or DNS name the others reach{hint}"
        )
