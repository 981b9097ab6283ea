"""Errors of the node (composition root): configuration, identity, ports, peers."""

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


class UnknownPeerError(PeerError, LookupError):
    """A peer name that is not in this node's configuration (the caller's mistake)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "NOT_FOUND")
