"""Enrollment by certificate request: codes, requests, refusals, renewal.

(Certificates from another PKI, in a trust bundle: tests/integration/node/test_enrollment_cli.py.)

Real keys and real X.509 throughout; the hostile requests are built by hand the way an
attacker would, with the `cryptography` builder, not by switching a check off.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from nacl.signing import SigningKey

from qdspace.node import faults
from qdspace.node.errors import IdentityError
from qdspace.node.identity.authority import Authority
from qdspace.node.identity.certs import (
    VERIFY_KEY_OID,
    cert_to_pem,
    member_subject,
    new_tls_key,
)
from qdspace.node.identity.csr import POP_OID, build_request, pop_message, read_request
from qdspace.node.identity.enrollment import EnrollmentCode
from qdspace.node.identity.errors import (
    CertificateRequestError,
    EnrollmentCodeExpired,
    EnrollmentCodeRefused,
    EnrollmentCodeUsed,
    MalformedEnrollmentCode,
    NameTaken,
    RenewalRefused,
    RequestNotGranted,
)
from qdspace.node.identity.member import (
    create_member_keys,
    create_member_request,
    create_renewal_request,
    install_certificate,
    load_member_keys,
)
from qdspace.node.member_ids import member_id_for

SPACE = "test-space"


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority.init(tmp_path / "authority", SPACE)


def _request(name: str = "cellex", role: str = "supplier", hosts: tuple[str, ...] = ()) -> bytes:
    return build_request(
        space=SPACE,
        name=name,
        role=role,
        tls_key=new_tls_key(),
        signing_key=SigningKey.generate(),
        hostnames=hosts,
    )


def _spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _forge(
    *,
    name: str,
    role: str,
    member_id: str,
    verify_key: bytes,
    pop: bytes,
    tls_key: ec.EllipticCurvePrivateKey,
) -> bytes:
    """A request assembled by hand, each part as the attacker chooses."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(member_subject(SPACE, name, member_id, role))
        .add_extension(x509.UnrecognizedExtension(VERIFY_KEY_OID, verify_key), critical=False)
        .add_extension(x509.UnrecognizedExtension(POP_OID, pop), critical=False)
        .sign(tls_key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


# -- the round trip -----------------------------------------------------------------------


def test_code_request_certificate_round_trip(authority: Authority, tmp_path: Path) -> None:
    code = authority.create_enrollment(name="cellex", role="supplier", bpn="BPNL000000000001")
    assert authority.preview_enrollment(str(code)) == ("cellex", "supplier")
    node = tmp_path / "cellex"
    csr = create_member_request(
        node, space=SPACE, name="cellex", role="supplier", hostnames=["cellex.example", "10.0.0.5"]
    )
    for private in ("signing.key", "tls.key"):
        assert (node / private).stat().st_mode & 0o777 == 0o600
    cert = authority.sign_request(csr.read_bytes(), code=str(code))
    install_certificate(node, cert_to_pem(cert), cert_to_pem(authority.cert))
    keys = load_member_keys(node)
    assert keys.identity.name == "cellex" and keys.identity.role == "supplier"
    assert keys.identity.member_id == member_id_for("cellex", bytes(keys.signing_key.verify_key))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "cellex", "cellex.example"}
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.0.0.5"}
    (issued,) = authority.members()
    assert issued.bpn == "BPNL000000000001" and issued.hostnames == ("cellex.example", "10.0.0.5")
    book = (authority.directory / "enrollments.json").read_text()
    assert code.secret not in book  # only its hash is kept
    assert json.loads(book)[0]["used_by"] == keys.identity.member_id
    assert code.secret not in repr(code)


def test_the_code_pins_the_authority(authority: Authority) -> None:
    code = authority.create_enrollment(name="cellex", role="supplier")
    assert EnrollmentCode.parse(str(code)) == code
    assert code.ca_fingerprint == authority.cert.fingerprint(hashes.SHA256()).hex()


def test_local_init_goes_through_a_request(authority: Authority, tmp_path: Path) -> None:
    keys = create_member_keys(tmp_path / "n", authority, name="cellex", role="supplier")
    assert load_member_keys(tmp_path / "n").identity == keys.identity
    assert not (tmp_path / "n" / "request.csr").exists()


