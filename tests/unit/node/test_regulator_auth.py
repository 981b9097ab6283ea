"""The regulator credential: only a current, unrevoked regulator of this data space, for us."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from qdspace.node.api.regulator_auth import CredentialError, check_credential, issue_credential
from qdspace.node.errors import IdentityError
from qdspace.node.identity.authority import Authority
from qdspace.node.identity.member import MemberKeys, create_member_keys
from qdspace.node.identity.revocation import RevocationList

AUDIENCE = "cellex-0123456789ab"


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority.init(tmp_path / "authority", "test-space")


def member(authority: Authority, tmp_path: Path, name: str, role: str) -> MemberKeys:
    return create_member_keys(tmp_path / name, authority, name=name, role=role)


def check(token: str, authority: Authority, crl: Path | None = None, **kw: float) -> str:
    revocations = RevocationList(authority.cert, crl or authority.directory / "crl.pem")
    return check_credential(
        token, ca_cert=authority.cert, revocations=revocations, audience=AUDIENCE, **kw
    ).name


def test_a_regulator_credential_holds_for_its_audience(
    authority: Authority, tmp_path: Path
) -> None:
    reg = member(authority, tmp_path, "regulator", "regulator")
    assert check(issue_credential(reg, AUDIENCE), authority) == "regulator"


def test_refusals_name_the_reason(authority: Authority, tmp_path: Path) -> None:
    reg = member(authority, tmp_path, "regulator", "regulator")
    supplier = member(authority, tmp_path, "cellex", "supplier")
    with pytest.raises(CredentialError, match="only a regulator"):
        issue_credential(supplier, AUDIENCE)
    with pytest.raises(CredentialError, match="not for this node"):
        check(issue_credential(reg, "someone-else"), authority)
    old = issue_credential(reg, AUDIENCE, ttl_s=60, now=time.time() - 600)
    with pytest.raises(CredentialError, match="expired"):
        check(old, authority)
    with pytest.raises(CredentialError, match="validity period"):
        check(issue_credential(reg, AUDIENCE, ttl_s=86_400), authority)
    cert, claims, sig = issue_credential(reg, AUDIENCE).split(".")
    other_claims = issue_credential(reg, "someone-else").split(".")[1]
    with pytest.raises(CredentialError, match="signature"):
        check(f"{cert}.{other_claims}.{sig}", authority)
    with pytest.raises(CredentialError, match="three"):
        check("not-a-token", authority)
    with pytest.raises(CredentialError, match=r"DER|base64"):
        check(f"AAAA.{claims}.{sig}", authority)


def test_a_foreign_authority_or_a_revoked_regulator_is_refused(
    authority: Authority, tmp_path: Path
) -> None:
    reg = member(authority, tmp_path, "regulator", "regulator")
    foreign_ca = Authority.init(tmp_path / "foreign", "other-space")
    impostor = member(foreign_ca, tmp_path, "impostor", "regulator")
    with pytest.raises(IdentityError, match="authority"):
        check(issue_credential(impostor, AUDIENCE), authority)
    token = issue_credential(reg, AUDIENCE)
    authority.revoke("regulator", "key compromise")
    with pytest.raises(CredentialError, match="revoked"):
        check(token, authority, tmp_path / "authority" / "crl.pem")
