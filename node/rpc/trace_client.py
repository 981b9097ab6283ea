"""Asking a producer ``Trace/Investigate`` over mutual TLS (the `Ask` of `TraceRoom`).

The call carries the time left as its gRPC deadline (the producer's budget for its own
producers); the answer is decoded and checked (`trace_serde.answer_from_proto`) and must
come from the producer asked, which must be the member the agreement names (a name passes
to another member once its holder leaves: `PeerDirectory.confirm_member`). A refusal, a
timeout or a malformed answer becomes a `PeerError` naming the producer and the status:
the caller records it as a missing tier.

The reply comes back as bytes and is parsed, counted and decoded in a worker thread
(`trace_serde.reply_from_bytes`): the event loop serves every other call meanwhile.

How large a reply is read: `MAX_REPLY_BYTES` (22 MiB), set on the peer channel for this
method alone (`node.rpc.client.REPLY_LIMITS`), so gRPC refuses a larger reply on its
length prefix, before it is buffered or parsed. Before, any reply up to the channel's
64 MiB was received, and one up to 24 MiB parsed, before the counts refused it. The
limit is what an honest answer needs: the largest answer `connector.trace.check_answer`
accepts, every total reached (16 levels, 2,000 links, 32,000 parents, 20,000 ids spent
on 300-character evidence ids, 40 findings a level with 20 windows each, 8 missing
tiers a level) and every text at its character limit in ASCII, encodes to 20,831,026
bytes (19.9 MiB; `tests/unit/node/test_trace_reply_limit.py` builds it and fails when
the bounds or the messages change it). The 10.7 % above it is room for texts that are
not all ASCII (the bounds count characters, not bytes: at every bound, one character in
nine may take two bytes); an answer at every bound with every text in 2-byte characters
(37 MiB) or wider was refused before too (the old 24 MiB cap), only later. A reply
beyond the limit is a missing tier that says so (its size and the limit), like any other
refusal, and the trace goes on with the other tiers.

The channel is the peer's one cached channel: a per-method limit needs no channel, or
TLS connection, of its own (`node.rpc.client` says how it is set).

The reply is checked as the customers above us will check it once we relay it: at the
question's depth, about the batch ids asked, and with room for our own level (a reply
of 16 levels, fine for the OEM, would make ours 17 and our customer refuse all of it).
The levels' signatures are verified only by the OEM (`member_key` gives it the key of a
member by name: its directory entry, or for a static peer the one it presents, bound to
the member id of its certificate).
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import grpc

from qdspace.connector.trace import AnswerSize, TierAnswer, TraceError
from qdspace.node.errors import NodeError, PeerError
from qdspace.node.member_ids import member_id_for
from qdspace.node.rpc.client import TRACE_REPLY_BYTES, oversized_reply
from qdspace.node.rpc.peers import PeerDirectory
from qdspace.node.rpc.trace_serde import question_to_proto, reply_from_bytes
from qdspace.node.runtime.trace_producer import TraceQuestion
from qdspace.protocols.v1 import node_pb2, node_pb2_grpc, trace_pb2

logger = logging.getLogger("node.trace")

INVESTIGATE = "/qdspace.v1.Trace/Investigate"
#: the largest reply read (see the module docstring)
MAX_REPLY_BYTES = TRACE_REPLY_BYTES


def too_large(producer: str, size: int, limit: int = MAX_REPLY_BYTES) -> str:
    """The reason a reply too large to read gives its missing tier."""
    return f"{producer}: a reply of {size} bytes exceeds the limit of {limit} bytes"


def _refusal(producer: str, exc: grpc.aio.AioRpcError) -> PeerError:
    """The call's failure, as the missing tier's reason."""
    code = exc.code().name
    details = exc.details() or ""
    if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
        return PeerError(f"{producer}: no answer before the deadline", code)
    if (sizes := oversized_reply(exc)) is not None:
        # refused by our side's gRPC on the reply's length prefix: never read
        return PeerError(f"{too_large(producer, *sizes)} ({code}, not read)", code)
    return PeerError(f"{producer}: {code}: {details[:200]}", code)


#: how long the OEM waits for a member's key over a Hello (a static peer it does not list)
KEY_TIMEOUT_S = 5.0


def reply_reserve(question: TraceQuestion) -> AnswerSize:
    """What the asker adds above the reply before its customer checks it: its own level,
    unless the asker is the OEM (depth 0), whose own level goes to nobody."""
    return AnswerSize(levels=1 if question.depth > 0 else 0)


class GrpcAsk:
    """`TraceRoom`'s `Ask` over mutual TLS, and the members' verify keys for the OEM."""

    def __init__(self, peers: PeerDirectory) -> None:
        self.peers = peers
        #: member id -> verify key: a member id is made of its key (`member_id_for`), so
        #: a key found for it once stays its key
        self._keys: dict[str, bytes] = {}

    async def __call__(
        self, producer: str, member_id: str, question: TraceQuestion, timeout_s: float
    ) -> TierAnswer:
        peers = self.peers
        # the agreement's producer, not whoever holds its name now (`confirm_member`)
        await peers.confirm_member(member_id)
        # no deserializer: the bytes, parsed off the event loop below
        call = peers.channel(producer).unary_unary(
            INVESTIGATE,
            request_serializer=trace_pb2.InvestigateRequest.SerializeToString,
            response_deserializer=None,
        )
        try:
            reply: bytes = await call(question_to_proto(question), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _refusal(producer, exc) from None
        if len(reply) > MAX_REPLY_BYTES:  # a channel without the method's limit
            raise TraceError(too_large(producer, len(reply)))
        return await asyncio.to_thread(
            lambda: reply_from_bytes(
                reply,
                producer,
                question.path,
                depth=question.depth,
                asked=frozenset(question.batch_ids),
                reserve=reply_reserve(question),
            )
        )

    async def member_key(self, name: str) -> tuple[str, bytes] | None:
        """The member id and verify key of the member called `name` now (None: not
        known or not reachable, so its levels stay unverified)."""
        try:
            member_id = await self.peers.member_at(name)
            key = self._keys.get(member_id)
            if key is None:
                entry = self.peers.listed(member_id)
                if entry is not None and entry.name == name:
                    key = bytes.fromhex(entry.verify_key)
                else:  # a static peer the directory does not list
                    key = await self._hello(name)
        except (NodeError, ValueError, grpc.aio.AioRpcError) as exc:
            logger.info("trace: no verify key for %s: %s", name, exc)
            return None
        if member_id_for(name, key) != member_id:
            logger.warning("trace: %s: its verify key does not match its member id", name)
            return None
        self._keys[member_id] = key
        return member_id, key

    async def _hello(self, name: str) -> bytes:
        """The verify key a static peer states over its pinned mutual-TLS channel."""
        stub = node_pb2_grpc.NodeStub(self.peers.channel(name))
        request = node_pb2.HelloRequest(nonce=uuid.uuid4().hex)
        reply = await stub.Hello(request, timeout=KEY_TIMEOUT_S)
        if reply.server.name != name:
            raise PeerError(f"peer {name} answered as {reply.server.name[:64]!r}")
        return bytes(reply.server.verify_key)


def grpc_ask(peers: PeerDirectory) -> GrpcAsk:
    return GrpcAsk(peers)
