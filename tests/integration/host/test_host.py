"""A managed host with three tenants and a self-hosted member, all real processes over
real TLS: the member talks to hosted tenants exactly as to nodes; tenants' operator
tokens reach their own tenant only; the host's token reaches no tenant data; a tenant
with a corrupt database does not stop the others; suspension ends streams and refuses
calls, and holds across a restart. Assertions poll with a deadline; nothing is timed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from qdspace.connector.sample import order_for, write_sample_files
from qdspace.node.client import ClientError, http_client
from qdspace.node.errors import PeerError
from qdspace.node.host.registry import Registry
from qdspace.node.identity.credential import issue_credential
from qdspace.node.init import add_peers
from qdspace.node.layout import NodeLayout
from qdspace.node.localnet.network import LocalNetwork, MemberSpec
from qdspace.node.rpc.peers import HelloResult, PeerDirectory
from qdspace.util.ports import free_port

from .conftest import Host, eventually, qdspace

pytestmark = pytest.mark.integration

QA = "quality-assurance"
SPC = "spc-monitoring"
TENANTS = (("siliwafer", "supplier"), ("cellex", "supplier"), ("brokenco", "supplier"))


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    workdir = tmp_path_factory.mktemp("host")
    members = (MemberSpec("sunarc", "oem"), MemberSpec("regulator", "regulator"))
    net = LocalNetwork(workdir, members=members, chain=False)
    net.create()
    ports = {name: free_port() for name, _ in TENANTS}
    hosted = Host(workdir, workdir / "H", net, free_port(), ports)
    hosted.regulator_ports = {name: free_port() for name in ("siliwafer", "cellex")}
    done = qdspace(
        "host", "init", "--dir", str(hosted.directory), "--api-port", str(hosted.api_port)
    )
    assert done.returncode == 0, done.stderr
    for name, role in TENANTS:
        done = qdspace(
            "host", "tenant", "add", "--dir", str(hosted.directory), "--name", name,
            "--role", role, "--authority", str(net.authority_dir), "--grpc-port", str(ports[name]),
            *(["--regulator-port", str(hosted.regulator_ports[name])]
              if name in hosted.regulator_ports else []),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        out = workdir / f"{name}.token"
        done = qdspace("host", "tenant", "token", "--dir", str(hosted.directory), "--name", name,
                       "--out", str(out))  # fmt: skip
        assert done.returncode == 0, done.stderr
        hosted.tokens[name] = out.read_text().strip()
        add_peers(hosted.directory / "tenants" / name, {"sunarc": net["sunarc"].grpc_address})
    add_peers(
        net["sunarc"].directory,
        {name: f"127.0.0.1:{port}" for name, port in ports.items()},
    )
    # brokenco's database is not a database: the host must report it and serve the others
    (hosted.directory / "tenants" / "brokenco" / "node.db").write_bytes(b"not sqlite " * 512)
    net.start()
    try:
        hosted.start()
        yield hosted
    finally:
        hosted.stop()
        net.stop()


def _hello(host: Host, target: str) -> HelloResult:
    """A peer call from the self-hosted member's own keys, straight over gRPC."""
    keys = host.net["sunarc"].keys()
    files = NodeLayout(host.net["sunarc"].directory)
    address = f"127.0.0.1:{host.ports[target]}"
    peers = PeerDirectory(keys, {target: address}, cert_files=(files.tls_cert, files.tls_key))

    async def call() -> HelloResult:
        try:
            return await peers.hello(target, timeout=10)
        finally:
            await peers.close()

    return asyncio.run(call())


