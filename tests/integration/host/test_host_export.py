"""Leaving the host (issue 14 item 5), all real processes over real TLS: a self-hosted
provider shares rows with hosted tenants under agreements; one tenant is removed (its
purge's signed deletion receipt reaches the provider, its files are gone, the others
keep serving), another is exported and runs as an ordinary node with the same member
id, certificate, agreements and received rows. Hostile calls get clear refusals.
Assertions poll with a deadline; nothing is timed.
"""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from qdspace.connector.agreement import REASON_LEAVING
from qdspace.connector.sample import order_for, write_sample_files
from qdspace.node.host.registry import Registry
from qdspace.node.init import add_peers
from qdspace.node.layout import NodeLayout
from qdspace.node.localnet.network import LocalNetwork, MemberProcess, MemberSpec
from qdspace.node.rpc.peers import HelloResult, PeerDirectory
from qdspace.util.ports import free_port

from .conftest import Host, qdspace

pytestmark = pytest.mark.integration

QA = "quality-assurance"
PROVIDER = "cellex"
TENANTS = (("sunarc", "oem"), ("leaver", "oem"), ("stayer", "supplier"))
#: the sample's order is sunarc's (the exported tenant); the leaver gets an order of its own
ORDERS = {"sunarc": order_for(PROVIDER), "leaver": "PO-LEAVER-1"}


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    workdir = tmp_path_factory.mktemp("host-export")
    net = LocalNetwork(workdir, members=(MemberSpec(PROVIDER, "supplier"),), chain=False)
    net.create()
    ports = {name: free_port() for name, _ in TENANTS}
    hosted = Host(workdir, workdir / "H", net, free_port(), ports)
    done = qdspace("host", "init", "--dir", str(hosted.directory), "--api-port",
                   str(hosted.api_port))  # fmt: skip
    assert done.returncode == 0, done.stderr
    for name, role in TENANTS:
        done = qdspace("host", "tenant", "add", "--dir", str(hosted.directory), "--name", name,
                       "--role", role, "--authority", str(net.authority_dir),
                       "--grpc-port", str(ports[name]))  # fmt: skip
        assert done.returncode == 0, done.stderr
        out = workdir / f"{name}.token"
        done = qdspace("host", "tenant", "token", "--dir", str(hosted.directory), "--name", name,
                       "--out", str(out))  # fmt: skip
        assert done.returncode == 0, done.stderr
        hosted.tokens[name] = out.read_text().strip()
        add_peers(hosted.directory / "tenants" / name, {PROVIDER: net[PROVIDER].grpc_address})
    add_peers(net[PROVIDER].directory, {n: f"127.0.0.1:{p}" for n, p in ports.items()})
    net.start()
    try:
        with net[PROVIDER].operator(timeout=120) as provider:
            folder = workdir / "sample"
            for kind, path in write_sample_files(
                folder, PROVIDER, "supplier", bad_rows=False
            ).items():
                provider.ingest_file(kind, path)
            provider.ingest_rows("order", [_order("PO-LEAVER-1", "leaver")])
            provider.ingest_rows("inspection", [_inspection(i, "PO-LEAVER-1") for i in range(7)])
        hosted.start()
        for consumer, order in ORDERS.items():  # each holds rows received under an agreement
            with hosted.operator(consumer) as tenant:
                agreed = tenant.negotiate(PROVIDER, "inspections", [QA], orders=[order])
                assert agreed["state"] == "FINALIZED", agreed
                pulled = tenant.transfer(agreed["agreement_id"], QA, order_id=order)
                assert pulled["offset"] > 0, pulled
        yield hosted
    finally:
        hosted.stop()
        net.stop()


def _order(order_id: str, customer: str) -> dict[str, Any]:
    return {"order_id": order_id, "customer": customer, "supplier": PROVIDER,
            "product": "mono PERC cell M10", "quantity": 1000, "status": "open",
            "opened_at": "2026-11-01T06:00:00Z", "closed_at": None}  # fmt: skip


def _inspection(i: int, order: str) -> dict[str, Any]:
    return {"inspection_id": f"LV-EL-{i:04d}", "station": "EL-1", "verdict": "pass",
            "inspected_at": f"2026-11-03T06:00:{i:02d}Z", "score": 0.1, "order_id": order,
            "model_version": "el-1", "image_hash": "ab" * 32,
            "batch_id": "CX-CB-260001"}  # fmt: skip


