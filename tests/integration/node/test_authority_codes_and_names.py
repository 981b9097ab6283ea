"""The authority service over real HTTPS: who one key may become, which names a renewal
leaves taken, and which addresses a member may publish.

- two codes waiting for one name (re-issued with another role, or because the first
  seemed lost) were redeemed with one key: one member id held a supplier and a regulator
  certificate. A name now has one code waiting at a time (``authority cancel`` withdraws
  one), and a key whose member id holds a valid certificate redeems no second code;
- a renewal released the hostnames of the certificate it superseded, which stays valid:
  another member was given a name that certificate still answered to;
- a member published ``127.0.0.1:5432`` or ``169.254.169.254:80`` and every follower
  dialled it on its own machine.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from nacl.signing import SigningKey

from qdspace.node.identity import enrollment as book
from qdspace.node.identity.authority import Authority
from qdspace.node.identity.certs import cert_to_pem, fingerprint, identity_of, new_tls_key
from qdspace.node.identity.csr import build_request
from qdspace.node.identity.directory import new_entry, sign_entry
from qdspace.node.identity.enrollment import DEFAULT_TTL, EnrollmentCode
from qdspace.node.identity.errors import NameTaken, RequestNotGranted
from qdspace.node.identity.member import MemberKeys, create_member_keys
from qdspace.node.localnet.authority import AuthorityProcess

from .authority_service import Service, authority_service, problem

pytestmark = pytest.mark.integration

SPACE = "codes-space"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A service as an operator runs it: no opt-in to local addresses."""
    directory = tmp_path_factory.mktemp("codes-and-names") / "authority"
    authority = Authority.init(directory, SPACE)
    process = AuthorityProcess(directory, env=dict(os.environ), allow_local_endpoints=False)
    url = process.start()
    context = ssl.create_default_context(cadata=cert_to_pem(authority.cert).decode())
    http = httpx.Client(base_url=url, verify=context, timeout=30)
    try:
        yield Service(authority, process, url, http)
    finally:
        http.close()
        process.stop()


def _csr(name: str, role: str, key: SigningKey, hostnames: tuple[str, ...] = ()) -> str:
    return build_request(
        space=SPACE,
        name=name,
        role=role,
        tls_key=new_tls_key(),
        signing_key=key,
        hostnames=hostnames,
    ).decode()


def _enroll(service: Service, code: str, csr: str) -> httpx.Response:
    return service.post("/v1/enrollment", {"code": code, "csr_pem": csr})


def _code_of_an_older_book(authority: Authority, name: str, role: str) -> str:
    """A second code waiting for ``name``, as a book written before one name had one
    code at a time may hold (`Authority.create_enrollment` refuses to make it now)."""
    code = EnrollmentCode.new(fingerprint(authority.cert))
    now = dt.datetime.now(dt.UTC)
    entry = book.new_enrollment(code, name=name, role=role, ttl=DEFAULT_TTL, bpn=None, now=now)
    with authority.locked():
        codes = book.load_book(authority.files.enrollments)
        codes[code.code_id] = entry
        book.save_book(authority.files.enrollments, codes, now)
    return str(code)


# -- one name, one code; one key, one role ---------------------------------------------------


def test_a_second_code_for_a_waiting_name_waits_for_the_first_to_be_cancelled(
    service: Service,
) -> None:
    authority = service.authority
    first = authority.create_enrollment(name="acme", role="supplier")
    with pytest.raises(NameTaken, match=f"code {first.code_id} .* cancel it first"):
        authority.create_enrollment(name="acme", role="regulator")
    (cancelled,) = authority.cancel_enrollment(code=first.code_id)
    assert (cancelled.name, cancelled.role) == ("acme", "supplier")
    key = SigningKey.generate()
    # the cancelled code admits nobody; the new one does
    problem(_enroll(service, str(first), _csr("acme", "supplier", key)), 403, "unknown code")
    second = authority.create_enrollment(name="acme", role="regulator")
    answer = _enroll(service, str(second), _csr("acme", "regulator", key))
    assert answer.status_code == 200, answer.text
    assert [(m.name, m.role) for m in authority.members()] == [("acme", "regulator")]


def test_one_key_redeems_no_second_code(service: Service) -> None:
    """Two codes for one name from an older book: the key that redeemed the first is
    refused the second (its new TLS key is a renewal), and the code stays unspent."""
    authority = service.authority
    first = str(authority.create_enrollment(name="dual", role="supplier"))
    second = _code_of_an_older_book(authority, "dual", "regulator")
    key = SigningKey.generate()
    assert _enroll(service, first, _csr("dual", "supplier", key)).status_code == 200
    refused = _enroll(service, second, _csr("dual", "regulator", key))
    problem(refused, 403, "is enrolled already")
    rows = [m for m in authority.members() if m.name == "dual"]
    assert [(m.role, m.revoked_at) for m in rows] == [("supplier", None)]
    # the operator approving it a second time is refused as well
    with pytest.raises(RequestNotGranted, match="is enrolled already"):
        authority.sign_request(
            _csr("dual", "supplier", key).encode(), approve_name="dual", approve_role="supplier"
        )
    (left,) = authority.cancel_enrollment(name="dual")  # still waiting: cancelled
    assert left.role == "regulator"


