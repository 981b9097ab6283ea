"""Asking a producer ``Trace/Investigate`` over mutual TLS (the `Ask` of `TraceRoom`).

The call carries the time left as its gRPC deadline (the producer's budget for its own
producers); the answer is decoded and checked (`trace_serde.answer_from_proto`) and must
come from the producer asked, which must be the member the agreement names (a name passes
to another member once its holder leaves: `PeerDirectory.confirm_member`). A refusal, a
timeout or a malformed answer becomes a `PeerError` naming the producer and the status:
the caller records it as a missing tier.

The reply comes back as bytes and is parsed, counted and decoded in a worker thread
(`trace_serde.reply_from_bytes`): a producer's reply may be large (the peer channel
takes up to 64 MiB), and the event loop serves every other call meanwhile. A reply
beyond `MAX_REPLY_BYTES`, more than any answer within `connector.trace`'s totals, is
refused unread.
"""

from __future__ import annotations

import asyncio

import grpc

from qdspace.connector.trace import TierAnswer, TraceError
from qdspace.node.errors import PeerError
from qdspace.node.rpc.peers import PeerDirectory
from qdspace.node.rpc.trace_serde import question_to_proto, reply_from_bytes
from qdspace.node.runtime.trace_producer import Ask, TraceQuestion
from qdspace.protocols.v1 import trace_pb2

INVESTIGATE = "/qdspace.v1.Trace/Investigate"
#: the largest reply read: an answer at every total of `connector.trace` is smaller
MAX_REPLY_BYTES = 24 * 1024 * 1024


def grpc_ask(peers: PeerDirectory) -> Ask:
    async def ask(
        producer: str, member_id: str, question: TraceQuestion, timeout_s: float
    ) -> TierAnswer:
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
            code = exc.code().name
            if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                raise PeerError(f"{producer}: no answer before the deadline", code) from None
            raise PeerError(f"{producer}: {code}: {(exc.details() or '')[:200]}", code) from None
        if len(reply) > MAX_REPLY_BYTES:
            raise TraceError(f"{producer}: an answer of {len(reply)} bytes is too large")
        return await asyncio.to_thread(reply_from_bytes, reply, producer, question.path)

    return ask
