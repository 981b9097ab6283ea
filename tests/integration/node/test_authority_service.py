"""``qdspace authority serve`` as a process over real HTTPS, with hostile callers.

Every refusal is a 4xx problem (never a 5xx, never a traceback in the answer), and a
refusal changes nothing: a used code stays used, the directory keeps its entries.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from nacl.signing import SigningKey

from qdspace.node.authority.client import (
    AuthorityClient,
    AuthorityRefused,
    ca_fingerprint,
    fetch_ca_unpinned,
)
from qdspace.node.authority.service import PUBLISH_BURST
from qdspace.node.identity.authority import Authority
from qdspace.node.identity.certs import cert_to_pem, fingerprint, identity_of, new_tls_key
from qdspace.node.identity.csr import build_request
from qdspace.node.identity.directory import new_entry, sign_entry
from qdspace.node.identity.directory_document import accept_document
from qdspace.node.identity.member import MemberKeys, create_member_keys

from .authority_service import Service, authority_service, problem

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with authority_service(
        tmp_path_factory.mktemp("authority-service") / "authority", "svc-space"
    ) as served:
        yield served


def _request(name: str, role: str, space: str = "svc-space", key: SigningKey | None = None) -> str:
    return build_request(
        space=space,
        name=name,
        role=role,
        tls_key=new_tls_key(),
        signing_key=key or SigningKey.generate(),
    ).decode()


def test_the_ca_is_pinned_by_its_fingerprint(service: Service) -> None:
    pem = fetch_ca_unpinned(service.url)
    assert ca_fingerprint(pem) == fingerprint(service.authority.cert)
    crl = x509.load_pem_x509_crl(service.http.get("/v1/crl.pem").content)
    assert crl.is_signature_valid(service.authority.cert.public_key())  # type: ignore[arg-type]


def test_the_service_speaks_only_verified_tls(service: Service, tmp_path: Path) -> None:
    foreign = Authority.init(tmp_path / "foreign")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        AuthorityClient(service.url, cert_to_pem(foreign.cert))._http.get("/v1/ca.pem")
    plain = service.url.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{plain}/v1/ca.pem", timeout=5)


def test_enrollment_by_code_and_request(service: Service) -> None:
    code = str(service.authority.create_enrollment(name="cellex", role="supplier"))
    preview = service.post("/v1/enrollment/preview", {"code": code})
    assert preview.json() == {"name": "cellex", "role": "supplier", "space": "svc-space"}
    key = SigningKey.generate()
    answer = service.post(
        "/v1/enrollment", {"code": code, "csr_pem": _request("cellex", "supplier", key=key)}
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    ident = identity_of(x509.load_pem_x509_certificate(body["cert_pem"].encode()))
    assert (ident.name, ident.role, ident.member_id) == ("cellex", "supplier", body["member_id"])
    assert ident.verify_key == bytes(key.verify_key)
    crl = x509.load_pem_x509_crl(body["crl_pem"].encode())
    assert crl.is_signature_valid(service.authority.cert.public_key())  # type: ignore[arg-type]
    # the code is spent: a second request with it is refused, also with a fresh key
    again = service.post(
        "/v1/enrollment", {"code": code, "csr_pem": _request("cellex", "supplier")}
    )
    problem(again, 409, "already used")
    problem(service.post("/v1/enrollment/preview", {"code": code}), 409, "already used")


def test_an_expired_code_is_refused(service: Service) -> None:
    code = service.authority.create_enrollment(
        name="late", role="supplier", ttl=dt.timedelta(milliseconds=1)
    )
    time.sleep(0.01)
    answer = service.post(
        "/v1/enrollment", {"code": str(code), "csr_pem": _request("late", "supplier")}
    )
    problem(answer, 410, "expired")


def test_a_foreign_or_forged_code_is_refused(service: Service, tmp_path: Path) -> None:
    foreign = Authority.init(tmp_path / "foreign-ca", "svc-space")
    code = str(foreign.create_enrollment(name="mole", role="oem"))
    problem(service.post("/v1/enrollment/preview", {"code": code}), 403, "refused")
    answer = service.post("/v1/enrollment", {"code": code, "csr_pem": _request("mole", "oem")})
    problem(answer, 403, "refused")
    good = str(service.authority.create_enrollment(name="mole", role="oem"))
    forged = good[: good.rindex(".") - 4] + "AAAA" + good[good.rindex(".") :]
    problem(service.post("/v1/enrollment/preview", {"code": forged}), 403, "refused")
    problem(service.post("/v1/enrollment/preview", {"code": "qdse1.garbage"}), 400, "")


def test_a_request_for_another_name_or_role_is_refused(service: Service) -> None:
    code = str(service.authority.create_enrollment(name="polycell", role="supplier"))
    for name, role in (("sunarc", "supplier"), ("polycell", "oem"), ("polycell", "regulator")):
        answer = service.post("/v1/enrollment", {"code": code, "csr_pem": _request(name, role)})
        problem(answer, 403, "admits")
    # the refusals did not spend the code
    ok = service.post("/v1/enrollment", {"code": code, "csr_pem": _request("polycell", "supplier")})
    assert ok.status_code == 200, ok.text


def test_garbage_and_oversized_bodies_are_refused(service: Service) -> None:
    code = str(service.authority.create_enrollment(name="junk", role="supplier"))
    cases: list[tuple[dict[str, Any], int]] = [
        ({"content": b"{not json"}, 422),
        ({"content": b"[]"}, 422),
        ({"json": {"code": code}}, 422),  # no csr_pem
        ({"json": {"code": code, "csr_pem": "-----BEGIN nonsense"}}, 400),
        ({"json": {"code": code, "csr_pem": "x", "extra": 1}}, 422),
        ({"json": {"code": code, "csr_pem": "x" * 20_000}}, 422),  # over the field cap
        ({"content": b"[" * 5000 + b"]" * 5000}, 400),  # nesting
        ({"content": b"x" * (70 * 1024)}, 413),  # over the body cap
    ]
    for kwargs, status in cases:
        headers = {"content-type": "application/json"}
        answer = service.http.post("/v1/enrollment", headers=headers, **kwargs)
        assert answer.status_code == status, (kwargs.keys(), answer.text[:300])
        assert answer.headers["content-type"].startswith("application/problem+json")
    # none of it spent the code
    assert service.post("/v1/enrollment/preview", {"code": code}).status_code == 200


def _member(service: Service, tmp_path: Path, name: str) -> MemberKeys:
    return create_member_keys(tmp_path / name, service.authority, name=name, role="supplier")


def _publish(service: Service, keys: MemberKeys, entry: Any = None) -> httpx.Response:
    entry = entry or new_entry(keys.identity, keys.signing_key, {"peer": "127.0.0.1:7000"})
    body = {"entry": entry.to_json(), "cert_pem": keys.cert_pem.decode()}
    return service.post("/v1/directory/entries", body)


def _directory(service: Service) -> Any:
    data = service.http.get("/v1/directory").json()
    return accept_document(
        data,
        ca_cert=service.authority.cert,
        space="svc-space",
        held_serial=None,
        is_revoked=lambda serial: False,
    )


def test_a_member_publishes_its_entry(service: Service, tmp_path: Path) -> None:
    keys = _member(service, tmp_path, "dirmember")
    answer = _publish(service, keys)
    assert answer.status_code == 200, answer.text
    directory = _directory(service)
    assert directory.serial == answer.json()["serial"]
    mine = directory.document.entry(keys.identity.member_id)
    assert mine is not None and mine.cert_fingerprint == keys.identity.fingerprint
    # the same entry again is a replay
    problem(_publish(service, keys, mine), 409, "not newer")


def test_an_entry_with_a_later_version_s_endpoint_is_listed_within_bounds(
    service: Service, tmp_path: Path
) -> None:
    """A member on a newer version publishes an endpoint kind this version does not know:
    the authority lists it as signed and a node reading the directory keeps the member
    (on the old code the authority refused the entry, and older nodes dropped it, so a
    space could not upgrade one node at a time). Past the bounds it is a 400 naming the
    endpoint, and the directory keeps what it held."""
    keys = _member(service, tmp_path, "newer")
    base = new_entry(keys.identity, keys.signing_key, {"peer": "127.0.0.1:7002"})
    endpoints = {"peer": "127.0.0.1:7002", "mqtt": "mqtts://newer.example:8883"}
    entry = sign_entry(dataclasses.replace(base, endpoints=endpoints), keys.signing_key)
    assert _publish(service, keys, entry).status_code == 200
    listed = _directory(service)
    mine = listed.document.entry(keys.identity.member_id)
    assert mine is not None and mine.endpoints == endpoints and mine.peer == "127.0.0.1:7002"
    assert not [d for d in listed.dropped if d.member == keys.identity.member_id]
    for bad, message in [
        ({"MQTT": "h:1"}, "endpoint name 'MQTT' is not"),
        ({"mqtt": "x" * 600}, "endpoint mqtt must be 1-512 visible ASCII"),
        ({f"k{i}": "h:1" for i in range(20)}, "more than the 16 allowed"),
    ]:
        later = dataclasses.replace(
            base, endpoints={"peer": "127.0.0.1:7003", **bad}, published_at=_later()
        )
        problem(_publish(service, keys, sign_entry(later, keys.signing_key)), 400, message)
    held = _directory(service).document.entry(keys.identity.member_id)
    assert held is not None and held.endpoints == endpoints


def _later() -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)).isoformat()


def test_a_member_that_publishes_too_often_is_refused(service: Service, tmp_path: Path) -> None:
    """A member publishing newer entries of itself as fast as it can (each one the whole
    directory re-signed, rewritten and fetched by every node): the service takes
    `PUBLISH_BURST` at once, then answers 429 saying when to try again, and the directory
    does not change; another member still publishes (on the old code: every one taken,
    the serial growing with each)."""
    keys = _member(service, tmp_path, "chatty")
    for n in range(PUBLISH_BURST):
        address = f"127.0.0.1:{7100 + n}"
        entry = new_entry(keys.identity, keys.signing_key, {"peer": address})
        assert _publish(service, keys, entry).status_code == 200, n
    held = _directory(service)
    entry = new_entry(keys.identity, keys.signing_key, {"peer": "127.0.0.1:7999"})
    refused = _publish(service, keys, entry)
    problem(refused, 429, "more often than this authority takes")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60  # one every PUBLISH_EVERY_S
    after = _directory(service)
    assert after.serial == held.serial
    mine = after.document.entry(keys.identity.member_id)
    assert mine is not None and mine.peer == f"127.0.0.1:{7100 + PUBLISH_BURST - 1}"
    other = _member(service, tmp_path, "quiet")
    assert _publish(service, other).status_code == 200


def test_an_entry_signed_by_someone_else_is_refused(service: Service, tmp_path: Path) -> None:
    victim = _member(service, tmp_path, "victim")
    attacker = _member(service, tmp_path, "attacker")
    entry = new_entry(victim.identity, victim.signing_key, {"peer": "127.0.0.1:7001"})
    hijacked = sign_entry(
        dataclasses.replace(entry, endpoints={"peer": "6.6.6.6:7001"}), attacker.signing_key
    )
    problem(_publish(service, victim, hijacked), 403, "not its member's")
    # the victim's entry with the attacker's certificate: not the certificate's member
    problem(_publish(service, attacker, entry), 403, "is not the certificate's")
    # a certificate of another authority is not a member's
    foreign = Authority.init(tmp_path / "foreign-dir", "svc-space")
    outsider = create_member_keys(tmp_path / "outsider", foreign, name="outsider", role="oem")
    problem(_publish(service, outsider), 403, "not issued by")
    names = {e.name for e in _directory(service).entries}
    assert "victim" not in names and "outsider" not in names


def test_a_revoked_member_cannot_publish_and_leaves_the_directory(
    service: Service, tmp_path: Path
) -> None:
    keys = _member(service, tmp_path, "leaver")
    assert _publish(service, keys).status_code == 200
    before = _directory(service)
    assert "leaver" in {e.name for e in before.entries}
    Authority.load(service.authority.directory).revoke("leaver", "left")  # as the CLI does
    after = _directory(service)
    assert "leaver" not in {e.name for e in after.entries}
    assert after.serial > before.serial
    problem(_publish(service, keys), 403, "revoked")


def test_renewal_keeps_the_member_and_refuses_the_revoked(service: Service, tmp_path: Path) -> None:
    keys = _member(service, tmp_path, "renewer")
    space = "svc-space"
    request = build_request(
        space=space,
        name="renewer",
        role="supplier",
        tls_key=new_tls_key(),
        signing_key=keys.signing_key,
    ).decode()
    answer = service.post("/v1/renewal", {"csr_pem": request})
    assert answer.status_code == 200, answer.text
    renewed = identity_of(x509.load_pem_x509_certificate(answer.json()["cert_pem"].encode()))
    assert renewed.member_id == keys.identity.member_id
    assert renewed.fingerprint != keys.identity.fingerprint
    # a stranger's key cannot renew anyone; a revoked member cannot renew
    problem(service.post("/v1/renewal", {"csr_pem": _request("renewer", "supplier")}), 403, "")
    Authority.load(service.authority.directory).revoke("renewer")
    problem(service.post("/v1/renewal", {"csr_pem": request}), 403, "revoked")


def test_an_expired_member_cannot_renew(service: Service) -> None:
    """Its signing key outlives its certificate: it renewed itself back in, unrevoked."""
    key = SigningKey.generate()
    three_days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    service.authority.sign_request(
        _request("lapsed", "supplier", key=key).encode(),
        approve_name="lapsed",
        approve_role="supplier",
        valid_days=1,
        not_before=three_days_ago,
    )
    answer = service.post("/v1/renewal", {"csr_pem": _request("lapsed", "supplier", key=key)})
    problem(answer, 403, "expired at")


def test_the_crl_is_reissued_past_half_its_validity(service: Service) -> None:
    Authority.load(service.authority.directory).issue_crl(dt.timedelta(seconds=2))
    time.sleep(1.1)
    crl = x509.load_pem_x509_crl(service.http.get("/v1/crl.pem").content)
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - crl.last_update_utc > dt.timedelta(days=1)


def test_the_client_names_the_refusal(service: Service) -> None:
    with AuthorityClient(service.url, cert_to_pem(service.authority.cert)) as client:
        with pytest.raises(AuthorityRefused, match="refused POST /v1/enrollment/preview") as info:
            client.preview("qdse1.nothing")
        assert info.value.status == 400
        assert json.loads(json.dumps(client.directory()))["space"] == "svc-space"


def test_a_business_partner_number_counts_only_as_attested(service: Service) -> None:
    """The directory lists a BPNL only when the authority attested it at enrollment
    (``enroll --bpn``): an entry claiming another, or one for a member enrolled without,
    is refused, and the directory keeps no claimed number."""
    attested, claimed = "BPNL00000000ATST", "BPNL00000000FAKE"
    enrolled: dict[str, tuple[SigningKey, Any, str]] = {}
    for name, bpn in (("bpnholder", attested), ("bpnless", None)):
        code = str(service.authority.create_enrollment(name=name, role="supplier", bpn=bpn))
        key = SigningKey.generate()
        answer = service.post(
            "/v1/enrollment", {"code": code, "csr_pem": _request(name, "supplier", key=key)}
        )
        assert answer.status_code == 200, answer.text
        cert_pem = answer.json()["cert_pem"]
        enrolled[name] = (
            key,
            identity_of(x509.load_pem_x509_certificate(cert_pem.encode())),
            cert_pem,
        )

    def publish(name: str, bpn: str | None) -> httpx.Response:
        key, identity, cert_pem = enrolled[name]
        entry = new_entry(identity, key, {"peer": "127.0.0.1:7010"}, bpn=bpn)
        return service.post(
            "/v1/directory/entries", {"entry": entry.to_json(), "cert_pem": cert_pem}
        )

    problem(publish("bpnholder", claimed), 403, "attested BPNL00000000ATST")
    problem(publish("bpnless", claimed), 403, "attested none")
    assert publish("bpnless", None).status_code == 200
    assert publish("bpnholder", attested).status_code == 200
    listed = {e.name: e.bpn for e in _directory(service).entries}
    assert listed["bpnholder"] == attested and listed["bpnless"] is None
