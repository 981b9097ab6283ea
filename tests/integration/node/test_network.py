"""Real node processes, real mutual TLS: who gets in, who is refused, and why."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qdspace.node.errors import NodeError, PeerError
from qdspace.node.identity.authority import Authority
from qdspace.node.identity.member import create_member_keys, load_member_keys
from qdspace.node.localnet.network import LocalNetwork, MemberSpec
from qdspace.node.rpc.peers import PeerDirectory

pytestmark = pytest.mark.integration


def _hello(keys_dir_or_keys: object, network: LocalNetwork, target: str) -> object:
    keys = (
        load_member_keys(keys_dir_or_keys)
        if isinstance(keys_dir_or_keys, Path)
        else keys_dir_or_keys
    )
    peers = PeerDirectory(keys, {target: network[target].grpc_address})  # type: ignore[arg-type]

    async def call() -> object:
        try:
            return await peers.hello(target, timeout=5)
        finally:
            await peers.close()

    return asyncio.run(call())


def _log_contains(network: LocalNetwork, name: str, needle: str, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in network[name].log_path.read_text(errors="replace"):
            return True
        time.sleep(0.1)
    return False


def test_every_pair_of_members_authenticates(network: LocalNetwork) -> None:
    names = list(network.members)
    for caller in names:
        with network[caller].client() as client:
            for callee in names:
                if callee == caller:
                    continue
                r = client.post(f"/v1/peers/{callee}/hello")
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["peer"] == callee
                assert body["peer_role"] == network[callee].spec.role
                assert body["seen_as"] == caller
    assert _log_contains(network, "cellex", "grpc /qdspace.v1.Node/Hello peer=sunarc role=oem")


def test_foreign_certificate_is_refused_at_tls(network: LocalNetwork, tmp_path: Path) -> None:
    foreign = Authority.init(tmp_path / "foreign")
    forged = create_member_keys(tmp_path / "evil", foreign, name="sunarc", role="oem")
    # the caller trusts the real authority (its certificate is public) but presents a
    # certificate of its own making: the server must refuse the handshake
    keys = dataclasses.replace(forged, ca_cert=Authority.load(network.authority_dir).cert)
    with pytest.raises(PeerError, match="UNAVAILABLE"):
        _hello(keys, network, "cellex")
    assert _log_contains(network, "cellex", "Handshake failed")


def test_expired_certificate_is_refused_at_tls(network: LocalNetwork, tmp_path: Path) -> None:
    authority = Authority.load(network.authority_dir)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    keys = create_member_keys(
        tmp_path / "old", authority, name="stale", role="supplier", valid_days=1, not_before=past
    )
    with pytest.raises(PeerError, match="UNAVAILABLE"):
        _hello(keys, network, "polycell")
    assert _log_contains(network, "polycell", "Handshake failed")


def test_revoked_member_is_refused_and_logged(network: LocalNetwork, tmp_path: Path) -> None:
    authority = Authority.load(network.authority_dir)
    keys = create_member_keys(tmp_path / "rogue", authority, name="rogue", role="supplier")
    assert _hello(keys, network, "sunarc").peer == "sunarc"  # type: ignore[attr-defined]
    authority.revoke("rogue", "left the data space")
    with pytest.raises(PeerError, match=r"UNAUTHENTICATED.*revoked"):
        _hello(keys, network, "sunarc")
    assert _log_contains(network, "sunarc", "refused /qdspace.v1.Node/Hello")


def test_wrong_role_gets_permission_denied(network: LocalNetwork) -> None:
    with network["regulator"].client() as client:
        r = client.get("/v1/peers/cellex/upstream/anything")
    assert r.status_code == 403
    assert "PERMISSION_DENIED" in r.json()["detail"]
    assert "role regulator may not call /qdspace.v1.Trace/Upstream" in r.json()["detail"]
    assert _log_contains(network, "cellex", "refused /qdspace.v1.Trace/Upstream")


def test_operator_api_needs_the_token(network: LocalNetwork) -> None:
    with network["sunarc"].client(token="") as anonymous:
        assert anonymous.get("/v1/node").status_code == 401
        assert anonymous.get("/healthz").status_code == 200
    with network["sunarc"].client() as client:
        info = client.get("/v1/node").json()
        assert info["role"] == "oem"
        assert set(info["peers"]) == {"cellex", "polycell", "regulator"}
        assert "paths" in client.get("/openapi.json").json()


@pytest.fixture
def own_pair(tmp_path: Path) -> Iterator[LocalNetwork]:
    """Its own OEM and supplier: a revocation here must not touch the session's network."""
    net = LocalNetwork(
        tmp_path / "pair", [MemberSpec("sunarc", "oem"), MemberSpec("cellex", "supplier")],
        chain=False,
    )  # fmt: skip
    net.create()
    net.start()
    try:
        yield net
    finally:
        net.stop()


def test_a_node_refuses_to_call_a_revoked_member_too(own_pair: LocalNetwork) -> None:
    """Static peers have no directory to drop a revoked member from; sunarc must still
    refuse to call it (it would otherwise keep delivering to it)."""
    with own_pair["sunarc"].client() as client:
        assert client.post("/v1/peers/cellex/hello").status_code == 200
        Authority.load(own_pair.authority_dir).revoke("cellex", "left the data space")
        refused = client.post("/v1/peers/cellex/hello")
        assert refused.status_code == 403, refused.text
        assert "revoked" in refused.json()["detail"] and "cellex" in refused.json()["detail"]
    assert _log_contains(own_pair, "sunarc", "refusing to call cellex")


def test_a_member_that_cannot_start_leaves_no_other_running(tmp_path: Path) -> None:
    """A node whose gRPC port is taken exits while starting; the start raises and stops
    the member it had started already (a fixture never reaches its stop when its start
    raises: a fresh-clone run found such a node still running after the suite)."""
    net = LocalNetwork(
        tmp_path / "taken", [MemberSpec("sunarc", "oem"), MemberSpec("cellex", "supplier")],
        chain=False,
    )  # fmt: skip
    net.create()
    host, port = net["cellex"].grpc_address.rsplit(":", 1)
    with socket.socket() as taken:
        taken.bind((host, int(port)))
        taken.listen()
        with pytest.raises(NodeError, match="cellex exited while starting"):
            net.start()
    assert not net["sunarc"].running and not net["cellex"].running


def test_a_port_range_that_names_no_ports_is_one_line_from_the_demo(tmp_path: Path) -> None:
    env = {**os.environ, "QDSPACE_PORT_RANGE": "30000-20000"}
    run = subprocess.run(
        [sys.executable, "-m", "qdspace", "demo", "--workdir", str(tmp_path / "space")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "QDSPACE_PORT_RANGE='30000-20000': expected 1024 <= LOW <= HIGH" in run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    assert not (tmp_path / "space" / "authority").exists()  # nothing made