def _hello(net: LocalNetwork, name: str, address: str) -> HelloResult:
    """The provider's own keys call ``address`` straight over gRPC (its Hello)."""
    keys = net[PROVIDER].keys()
    files = NodeLayout(net[PROVIDER].directory)
    peers = PeerDirectory(keys, {name: address}, cert_files=(files.tls_cert, files.tls_key))

    async def call() -> HelloResult:
        try:
            return await peers.hello(name, timeout=10)
        finally:
            await peers.close()

    return asyncio.run(call())


def _clean_refusal(done: subprocess.CompletedProcess[str], needle: str) -> None:
    assert done.returncode == 1, done.stdout
    assert needle in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_remove_purges_sends_a_signed_receipt_and_deletes_the_tenant(host: Host) -> None:
    leaver_id = Registry(host.directory).get("leaver").member_id
    with host.operator("leaver") as leaver:
        (agreement,) = leaver.agreements()
        held = leaver.received(agreement["agreement_id"])["total"]
    assert held > 0
    done = qdspace("host", "tenant", "remove", "--dir", str(host.directory), "--name", "leaver")
    _clean_refusal(done, "add --yes")
    with host.client(host.host_token()) as admin:  # the route wants the tenant named
        r = admin.post("/host/v1/tenants/leaver/remove", json={"confirm": "sunarc"})
        assert r.status_code == 400 and "nothing was removed" in r.text, r.text
    with host.client(host.tokens["leaver"]) as own:  # a tenant's token: not the host's API
        assert (
            own.post("/host/v1/tenants/leaver/remove", json={"confirm": "leaver"}).status_code
            == 404
        )
    assert (host.directory / "tenants" / "leaver").is_dir()

    done = qdspace("host", "tenant", "remove", "--dir", str(host.directory), "--name", "leaver",
                   "--yes")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "1 receipts signed" in done.stdout and "leaver removed" in done.stdout, done.stdout
    with host.net[PROVIDER].operator() as provider:
        receipts = [r for r in provider.receipts() if r["consumer_id"] == leaver_id]
        duties = [d for d in provider.duties() if d["agreement_id"] == agreement["agreement_id"]]
    # the provider stores a receipt only once the consumer's signature verified
    (receipt,) = receipts
    assert receipt["reason"] == REASON_LEAVING and receipt["row_count"] == held, receipt
    assert receipt["agreement_id"] == agreement["agreement_id"] and receipt["signature"]
    assert duties and all(d["receipt_id"] == receipt["receipt_id"] for d in duties), duties
    assert not (host.directory / "tenants" / "leaver").exists()
    assert "leaver" not in {r.name for r in Registry(host.directory).tenants()}
    with host.client(host.tokens["leaver"]) as gone:
        assert gone.get("/v1/node").status_code == 401
    assert _hello(host.net, "sunarc", f"127.0.0.1:{host.ports['sunarc']}").peer == "sunarc"
    with host.operator("sunarc") as sunarc:  # the neighbour keeps its data
        assert sunarc.received(sunarc.agreements()[0]["agreement_id"])["total"] > 0


def test_export_refuses_an_active_tenant_and_a_non_empty_directory(host: Host) -> None:
    out = host.workdir / "sunarc-node"
    done = qdspace("host", "tenant", "export", "--dir", str(host.directory), "--name", "sunarc",
                   "--out", str(out))  # fmt: skip
    _clean_refusal(done, "suspend it first")
    assert not out.exists()
    busy = host.workdir / "busy"
    busy.mkdir()
    (busy / "something").write_text("x")
    done = qdspace("host", "tenant", "export", "--dir", str(host.directory), "--name", "sunarc",
                   "--out", str(busy))  # fmt: skip
    _clean_refusal(done, "not an empty directory")
    for verb in ("export", "remove"):
        extra = ["--out", str(host.workdir / "nobody")] if verb == "export" else ["--yes"]
        done = qdspace("host", "tenant", verb, "--dir", str(host.directory), "--name", "nobody",
                       *extra)  # fmt: skip
        _clean_refusal(done, "no tenant 'nobody'")
        done = qdspace("host", "tenant", verb, "--dir", str(host.directory), "--name", "../x",
                       *extra)  # fmt: skip
        _clean_refusal(done, "tenant name")
    assert Registry(host.directory).get("sunarc").state.value == "active"