# -- codes refused --------------------------------------------------------------------------


def test_a_code_admits_one_certificate(authority: Authority) -> None:
    code = str(authority.create_enrollment(name="cellex", role="supplier"))
    authority.sign_request(_request(), code=code)
    with pytest.raises(EnrollmentCodeUsed, match="already used"):
        authority.sign_request(_request(), code=code)
    with pytest.raises(EnrollmentCodeUsed):
        authority.preview_enrollment(code)


def test_an_expired_code_is_refused(authority: Authority) -> None:
    code = str(authority.create_enrollment(name="cellex", role="supplier"))
    path = authority.directory / "enrollments.json"
    rows = json.loads(path.read_text())
    rows[0]["expires_at"] = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)).isoformat()
    path.write_text(json.dumps(rows))
    with pytest.raises(EnrollmentCodeExpired, match="expired"):
        authority.sign_request(_request(), code=code)
    assert authority.members() == []


@pytest.mark.parametrize(
    ("name", "role", "message"),
    [("polycell", "supplier", "name 'polycell'"), ("cellex", "oem", "role 'oem'")],
)
def test_a_code_is_for_one_name_and_role(
    authority: Authority, name: str, role: str, message: str
) -> None:
    code = str(authority.create_enrollment(name="cellex", role="supplier"))
    with pytest.raises(RequestNotGranted, match=message):
        authority.sign_request(_request(name, role), code=code)
    authority.sign_request(_request(), code=code)  # refused requests did not spend it


def test_wrong_secret_unknown_code_and_other_authority(
    authority: Authority, tmp_path: Path
) -> None:
    code = authority.create_enrollment(name="cellex", role="supplier")
    wrong = EnrollmentCode(code.code_id, EnrollmentCode.new("0" * 64).secret, code.ca_fingerprint)
    with pytest.raises(EnrollmentCodeRefused):
        authority.sign_request(_request(), code=str(wrong))
    other = Authority.init(tmp_path / "other", SPACE)
    with pytest.raises(EnrollmentCodeRefused):
        other.sign_request(_request(), code=str(code))
    with pytest.raises(MalformedEnrollmentCode):
        authority.preview_enrollment("qdse1.nope")
    authority.sign_request(_request(), code=str(code))  # the right secret still works


def test_concurrent_redemptions_of_one_code_yield_one_certificate(authority: Authority) -> None:
    code = str(authority.create_enrollment(name="cellex", role="supplier"))
    requests = [_request() for _ in range(4)]
    barrier = threading.Barrier(len(requests))
    issued: list[x509.Certificate] = []
    refused: list[Exception] = []

    def redeem(csr: bytes) -> None:
        signer = Authority.load(authority.directory)  # as separate signers would
        barrier.wait()
        try:
            issued.append(signer.sign_request(csr, code=code))
        except IdentityError as exc:
            refused.append(exc)

    threads = [threading.Thread(target=redeem, args=(csr,)) for csr in requests]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(issued) == 1
    assert len(refused) == 3 and all(isinstance(e, EnrollmentCodeUsed) for e in refused)
    assert [m.serial for m in authority.members()] == [f"{issued[0].serial_number:x}"]


# -- requests refused -------------------------------------------------------------------------


def test_a_request_tampered_after_signing_is_refused() -> None:
    pem = _request("cellex")
    der = x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
    tampered = x509.load_der_x509_csr(der.replace(b"cellex", b"sunarc")).public_bytes(
        serialization.Encoding.PEM
    )
    with pytest.raises(CertificateRequestError, match="signature does not verify"):
        read_request(tampered)


def test_proof_of_possession_for_another_tls_key_is_refused() -> None:
    signing, tls, other_tls = SigningKey.generate(), new_tls_key(), new_tls_key()
    vk = bytes(signing.verify_key)
    pop = signing.sign(
        pop_message(space=SPACE, name="cellex", role="supplier", spki=_spki(other_tls))
    ).signature
    csr = _forge(
        name="cellex",
        role="supplier",
        member_id=member_id_for("cellex", vk),
        verify_key=vk,
        pop=pop,
        tls_key=tls,
    )
    with pytest.raises(CertificateRequestError, match="proof of possession"):
        read_request(csr)


