"""The authority against a hostile member (each case reproduced before its fix):

- a member's certificate names any host it asked for, and the CA signs it as it signs the
  service's own: a member's server passed for the authority service, and a joining node
  sent it its one-time enrollment code;
- a renewal was authorised by the member id alone, 48 bits of the key's hash: a key
  ground to the same id got a certificate in another member's name;
- each renewal's hostnames held names for good (the old rows stayed), and renewals were
  not counted: a member reserved other companies' names and grew the register;
- a renewal is authorised by the member's signing key, which outlives its certificate: a
  member whose certificate had expired (never revoked) renewed itself back in."""

from __future__ import annotations

import datetime as dt
import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from qdspace.node import member_ids
from qdspace.node.authority.client import AuthorityClient, AuthorityUnavailable
from qdspace.node.identity.authority import RENEWALS_PER_WINDOW, Authority
from qdspace.node.identity.certs import cert_to_pem, key_to_pem, new_tls_key
from qdspace.node.identity.csr import build_request
from qdspace.node.identity.errors import NameTaken, RenewalRefused

SPACE = "qds"


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority.init(tmp_path / "authority", space=SPACE)


def _enroll(
    authority: Authority, name: str, key: SigningKey, hosts: tuple[str, ...] = ()
) -> tuple[bytes, bytes]:
    code = authority.create_enrollment(name=name, role="supplier")
    tls = new_tls_key()
    csr = build_request(
        space=SPACE, name=name, role="supplier", tls_key=tls, signing_key=key, hostnames=hosts
    )
    return cert_to_pem(authority.sign_request(csr, code=str(code))), key_to_pem(tls)


def _renewal(name: str, key: SigningKey, hosts: tuple[str, ...] = ()) -> bytes:
    return build_request(
        space=SPACE,
        name=name,
        role="supplier",
        tls_key=new_tls_key(),
        signing_key=key,
        hostnames=hosts,
    )


@pytest.fixture
def member_server(authority: Authority, tmp_path: Path) -> Iterator[tuple[int, list[bytes]]]:
    """A member's TLS server (its own CA-signed certificate, asking for the authority's
    host name) that records what reaches it."""
    cert, key = _enroll(authority, "evil", SigningKey.generate(), ("authority.example.com",))
    (tmp_path / "e.crt").write_bytes(cert)
    (tmp_path / "e.key").write_bytes(key)
    seen: list[bytes] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.rfile.read(int(self.headers["content-length"])))
            body = b'{"name":"x","role":"oem","space":"qds"}'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "e.crt", tmp_path / "e.key")
    # the handshake in the handler (closed with the request when it fails), not in accept
    server.socket = context.wrap_socket(
        server.socket, server_side=True, do_handshake_on_connect=False
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_members_server_is_not_taken_for_the_authority_and_gets_no_code(
    authority: Authority, member_server: tuple[int, list[bytes]]
) -> None:
    port, seen = member_server
    with (
        AuthorityClient(f"https://localhost:{port}", cert_to_pem(authority.cert)) as client,
        pytest.raises(AuthorityUnavailable, match="presents member evil's certificate"),
    ):
        client.preview("qdse1.SECRET-CODE-OF-A-JOINER")
    assert seen == []  # refused at the handshake: not a byte of the request left


def test_a_renewal_signed_by_another_key_of_the_same_id_is_refused(
    authority: Authority, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 2 hex digits instead of 12: the grind an attacker does for 2^48 takes 256 tries here
    monkeypatch.setattr(member_ids, "DIGEST_HEX", 2)
    victim = SigningKey.generate()
    _enroll(authority, "target", victim)
    wanted = member_ids.member_id_for("target", bytes(victim.verify_key))
    for _ in range(100_000):
        ground = SigningKey.generate()
        if member_ids.member_id_for("target", bytes(ground.verify_key)) == wanted:
            break
    assert ground.verify_key != victim.verify_key
    with pytest.raises(RenewalRefused, match="signed by another key than the member's"):
        authority.renew(_renewal("target", ground))
    assert authority.renew(_renewal("target", victim))  # the member itself renews


def test_renewals_keep_the_names_of_valid_certificates_and_are_counted(
    authority: Authority,
) -> None:
    """A renewal does not revoke the certificate it supersedes: while that one is valid,
    the names it carries stay taken (it would pass a TLS name check for them)."""
    key = SigningKey.generate()
    _enroll(authority, "evil", key)
    authority.renew(_renewal("evil", key, ("bosch",)))
    authority.renew(_renewal("evil", key, ("zf",)))
    with pytest.raises(NameTaken, match="earlier certificate of it, serial"):
        authority.create_enrollment(name="bosch", role="supplier")
    with pytest.raises(NameTaken, match="zf"):
        authority.create_enrollment(name="zf", role="supplier")
    for _ in range(RENEWALS_PER_WINDOW - 3):  # enrollment and two renewals so far
        authority.renew(_renewal("evil", key))
    with pytest.raises(RenewalRefused, match="try again later"):
        authority.renew(_renewal("evil", key))


def test_a_member_cannot_ask_for_a_host_name_another_member_holds(authority: Authority) -> None:
    """A regulator or a DSP peer reaches a member by the host name it asked for: another
    member asking for the same name got it, and could pass for it. Loopback addresses
    (every member of a local network on one machine) hold nothing."""
    _enroll(authority, "victim", SigningKey.generate(), ("victim.example.com", "127.0.0.1"))
    with pytest.raises(NameTaken, match=r"'victim\.example\.com' is a name of member victim"):
        _enroll(authority, "evil", SigningKey.generate(), ("victim.example.com",))
    assert _enroll(authority, "other", SigningKey.generate(), ("127.0.0.1", "other.example"))


def test_an_expired_member_cannot_renew_and_enrolls_again(authority: Authority) -> None:
    key = SigningKey.generate()
    csr = build_request(
        space=SPACE, name="lapsed", role="supplier", tls_key=new_tls_key(), signing_key=key
    )
    three_days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    authority.sign_request(
        csr, approve_name="lapsed", approve_role="supplier", valid_days=1, not_before=three_days_ago
    )
    with pytest.raises(RenewalRefused, match=r"expired at .*enrolls again with a code"):
        authority.renew(_renewal("lapsed", key))
    assert len(authority.members()) == 1  # nothing issued
    # the way back the refusal names: the operator revokes the expired member, a new code
    authority.revoke("lapsed", "certificate expired")
    _enroll(authority, "lapsed", key)
    assert authority.renew(_renewal("lapsed", key))  # valid again: renews


def test_a_member_renews_while_its_newest_certificate_is_valid(authority: Authority) -> None:
    """An older certificate of the member that expired is no reason to refuse."""
    key = SigningKey.generate()
    csr = _renewal("keeper", key)
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    authority.sign_request(
        csr, approve_name="keeper", approve_role="supplier", valid_days=1, not_before=long_ago
    )
    authority.sign_request(_renewal("keeper", key), approve_name="keeper", approve_role="supplier")
    assert authority.renew(_renewal("keeper", key))
