"""Errors of the usage-policy language.

One base (`PolicyError`) so the node maps every policy failure in one place; the
subclasses say which kind of failure it is, and also subclass the matching
built-in where a caller might reasonably catch that instead.
"""

from __future__ import annotations


class PolicyError(Exception):
    """Base of every error raised by `policies`."""


class PolicySyntaxError(PolicyError, ValueError):
    """A policy document is malformed; `path` is the JSON path of the offending part.

    The path is part of the message so that a peer who sent a bad offer learns
    exactly what to fix (for example ``$.permission[0].constraint[1].operator``).
    """

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class PolicyDenied(PolicyError, PermissionError):
    """A request was evaluated and refused; raised by `Decision.require()`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BpnNotAttested(PolicyDenied):
    """A policy asks for a business partner number the authority has not attested for the
    caller (a number the caller only claims counts for nothing)."""


class FrameworkNotAttested(PolicyDenied):
    """A policy asks for a framework agreement, and the authority attests none for the
    caller (`node.identity.attestations`): only the authority's word counts."""
