"""A host directory on disk: init, tenants added with a local authority, their secrets
sealed, read back through the key-file interface (no sockets: ports are given)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qdspace.node.config import NodeSettings
from qdspace.node.context import build_context
from qdspace.node.errors import ConfigError, IdentityError
from qdspace.node.host.config import MASTER_KEY_ENV, HostLayout, HostSettings
from qdspace.node.host.errors import HostError, TenantExists, WrongMasterKey
from qdspace.node.host.registry import Registry, TenantState
from qdspace.node.host.sealing import new_key
from qdspace.node.host.tenants import (
    Enrollment,
    add_tenant,
    init_host,
    load_master_key,
    tenant_key_files,
    tenant_token,
)
from qdspace.node.identity.authority import Authority
from qdspace.node.identity.member import load_member_keys


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority.init(tmp_path / "A", "unit-space")


def _add(host: Path, authority: Authority, name: str, port: int) -> None:
    add_tenant(
        host, name, "supplier", Enrollment(authority_dir=authority.directory), grpc_port=port
    )


def test_a_tenant_is_a_node_directory_whose_secrets_are_sealed(
    tmp_path: Path, authority: Authority
) -> None:
    host = tmp_path / "H"
    files = init_host(host, HostSettings())
    assert files.master_key.stat().st_mode & 0o777 == 0o600
    _add(host, authority, "siliwafer", 17001)
    record = Registry(host).get("siliwafer")
    tenant = files.tenant("siliwafer")
    assert NodeSettings.load(tenant).grpc_port == 17001
    for secret in ("signing.key", "tls.key", "operator.token"):
        assert (tenant / secret).read_bytes().startswith(b"qdspace-sealed-file/1\n"), secret
    with pytest.raises(IdentityError, match=r"signing key .* is corrupt"):
        load_member_keys(tenant)  # a plain reader gets nothing out of it
    key_files = tenant_key_files(files, load_master_key(files), "siliwafer")
    keys = load_member_keys(tenant, key_files=key_files)
    assert keys.identity.member_id == record.member_id
    ctx = build_context(NodeSettings.load(tenant), key_files)
    try:  # the contract secrets made on first start are sealed too
        assert ctx.operator_token == tenant_token(host, "siliwafer")
        assert (tenant / "contract.kek").read_bytes().startswith(b"qdspace-sealed-file/1\n")
        assert (tenant / "pseudonym.secret").read_bytes().startswith(b"qdspace-sealed-file/1\n")
    finally:
        ctx.close()


def test_the_master_key_may_come_from_a_secret_file(
    tmp_path: Path, authority: Authority, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "mounted-secret"
    secret.write_text(new_key().hex() + "\n")
    monkeypatch.setenv(MASTER_KEY_ENV, str(secret))
    host = tmp_path / "H"
    init_host(host, HostSettings())
    assert not (host / "host.key").exists()
    _add(host, authority, "cellex", 17002)
    assert tenant_token(host, "cellex")
    secret.write_text(new_key().hex() + "\n")  # another key: the tenant does not open
    with pytest.raises(WrongMasterKey, match="does not open"):
        tenant_token(host, "cellex")
    secret.write_text("short\n")
    with pytest.raises(IdentityError, match="64 hex characters"):
        load_master_key(HostLayout(host))


def test_collisions_are_refused_and_leave_nothing(tmp_path: Path, authority: Authority) -> None:
    host = tmp_path / "H"
    init_host(host, HostSettings())
    _add(host, authority, "siliwafer", 17003)
    with pytest.raises(TenantExists):
        _add(host, authority, "siliwafer", 17004)
    with pytest.raises(HostError, match="port 17003 is another tenant's"):
        _add(host, authority, "cellex", 17003)
    assert [r.name for r in Registry(host).tenants()] == ["siliwafer"]
    assert sorted(p.name for p in (host / "tenants").iterdir()) == ["siliwafer"]
    with pytest.raises(ConfigError, match="a host already exists"):
        init_host(host, HostSettings())


def test_a_state_change_is_kept_in_the_registry(tmp_path: Path, authority: Authority) -> None:
    host = tmp_path / "H"
    init_host(host, HostSettings())
    _add(host, authority, "siliwafer", 17005)
    Registry(host).set_state("siliwafer", TenantState.SUSPENDED, "unpaid")
    record = Registry(host).get("siliwafer")
    assert (record.state, record.reason) == (TenantState.SUSPENDED, "unpaid")
    Registry(host).set_state("siliwafer", TenantState.ACTIVE)
    assert Registry(host).get("siliwafer").reason == ""
