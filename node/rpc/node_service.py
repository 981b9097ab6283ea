"""``qdspace.v1.Node``: the membership handshake."""

from __future__ import annotations

import time

import grpc

from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.rpc.auth import current_peer
from qdspace.protocols.v1 import node_pb2, node_pb2_grpc

SOFTWARE_VERSION = "qdspace/0.1.0"


def member_to_proto(identity: MemberIdentity) -> node_pb2.Member:
    return node_pb2.Member(
        member_id=identity.member_id,
        name=identity.name,
        role=identity.role,
        verify_key=identity.verify_key,
    )


class NodeServicer(node_pb2_grpc.NodeServicer):
    def __init__(self, me: MemberIdentity):
        self._me = me

    async def Hello(
        self, request: node_pb2.HelloRequest, context: grpc.aio.ServicerContext
    ) -> node_pb2.HelloReply:
        peer = current_peer()
        return node_pb2.HelloReply(
            server=member_to_proto(self._me),
            caller=member_to_proto(peer.identity),
            nonce=request.nonce,
            software_version=SOFTWARE_VERSION,
            server_time_unix_ms=int(time.time() * 1000),
        )

    def register(self, server: grpc.aio.Server) -> None:
        node_pb2_grpc.add_NodeServicer_to_server(self, server)
