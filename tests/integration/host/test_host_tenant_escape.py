"""One tenant reaching another's data or keys through what the host operator does for
it, against a real host process (two tenants, real TLS, the real CLI).

- ``host tenant dsp`` run from a shell that has a node's ``QDSPACE_*`` variables (a
  machine that also runs a node, an ``export QDSPACE_DB_URL=...`` left over): the
  tenant's settings were loaded with them and written back, so ``QDSPACE_DB_URL`` went
  into each such tenant's ``node.json`` and the running host opened them all on that
  one database: one tenant's staff counted, read and changed the other's rows.
- ``host tenant export --out`` into the host directory, for instance into another
  tenant's ``files`` folder: the export is the tenant's secrets in the clear (signing
  key, operator token), and that folder is where the other tenant's staff name files;
  a labels file's error quotes its first line, so they read the exported tenant's
  Ed25519 member key. Outside the host directory an export goes where its operator
  says; inside it, where backups and tenants' folders are, it is refused.
- ``host start`` with a node's chain account in its environment (``QDSPACE_LEDGER_*``,
  ``QDSPACE_CHAIN_KEY``): a tenant's chain settings let those win, so every tenant
  would anchor with that one key, signing and paying for all; it refuses to start.

Assertions poll with a deadline; nothing is timed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from qdspace.node.host.config import HostLayout
from qdspace.node.host.registry import Registry, TenantState
from qdspace.node.host.tenants import load_master_key, tenant_key_files
from qdspace.node.layout import NodeLayout
from qdspace.node.localnet.network import LocalNetwork
from qdspace.util.ports import free_port

from .conftest import Host, eventually, qdspace

pytestmark = pytest.mark.integration

TENANTS = (("alpha", "supplier"), ("beta", "supplier"))


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    workdir = tmp_path_factory.mktemp("host-escape")
    net = LocalNetwork(workdir, members=(), chain=False)
    net.create()  # the authority only
    hosted = Host(workdir, workdir / "H", net, free_port(), {n: free_port() for n, _ in TENANTS})
    done = qdspace("host", "init", "--dir", str(hosted.directory), "--api-port",
                   str(hosted.api_port))  # fmt: skip
    assert done.returncode == 0, done.stderr
    for name, role in TENANTS:
        hosted.add_tenant(name, role)
    try:
        hosted.start()
        yield hosted
    finally:
        hosted.stop()


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI run from a shell with ``env`` added to its variables."""
    return subprocess.run(
        [sys.executable, "-m", "qdspace", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def _row(i: int) -> dict[str, object]:
    return {
        "inspection_id": f"ESC-{i:04d}",
        "station": "EL-1",
        "inspected_at": "2026-12-01T06:00:00Z",
        "verdict": "pass",
        "score": 0.1,
        "model_version": "el-1",
        "image_hash": "ab" * 32,
        "order_id": "PO-ESC-1",
        "batch_id": "ESC-CB-1",
    }


def test_a_node_s_variables_in_the_operator_s_shell_do_not_join_two_tenants_databases(
    host: Host,
) -> None:
    shared = host.workdir / "shared.db"
    node_env = {"QDSPACE_DB_URL": f"sqlite:///{shared}"}
    for name, _ in TENANTS:  # the running host opens each again with its new settings
        done = _cli(node_env, "host", "tenant", "dsp", "--dir", str(host.directory),
                    "--name", name, "--port", str(free_port()))  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "opened tenant" in done.stdout, done.stdout
    with host.operator("alpha") as alpha:
        assert alpha.ingest_rows("inspection", [_row(1)])["accepted"] == 1
    with host.operator("beta") as beta:
        assert beta.qdm_counts()["inspection"] == 0  # alpha's row is not beta's to see
        assert beta.node()["database"].endswith("/tenants/beta/node.db")
    assert not shared.exists()
    for name, _ in TENANTS:
        written = json.loads(NodeLayout(host.files.tenant(name)).config.read_text())
        assert written.get("db_url", "") == "", (name, written)
        assert written["dsp_port"], written  # what the command was for did happen


def test_an_export_into_the_host_directory_is_refused(host: Host) -> None:
    done = qdspace("host", "tenant", "suspend", "--dir", str(host.directory), "--name", "alpha",
                   "--reason", "moving out")  # fmt: skip
    assert done.returncode == 0, done.stderr
    beta_files = host.files.tenant("beta") / "files"
    (beta_files / "cells").mkdir(parents=True, exist_ok=True)
    into_beta = beta_files / "alpha-node"
    done = qdspace("host", "tenant", "export", "--dir", str(host.directory), "--name", "alpha",
                   "--out", str(into_beta))  # fmt: skip
    signing = NodeLayout(host.files.tenant("alpha")).signing_key
    seed = tenant_key_files(host.files, load_master_key(host.files), "alpha").read(
        signing, "signing key"
    )
    with host.client(host.tokens["beta"]) as beta:  # beta's staff name a file of their own
        body = {"images": str(beta_files / "cells"), "labels": str(into_beta / "signing.key")}
        answer = beta.post("/v1/inspection/trainings", json=body)
    assert seed.decode().strip() not in answer.text  # alpha's member key stays alpha's
    assert done.returncode == 1, done.stdout
    assert "inside the host directory" in done.stderr and "Traceback" not in done.stderr
    assert not into_beta.exists() and not list(beta_files.glob(".alpha-node*"))
    for inside in (host.directory / "exports" / "alpha", host.files.tenant("alpha") / "out"):
        inside.parent.mkdir(exist_ok=True)
        done = qdspace("host", "tenant", "export", "--dir", str(host.directory), "--name",
                       "alpha", "--out", str(inside))  # fmt: skip
        assert done.returncode == 1 and "inside the host directory" in done.stderr, done.stderr
        assert not inside.exists()
    record = Registry(host.directory).get("alpha")  # nothing was exported: as it was
    assert (record.state, record.reason, record.exported_to) == (
        TenantState.SUSPENDED,
        "moving out",
        "",
    )
    outside = host.workdir / "alpha-node"
    done = qdspace("host", "tenant", "export", "--dir", str(host.directory), "--name", "alpha",
                   "--out", str(outside))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert NodeLayout(outside).signing_key.read_bytes().strip() == seed.strip()


@pytest.mark.parametrize(
    ("variable", "value"),
    [("QDSPACE_LEDGER_KEY_FILE", "chain.key"), ("QDSPACE_CHAIN_KEY", "ab" * 32)],
)
def test_a_host_with_a_chain_account_in_its_environment_does_not_start(
    tmp_path: Path, variable: str, value: str
) -> None:
    directory = tmp_path / "H"
    done = qdspace("host", "init", "--dir", str(directory), "--api-port", str(free_port()))
    assert done.returncode == 0, done.stderr
    log = tmp_path / "host.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "qdspace", "host", "start", "--dir", str(directory)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, variable: value},
        )
    runtime = HostLayout(directory).runtime
    try:  # it exits, or (before) served every tenant with that account
        eventually(lambda: process.poll() is not None or runtime.exists(), "an exit or a start")
        served = runtime.exists()
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(30)
    said = log.read_text()
    assert not served, said
    assert process.returncode == 1 and f"{variable} is set for the host" in said, said
    assert "host tenant ledger" in said and "Traceback" not in said