# -- a renewal leaves the names of the certificate it supersedes taken -------------------------


def test_a_renewal_keeps_the_earlier_certificate_s_names_taken(service: Service) -> None:
    authority = service.authority
    key = SigningKey.generate()
    code = str(authority.create_enrollment(name="evil", role="supplier"))
    assert _enroll(service, code, _csr("evil", "supplier", key)).status_code == 200
    with_bosch = service.post("/v1/renewal", {"csr_pem": _csr("evil", "supplier", key, ("bosch",))})
    assert with_bosch.status_code == 200, with_bosch.text
    old = x509.load_pem_x509_certificate(with_bosch.json()["cert_pem"].encode())
    without = service.post("/v1/renewal", {"csr_pem": _csr("evil", "supplier", key)})
    assert without.status_code == 200, without.text
    # the certificate naming bosch stays valid (a node serves with it until it restarts)
    with pytest.raises(NameTaken, match=f"earlier certificate of it, serial {old.serial_number:x}"):
        authority.create_enrollment(name="bosch", role="supplier")
    other = SigningKey.generate()
    code = str(authority.create_enrollment(name="zf", role="supplier"))
    problem(_enroll(service, code, _csr("zf", "supplier", other, ("bosch",))), 409, "bosch")
    # once the member is revoked, the name is free
    authority.revoke("evil", "renewed away a name")
    assert authority.create_enrollment(name="bosch", role="supplier")
    assert identity_of(old).name == "evil"


# -- the endpoints a member may publish ---------------------------------------------------------


def _member(service: Service, tmp_path: Path, name: str) -> MemberKeys:
    return create_member_keys(tmp_path / name, service.authority, name=name, role="supplier")


def _publish(service: Service, keys: MemberKeys, endpoints: dict[str, str]) -> httpx.Response:
    entry = new_entry(keys.identity, keys.signing_key, endpoints)
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(microseconds=1)).isoformat()
    entry = sign_entry(dataclasses.replace(entry, published_at=later), keys.signing_key)
    body = {"entry": entry.to_json(), "cert_pem": keys.cert_pem.decode()}
    return service.post("/v1/directory/entries", body)


@pytest.fixture(scope="module")
def publisher(service: Service, tmp_path_factory: pytest.TempPathFactory) -> MemberKeys:
    return _member(service, tmp_path_factory.mktemp("publisher"), "local")


@pytest.mark.parametrize(
    ("endpoints", "kind"),
    [
        ({"peer": "127.0.0.1:5432"}, "loopback"),
        ({"peer": "127.1:5432"}, "loopback"),
        ({"peer": "2130706433:5432"}, "loopback"),
        ({"peer": "localhost:5432"}, "loopback"),
        ({"peer": "[::1]:5432"}, "loopback"),
        ({"peer": "[::ffff:127.0.0.1]:5432"}, "loopback"),
        ({"peer": "169.254.169.254:80"}, "link-local"),
        ({"peer": "peer.example:7443", "dsp": "169.254.169.254:80"}, "link-local"),
        ({"peer": "[fe80::1]:80"}, "link-local"),
        ({"peer": "0.0.0.0:7443"}, "unspecified"),
        ({"peer": "10.0.0.5:7443"}, "private"),
        ({"peer": "192.168.1.10:7443"}, "private"),
        ({"peer": "[fd00::1]:7443"}, "private"),
    ],
)
def test_an_entry_naming_a_local_address_is_refused(
    service: Service, publisher: MemberKeys, endpoints: dict[str, str], kind: str
) -> None:
    keys = publisher
    problem(_publish(service, keys, endpoints), 400, f"is a {kind} address")
    listed = service.http.get("/v1/directory").json()
    assert keys.identity.member_id not in str(listed)


def test_an_entry_naming_public_addresses_and_names_is_taken(
    service: Service, tmp_path: Path
) -> None:
    keys = _member(service, tmp_path, "public")
    endpoints = {"peer": "peer.example:7443", "dsp": "8.8.8.8:8443", "regulator": "[2001:db9::1]:9"}
    answer = _publish(service, keys, endpoints)
    assert answer.status_code == 200, answer.text


def test_a_local_network_s_authority_takes_loopback_and_private_but_never_link_local(
    tmp_path: Path,
) -> None:
    """`AuthorityProcess` (local networks, tests) serves with ``--allow-local-endpoints``."""
    with authority_service(tmp_path / "authority", SPACE) as local:
        keys = _member(local, tmp_path, "lan")
        for peer in ("127.0.0.1:7000", "10.0.0.5:7443"):
            assert _publish(local, keys, {"peer": peer}).status_code == 200, peer
        refused = _publish(local, keys, {"peer": "169.254.169.254:80"})
        problem(refused, 400, "is a link-local address")
