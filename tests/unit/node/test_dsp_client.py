"""The DSP client checks the server it reached before it writes a byte of the request:
the member the call is for, in good standing (real TLS, a real HTTPS server, a real CRL).

A callback address is a URL the consumer named; a member's certificate passes the TLS
handshake whoever holds it, so the server's member is checked when the handshake
completes: a server that is another member, or a member revoked since (even over a
connection pooled while it was in good standing), is hung up on unwritten."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from nacl.signing import SigningKey

from qdspace.node.dsp.client import DspHttp
from qdspace.node.errors import PeerError
from qdspace.node.identity.certs import (
    build_ca_cert,
    build_crl,
    build_member_cert,
    cert_to_pem,
    key_to_pem,
    member_subject,
    new_tls_key,
)
from qdspace.node.identity.revocation import RevocationList
from qdspace.node.member_ids import member_id_for
from qdspace.node.rpc.auth import PeerAuthenticator


@dataclass
class Member:
    member_id: str
    cert: Path
    key: Path
    serial: int
    signing: SigningKey


@dataclass
class Space:
    ca: Path
    ca_cert: x509.Certificate
    crl: Path
    revoke: Any
    members: dict[str, Member]


@pytest.fixture
def space(tmp_path: Path) -> Space:
    ca_key = new_tls_key()
    ca_cert = build_ca_cert("test-space", ca_key, valid_days=2)
    ca = tmp_path / "ca.crt"
    ca.write_bytes(cert_to_pem(ca_cert))
    now = dt.datetime.now(dt.UTC)
    members = {}
    for name in ("sunarc", "cellex", "voltis"):
        signing, tls = SigningKey.generate(), new_tls_key()
        vk = bytes(signing.verify_key)
        member_id = member_id_for(name, vk)
        cert = build_member_cert(
            ca_cert=ca_cert,
            ca_key=ca_key,
            subject=member_subject("test-space", name, member_id, "supplier"),
            public_key=tls.public_key(),
            verify_key=vk,
            hostnames=["localhost"],
            not_before=now - dt.timedelta(minutes=1),
            not_after=now + dt.timedelta(days=1),
        )
        (tmp_path / f"{name}.crt").write_bytes(cert_to_pem(cert))
        (tmp_path / f"{name}.key").write_bytes(key_to_pem(tls))
        members[name] = Member(
            member_id,
            tmp_path / f"{name}.crt",
            tmp_path / f"{name}.key",
            cert.serial_number,
            signing,
        )
    crl = tmp_path / "crl.pem"

    def revoke(*names: str) -> None:
        at = dt.datetime.now(dt.UTC)
        revoked = [(members[n].serial, at) for n in names]
        crl.write_bytes(build_crl(ca_cert, ca_key, revoked, dt.timedelta(days=1)))

    revoke()
    return Space(ca, ca_cert, crl, revoke, members)


class Server:
    """An HTTPS server holding one member's certificate; records each request line."""

    def __init__(self, member: Member) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(member.cert, member.key)
        self.lines: list[bytes] = []
        self.connections = 0
        server_self = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keeps the connection: the client pools it

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                server_self.lines.append(self.requestline.encode())
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Accepting(ThreadingHTTPServer):
            def verify_request(self, request: Any, client_address: Any) -> bool:
                server_self.connections += 1
                return True

        self.httpd = Accepting(("127.0.0.1", 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def accepted(self) -> int:
        """Connections accepted, once the server's thread has seen the last one (the
        client may hang up as soon as its side of the handshake is done)."""
        deadline = time.monotonic() + 5
        while not self.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.connections

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[Server] = []

    def start(member: Member) -> Server:
        servers.append(Server(member))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def client(space: Space) -> DspHttp:
    me = space.members["sunarc"]
    standing = PeerAuthenticator(RevocationList(space.ca_cert, space.crl)).check_standing
    return DspHttp(me.member_id, me.signing, me.cert, me.key, space.ca, standing=standing)


def post_once(space: Space, url: str, audience: str) -> None:
    """One POST by a new client (closed after)."""

    async def post() -> None:
        http = client(space)
        try:
            await http.post(url, audience, {"secret": 1})
        finally:
            await http.close()

    asyncio.run(post())


def test_a_server_that_is_another_member_is_sent_nothing(space: Space, serve: Any) -> None:
    voltis = serve(space.members["voltis"])
    cellex = space.members["cellex"].member_id

    with pytest.raises(PeerError, match=f"is served by {space.members['voltis'].member_id}"):
        post_once(space, f"{voltis.url}/negotiations/x/agreement", cellex)
    assert voltis.accepted() == 1  # the handshake happened: the check is what refused
    assert voltis.lines == []


def test_a_revoked_member_is_sent_nothing_even_over_a_pooled_connection(
    space: Space, serve: Any
) -> None:
    cellex = serve(space.members["cellex"])
    audience = space.members["cellex"].member_id

    async def run() -> str:
        http = client(space)
        try:
            await http.post(f"{cellex.url}/a", audience, {"n": 1})
            await http.post(f"{cellex.url}/b", audience, {"n": 2})  # the pooled connection
            assert cellex.connections == 1 and len(cellex.lines) == 2
            space.revoke("cellex")
            with pytest.raises(PeerError) as refused:
                await http.post(f"{cellex.url}/c", audience, {"n": 3})
            return str(refused.value)
        finally:
            await http.close()

    reason = asyncio.run(run())
    assert "revoked" in reason, reason
    assert [line.split()[1] for line in cellex.lines] == [b"/a", b"/b"]  # nothing after


def test_a_revoked_server_is_refused_at_the_handshake(space: Space, serve: Any) -> None:
    space.revoke("cellex")
    cellex = serve(space.members["cellex"])

    with pytest.raises(PeerError, match="revoked"):
        post_once(space, f"{cellex.url}/a", space.members["cellex"].member_id)
    assert cellex.accepted() == 1 and cellex.lines == []
