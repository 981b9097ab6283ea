"""Authority, member keys and revocation, without any socket."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from qdspace.node.errors import IdentityError
from qdspace.node.identity.authority import Authority
from qdspace.node.identity.certs import identity_of, verify_issued_by
from qdspace.node.identity.member import create_member_keys, load_member_keys
from qdspace.node.identity.revocation import RevocationList


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority.init(tmp_path / "authority", "test-space")


def test_authority_files_are_private_and_reloadable(authority: Authority) -> None:
    key_mode = (authority.directory / "ca.key").stat().st_mode & 0o777
    assert key_mode == 0o600
    again = Authority.load(authority.directory)
    assert again.cert == authority.cert
    assert again.space == "test-space"


def test_authority_refuses_to_overwrite(authority: Authority) -> None:
    with pytest.raises(IdentityError, match="already exists"):
        Authority.init(authority.directory)


def test_member_certificate_carries_id_role_and_verify_key(
    authority: Authority, tmp_path: Path
) -> None:
    keys = create_member_keys(tmp_path / "n", authority, name="cellex", role="supplier")
    ident = identity_of(keys.cert)
    assert ident.name == "cellex"
    assert ident.role == "supplier"
    assert ident.member_id.startswith("cellex-")
    assert ident.verify_key == bytes(keys.signing_key.verify_key)
    loaded = load_member_keys(tmp_path / "n")
    assert loaded.identity == ident
    assert (tmp_path / "n" / "signing.key").stat().st_mode & 0o777 == 0o600


def test_unknown_role_is_refused(authority: Authority, tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="role must be one of"):
        create_member_keys(tmp_path / "n", authority, name="x", role="admin")
    assert not (tmp_path / "n").exists()


def test_foreign_certificate_does_not_verify(authority: Authority, tmp_path: Path) -> None:
    other = Authority.init(tmp_path / "other")
    keys = create_member_keys(tmp_path / "n", other, name="evil", role="oem")
    with pytest.raises(IdentityError, match="not issued by"):
        verify_issued_by(keys.cert, authority.cert)


def test_expired_certificate_does_not_verify(authority: Authority, tmp_path: Path) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    keys = create_member_keys(
        tmp_path / "n", authority, name="old", role="oem", valid_days=1, not_before=past
    )
    with pytest.raises(IdentityError, match="not valid now"):
        verify_issued_by(keys.cert, authority.cert)


@pytest.mark.parametrize(
    ("victim", "content", "message"),
    [
        ("signing.key", b"zz-not-hex", "signing key .* is corrupt"),
        ("tls.key", b"-----BEGIN PRIVATE KEY-----\ngarbage\n", "TLS key .* corrupt"),
        ("tls.crt", b"not a cert", "TLS certificate .* corrupt"),
    ],
)
def test_corrupt_key_files_name_the_file(
    authority: Authority, tmp_path: Path, victim: str, content: bytes, message: str
) -> None:
    create_member_keys(tmp_path / "n", authority, name="cellex", role="supplier")
    (tmp_path / "n" / victim).write_bytes(content)
    with pytest.raises(IdentityError, match=message):
        load_member_keys(tmp_path / "n")


def test_swapped_signing_key_is_detected(authority: Authority, tmp_path: Path) -> None:
    create_member_keys(tmp_path / "a", authority, name="a", role="oem")
    create_member_keys(tmp_path / "b", authority, name="b", role="oem")
    os.replace(tmp_path / "b" / "signing.key", tmp_path / "a" / "signing.key")
    with pytest.raises(IdentityError, match="does not match the verify key"):
        load_member_keys(tmp_path / "a")


def test_revocation_list_follows_the_authority(authority: Authority, tmp_path: Path) -> None:
    keys = create_member_keys(tmp_path / "n", authority, name="cellex", role="supplier")
    crl = RevocationList(authority.cert, authority.directory / "crl.pem")
    assert not crl.is_revoked(keys.identity.serial)
    revoked = authority.revoke("cellex", "key compromise")
    assert [m.name for m in revoked] == ["cellex"]
    assert crl.is_revoked(keys.identity.serial)
    assert authority.members()[0].revocation_reason == "key compromise"


def test_crl_signed_by_another_authority_is_refused(authority: Authority, tmp_path: Path) -> None:
    other = Authority.init(tmp_path / "other")
    with pytest.raises(IdentityError, match="not signed by the authority"):
        RevocationList(authority.cert, other.directory / "crl.pem")


def test_revoking_unknown_member_fails(authority: Authority) -> None:
    with pytest.raises(IdentityError, match="no active member"):
        authority.revoke("nobody")