def test_the_tenants_start_and_the_broken_one_is_reported(host: Host) -> None:
    with host.client(host.host_token()) as admin:
        listed = {t["name"]: t for t in admin.get("/host/v1/tenants").json()}
    assert {n: t["status"] for n, t in listed.items()} == {
        "siliwafer": "serving",
        "cellex": "serving",
        "brokenco": "failed",
    }
    assert "database" in listed["brokenco"]["error"].lower(), listed["brokenco"]
    assert "brokenco: not serving" in host.log.read_text()
    assert _hello(host, "siliwafer").peer == "siliwafer"  # the others serve regardless
    with host.client(host.tokens["brokenco"]) as staff:  # their token is right: 503, not 401
        answer = staff.get("/v1/node")
    assert answer.status_code == 503, answer.text
    detail = answer.json()["detail"]
    assert "tenant brokenco is not serving: its host is looking into it" in detail
    assert "database" not in detail.lower()  # the host's inside stays the host's


def test_a_member_negotiates_and_pulls_from_a_hosted_tenant_as_from_a_node(host: Host) -> None:
    with host.operator("cellex") as cellex:
        info = cellex.node()
        folder = host.workdir / "sample"
        for kind, path in write_sample_files(folder, "cellex", "supplier", bad_rows=False).items():
            cellex.ingest_file(kind, path)
    hello = _hello(host, "cellex")
    assert (hello.peer, hello.peer_member_id) == ("cellex", info["member_id"])
    assert hello.seen_as == "sunarc"
    needle = "[cellex] grpc /qdspace.v1.Node/Hello peer=sunarc role=oem"
    eventually(lambda: needle in host.log.read_text(), "the host's log to name the tenant")
    order = order_for("cellex")
    with host.net["sunarc"].operator(timeout=120) as sunarc:
        seen = sunarc.hello("cellex")
        assert seen["peer_member_id"] == info["member_id"] and seen["peer_role"] == "supplier"
        assert any(a["asset_id"] == "inspections" for a in sunarc.catalog("cellex"))
        agreed = sunarc.negotiate("cellex", "inspections", [QA], orders=[order])
        assert agreed["state"] == "FINALIZED", agreed
        pulled = sunarc.transfer(agreed["agreement_id"], QA, order_id=order)
        assert pulled["offset"] > 0, pulled
        assert sunarc.received(agreed["agreement_id"])["total"] == pulled["offset"]
    with host.operator("cellex") as cellex:  # the provider's side holds the agreement
        ids = [a["agreement_id"] for a in cellex.agreements()]
        assert agreed["agreement_id"] in ids


def _regulator(host: Host, tenant: str, audience_of: str | None = None) -> httpx.Client:
    """A regulator's client on ``tenant``'s regulator API, verified against the space CA,
    with a credential for ``audience_of``'s member id (default: the tenant's own)."""
    keys = host.net["regulator"].keys()
    url = f"https://127.0.0.1:{host.regulator_ports[tenant]}"
    audience = Registry(host.directory).get(audience_of or tenant).member_id
    return http_client(url, issue_credential(keys, audience), 30.0, ca_pem=keys.ca_pem)


def test_a_regulator_reaches_each_tenant_as_a_node_with_its_own_certificate(host: Host) -> None:
    """Per tenant its own regulator listener presenting its member certificate: the
    regulator's client verifies it against the space CA as for any node; a credential
    for one tenant is refused by the other."""
    with host.operator("siliwafer") as sili:
        member_id = sili.node()["member_id"]
    with _regulator(host, "siliwafer") as regulator:
        assert regulator.get("/healthz").json()["member_id"] == member_id
        r = regulator.get("/v1/regulator/passport")
        assert r.status_code == 503 and "anchors to no chain" in r.text, r.text  # admitted
    with _regulator(host, "siliwafer", audience_of="cellex") as wrong:
        r = wrong.get("/v1/regulator/passport")
        assert r.status_code == 403, r.text
    keys = host.net["regulator"].keys()
    url = f"https://127.0.0.1:{host.regulator_ports['siliwafer']}"
    with http_client(url, "", 30.0, ca_pem=keys.ca_pem) as anonymous:
        assert anonymous.get("/v1/regulator/passport").status_code == 401
        # the operator's routes are not on the regulator listener
        assert anonymous.get("/v1/node").status_code == 401
    with http_client(url, host.tokens["siliwafer"], 30.0, ca_pem=keys.ca_pem) as operator:
        assert operator.get("/v1/node").status_code in (401, 403)


