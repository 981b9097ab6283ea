"""The peers a node knows by name (static settings and the member directory), and the
calls it makes to them."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from qdspace.node.errors import NotTheMember, PeerError, UnknownPeerError
from qdspace.node.identity.attestations import Attested
from qdspace.node.identity.directory import DirectoryEntry
from qdspace.node.identity.member import MemberKeys
from qdspace.node.member_ids import peer_name
from qdspace.node.rpc.client import open_channel
from qdspace.node.rpc.pins import PinChecker, pin_interceptors
from qdspace.protocols.v1 import node_pb2, node_pb2_grpc, trace_pb2, trace_pb2_grpc

DEFAULT_TIMEOUT_S = 10.0
#: how long calls already on a retired channel (a peer whose address changed) may go on
#: before it is closed; a long transfer cut then resumes from its checkpoint
RETIRE_GRACE_S = 120.0


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
    """Peer name -> address, with one cached mTLS channel per peer.

    Two sources name peers: the static ``peers`` of the node's settings, and the
    authority's member directory (`follow`, called by ``runtime.directory`` whenever a
    verified document arrives). A static address wins over the directory's (air-gapped
    sites, or an address only this node can use); the directory's certificate
    fingerprint applies either way: outgoing calls check it before their first call to
    an address (`node.rpc.pins`), incoming calls in `node.rpc.auth` (`pinned`).
    """

    def __init__(
        self,
        keys: MemberKeys,
        addresses: dict[str, str],
        *,
        cert_files: tuple[Path, Path] | None = None,
        revoked: Callable[[int], bool] | None = None,
    ):
        self._keys = keys
        self._static = dict(addresses)
        self._listed: dict[str, DirectoryEntry] = {}
        self._by_member: dict[str, DirectoryEntry] = {}
        self._attested: dict[str, frozenset[str]] = {}
        self._own_frameworks: list[str] | None = None  # until a directory is followed
        self._channels: dict[str, tuple[str, grpc.aio.Channel]] = {}
        #: channels retired off the event loop (a directory loaded at start), closed at `close`
        self._retired: list[grpc.aio.Channel] = []
        #: the closes of channels retired on the loop, in their grace period
        self._closing: dict[asyncio.Task[None], grpc.aio.Channel] = {}
        self._pins = PinChecker(keys, cert_files, revoked)

    @property
    def names(self) -> list[str]:
        return sorted(set(self._static) | set(self._listed))

    def addresses(self) -> dict[str, str]:
        """Every known peer's address (the static one where both name it)."""
        return {name: self.address(name) for name in self.names}

    def address(self, name: str) -> str:
        if name in self._static:
            return self._static[name]
        if name in self._listed:
            return self._listed[name].peer
        raise UnknownPeerError(f"unknown peer {name!r}; known: {', '.join(self.names) or 'none'}")

    def static_address(self, name: str) -> str | None:
        """The address the node's settings name for peer ``name``, if they name one."""
        return self._static.get(name)

    async def confirm_member(self, member_id: str) -> str:
        """The name member ``member_id`` is called by (the one inside its id), once the
        peer called so is confirmed to be that member; `NotTheMember` if it is another: a
        name passes to another member once its holder has left (the authority frees it),
        and what is owed to the one must not reach the other. A listed name is the member
        its entry says (calls to it are pinned to that entry's certificate); a static peer
        the directory does not list is the member whose certificate it presents (one TLS
        handshake, each time). A peer that cannot be reached is not decided here:
        `PeerError`, tried again later."""
        name = peer_name(member_id)
        entry = self._listed.get(name)
        if entry is not None:
            if entry.member_id != member_id:
                raise NotTheMember(
                    f"the member called {name} is now {entry.member_id}, not {member_id} "
                    "(the name passed to another member): not sent"
                )
            return name
        address = self.address(name)
        presented = await self._pins.presented_member(name, address)
        if presented is None:
            raise PeerError(f"peer {name} at {address}: no TLS handshake to tell its member")
        if presented != member_id:
            raise NotTheMember(
                f"peer {name} at {address} is member {presented or '(none)'}, not {member_id} "
                "(the name passed to another member): not sent"
            )
        return name

    async def member_at(self, name: str) -> str:
        """The member id of the one called by ``name`` now: its directory entry's, or, for
        a static peer the directory does not list, the one in the certificate it presents
        (a TLS handshake); `PeerError` when no handshake completes (undecided)."""
        entry = self._listed.get(name)
        if entry is not None:
            return entry.member_id
        address = self.address(name)
        presented = await self._pins.presented_member(name, address)
        if presented is None:
            raise PeerError(f"peer {name} at {address}: no TLS handshake to tell its member")
        if not presented:
            raise NotTheMember(f"peer {name} at {address} presents a certificate of no member")
        return presented

    def fingerprint(self, name: str) -> str | None:
        """The certificate fingerprint the directory names for peer ``name``, if listed."""
        entry = self._listed.get(name)
        return entry.cert_fingerprint if entry is not None else None

    def pinned(self, member_id: str) -> str | None:
        """The certificate fingerprint the directory names for ``member_id``, if listed."""
        entry = self._by_member.get(member_id)
        return entry.cert_fingerprint if entry is not None else None

    def listed(self, member_id: str) -> DirectoryEntry | None:
        """``member_id``'s entry in the directory this node follows, if it is listed."""
        return self._by_member.get(member_id)

    def own_frameworks(self) -> list[str] | None:
        """The framework agreements the followed directory attests this member signed
        (None before a directory is followed: no register speaks for it)."""
        return self._own_frameworks

    def attested_frameworks(self, member_id: str) -> frozenset[str] | None:
        """The framework agreements the authority's signed directory attests ``member_id``
        signed (`node.identity.attestations`; empty: none); None for a member it does not
        list (no register speaks for a static peer)."""
        if member_id not in self._by_member:
            return None
        return self._attested.get(member_id, frozenset())

    def attested_bpn(self, member_id: str) -> str | None:
        """The business partner number the authority's signed directory lists for
        ``member_id`` (the authority takes no entry naming another than it attested)."""
        entry = self._by_member.get(member_id)
        return entry.bpn if entry is not None else None

    def follow(self, entries: Sequence[DirectoryEntry], attested: Attested | None = None) -> None:
        """Take a verified directory's entries (this node's own is skipped) and what the
        authority attests of them; channels to an address that changed are retired."""
        own = self._keys.identity.member_id
        listed = {e.name: e for e in entries if e.member_id != own}
        self._listed = listed
        self._by_member = {e.member_id: e for e in listed.values()}
        self._attested = {m: frozenset(f) for m, f in (attested or {}).items()}
        self._own_frameworks = sorted(self._attested.get(own, ()))
        for name, (address, channel) in list(self._channels.items()):
            try:
                current = self.address(name)
            except UnknownPeerError:
                current = None
            if current != address:
                del self._channels[name]
                self._pins.forget(address)
                self._retire(channel)

    def _retire(self, channel: grpc.aio.Channel) -> None:
        """Close a channel nobody will use again; calls on it may still be finishing, so
        it closes once they end or after `RETIRE_GRACE_S`. Kept until `close` instead, a
        member changing its published address (as often as the authority lets it) grew
        every follower's list of open channels without end."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: at start, before any call
            self._retired.append(channel)
            return
        task = loop.create_task(channel.close(grace=RETIRE_GRACE_S))
        self._closing[task] = channel
        task.add_done_callback(lambda done: self._closing.pop(done, None))

    def open_channel(self, name: str) -> grpc.aio.Channel:
        """A new channel to peer ``name`` (the caller closes it), pinned like `channel`'s."""
        address = self.address(name)
        pins = pin_interceptors(self._pins, name, address, lambda: self.fingerprint(name))
        return open_channel(self._keys, address, name, pins)

    def channel(self, name: str) -> grpc.aio.Channel:
        address = self.address(name)
        cached = self._channels.get(name)
        if cached is None or cached[0] != address:
            self._channels[name] = (address, self.open_channel(name))
        return self._channels[name][1]

    async def close(self) -> None:
        for _, channel in self._channels.values():
            await channel.close()
        for channel in self._retired:
            await channel.close()
        for task, channel in list(self._closing.items()):  # no more grace: the node stops
            task.cancel()
            await channel.close()
        self._closing.clear()
        self._channels.clear()
        self._retired.clear()

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
