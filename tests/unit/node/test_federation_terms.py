"""A member takes part only in terms that name, as coordinator, the member it talks to.

Who coordinates decides whose consistency signature counts: never the coordinator's.
A hostile coordinator X that is also a member served terms naming a "ghost" coordinator:
the members then counted X's own signature, X showed two survivor splits (one to each
half, each made up to the threshold by its own signature) and rebuilt both secrets of
one member, unmasking its update. Real gRPC (a server serving the terms, the node's
client reading them)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from qdspace.federation.job import JobSpec
from qdspace.node.errors import PeerError
from qdspace.node.rpc.federation_client import FederationClient
from qdspace.protocols.v1 import federation_pb2 as pb

MEMBERS = ["A", "B", "C", "D", "X"]


def _terms(coordinator: str) -> JobSpec:
    return JobSpec.from_dict(
        {
            "job_id": "j1",
            "coordinator": coordinator,
            "model": "logreg",
            "shapes": [[8]],
            "rounds": 1,
            "min_members": 4,
            "members": MEMBERS,
            "secure_aggregation": True,
            "threshold": 3,
            "update_clip": 1.0,
        }
    )


async def _read_terms_from(served: JobSpec) -> JobSpec:
    async def get_job(request: pb.JobRef, context: grpc.aio.ServicerContext) -> pb.JobTerms:
        return pb.JobTerms(terms=served.canonical_bytes(), job_digest=served.digest())

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "qdspace.v1.Federation",
        {
            "GetJob": grpc.unary_unary_rpc_method_handler(
                get_job,
                request_deserializer=pb.JobRef.FromString,
                response_serializer=pb.JobTerms.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            return await FederationClient(channel, "X", "j1").job()
    finally:
        await server.stop(0)


def test_terms_naming_another_coordinator_are_refused() -> None:
    assert _terms("ghost").job_id == "j1"  # terms valid in themselves (else from_dict refuses)
    with pytest.raises(PeerError, match="naming 'ghost' as the coordinator"):
        asyncio.run(_read_terms_from(_terms("ghost")))
    assert asyncio.run(_read_terms_from(_terms("X"))).coordinator == "X"