def _inspection(i: int, order: str) -> dict[str, Any]:
    return {
        "inspection_id": f"HOSTED-{i:04d}",
        "station": "EL-1",
        "inspected_at": f"2026-12-01T06:{i // 60:02d}:{i % 60:02d}Z",
        "verdict": "pass",
        "score": 0.1,
        "model_version": "el-live-1",
        "image_hash": "ab" * 32,
        "order_id": order,
        "batch_id": "SW-CB-260001",
    }


def test_a_tenant_token_reaches_its_own_tenant_only(host: Host) -> None:
    """Every API family, GET and POST, with siliwafer's token: siliwafer answers, and
    nothing of cellex (which holds data and an agreement) shows or changes."""
    with host.operator("cellex") as cellex:
        cellex_counts = cellex.qdm_counts()
        cellex_agreements = [a["agreement_id"] for a in cellex.agreements()]
    assert cellex_agreements, "the negotiation test leaves cellex an agreement"
    with host.client(host.tokens["siliwafer"]) as sili:
        node = sili.get("/v1/node").json()
        assert (node["name"], node["grpc_address"]) == (
            "siliwafer",
            f"127.0.0.1:{host.ports['siliwafer']}",
        )
        posted = sili.post("/v1/ingest/inspection", json={"rows": [_inspection(1, "PO-SW-1")]})
        assert posted.status_code == 200 and posted.json()["accepted"] == 1, posted.text
        assert sili.get("/v1/qdm/counts").json()["inspection"] == 1
        assert sili.get("/v1/contracts/agreements").json() == []
        for aid in cellex_agreements:  # cellex's agreement ids are nothing to siliwafer
            assert sili.get(f"/v1/contracts/agreements/{aid}").status_code == 404
            r = sili.post(f"/v1/contracts/agreements/{aid}/terminate", json={"reason": "x"})
            assert r.status_code == 404, r.text
        assert sili.get("/v1/federation/sessions").json() == []
        assert sili.get("/v1/federation/jobs/some-job").status_code == 404
        r = sili.post("/v1/federation/sessions", json={"job_id": "j", "coordinator": "cellex"})
        assert r.status_code in (400, 404, 422, 502), r.text
        assert sili.get("/v1/inspection/models").status_code == 200
        assert sili.get("/host/v1/tenants").status_code == 404  # not the host's API
        assert sili.get("/v1/../host/v1/tenants").status_code == 404
    with host.operator("cellex") as cellex:
        assert cellex.qdm_counts() == cellex_counts  # siliwafer's row did not land here
        assert [a["agreement_id"] for a in cellex.agreements()] == cellex_agreements
        assert all(a["terminated_at"] is None for a in cellex.agreements())
    with host.client(host.tokens["siliwafer"] + "x") as wrong, host.client("") as anonymous:
        assert wrong.get("/v1/node").status_code == 401
        assert anonymous.get("/v1/node").status_code == 401
        assert anonymous.post("/v1/ingest/inspection", json={"rows": []}).status_code == 401


