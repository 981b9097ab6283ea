"""Errors of the node (composition root): configuration, identity, ports, peers, the wire.

They live here, free of any transport import, so that `qdspace.node.faults` can name
every one of them in its table without pulling in grpc, protobuf or FastAPI.
"""

from __future__ import annotations


class NodeError(Exception):
    """Base of every error the node raises; the CLI prints its message as one line."""


class ConfigError(NodeError, ValueError):
    """A node directory or its configuration is missing, unreadable or inconsistent."""


class IdentityError(NodeError):
    """A key, certificate or revocation list is missing, corrupt or does not verify."""


class PortInUseError(NodeError, OSError):
    """A configured port cannot be bound."""


class PeerError(NodeError):
    """A peer is unknown, unreachable or refused a call; ``code`` is the gRPC status name."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code


class PeerRefused(PeerError):
    """A peer answered a request and declined it (a 4xx with its reason): unlike a peer
    that could not be reached or failed (which may yet have acted on it), the request is
    known not to have been taken up, so what the caller opened for it can be closed."""

    def __init__(self, message: str, status: int, reason: str, code: str | None = None):
        super().__init__(message, code)
        self.status = status
        self.reason = reason


class PeerBusy(PeerError):
    """A peer answered 429: we hold as many requests in flight there as it allows (its
    DSP listener's caps, `node.dsp.caps`). The same request later may pass."""


class NotTheMember(PeerError):
    """The server at an address is not the member the call is for: another member, one
    no longer in good standing, or no server of the space at all (no TLS, or a
    certificate the space's CA did not issue). Unlike a peer that cannot be reached, this
    does not pass by waiting; the outbox counts it as a refusal (an address a peer named
    for itself, such as a DSP callback address, may point anywhere)."""


class UnknownPeerError(PeerError, LookupError):
    """A peer name that is not in this node's configuration (the caller's mistake)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "NOT_FOUND")


class WireFormatError(NodeError, ValueError):
    """A message from a peer that does not decode into a valid domain value."""

    grpc_status = "INVALID_ARGUMENT"


class LimitExceeded(Exception):
    """A call over one of the peer server's caps; the message names the cap."""


class NumberOutOfRange(ValueError):
    """A number in a peer's message is NaN, infinite or outside what its field can mean."""


class NulInString(ValueError):
    """A string in a peer's message holds a NUL character: no id, name or text of the
    protocol does, and PostgreSQL refuses one in any string it is given."""


class DspNotServed(NodeError):
    """A DSP operation asked of a node that runs no DSP listener (its `dsp_port` is unset):
    the operator's request is fine, the node's configuration does not allow it (409)."""


class AnchoringBlocked(NodeError):
    """Anchoring cannot proceed for a reason of the chain or its configuration (e.g. the
    endpoint serves another chain), not of the request that asked for it."""


class PurgeNotConfirmed(NodeError, ValueError):
    """A request to purge (delete everything held under agreements, irreversibly) that
    does not name this node as the one to purge; nothing was deleted."""


class QuotaError(NodeError):
    """A member over a quota its host set (`node.host.quotas`), or a node short of disk
    (`DiskLow`): its message (which quota, its limit, the use) is the caller's to read,
    even where the status is a 5xx (507)."""


class DiskLow(QuotaError):
    """A bulk write (an ingest, rows a provider sends) that would leave less free disk
    than the node keeps for its own records (`node.disk_room`); nothing was written."""


class OutsideTenantFiles(NodeError, PermissionError):
    """A hosted tenant's staff named a file outside its own files folder
    (`node.api.caller_paths`)."""


class OfferNotNarrowable(NodeError, ValueError):
    """Terms asked of a DSP provider whose published offer is not of this node's form
    (another connector's): such an offer is asked for as published."""
