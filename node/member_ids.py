"""Member ids: how one is made from a name and a key, and the name read back out of one.

A member id is ``<name>-<12 hex digits of SHA-256 of its Ed25519 verify key>``: stable for
the member's key, collision-resistant, and still readable as the company's name in logs,
agreements and reports. Its format lives here, in one place with no I/O and nothing
heavier than `hashlib`, so the runtime, the console and the demo (which may use the
node's vocabulary but not its internals) all read names the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Container

from qdspace.node.errors import NodeError

DIGEST_HEX = 12


def member_id_for(name: str, verify_key: bytes) -> str:
    """A stable, collision-resistant member id that still reads as the member's name."""
    return f"{name}-{hashlib.sha256(verify_key).hexdigest()[:DIGEST_HEX]}"


def peer_name(member_id: str) -> str:
    """The member name inside a member id (`member_id_for`); NodeError if it is not one."""
    name, _, digest = member_id.rpartition("-")
    if not name or len(digest) != DIGEST_HEX:
        raise NodeError(f"{member_id!r} is not a member id")
    return name


def addressed_name(peer: str, known: Container[str] = ()) -> str:
    """The member name of a peer as a message is addressed to it: the outbox addresses
    gRPC notifications by the peer's name and the DSP binding's callbacks by its member
    id. A name in `known` (the peers this node knows by name) is taken as it is, since a
    name may itself end in a dash and twelve hex digits; anything else that is no member
    id is shown as it was addressed."""
    if peer in known:
        return peer
    try:
        return peer_name(peer)
    except NodeError:
        return peer