def test_another_members_verify_key_is_refused(authority: Authority, tmp_path: Path) -> None:
    victim = create_member_keys(tmp_path / "v", authority, name="sunarc", role="oem")
    victim_vk = victim.identity.verify_key
    attacker, tls = SigningKey.generate(), new_tls_key()
    pop = attacker.sign(
        pop_message(space=SPACE, name="sunarc", role="oem", spki=_spki(tls))
    ).signature
    csr = _forge(
        name="sunarc",
        role="oem",
        member_id=victim.identity.member_id,
        verify_key=victim_vk,
        pop=pop,
        tls_key=tls,
    )
    with pytest.raises(CertificateRequestError, match="proof of possession"):
        authority.renew(csr)
    with pytest.raises(CertificateRequestError, match="proof of possession"):
        authority.sign_request(csr, approve_name="sunarc", approve_role="oem")


def test_a_wrong_member_id_is_refused() -> None:
    signing, tls = SigningKey.generate(), new_tls_key()
    pop = signing.sign(
        pop_message(space=SPACE, name="cellex", role="supplier", spki=_spki(tls))
    ).signature
    csr = _forge(
        name="cellex",
        role="supplier",
        member_id="cellex-000000000000",
        verify_key=bytes(signing.verify_key),
        pop=pop,
        tls_key=tls,
    )
    with pytest.raises(CertificateRequestError, match="member id 'cellex-000000000000'"):
        read_request(csr)


def test_an_unknown_role_is_refused(authority: Authority) -> None:
    signing, tls = SigningKey.generate(), new_tls_key()
    vk = bytes(signing.verify_key)
    pop = signing.sign(
        pop_message(space=SPACE, name="cellex", role="admin", spki=_spki(tls))
    ).signature
    csr = _forge(
        name="cellex",
        role="admin",
        member_id=member_id_for("cellex", vk),
        verify_key=vk,
        pop=pop,
        tls_key=tls,
    )
    with pytest.raises(CertificateRequestError, match="role must be one of"):
        authority.sign_request(csr, approve_name="cellex", approve_role="admin")
    with pytest.raises(CertificateRequestError, match="role must be one of"):
        authority.create_enrollment(name="cellex", role="admin")


def test_garbage_is_not_a_request() -> None:
    with pytest.raises(CertificateRequestError, match="not a PEM certificate request"):
        read_request(
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
        )
    with pytest.raises(CertificateRequestError, match="over"):
        read_request(b"x" * 100_000)


def test_another_members_name_is_refused(authority: Authority, tmp_path: Path) -> None:
    create_member_keys(tmp_path / "s", authority, name="sunarc", role="oem")
    with pytest.raises(NameTaken, match="already taken"):
        authority.sign_request(_request("sunarc", "oem"), approve_name="sunarc", approve_role="oem")
    with pytest.raises(NameTaken, match="already taken"):
        authority.create_enrollment(name="sunarc", role="oem")


def test_the_role_granted_is_the_role_issued(authority: Authority) -> None:
    with pytest.raises(RequestNotGranted, match="role 'oem'"):
        authority.sign_request(
            _request("cellex", "oem"), approve_name="cellex", approve_role="supplier"
        )
    assert authority.members() == []


def test_a_hostname_that_is_another_members_name_is_refused(
    authority: Authority, tmp_path: Path
) -> None:
    create_member_keys(tmp_path / "s", authority, name="sunarc", role="oem")
    code = str(authority.create_enrollment(name="cellex", role="supplier"))
    with pytest.raises(NameTaken, match="hostname 'sunarc'"):
        authority.sign_request(_request(hosts=("sunarc",)), code=code)
    # and the other way round: no member may take a name another answers to as a hostname
    authority.sign_request(_request(hosts=("gateway",)), code=code)
    with pytest.raises(NameTaken, match="already taken"):
        authority.create_enrollment(name="gateway", role="oem")


def test_wildcards_and_odd_hostnames_are_refused() -> None:
    for host in ("*.example.com", "a b", "x" * 300):
        with pytest.raises(CertificateRequestError, match="hostname"):
            _request(hosts=(host,))


