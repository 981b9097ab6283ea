"""Members and a servicer context for unit tests that call gRPC servicers in-process.

The node's and the connector's unit tests both drive servicers without a server: they
need members with fixed keys and a context whose `abort` raises what a servicer aborted
with. They live here, once, beside both folders."""

from __future__ import annotations

import datetime as dt

import grpc
from nacl.signing import SigningKey

from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.member_ids import member_id_for


def seeded_member(name: str, seed: bytes, role: str) -> tuple[SigningKey, MemberIdentity]:
    """A member's signing key (from `seed`, one byte repeated) and its identity, its
    certificate valid until 2100."""
    key = SigningKey(seed * 32)
    vk = bytes(key.verify_key)
    until = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
    return key, MemberIdentity(member_id_for(name, vk), name, role, vk, 1, until, name)


class Aborted(Exception):
    """What `AbortingContext.abort` raises: the status and reason a servicer aborted with."""

    def __init__(self, code: grpc.StatusCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class AbortingContext:
    """The part of a gRPC servicer context a servicer under test uses: `abort` raises
    `Aborted`; 5 s of deadline remain."""

    async def abort(self, code: grpc.StatusCode, reason: str) -> None:
        raise Aborted(code, reason)

    def time_remaining(self) -> float:
        return 5.0