def test_the_host_token_manages_tenants_and_reads_no_tenant_data(host: Host) -> None:
    with host.client(host.host_token()) as admin:
        for path in ("/v1/node", "/v1/qdm/counts", "/v1/contracts/agreements",
                     "/v1/federation/sessions", "/v1/inspection/models", "/metrics"):  # fmt: skip
            assert admin.get(path).status_code == 404, path
        r = admin.post("/v1/ingest/inspection", json={"rows": [_inspection(9, "PO-X")]})
        assert r.status_code == 404
        assert admin.post("/v1/contracts/negotiations", json={}).status_code == 404
        status = admin.get("/host/v1/status").json()
        assert status["tenants"] == 3 and status["failed"] == 1
        listed = admin.get("/host/v1/tenants").json()
        assert set(listed[0]) == {"name", "member_id", "role", "status", "grpc_port",
                                  "regulator_port", "dsp_port", "certificate_not_after", "reason",
                                  "error", "added_at",
                                  "changed_at", "own_quota", "quota", "use"}  # fmt: skip
        serving = next(t for t in listed if t["status"] == "serving")
        assert set(serving["use"]) == {"streams", "calls", "rows", "storage"}  # counts only
        for bad in ("..%2Fcellex", "CELLEX", "nobody"):
            r = admin.post(f"/host/v1/tenants/{bad}/suspend")
            assert r.status_code in (400, 404), (bad, r.text)
    with host.operator("cellex") as cellex:
        assert cellex.qdm_counts()["inspection"] > 0  # untouched


def test_suspend_ends_a_stream_and_refuses_calls_resume_restores(host: Host) -> None:
    order = order_for("cellex")
    with host.net["sunarc"].operator(timeout=120) as sunarc:
        agreed = sunarc.negotiate("cellex", "live-inspections", [SPC], orders=[order])
        assert agreed["state"] == "FINALIZED", agreed
        sub = sunarc.subscribe(agreed["agreement_id"], SPC, usl=0.5, baseline_size=20)
        assert sub["running"], sub
    sid = sub["subscription_id"]
    with host.operator("cellex") as cellex:
        cellex.ingest_rows("inspection", [_inspection(500, order)])
    with host.net["sunarc"].operator() as sunarc:
        eventually(lambda: sunarc.subscription(sid)["received"] >= 1, "a live record")

    done = qdspace("host", "tenant", "suspend", "--dir", str(host.directory), "--name", "cellex",
                   "--reason", "maintenance")  # fmt: skip
    assert done.returncode == 0 and "suspended (host running)" in done.stdout, done.stderr
    with host.net["sunarc"].operator() as sunarc:
        # the stream ends; the subscription waits and tries again until cellex is back
        broken = eventually(
            lambda: (s := sunarc.subscription(sid))["state"] == "reconnecting" and s,
            "the open stream to end",
        )
        assert broken["error"] and broken["running"], broken
        with pytest.raises(ClientError, match="suspended by its host: maintenance"):
            sunarc.hello("cellex")
    with pytest.raises(PeerError, match=r"UNAVAILABLE.*member cellex is suspended by its host"):
        _hello(host, "cellex")
    with host.client(host.tokens["cellex"]) as cellex_api:
        r = cellex_api.get("/v1/node")
        assert r.status_code == 423 and "suspended by its host" in r.json()["detail"], r.text
    with _regulator(host, "cellex") as regulator:
        assert regulator.get("/v1/regulator/passport").status_code == 423
    assert _hello(host, "siliwafer").peer == "siliwafer"  # the neighbour is untouched

    done = qdspace("host", "tenant", "resume", "--dir", str(host.directory), "--name", "cellex")
    assert done.returncode == 0, done.stderr
    assert _hello(host, "cellex").peer == "cellex"
    with host.operator("cellex") as cellex:
        cellex.ingest_rows("inspection", [_inspection(501, order)])
    with host.net["sunarc"].operator() as sunarc:  # opened again by itself, nothing missed
        back = eventually(
            lambda: (s := sunarc.subscription(sid))["received"] >= 2 and s,
            "the subscription to open its stream again and bring the row stored meanwhile",
        )
        assert back["state"] == "streaming" and back["reconnects"] >= 1, back
    with host.operator("cellex") as cellex:
        assert cellex.node()["name"] == "cellex"


