"""The node's peer table follows the member directory; static peers win, pins apply."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from qdspace.node.errors import NotTheMember, PeerError, UnknownPeerError
from qdspace.node.identity.authority import Authority
from qdspace.node.identity.directory import DirectoryEntry, new_entry
from qdspace.node.identity.member import MemberKeys, create_member_keys
from qdspace.node.rpc.peers import PeerDirectory


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority.init(tmp_path / "authority", "peer-space")


def _keys(authority: Authority, tmp_path: Path, name: str) -> MemberKeys:
    return create_member_keys(tmp_path / name, authority, name=name, role="supplier")


def _entry(keys: MemberKeys, peer: str) -> DirectoryEntry:
    return new_entry(keys.identity, keys.signing_key, {"peer": peer})


def test_directory_peers_join_static_ones_and_static_addresses_win(
    authority: Authority, tmp_path: Path
) -> None:
    me, cellex, polycell = (_keys(authority, tmp_path, n) for n in ("me", "cellex", "polycell"))
    peers = PeerDirectory(me, {"cellex": "192.168.1.5:7443"})
    peers.follow(
        [
            _entry(me, "10.0.0.1:7443"),  # our own entry is not a peer
            _entry(cellex, "10.0.0.2:7443"),
            _entry(polycell, "10.0.0.3:7443"),
        ]
    )
    assert peers.names == ["cellex", "polycell"]
    assert peers.addresses() == {"cellex": "192.168.1.5:7443", "polycell": "10.0.0.3:7443"}
    # the directory's certificate applies to a static peer too
    assert peers.fingerprint("cellex") == cellex.identity.fingerprint
    assert peers.pinned(polycell.identity.member_id) == polycell.identity.fingerprint
    assert peers.pinned(me.identity.member_id) is None
    peers.follow([])  # polycell left the directory
    assert peers.names == ["cellex"] and peers.fingerprint("cellex") is None
    with pytest.raises(UnknownPeerError, match="unknown peer 'polycell'"):
        peers.address("polycell")


def test_a_moved_peer_gets_a_new_channel(authority: Authority, tmp_path: Path) -> None:
    me, cellex = _keys(authority, tmp_path, "me"), _keys(authority, tmp_path, "cellex")
    peers = PeerDirectory(me, {})

    async def scenario() -> None:
        peers.follow([_entry(cellex, "10.0.0.2:7443")])
        first = peers.channel("cellex")
        assert peers.channel("cellex") is first  # cached
        peers.follow([_entry(cellex, "10.0.0.9:7443")])
        moved = peers.channel("cellex")
        assert moved is not first
        await peers.close()

    asyncio.run(scenario())


def test_a_listed_name_is_confirmed_as_the_member_its_entry_names(
    authority: Authority, tmp_path: Path
) -> None:
    """The directory says who holds a name now: a notification queued for the member
    that held it before (the authority frees a name its holder left) is not sent to the
    one that holds it now. A static peer the directory does not list is confirmed by the
    certificate it presents: here nothing answers, so it is undecided (tried again)."""
    me, cellex = _keys(authority, tmp_path, "me"), _keys(authority, tmp_path, "cellex")
    peers = PeerDirectory(me, {"polycell": "127.0.0.1:9"})
    peers.follow([_entry(cellex, "10.0.0.2:7443")])
    former = "cellex-" + "0" * 12

    async def scenario() -> None:
        assert await peers.confirm_member(cellex.identity.member_id) == "cellex"
        with pytest.raises(NotTheMember, match=f"is now {cellex.identity.member_id}, not {former}"):
            await peers.confirm_member(former)
        with pytest.raises(PeerError, match="no TLS handshake") as undecided:
            await peers.confirm_member("polycell-" + "0" * 12)
        assert not isinstance(undecided.value, NotTheMember)
        with pytest.raises(UnknownPeerError):
            await peers.confirm_member("nobody-" + "0" * 12)
        await peers.close()

    asyncio.run(scenario())


def test_a_channel_retired_on_the_loop_is_closed_not_kept(
    authority: Authority, tmp_path: Path
) -> None:
    """A member changing its published address (as often as the authority lets it) left
    every follower one more open channel a change, kept until the node stopped. A retired
    channel closes once the calls on it end (here none), and a node's stop closes those
    still in their grace period."""
    me, cellex = _keys(authority, tmp_path, "me"), _keys(authority, tmp_path, "cellex")
    peers = PeerDirectory(me, {})

    async def scenario() -> None:
        old = []
        for port in range(20):
            peers.follow([_entry(cellex, f"10.0.0.2:{7000 + port}")])
            old.append(peers.channel("cellex"))
        current = old.pop()
        for _ in range(100):  # the closes run on the loop
            if all(c.get_state() is grpc.ChannelConnectivity.SHUTDOWN for c in old):
                break
            await asyncio.sleep(0.01)
        assert [c.get_state() for c in old] == [grpc.ChannelConnectivity.SHUTDOWN] * 19
        assert current.get_state() is not grpc.ChannelConnectivity.SHUTDOWN
        await peers.close()
        assert current.get_state() is grpc.ChannelConnectivity.SHUTDOWN

    asyncio.run(scenario())
