"""Asking a producer ``Trace/Investigate`` over mutual TLS (the `Ask` of `TraceRoom`).

The call carries the time left as its gRPC deadline (the producer's budget for its own
producers); the answer is decoded and checked (`trace_serde.answer_from_proto`) and must
come from the producer asked, which must be the member the agreement names (a name passes
to another member once its holder leaves: `PeerDirectory.confirm_member`). A refusal, a
timeout or a malformed answer becomes a `PeerError` naming the producer and the status:
the caller records it as a missing tier.
"""

from __future__ import annotations

import grpc

from qdspace.connector.trace import TierAnswer
from qdspace.node.errors import PeerError
from qdspace.node.rpc.peers import PeerDirectory
from qdspace.node.rpc.trace_serde import answer_from_proto, question_to_proto
from qdspace.node.runtime.trace_producer import Ask, TraceQuestion
from qdspace.protocols.v1 import trace_pb2_grpc


def grpc_ask(peers: PeerDirectory) -> Ask:
    async def ask(
        producer: str, member_id: str, question: TraceQuestion, timeout_s: float
    ) -> TierAnswer:
        # the agreement's producer, not whoever holds its name now (`confirm_member`)
        await peers.confirm_member(member_id)
        stub = trace_pb2_grpc.TraceStub(peers.channel(producer))
        try:
            reply = await stub.Investigate(question_to_proto(question), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
            if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
                raise PeerError(f"{producer}: no answer before the deadline", code) from None
            raise PeerError(f"{producer}: {code}: {(exc.details() or '')[:200]}", code) from None
        return answer_from_proto(reply.answer, producer)

    return ask