def test_an_exported_tenant_runs_as_a_node_with_its_identity_and_data(host: Host) -> None:
    record = Registry(host.directory).get("sunarc")
    with host.operator("sunarc") as sunarc:
        (agreement,) = sunarc.agreements()
        held = sunarc.received(agreement["agreement_id"])["total"]
        cert = (host.directory / "tenants" / "sunarc" / "tls.crt").read_bytes()
    done = qdspace("host", "tenant", "suspend", "--dir", str(host.directory), "--name", "sunarc")
    assert done.returncode == 0, done.stderr
    out = host.workdir / "sunarc-node"
    grpc, api, reg = free_port(), free_port(), free_port()
    done = qdspace("host", "tenant", "export", "--dir", str(host.directory), "--name", "sunarc",
                   "--out", str(out), "--grpc-port", str(grpc), "--api-port", str(api),
                   "--regulator-port", str(reg))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "stays in this host, suspended" in done.stdout, done.stdout
    assert not list(host.workdir.glob(".sunarc-node*")), "nothing left aside"
    files = NodeLayout(out)
    for secret in (files.signing_key, files.tls_key, files.operator_token):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
        assert not secret.read_bytes().startswith(b"qdspace-sealed"), secret
    assert not (out / "data.key").exists()
    assert files.tls_cert.read_bytes() == cert
    config = json.loads(files.config.read_text())
    assert (config["grpc_port"], config["api_port"], config["member_id"]) == (
        grpc,
        api,
        record.member_id,
    )
    state = Registry(host.directory).get("sunarc")
    assert state.state.value == "suspended" and state.exported_to == str(out.resolve())
    # served here again it would be one member in two places: resume is refused
    done = qdspace("host", "tenant", "resume", "--dir", str(host.directory), "--name", "sunarc")
    assert done.returncode != 0 and "was exported to" in done.stderr + done.stdout, done
    assert Registry(host.directory).get("sunarc").state.value == "suspended"

    token = files.operator_token.read_text().strip()
    node = MemberProcess(MemberSpec("sunarc", "oem"), out, grpc, api, reg, token=token)
    host.net.members["sunarc-node"] = node
    host.net.start(["sunarc-node"])
    hello = _hello(host.net, "sunarc", f"127.0.0.1:{grpc}")
    assert (hello.peer, hello.peer_member_id) == ("sunarc", record.member_id)
    with node.operator() as exported:
        assert exported.node()["member_id"] == record.member_id
        assert [a["agreement_id"] for a in exported.agreements()] == [agreement["agreement_id"]]
        assert exported.received(agreement["agreement_id"])["total"] == held
        assert (
            exported.hello(PROVIDER)["peer_member_id"]
            == host.net[PROVIDER].keys().identity.member_id
        )


def test_removing_an_exported_tenant_purges_nothing(host: Host) -> None:
    sunarc_id = Registry(host.directory).get("sunarc").member_id
    done = qdspace("host", "tenant", "remove", "--dir", str(host.directory), "--name", "sunarc",
                   "--yes")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "exported: nothing purged" in done.stdout, done.stdout
    assert not (host.directory / "tenants" / "sunarc").exists()
    with host.net[PROVIDER].operator() as provider:
        assert not [r for r in provider.receipts() if r["consumer_id"] == sunarc_id]
    with host.net["sunarc-node"].operator() as exported:  # the member lives on
        (agreement,) = exported.agreements()
        assert agreement["terminated_at"] is None
        assert exported.received(agreement["agreement_id"])["total"] > 0
    assert _hello(host.net, "stayer", f"127.0.0.1:{host.ports['stayer']}").peer == "stayer"


def test_remove_needs_the_running_host(host: Host) -> None:
    host.stop()
    done = qdspace("host", "tenant", "remove", "--dir", str(host.directory), "--name", "stayer",
                   "--yes")  # fmt: skip
    _clean_refusal(done, "start the host")
    assert (host.directory / "tenants" / "stayer").is_dir()
    assert Registry(host.directory).get("stayer").state.value == "active"