def test_requests_for_another_space_are_refused(authority: Authority) -> None:
    csr = build_request(
        space="elsewhere",
        name="cellex",
        role="supplier",
        tls_key=new_tls_key(),
        signing_key=SigningKey.generate(),
    )
    with pytest.raises(RequestNotGranted, match="data space 'elsewhere'"):
        authority.sign_request(csr, approve_name="cellex", approve_role="supplier")


# -- renewal ------------------------------------------------------------------------------


def test_renewal_keeps_the_member_id_and_changes_the_key(
    authority: Authority, tmp_path: Path
) -> None:
    node = tmp_path / "n"
    before = create_member_keys(node, authority, name="cellex", role="supplier")
    csr = create_renewal_request(node)
    assert load_member_keys(node).cert == before.cert  # nothing changes until install
    cert = authority.renew(csr.read_bytes())
    install_certificate(node, cert_to_pem(cert), cert_to_pem(authority.cert), renew=True)
    after = load_member_keys(node)
    assert after.identity.member_id == before.identity.member_id
    assert after.identity.serial != before.identity.serial
    assert after.tls_key.public_key() != before.tls_key.public_key()
    assert not (node / "tls-next.key").exists()


def test_a_renewal_interrupted_between_its_renames_completes(
    authority: Authority, tmp_path: Path
) -> None:
    node = tmp_path / "n"
    create_member_keys(node, authority, name="cellex", role="supplier")
    cert = authority.renew(create_renewal_request(node).read_bytes())
    (node / "tls.crt").write_bytes(cert_to_pem(cert))  # the certificate went in, the key not
    keys = load_member_keys(node)
    assert keys.cert == cert and not (node / "tls-next.key").exists()


def test_renewal_of_unknown_or_revoked_member_is_refused(
    authority: Authority, tmp_path: Path
) -> None:
    with pytest.raises(RenewalRefused, match="not in this authority's register"):
        authority.renew(_request())
    node = tmp_path / "n"
    create_member_keys(node, authority, name="cellex", role="supplier")
    csr = create_renewal_request(node).read_bytes()
    authority.revoke("cellex")
    with pytest.raises(RenewalRefused, match="is revoked"):
        authority.renew(csr)


def test_renewal_may_not_change_the_role(authority: Authority, tmp_path: Path) -> None:
    keys = create_member_keys(tmp_path / "n", authority, name="cellex", role="supplier")
    csr = build_request(
        space=SPACE,
        name="cellex",
        role="oem",
        tls_key=new_tls_key(),
        signing_key=keys.signing_key,
    )
    with pytest.raises(RenewalRefused, match="new name or role is a new enrollment"):
        authority.renew(csr)


def test_a_certificate_for_other_keys_is_not_installed(
    authority: Authority, tmp_path: Path
) -> None:
    node = tmp_path / "n"
    create_member_request(node, space=SPACE, name="cellex", role="supplier")
    foreign = authority.sign_request(_request(), approve_name="cellex", approve_role="supplier")
    with pytest.raises(IdentityError, match="TLS key does not match"):
        install_certificate(node, cert_to_pem(foreign), cert_to_pem(authority.cert))
    assert not (node / "tls.crt").exists()


# -- faults ---------------------------------------------------------------------------------


def test_each_refusal_has_its_status() -> None:
    assert faults.http_status(CertificateRequestError("x")) == 400
    assert faults.http_status(MalformedEnrollmentCode("x")) == 400
    assert faults.http_status(EnrollmentCodeRefused("x")) == 403
    assert faults.http_status(EnrollmentCodeUsed("x")) == 409
    assert faults.http_status(EnrollmentCodeExpired("x")) == 410
    assert faults.http_status(RequestNotGranted("x")) == 403
    assert faults.http_status(NameTaken("x")) == 409
    assert faults.http_status(RenewalRefused("x")) == 403


def test_a_request_over_another_key_type_is_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(member_subject(SPACE, "cellex", "cellex-000000000000", "supplier"))
        .sign(rsa.generate_private_key(public_exponent=65537, key_size=2048), hashes.SHA256())
    )
    with pytest.raises(CertificateRequestError, match="EC P-256"):
        read_request(csr.public_bytes(serialization.Encoding.PEM))
