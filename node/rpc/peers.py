"""The peers a node knows by name, and the calls it makes to them."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import grpc

from qdspace.node.errors import PeerError, UnknownPeerError
from qdspace.node.identity.member import MemberKeys
from qdspace.node.rpc.client import open_channel
from qdspace.protocols.v1 import node_pb2, node_pb2_grpc, trace_pb2, trace_pb2_grpc

DEFAULT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class HelloResult:
    """A successful mutual authentication with a peer, as both sides saw it."""

    peer: str
    peer_member_id: str
    peer_role: str
    seen_as: str
    seen_as_role: str
    round_trip_ms: float


class PeerDirectory:
    """Peer name -> address, with one cached mTLS channel per peer."""

    def __init__(self, keys: MemberKeys, addresses: dict[str, str]):
        self._keys = keys
        self._addresses = dict(addresses)
        self._channels: dict[str, grpc.aio.Channel] = {}

    @property
    def names(self) -> list[str]:
        return sorted(self._addresses)

    def address(self, name: str) -> str:
        try:
            return self._addresses[name]
        except KeyError:
            raise UnknownPeerError(
                f"unknown peer {name!r}; known: {', '.join(self.names) or 'none'}"
            ) from None

    def channel(self, name: str) -> grpc.aio.Channel:
        if name not in self._channels:
            self._channels[name] = open_channel(self._keys, self.address(name), name)
        return self._channels[name]

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    async def hello(self, name: str, timeout: float = DEFAULT_TIMEOUT_S) -> HelloResult:
        stub = node_pb2_grpc.NodeStub(self.channel(name))
        nonce = uuid.uuid4().hex
        started = time.perf_counter()
        try:
            reply = await stub.Hello(node_pb2.HelloRequest(nonce=nonce), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise PeerError(
                f"peer {name} ({self.address(name)}): {exc.code().name}: {exc.details()}",
                exc.code().name,
            ) from None
        elapsed = (time.perf_counter() - started) * 1000
        if reply.nonce != nonce or reply.server.name != name:
            raise PeerError(f"peer {name} answered as {reply.server.name!r} with a wrong nonce")
        if reply.caller.member_id != self._keys.identity.member_id:
            raise PeerError(f"peer {name} saw us as {reply.caller.member_id!r}")
        return HelloResult(
            peer=name,
            peer_member_id=reply.server.member_id,
            peer_role=reply.server.role,
            seen_as=reply.caller.name,
            seen_as_role=reply.caller.role,
            round_trip_ms=elapsed,
        )

    async def upstream(
        self, name: str, batch_id: str, timeout: float = DEFAULT_TIMEOUT_S
    ) -> trace_pb2.UpstreamReply:
        stub = trace_pb2_grpc.TraceStub(self.channel(name))
        try:
            reply: trace_pb2.UpstreamReply = await stub.Upstream(
                trace_pb2.UpstreamRequest(batch_id=batch_id), timeout=timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise PeerError(
                f"peer {name}: {exc.code().name}: {exc.details()}", exc.code().name
            ) from None
        return reply