def test_a_suspension_holds_across_a_restart(host: Host) -> None:
    done = qdspace("host", "tenant", "suspend", "--dir", str(host.directory), "--name", "siliwafer")
    assert done.returncode == 0, done.stderr
    host.stop()
    listed = qdspace("host", "tenant", "list", "--dir", str(host.directory), "--json")
    assert '"state": "suspended"' in listed.stdout, listed.stdout
    host.start()
    with pytest.raises(PeerError, match="suspended by its host"):
        _hello(host, "siliwafer")
    with host.client(host.tokens["siliwafer"]) as sili:
        assert sili.get("/v1/node").status_code == 423
    assert _hello(host, "cellex").peer == "cellex"
    done = qdspace("host", "tenant", "resume", "--dir", str(host.directory), "--name", "siliwafer")
    assert done.returncode == 0, done.stderr
    assert _hello(host, "siliwafer").peer == "siliwafer"
    with host.client(host.tokens["siliwafer"]) as sili:
        assert sili.get("/v1/qdm/counts").json()["inspection"] == 1  # its data survived


def test_hostile_tenant_names_are_refused(host: Host) -> None:
    for name in ("../evil", "Cellex", "cellex", "a" * 41, "sili.wafer", ""):
        done = qdspace("host", "tenant", "add", "--dir", str(host.directory), "--name", name,
                       "--role", "supplier", "--authority", str(host.net.authority_dir),
                       )  # fmt: skip
        assert done.returncode == 1, (name, done.stdout)
        assert "tenant" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (host.workdir / "evil").exists()
    assert sorted(p.name for p in (host.directory / "tenants").iterdir()) == [
        "brokenco",
        "cellex",
        "siliwafer",
    ]


