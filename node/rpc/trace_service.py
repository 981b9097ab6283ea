"""``qdspace.v1.Trace``: one genealogy hop, and a root-cause question, answered only to
the batch's customer.

A batch that does not exist and a batch sold to somebody else get the same answer
(status and words): otherwise a member could probe which batch ids a supplier holds.
``Investigate`` decodes the question, calls `TraceRoom.answer` (which refuses with one
`TraceRefused` for every reason a caller may not ask) and encodes the answer; the
caller's gRPC deadline is the producer's budget for asking its own producers. Statuses
come from the node's fault table (`qdspace.node.faults`).

Nothing here reads the database or encodes a large message on the event loop, which
serves every other peer's calls: ``Upstream``'s reads and ``Investigate``'s encoding
(an honest answer with its producers' may be 20 MB, a quarter of a second to build) run
in a worker thread, and a question naming more batch ids than one may is refused on
its count before a list of them is made.
"""

from __future__ import annotations

import asyncio

import grpc

from qdspace.connector.errors import ConnectorError
from qdspace.connector.genealogy import (
    BatchInfo,
    GenealogyError,
    NotYourBatch,
    UnknownBatch,
    upstream,
)
from qdspace.connector.storage import QualityStore
from qdspace.connector.trace import check_batch_count
from qdspace.node.errors import LimitExceeded
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.rpc.auth import current_peer
from qdspace.node.rpc.codes import status_code
from qdspace.node.rpc.trace_serde import answer_to_proto, question_from_proto
from qdspace.node.runtime.trace_producer import TraceRoom
from qdspace.protocols.v1 import trace_pb2, trace_pb2_grpc


def batch_to_proto(batch: BatchInfo) -> trace_pb2.BatchRef:
    return trace_pb2.BatchRef(
        batch_id=batch.batch_id,
        material=batch.material,
        kind=batch.kind,
        producer=batch.producer,
        quantity=batch.quantity,
    )


def not_yours(request: trace_pb2.UpstreamRequest, caller: str) -> str:
    """The one answer for "no such batch" and "not your batch"."""
    return f"batch {request.batch_id[:200]!r} was not sold to {caller}"


class TraceServicer(trace_pb2_grpc.TraceServicer):
    def __init__(self, store: QualityStore, room: TraceRoom | None = None):
        self._store = store
        self._room = room

    async def Upstream(
        self, request: trace_pb2.UpstreamRequest, context: grpc.aio.ServicerContext
    ) -> trace_pb2.UpstreamReply:
        peer = current_peer()
        try:
            reply = await asyncio.to_thread(self._upstream, request.batch_id, peer.identity)
        except (UnknownBatch, NotYourBatch) as exc:  # one status and one answer for both
            await context.abort(status_code(exc), not_yours(request, peer.name))
        except GenealogyError as exc:
            await context.abort(status_code(exc), str(exc))
        return reply

    def _upstream(self, batch_id: str, caller: MemberIdentity) -> trace_pb2.UpstreamReply:
        """``Upstream``'s reads and reply, in a worker thread: the batch's customer by
        name, and by member id as far as our agreements tell (`genealogy.bought_by`)."""
        batch, parents = upstream(
            self._store.engine, batch_id, customer=caller.name, customer_id=caller.member_id
        )
        return trace_pb2.UpstreamReply(
            batch=batch_to_proto(batch), parents=[batch_to_proto(p) for p in parents]
        )

    async def Investigate(
        self, request: trace_pb2.InvestigateRequest, context: grpc.aio.ServicerContext
    ) -> trace_pb2.InvestigateReply:
        peer = current_peer()
        if self._room is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this node answers no traces")
        assert self._room is not None
        try:
            check_batch_count(len(request.batch_ids))  # before a list of them is made
            question = question_from_proto(request)
            answer = await self._room.answer(peer.identity, question, context.time_remaining())
        except (ConnectorError, LimitExceeded) as exc:  # (a customer asking too often)
            await context.abort(status_code(exc), str(exc))
        return trace_pb2.InvestigateReply(answer=await asyncio.to_thread(answer_to_proto, answer))

    def register(self, server: grpc.aio.Server) -> None:
        trace_pb2_grpc.add_TraceServicer_to_server(self, server)
