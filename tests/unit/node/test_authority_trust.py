"""Whom a joining or following node trusts as the authority, and names the authority may
not give (each case reproduced before its fix):

- the joining node pinned the CA by the fingerprint of the first PEM block of
  ``/v1/ca.pem`` and then trusted the whole answer: someone in between appended a CA of
  their own, stood in for the service (the node sent them its one-time code), and was
  written to the node's trust bundle as a CA of member certificates;
- a node verified the service against its whole trust bundle, so another PKI's CA the
  operator trusts for member certificates could stand in for the service;
- a member could be called ``localhost``, an IP address, or ``cellex\\n``;
- a name could be another member's id, and ``authority revoke``/``attest`` then reached
  both members.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from qdspace.node.authority.client import AuthorityClient, AuthorityUnavailable
from qdspace.node.authority.tls import ensure_server_cert
from qdspace.node.errors import IdentityError
from qdspace.node.identity.authority import Authority
from qdspace.node.identity.certs import cert_to_pem, load_key, new_tls_key
from qdspace.node.identity.csr import build_request
from qdspace.node.identity.errors import CertificateRequestError, NameTaken
from qdspace.node.identity.register import load_register, save_register
from qdspace.node.join import CaPinMismatch, join_node

SPACE = "trust-space"


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority.init(tmp_path / "authority", SPACE)


@dataclasses.dataclass
class Impostor:
    """An HTTPS server with a certificate of a CA of its own, recording what reaches it."""

    url: str
    seen: list[bytes]


MakeImpostor = Callable[[bytes, Authority], Impostor]


@pytest.fixture
def make_impostor() -> Iterator[MakeImpostor]:
    servers: list[http.server.HTTPServer] = []

    def start(ca_pem_answer: bytes, ca: Authority) -> Impostor:
        ensure_server_cert(ca.files, ca.cert, load_key(ca.files.ca_key, "key"), ["127.0.0.1"])
        seen: list[bytes] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, body: bytes, media: str) -> None:
                self.send_response(200)
                self.send_header("content-type", media)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path == "/v1/ca.pem":
                    self._answer(ca_pem_answer, "application/x-pem-file")
                else:
                    self._answer(json.dumps({"space": SPACE}).encode(), "application/json")

            def do_POST(self) -> None:
                seen.append(self.rfile.read(int(self.headers["content-length"])))
                body = {"name": "joiner", "role": "supplier", "space": SPACE}
                self._answer(json.dumps(body).encode(), "application/json")

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(ca.files.server_cert, ca.files.server_key)
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return Impostor(f"https://127.0.0.1:{server.server_address[1]}", seen)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_join_pins_one_ca_and_sends_no_code_past_an_appended_one(
    authority: Authority, make_impostor: MakeImpostor, tmp_path: Path
) -> None:
    mallory = Authority.init(tmp_path / "mallory", SPACE)
    answer = cert_to_pem(authority.cert) + cert_to_pem(mallory.cert)
    impostor = make_impostor(answer, mallory)
    code = str(authority.create_enrollment(name="joiner", role="supplier"))
    with pytest.raises(CaPinMismatch, match="presents 2 certificates as its CA"):
        join_node(tmp_path / "node", authority_url=impostor.url, code=code)
    assert impostor.seen == []  # the code never left
    assert not (tmp_path / "node").exists()


def test_the_service_is_verified_against_the_authority_s_ca_alone(
    authority: Authority, make_impostor: MakeImpostor, tmp_path: Path
) -> None:
    partner = Authority.init(tmp_path / "partner-pki", "partner")
    impostor = make_impostor(cert_to_pem(partner.cert), partner)
    bundle = cert_to_pem(authority.cert) + cert_to_pem(partner.cert)  # a node's ca.crt
    with (
        AuthorityClient(impostor.url, bundle) as client,
        pytest.raises(AuthorityUnavailable, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        client.directory()


@pytest.mark.parametrize("name", ["localhost", "LocalHost", "127.0.0.1", "::1", "cellex\n"])
def test_names_that_are_no_member_s_own_are_refused(authority: Authority, name: str) -> None:
    with pytest.raises(CertificateRequestError, match=r"member name .* is not usable"):
        authority.create_enrollment(name=name, role="supplier")
    with pytest.raises(CertificateRequestError, match="is not usable"):
        build_request(
            space=SPACE,
            name=name,
            role="supplier",
            tls_key=new_tls_key(),
            signing_key=SigningKey.generate(),
        )


def _enroll(authority: Authority, name: str) -> str:
    key = SigningKey.generate()
    csr = build_request(
        space=SPACE, name=name, role="supplier", tls_key=new_tls_key(), signing_key=key
    )
    code = str(authority.create_enrollment(name=name, role="supplier"))
    authority.sign_request(csr, code=code)
    return next(m.member_id for m in authority.members() if m.name == name)


def test_a_name_that_is_another_member_s_id_is_refused(authority: Authority) -> None:
    acme = _enroll(authority, "acme")
    with pytest.raises(NameTaken, match="is the member id of member acme"):
        authority.create_enrollment(name=acme, role="supplier")
    with pytest.raises(NameTaken, match="member id"):
        authority.create_enrollment(name=acme.upper(), role="supplier")


def test_revoke_and_attest_refuse_a_string_naming_two_members(authority: Authority) -> None:
    """A register from before names and ids were kept apart: the name of one member is
    the id of another. The command reached both; now it names neither."""
    acme = _enroll(authority, "acme")
    _enroll(authority, "mole")
    path = authority.files.members
    save_register(
        path,
        [dataclasses.replace(m, name=acme) if m.name == "mole" else m for m in load_register(path)],
    )
    with pytest.raises(IdentityError, match="names 2 active members"):
        authority.attest(acme, add=["Pcf:1.0"])
    with pytest.raises(IdentityError, match="names 2 active members"):
        authority.revoke(acme)
    assert all(m.revoked_at is None and not m.frameworks for m in authority.members())
    assert [m.member_id for m in authority.revoke("acme")] == [acme]  # its own name: one
