"""The outgoing certificate check (`node.rpc.pins`) fails closed. It makes a TLS handshake
of its own before a call; a peer that drops only that connection and serves gRPC on the
others used to get every call through unchecked: a revoked static peer, a peer whose
directory entry pins another certificate, and a peer whose earlier refusal was thrown
away when the fresh handshake failed. Now no such call is made: UNAVAILABLE naming the
peer (retryable) while nothing was checked, UNAUTHENTICATED once a refusal is known.

Real gRPC servers with mutual TLS behind a hostile TCP front (asyncio) that decides,
per connection, whether to drop it or forward it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from qdspace.node.identity.authority import Authority
from qdspace.node.identity.member import MemberKeys, create_member_keys
from qdspace.node.identity.revocation import RevocationList
from qdspace.node.rpc.client import open_channel
from qdspace.node.rpc.peers import PeerDirectory
from qdspace.node.rpc.pins import PinChecker, pin_interceptors

pytestmark = pytest.mark.integration

METHOD = "/t.T/Echo"
#: a connection's number (from 1) and how many forwarded ones are open -> drop it?
Drop = Callable[[int, int], bool]


def _keys(authority: Authority, tmp: Path, name: str) -> MemberKeys:
    return create_member_keys(tmp / name, authority, name=name, role="supplier")


class _Peer:
    """A gRPC echo server with ``keys`` behind a front that drops the connections ``drop``
    names and forwards the rest; ``received``: what reached the server."""

    def __init__(self, keys: MemberKeys, drop: Drop) -> None:
        self.keys, self.drop = keys, drop
        self.received: list[bytes] = []
        self.log: list[str] = []
        self._count = 0
        self._alive = 0

    async def start(self) -> str:
        async def echo(request: bytes, _: grpc.aio.ServicerContext) -> bytes:
            self.received.append(request)
            return b"got:" + request

        handler = grpc.method_handlers_generic_handler(
            "t.T", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
        )
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers((handler,))
        creds = grpc.ssl_server_credentials(
            [(self.keys.tls_key_pem, self.keys.cert_pem)],
            root_certificates=self.keys.ca_pem,
            require_client_auth=True,
        )
        self._port = self._server.add_secure_port("127.0.0.1:0", creds)
        await self._server.start()
        self._front = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"127.0.0.1:{self._front.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        self._front.close()
        await self._server.stop(None)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._count += 1
        if self.drop(self._count, self._alive):
            self.log.append("dropped")
            writer.transport.abort()
            return
        self.log.append("forwarded")
        self._alive += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._port)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._alive -= 1


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


async def _outcome(call: grpc.aio.UnaryUnaryMultiCallable, payload: bytes) -> object:
    """The reply, or the (code, details) of the call's failure."""
    try:
        return await call(payload, timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""


def _checker_only(number: int, alive: int) -> bool:
    """The first connection (the checker's first handshake) and any made while a call's
    connection is open (the checker's later ones) are dropped; gRPC's are served."""
    return number == 1 or alive > 0


def test_a_revoked_static_peer_that_drops_the_check_is_not_called(tmp_path: Path) -> None:
    authority = Authority.init(tmp_path / "authority", "pins-space")
    me, evil = _keys(authority, tmp_path, "me"), _keys(authority, tmp_path, "cellex")
    authority.revoke("cellex", "went rogue")
    crl = RevocationList(authority.cert, authority.files.crl)
    peer = _Peer(evil, _checker_only)

    async def scenario() -> list[object]:
        address = await peer.start()
        peers = PeerDirectory(me, {"cellex": address}, revoked=crl.is_revoked)
        try:
            call = peers.channel("cellex").unary_unary(METHOD)
            return [await _outcome(call, b"secret-%d" % i) for i in range(3)]
        finally:
            await peers.close()
            await peer.stop()

    outcomes = asyncio.run(scenario())
    assert peer.received == [], (outcomes, peer.log)  # before: all three secrets arrived
    first = outcomes[0]
    assert isinstance(first, tuple) and first[0] is grpc.StatusCode.UNAVAILABLE, outcomes
    assert "cellex" in first[1] and "no TLS handshake" in first[1], first
    for outcome in outcomes[1:]:
        assert isinstance(outcome, tuple), outcomes
        assert outcome[0] in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)


def test_a_peer_presenting_another_certificate_than_pinned_is_not_called(
    tmp_path: Path,
) -> None:
    """Cellex's old certificate (e.g. a stolen backup of certificate and TLS key) served
    while the directory pins another: the pin is not bypassed by dropping the check."""
    authority = Authority.init(tmp_path / "authority", "pins-space")
    me, old = _keys(authority, tmp_path, "me"), _keys(authority, tmp_path, "cellex")
    crl = RevocationList(authority.cert, authority.files.crl)
    peer = _Peer(old, _checker_only)

    async def scenario() -> list[object]:
        address = await peer.start()
        checker = PinChecker(me, None, crl.is_revoked)
        pinned = pin_interceptors(checker, "cellex", address, lambda: "ab" * 32)
        channel = open_channel(me, address, "cellex", interceptors=pinned)
        try:
            call = channel.unary_unary(METHOD)
            return [await _outcome(call, b"secret-%d" % i) for i in range(2)]
        finally:
            await channel.close()
            await peer.stop()

    outcomes = asyncio.run(scenario())
    assert peer.received == [], (outcomes, peer.log)
    first = outcomes[0]
    assert isinstance(first, tuple) and first[0] is grpc.StatusCode.UNAVAILABLE, outcomes
    second = outcomes[1]
    assert isinstance(second, tuple) and second[0] is grpc.StatusCode.UNAUTHENTICATED, outcomes
    assert "directory entry names" in second[1], second


def test_a_remembered_revocation_stands_when_the_fresh_handshake_fails(tmp_path: Path) -> None:
    """The first check sees the revoked certificate and refuses; at the next call the
    fresh handshake (made because what was seen refuses) is dropped and the call's own
    connection served: the call is refused as before, not let through as undecided."""
    authority = Authority.init(tmp_path / "authority", "pins-space")
    me, evil = _keys(authority, tmp_path, "me"), _keys(authority, tmp_path, "cellex")
    authority.revoke("cellex", "went rogue")
    crl = RevocationList(authority.cert, authority.files.crl)
    peer = _Peer(evil, lambda number, _: number == 2)

    async def scenario() -> list[object]:
        address = await peer.start()
        peers = PeerDirectory(me, {"cellex": address}, revoked=crl.is_revoked)
        try:
            call = peers.channel("cellex").unary_unary(METHOD)
            return [await _outcome(call, b"secret-%d" % i) for i in range(2)]
        finally:
            await peers.close()
            await peer.stop()

    outcomes = asyncio.run(scenario())
    assert peer.received == [], (outcomes, peer.log)
    for outcome in outcomes:
        assert isinstance(outcome, tuple), outcomes
        assert outcome[0] is grpc.StatusCode.UNAUTHENTICATED and "revoked" in outcome[1], outcomes
