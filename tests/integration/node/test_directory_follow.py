"""A node's directory follower against a hostile authority endpoint (real HTTPS).

The endpoint has a certificate from the data space's CA (a compromised web front, or
whoever got hold of the service's TLS key) but not the CA's signing key: whatever it
serves, the node must keep the directory and CRL it had, and say why in its log.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.server
import json
import logging
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from qdspace.node.authority.client import AuthorityClient
from qdspace.node.authority.tls import ensure_server_cert
from qdspace.node.errors import IdentityError
from qdspace.node.identity.authority import Authority
from qdspace.node.identity.certs import load_key
from qdspace.node.identity.directory import DirectoryEntry, new_entry, sign_entry
from qdspace.node.identity.directory_document import (
    BadAuthoritySignature,
    DirectoryRollback,
    sign_document,
)
from qdspace.node.identity.member import MemberKeys, create_member_keys
from qdspace.node.identity.revocation import RevocationList
from qdspace.node.layout import AuthorityLayout, NodeLayout
from qdspace.node.rpc.peers import PeerDirectory
from qdspace.node.runtime.directory import DirectoryFollower, FollowerSettings

pytestmark = pytest.mark.integration


class Hostile(http.server.BaseHTTPRequestHandler):
    """Serves whatever the test put in ``server.answers`` (path -> bytes)."""

    def do_GET(self) -> None:
        body = self.server.answers.get(self.path)  # type: ignore[attr-defined]
        self.send_response(200 if body is not None else 404)
        self.send_header("content-length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: Any) -> None:
        pass


@dataclasses.dataclass
class World:
    authority: Authority
    ca_key: ec.EllipticCurvePrivateKey
    node: MemberKeys
    node_dir: Path
    cellex: MemberKeys
    answers: dict[str, bytes]
    follower: DirectoryFollower
    peers: PeerDirectory
    make: Callable[[PeerDirectory], DirectoryFollower]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    authority = Authority.init(tmp_path / "authority", "follow-space")
    files = AuthorityLayout(authority.directory)
    ca_key = load_key(files.ca_key, "authority key")
    ensure_server_cert(files, authority.cert, ca_key, ["127.0.0.1"])
    node_dir = tmp_path / "node"
    node = create_member_keys(node_dir, authority, name="sunarc", role="oem")
    cellex = create_member_keys(tmp_path / "cellex", authority, name="cellex", role="supplier")
    layout = NodeLayout(node_dir)
    layout.crl.write_bytes(files.crl.read_bytes())
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(files.server_cert), str(files.server_key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.answers = {}  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    own = new_entry(node.identity, node.signing_key, {"peer": "127.0.0.1:7443"})
    client = AuthorityClient(f"https://127.0.0.1:{server.server_address[1]}", node.ca_pem)
    settings = FollowerSettings(
        space="follow-space",
        crl_path=layout.crl,
        directory_path=layout.member_directory,
        crl_refresh_s=1,
        directory_refresh_s=1,
    )
    revocations = RevocationList(node.ca_cert, layout.crl)

    def make(peers: PeerDirectory) -> DirectoryFollower:
        return DirectoryFollower(
            client,
            settings,
            ca_cert=node.ca_cert,
            cert_pem=node.cert_pem,
            revocations=revocations,
            peers=peers,
            own_entry=lambda: own,
        )

    peers = PeerDirectory(node, {})
    answers: dict[str, bytes] = server.answers  # type: ignore[attr-defined]
    try:
        yield World(authority, ca_key, node, node_dir, cellex, answers, make(peers), peers, make)
    finally:
        server.shutdown()
        server.server_close()


def _entry(keys: MemberKeys, peer: str) -> DirectoryEntry:
    return new_entry(keys.identity, keys.signing_key, {"peer": peer})


def _serve(world: World, entries: list[DirectoryEntry], serial: int, key: Any = None) -> None:
    document = sign_document("follow-space", serial, entries, key or world.ca_key)
    world.answers["/v1/directory"] = json.dumps(document.to_json()).encode()


def _good(world: World) -> None:
    own = _entry(world.node, "127.0.0.1:7443")
    _serve(world, [own, _entry(world.cellex, "10.0.0.2:7443")], serial=10)
    world.follower.refresh_directory()
    assert world.peers.address("cellex") == "10.0.0.2:7443"


def test_a_tampered_directory_is_refused_and_the_held_one_kept(world: World) -> None:
    _good(world)
    saved = NodeLayout(world.node_dir).member_directory.read_bytes()
    data = json.loads(world.answers["/v1/directory"])
    data["serial"] = 11
    for entry in data["entries"]:
        if entry["name"] == "cellex":
            entry["endpoints"]["peer"] = "6.6.6.6:7443"
    world.answers["/v1/directory"] = json.dumps(data).encode()
    with pytest.raises(BadAuthoritySignature):
        world.follower.refresh_directory()
    assert world.peers.address("cellex") == "10.0.0.2:7443"
    assert NodeLayout(world.node_dir).member_directory.read_bytes() == saved


def test_a_directory_signed_by_another_key_is_refused(world: World) -> None:
    _good(world)
    other = ec.generate_private_key(ec.SECP256R1())
    _serve(world, [_entry(world.cellex, "6.6.6.6:1")], serial=99, key=other)
    with pytest.raises(BadAuthoritySignature):
        world.follower.refresh_directory()
    assert world.peers.address("cellex") == "10.0.0.2:7443"
    assert world.follower.serial == 10


def test_an_older_directory_is_refused(world: World) -> None:
    _good(world)
    _serve(world, [_entry(world.node, "127.0.0.1:7443")], serial=9)  # validly signed, older
    with pytest.raises(DirectoryRollback):
        world.follower.refresh_directory()
    assert world.peers.address("cellex") == "10.0.0.2:7443"


def test_an_entry_with_a_bad_signature_is_dropped_and_logged(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    own = _entry(world.node, "127.0.0.1:7443")
    forged = sign_entry(_entry(world.cellex, "6.6.6.6:7443"), world.node.signing_key)
    _serve(world, [own, forged], serial=12)
    with caplog.at_level(logging.WARNING, logger="node.directory"):
        world.follower.refresh_directory()
    assert "cellex" not in world.peers.names
    assert "signature is not its member's" in caplog.text


def test_a_saved_directory_that_was_tampered_with_is_ignored(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    _good(world)
    path = NodeLayout(world.node_dir).member_directory
    data = json.loads(path.read_text())
    data["entries"] = []
    path.write_text(json.dumps(data))
    fresh_peers = PeerDirectory(world.node, {})
    again = world.make(fresh_peers)  # the next start of the node
    with caplog.at_level(logging.ERROR, logger="node.directory"):
        again.load_saved()
    assert again.held is None and fresh_peers.names == []
    assert "ignoring the saved" in caplog.text


def _crl(world: World, key: ec.EllipticCurvePrivateKey, *, age: dt.timedelta) -> bytes:
    now = dt.datetime.now(dt.UTC) - age
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(world.authority.cert.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=7))
        .sign(key, hashes.SHA256())
    )
    return crl.public_bytes(serialization.Encoding.PEM)


def test_a_foreign_or_older_crl_is_refused_and_the_file_kept(world: World) -> None:
    path = NodeLayout(world.node_dir).crl
    held = path.read_bytes()
    other = ec.generate_private_key(ec.SECP256R1())
    world.answers["/v1/crl.pem"] = _crl(world, other, age=dt.timedelta(0))
    with pytest.raises(IdentityError, match="not signed by the authority"):
        world.follower.refresh_crl()
    world.answers["/v1/crl.pem"] = b"garbage"
    with pytest.raises(IdentityError, match="does not parse"):
        world.follower.refresh_crl()
    world.answers["/v1/crl.pem"] = _crl(world, world.ca_key, age=dt.timedelta(hours=1))
    with pytest.raises(IdentityError, match="older CRL"):
        world.follower.refresh_crl()
    assert path.read_bytes() == held
    newer = _crl(world, world.ca_key, age=dt.timedelta(seconds=-1))
    world.answers["/v1/crl.pem"] = newer
    assert world.follower.refresh_crl() is True
    assert path.read_bytes() == newer
