"""A hosted tenant on its own PostgreSQL schema beside one on SQLite, in one host process.

Its database URL carries a password, so it is kept sealed like the tenant's keys: no
plaintext file of the tenant's directory holds it. Needs ``QDSPACE_TEST_PG_URL``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import pytest

from qdspace.node.layout import NodeLayout
from qdspace.node.localnet.network import LocalNetwork, MemberProcess, MemberSpec
from qdspace.util.ports import free_port

from .conftest import Host, qdspace

pytestmark = pytest.mark.integration

PG_ENV = "QDSPACE_TEST_PG_URL"


@pytest.fixture(scope="module")
def host(
    tmp_path_factory: pytest.TempPathFactory,
    fresh_pg_schema: Callable[[str], AbstractContextManager[tuple[str, str]]],
) -> Iterator[Host]:
    if not os.environ.get(PG_ENV):
        pytest.skip(f"${PG_ENV} is not set: no PostgreSQL server to host a tenant on")
    # the tenant's schema (``tests/conftest.py``), dropped once the host stopped
    with fresh_pg_schema("qdspace_host") as (tenant_url, _):
        yield from _host_with_tenants(tmp_path_factory, tenant_url)


def _host_with_tenants(factory: pytest.TempPathFactory, tenant_url: str) -> Iterator[Host]:
    """A running host: tenant ``pgco`` on the schema ``tenant_url`` names, ``liteco`` on
    SQLite; stopped when the generator is closed or resumed."""
    workdir = factory.mktemp("host-pg")
    net = LocalNetwork(workdir, members=(), chain=False)
    net.create()  # the authority only
    ports = {"pgco": free_port(), "liteco": free_port()}
    hosted = Host(workdir, workdir / "H", net, free_port(), ports)
    url_file = workdir / "pgco.db-url"
    url_file.write_text(f"{tenant_url}\n")
    try:
        done = qdspace("host", "init", "--dir", str(hosted.directory), "--api-port",
                       str(hosted.api_port))  # fmt: skip
        assert done.returncode == 0, done.stderr
        for name in ports:
            extra = ["--db-url-file", str(url_file)] if name == "pgco" else []
            done = qdspace("host", "tenant", "add", "--dir", str(hosted.directory), "--name",
                           name, "--role", "supplier", "--authority", str(net.authority_dir),
                           "--grpc-port", str(ports[name]), *extra)  # fmt: skip
            assert done.returncode == 0, done.stderr
            out = workdir / f"{name}.token"
            done = qdspace("host", "tenant", "token", "--dir", str(hosted.directory), "--name",
                           name, "--out", str(out))  # fmt: skip
            assert done.returncode == 0, done.stderr
            hosted.tokens[name] = out.read_text().strip()
        hosted.start()
        yield hosted
    finally:
        hosted.stop()


def test_a_tenant_on_postgresql_beside_one_on_sqlite(host: Host) -> None:
    row = {
        "inspection_id": "PG-0001",
        "station": "EL-1",
        "inspected_at": "2026-12-01T06:00:00Z",
        "verdict": "pass",
        "score": 0.1,
        "model_version": "el-1",
        "image_hash": "ab" * 32,
        "order_id": "PO-PG-1",
        "batch_id": "PG-CB-1",
    }
    with host.operator("pgco") as pgco:
        info = pgco.node()
        assert info["database"].startswith("postgresql"), info["database"]
        assert "qdspace:qdspace@" not in info["database"]  # the password is never shown
        assert pgco.ingest_rows("inspection", [row])["accepted"] == 1
        assert pgco.qdm_counts()["inspection"] == 1
    with host.operator("liteco") as liteco:
        assert liteco.node()["database"].startswith("sqlite")
        assert liteco.qdm_counts()["inspection"] == 0
    tenant = host.directory / "tenants" / "pgco"
    assert not (tenant / "node.db").exists()
    for path in tenant.iterdir():  # the URL (with its password) is sealed
        assert b"search_path" not in path.read_bytes(), path


def test_an_exported_postgresql_tenant_keeps_its_database(host: Host) -> None:
    """With the host stopped, a tenant on PostgreSQL is exported pointing at the same
    database: its URL in a 0600 file for QDSPACE_DB_URL_FILE, never in node.json."""
    host.stop()
    out = host.workdir / "pgco-node"
    grpc, api, reg = free_port(), free_port(), free_port()
    done = qdspace("host", "tenant", "export", "--dir", str(host.directory), "--name", "pgco",
                   "--out", str(out), "--grpc-port", str(grpc), "--api-port", str(api),
                   "--regulator-port", str(reg))  # fmt: skip
    assert done.returncode == 0, done.stderr
    url_file = out / "database-url"
    assert f"QDSPACE_DB_URL_FILE={url_file}" in done.stdout.replace("\n", ""), done.stdout
    assert stat.S_IMODE(url_file.stat().st_mode) == 0o600
    assert b"search_path" in url_file.read_bytes()
    assert b"search_path" not in (out / "node.json").read_bytes()
    assert not (out / "node.db").exists()
    token = NodeLayout(out).operator_token.read_text().strip()
    host.net.members["pgco-node"] = MemberProcess(
        MemberSpec("pgco", "supplier"), out, grpc, api, reg, token=token
    )
    host.net.env["QDSPACE_DB_URL_FILE"] = str(url_file)
    host.net.start(["pgco-node"])
    try:
        with host.net["pgco-node"].operator() as node:
            assert node.node()["database"].startswith("postgresql")
            assert node.qdm_counts()["inspection"] == 1  # the tenant's row, in its schema
    finally:
        host.net.stop(["pgco-node"])
    done = qdspace("host", "tenant", "remove", "--dir", str(host.directory), "--name", "pgco",
                   "--yes")  # fmt: skip
    assert done.returncode == 0 and "nothing purged" in done.stdout, done.stderr
    assert not (host.directory / "tenants" / "pgco").exists()
