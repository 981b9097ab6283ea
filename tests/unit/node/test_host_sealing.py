"""A host's tenant secrets at rest: sealed under a per-tenant data key wrapped by the
master key. Each hostile case must fail with an error that says what happened."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from qdspace.node.host.errors import (
    SealedFileError,
    TenantExists,
    TenantNameRefused,
    WrongMasterKey,
)
from qdspace.node.host.names import check_name, check_new_name
from qdspace.node.host.sealing import MasterKey, SealedKeyFiles, new_key


def _tenant(tmp_path: Path, master: MasterKey, name: str) -> tuple[SealedKeyFiles, Path]:
    directory = tmp_path / name
    directory.mkdir()
    files = SealedKeyFiles.create(master, name, directory / "data.key")
    return files, directory


def test_a_sealed_file_opens_for_its_tenant_and_is_not_plaintext(tmp_path: Path) -> None:
    master = MasterKey(new_key())
    files, directory = _tenant(tmp_path, master, "siliwafer")
    files.write(directory / "signing.key", b"secret seed")
    raw = (directory / "signing.key").read_bytes()
    assert b"secret seed" not in raw
    assert (directory / "signing.key").stat().st_mode & 0o777 == 0o600
    reopened = SealedKeyFiles.open(master, "siliwafer", directory / "data.key")
    assert reopened.read(directory / "signing.key", "signing key") == b"secret seed"


def test_a_tampered_file_is_refused(tmp_path: Path) -> None:
    master = MasterKey(new_key())
    files, directory = _tenant(tmp_path, master, "siliwafer")
    path = directory / "tls.key"
    files.write(path, b"-----BEGIN PRIVATE KEY-----...")
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(SealedFileError, match=r"tls\.key fails authentication: it was altered"):
        files.read(path, "TLS key")


def test_a_file_moved_to_another_tenant_does_not_open(tmp_path: Path) -> None:
    master = MasterKey(new_key())
    a, a_dir = _tenant(tmp_path, master, "siliwafer")
    b, b_dir = _tenant(tmp_path, master, "cellex")
    a.write(a_dir / "signing.key", b"siliwafer's seed")
    shutil.copy(a_dir / "signing.key", b_dir / "signing.key")
    with pytest.raises(SealedFileError, match="sealed for tenant 'siliwafer', not 'cellex'"):
        b.read(b_dir / "signing.key", "signing key")


def test_a_header_rewritten_to_the_other_tenant_still_does_not_open(tmp_path: Path) -> None:
    """The header names the tenant, but it is authenticated: editing it is tampering."""
    master = MasterKey(new_key())
    a, a_dir = _tenant(tmp_path, master, "abc")
    b, b_dir = _tenant(tmp_path, master, "xyz")
    a.write(a_dir / "pseudonym.secret", b"x" * 32)
    forged = (a_dir / "pseudonym.secret").read_bytes().replace(b"\x03abc", b"\x03xyz", 1)
    (b_dir / "pseudonym.secret").write_bytes(forged)
    with pytest.raises(SealedFileError, match="fails authentication"):
        b.read(b_dir / "pseudonym.secret", "pseudonym secret")


def test_a_file_renamed_within_a_tenant_does_not_open(tmp_path: Path) -> None:
    master = MasterKey(new_key())
    files, directory = _tenant(tmp_path, master, "siliwafer")
    files.write(directory / "operator.token", b"token")
    (directory / "operator.token").rename(directory / "signing.key")
    with pytest.raises(SealedFileError, match=r"sealed as 'operator\.token', not 'signing\.key'"):
        files.read(directory / "signing.key", "signing key")


def test_a_wrong_master_key_is_named(tmp_path: Path) -> None:
    master = MasterKey(new_key())
    _, directory = _tenant(tmp_path, master, "siliwafer")
    with pytest.raises(WrongMasterKey, match=r"host master key does not open .*siliwafer"):
        SealedKeyFiles.open(MasterKey(new_key()), "siliwafer", directory / "data.key")


def test_a_data_key_moved_to_another_tenant_does_not_open(tmp_path: Path) -> None:
    master = MasterKey(new_key())
    _, a_dir = _tenant(tmp_path, master, "siliwafer")
    _, b_dir = _tenant(tmp_path, master, "cellex")
    shutil.copy(a_dir / "data.key", b_dir / "data.key")
    with pytest.raises(SealedFileError, match="sealed for tenant 'siliwafer', not 'cellex'"):
        SealedKeyFiles.open(master, "cellex", b_dir / "data.key")


def test_a_plain_file_is_not_taken_for_a_sealed_one(tmp_path: Path) -> None:
    master = MasterKey(new_key())
    files, directory = _tenant(tmp_path, master, "siliwafer")
    (directory / "signing.key").write_bytes(b"00" * 32)
    with pytest.raises(SealedFileError, match="not a sealed file"):
        files.read(directory / "signing.key", "signing key")


def test_a_malformed_master_key_is_refused() -> None:
    with pytest.raises(SealedFileError, match="64 hex characters"):
        MasterKey.parse("not hex", "host.key")
    with pytest.raises(SealedFileError, match="64 hex characters"):
        MasterKey.parse("ab" * 16, "host.key")


@pytest.mark.parametrize(
    "name",
    ["", "../x", "..", ".", "a/b", "a\\b", "SiliWafer", "sili wafer", "-lead", "trail-",
     "a" * 41, "sil\u0131wafer", "siliwafer\x00", "sili.wafer", "tenants/../../etc"],
)  # fmt: skip
def test_hostile_tenant_names_are_refused(name: str) -> None:
    with pytest.raises(TenantNameRefused):
        check_name(name)


def test_a_name_colliding_by_case_is_refused() -> None:
    assert check_name("siliwafer-2") == "siliwafer-2"
    assert check_name("a" * 40) == "a" * 40
    with pytest.raises(TenantExists, match="'SILIWAFER' already exists"):
        check_new_name("siliwafer", ["SILIWAFER"])