def test_a_tenant_added_while_the_host_runs_is_served_at_once(host: Host) -> None:
    """A host onboards a small supplier without restarting the others: ``tenant add``
    with the host running has it opened and started (its gRPC port answers a member's
    call, its token reaches its API through the host's listener). The start route is the
    host operator's: a tenant's token does not reach it, a tenant served already is a
    409, a name the registry does not hold a 404, a hostile name a 400/404."""
    host.ports["newco"] = free_port()
    with host.operator("cellex") as cellex:
        before = cellex.node()["name"]
    done = qdspace("host", "tenant", "add", "--dir", str(host.directory), "--name", "newco",
                   "--role", "supplier", "--authority", str(host.net.authority_dir),
                   "--grpc-port", str(host.ports["newco"]))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "served now by the running host (serving" in done.stdout, done.stdout
    out = host.workdir / "newco.token"
    done = qdspace("host", "tenant", "token", "--dir", str(host.directory), "--name", "newco",
                   "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    host.tokens["newco"] = out.read_text().strip()
    with host.operator("newco") as newco:
        assert newco.node()["name"] == "newco"
    assert _hello(host, "newco").peer == "newco"
    with host.operator("cellex") as cellex:  # the others kept serving, untouched
        assert cellex.node()["name"] == before
    with host.client(host.host_token()) as admin:
        again = admin.post("/host/v1/tenants/newco/start")
        assert again.status_code == 409 and "already served" in again.text, again.text
        for verb in ("start", "reopen"):
            assert admin.post(f"/host/v1/tenants/nobody/{verb}").status_code == 404
            for bad in ("..%2Fnewco", "NEWCO"):
                r = admin.post(f"/host/v1/tenants/{bad}/{verb}")
                assert r.status_code in (400, 404), (verb, bad, r.text)
        assert admin.get("/host/v1/status").json()["serving"] == 3
    with host.client(host.tokens["newco"]) as tenant:
        for verb in ("start", "reopen"):  # the host operator's routes, not a tenant's
            assert tenant.post(f"/host/v1/tenants/newco/{verb}").status_code == 404


def _presented(host: Host, tenant: str) -> bytes:
    """The certificate (DER) the tenant's gRPC port presents to a member's handshake."""
    from qdspace.node.rpc.pins import client_context, presented_certificate

    files = NodeLayout(host.net["sunarc"].directory)
    context = client_context(host.net["sunarc"].keys(), (files.tls_cert, files.tls_key))
    address = f"127.0.0.1:{host.ports[tenant]}"
    der = asyncio.run(presented_certificate(context, address, tenant))
    assert der is not None, f"no handshake with {tenant}"
    return der


def test_a_tenant_renewed_while_the_host_runs_serves_its_new_certificate(host: Host) -> None:
    """``tenant renew``: a new TLS key (sealed, never plaintext) and certificate from the
    authority, the same member id; the running host opens the tenant again and presents
    the new certificate at once; its data is still there and members still reach it."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    tenant = host.directory / "tenants" / "siliwafer"
    before = _presented(host, "siliwafer")
    with host.operator("siliwafer") as sili:
        counts = sili.qdm_counts()
    done = qdspace("host", "tenant", "renew", "--dir", str(host.directory), "--name",
                   "siliwafer", "--authority", str(host.net.authority_dir))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "certificate renewed" in done.stdout and "served with it now:" in done.stdout
    renewed = x509.load_pem_x509_certificate((tenant / "tls.crt").read_bytes())
    after = _presented(host, "siliwafer")
    assert after == renewed.public_bytes(Encoding.DER) and after != before
    assert b"PRIVATE KEY" not in (tenant / "tls.key").read_bytes()  # sealed
    with host.client(host.host_token()) as admin:  # the host lists when it ends now
        shown = admin.get("/host/v1/tenants/siliwafer").json()
    assert shown["certificate_not_after"] == renewed.not_valid_after_utc.isoformat()
    assert not (tenant / "tls-next.key").exists()
    member_id = Registry(host.directory).get("siliwafer").member_id
    hello = _hello(host, "siliwafer")
    assert (hello.peer, hello.peer_member_id) == ("siliwafer", member_id)
    with host.operator("siliwafer") as sili:
        assert sili.qdm_counts() == counts
    with host.operator("cellex") as cellex:  # a neighbour, untouched
        assert cellex.node()["name"] == "cellex"
    nobody = qdspace("host", "tenant", "renew", "--dir", str(host.directory), "--name",
                     "nobody", "--authority", str(host.net.authority_dir))  # fmt: skip
    assert nobody.returncode == 1 and "no tenant 'nobody'" in nobody.stderr, nobody.stderr


def test_a_tenant_names_files_in_its_own_files_folder_only(host: Host) -> None:
    """Siliwafer's staff name files for a training and a federated session. The host's
    token as a labels file (its error quoted the first line: the token, with which they
    then suspended other tenants), the master key, another tenant's database, a link out
    of its folder, a way up out of it: each 403 saying where files must be, nothing
    quoted, nothing opened. A labels file in its own folder is read (its wrong header
    named, as on a node of its own)."""
    secret = host.host_token()
    files = host.files.tenant("siliwafer") / "files"
    (files / "cells").mkdir(parents=True, exist_ok=True)
    (files / "cells" / "labels.csv").write_text("wrong,header\n")
    link = files / "out"
    if not link.exists():
        link.symlink_to(host.directory)
    outside = [
        host.files.host_token,
        host.files.master_key,
        host.files.tenant("cellex") / "node.db",
        link / "host.token",
        files / ".." / ".." / "cellex" / "node.db",
    ]
    with host.client(host.tokens["siliwafer"]) as sili:
        for path in outside:
            body = {"images": str(files / "cells"), "labels": str(path)}
            refused = sili.post("/v1/inspection/trainings", json=body)
            assert refused.status_code == 403, refused.text
            assert "files folder" in refused.text and secret not in refused.text
            join = {"job_id": "j", "coordinator": "cellex", "data": str(path)}
            refused = sili.post("/v1/federation/sessions", json=join)
            assert refused.status_code == 403, refused.text
        own = sili.post("/v1/inspection/trainings", json={"images": str(files / "cells")})
        assert own.status_code == 400 and "expected 'file,label'" in own.text, own.text
    assert "Traceback" not in host.log.read_text(errors="replace")
