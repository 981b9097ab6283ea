"""``qdspace.v1.Trace``: one genealogy hop, answered only to the batch's customer.

A batch that does not exist and a batch sold to somebody else get the same answer
(status and words): otherwise a member could probe which batch ids a supplier holds.
Both statuses come from the node's fault table (`qdspace.node.faults`).
"""

from __future__ import annotations

import grpc

from qdspace.connector.genealogy import (
    BatchInfo,
    GenealogyError,
    NotYourBatch,
    UnknownBatch,
    upstream,
)
from qdspace.connector.storage import QualityStore
from qdspace.node.rpc.auth import current_peer
from qdspace.node.rpc.codes import status_code
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
    def __init__(self, store: QualityStore):
        self._store = store

    async def Upstream(
        self, request: trace_pb2.UpstreamRequest, context: grpc.aio.ServicerContext
    ) -> trace_pb2.UpstreamReply:
        peer = current_peer()
        try:
            batch, parents = upstream(self._store.engine, request.batch_id, customer=peer.name)
        except (UnknownBatch, NotYourBatch) as exc:  # one status and one answer for both
            await context.abort(status_code(exc), not_yours(request, peer.name))
        except GenealogyError as exc:
            await context.abort(status_code(exc), str(exc))
        return trace_pb2.UpstreamReply(
            batch=batch_to_proto(batch), parents=[batch_to_proto(p) for p in parents]
        )

    def register(self, server: grpc.aio.Server) -> None:
        trace_pb2_grpc.add_TraceServicer_to_server(self, server)
