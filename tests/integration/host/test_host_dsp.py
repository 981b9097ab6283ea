"""A hosted tenant speaks the Dataspace Protocol as a node does: on its own DSP port,
presenting its member certificate (its key never written in plaintext), behind the
tenant's quotas. A self-hosted member negotiates for the tenant's data over DSP and
pulls it; a suspension stops the tenant's DSP listener with its other doors and a
resume opens it again; a member over the tenant's request rate is answered 429.
Real processes: the host, the member node, mutual TLS."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from qdspace.connector.sample import order_for, write_sample_files
from qdspace.node.dsp.auth import issue_token
from qdspace.node.host.registry import Registry
from qdspace.node.init import add_peers
from qdspace.node.localnet.network import LocalNetwork, MemberSpec
from qdspace.util.ports import free_port

from .conftest import Host, eventually, qdspace

pytestmark = pytest.mark.integration
QA = "quality-assurance"


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    workdir = tmp_path_factory.mktemp("host-dsp")
    net = LocalNetwork(
        workdir, members=(MemberSpec("sunarc", "oem"),), chain=False, env={"QDSPACE_DSP_PORT": "0"}
    )
    net.create()
    hosted = Host(workdir, workdir / "H", net, free_port(), {"cellex": free_port()})
    done = qdspace("host", "init", "--dir", str(hosted.directory), "--api-port",
                   str(hosted.api_port))  # fmt: skip
    assert done.returncode == 0, done.stderr
    hosted.dsp_port = free_port()  # type: ignore[attr-defined]
    hosted.add_tenant("cellex", "supplier", "--dsp-port", str(hosted.dsp_port))  # type: ignore[attr-defined]
    add_peers(hosted.directory / "tenants" / "cellex", {"sunarc": net["sunarc"].grpc_address})
    net.start()
    try:
        hosted.start()
        with hosted.operator("cellex") as cellex:
            folder = workdir / "sample"
            for kind, path in write_sample_files(folder, "cellex", "supplier").items():
                cellex.ingest_file(kind, path)
        yield hosted
    finally:
        hosted.stop()
        net.stop()


def _dsp_url(host: Host) -> str:
    return f"https://127.0.0.1:{host.dsp_port}"  # type: ignore[attr-defined]


def _as_sunarc(host: Host) -> httpx.Client:
    """SunArc's certificate and an ID token for the tenant, straight at its DSP port."""
    layout = host.net["sunarc"].layout
    context = ssl.create_default_context(cafile=str(layout.ca_cert))
    context.check_hostname = False
    context.load_cert_chain(layout.tls_cert, layout.tls_key)
    keys = host.net["sunarc"].keys()
    audience = Registry(host.directory).get("cellex").member_id
    token = issue_token(keys.signing_key, keys.identity.member_id, audience)
    headers = {"authorization": f"Bearer {token}"}
    return httpx.Client(base_url=_dsp_url(host), verify=context, headers=headers, timeout=30)


def _ended(host: Host, path: str, states: tuple[str, ...]) -> dict[str, Any]:
    with host.net["sunarc"].client() as oem:

        def probe() -> Any:
            found = oem.get(path).json()
            return found.get("state") in states and found

        ended: dict[str, Any] = eventually(probe, f"{path} to reach {states}")
        return ended


def test_a_member_negotiates_and_pulls_from_a_hosted_tenant_over_dsp(host: Host) -> None:
    order = order_for("cellex")
    with host.net["sunarc"].operator(timeout=60) as sunarc:
        started = sunarc.dsp.negotiate(_dsp_url(host), "inspections", purposes=[QA], orders=[order])
    nid = started["negotiation_id"]
    agreed = _ended(host, f"/v1/contracts/negotiations/{nid}", ("FINALIZED", "TERMINATED"))
    assert agreed["state"] == "FINALIZED", agreed
    with host.net["sunarc"].operator(timeout=60) as sunarc:
        tid = sunarc.dsp.transfer(agreed["agreement_id"])["transfer_id"]
    done = _ended(host, f"/v1/dsp/transfers/{tid}", ("COMPLETED", "TERMINATED"))
    assert done["state"] == "COMPLETED", done
    with host.net["sunarc"].client() as oem:
        params = {"agreement_id": agreed["agreement_id"]}
        got = oem.get("/v1/contracts/received", params=params).json()
    assert got["rows"] and all(r["order_id"] == order for r in got["rows"]), got
    with host.operator("cellex") as cellex:  # the tenant, as provider, holds the agreement
        assert agreed["agreement_id"] in [a["agreement_id"] for a in cellex.agreements()]
    with host.client(host.host_token()) as admin:
        (shown,) = admin.get("/host/v1/tenants").json()
    assert shown["dsp_port"] == host.dsp_port  # type: ignore[attr-defined]


def test_a_suspension_stops_the_tenants_dsp_listener_and_a_resume_opens_it(host: Host) -> None:
    with _as_sunarc(host) as member:
        assert member.get("/catalog/datasets/inspections").status_code == 200
    done = qdspace("host", "tenant", "suspend", "--dir", str(host.directory), "--name", "cellex")
    assert done.returncode == 0, done.stderr
    with _as_sunarc(host) as member, pytest.raises(httpx.ConnectError):
        member.get("/catalog/datasets/inspections")
    done = qdspace("host", "tenant", "resume", "--dir", str(host.directory), "--name", "cellex")
    assert done.returncode == 0, done.stderr
    with _as_sunarc(host) as member:
        assert member.get("/catalog/datasets/inspections").status_code == 200


def test_a_member_over_the_tenants_request_rate_is_answered_429(host: Host) -> None:
    directory = str(host.directory)
    done = qdspace("host", "tenant", "quota", "--dir", directory, "--name", "cellex",
                   "--rps", "1", "--burst", "2")  # fmt: skip
    assert done.returncode == 0, done.stderr
    try:
        with _as_sunarc(host) as member:
            answers = [member.get("/catalog/datasets/inspections") for _ in range(8)]
        refused = [a for a in answers if a.status_code == 429]
        assert refused and len(refused) < len(answers), [a.status_code for a in answers]
        body = refused[0].json()
        assert body["@type"] == "CatalogError" and "cellex" in str(body["reason"]), body
        assert refused[0].headers.get("retry-after"), refused[0].headers
    finally:
        done = qdspace("host", "tenant", "quota", "--dir", directory, "--name", "cellex",
                       "--reset")  # fmt: skip
        assert done.returncode == 0, done.stderr


def test_a_tenants_dsp_port_changes_while_the_host_runs(host: Host) -> None:
    """``tenant dsp``: moved to another port, the tenant serves DSP there at once (the
    host opens it again) and not on the old one; ``--off`` closes it; a port another
    tenant's listener holds is refused, nothing changed."""
    directory = str(host.directory)
    old, new = host.dsp_port, free_port()  # type: ignore[attr-defined]
    taken = qdspace("host", "tenant", "dsp", "--dir", directory, "--name", "cellex",
                    "--port", str(host.ports["cellex"]))  # fmt: skip
    assert taken.returncode == 1 and "not free on this host" in taken.stderr, taken.stderr
    done = qdspace("host", "tenant", "dsp", "--dir", directory, "--name", "cellex",
                   "--port", str(new))  # fmt: skip
    assert done.returncode == 0 and "served now" in done.stdout, done.stdout + done.stderr
    host.dsp_port = new  # type: ignore[attr-defined]
    with _as_sunarc(host) as member:
        assert member.get("/catalog/datasets/inspections").status_code == 200
    host.dsp_port = old  # type: ignore[attr-defined]
    with _as_sunarc(host) as member, pytest.raises(httpx.ConnectError):
        member.get("/catalog/datasets/inspections")
    done = qdspace("host", "tenant", "dsp", "--dir", directory, "--name", "cellex", "--off")
    assert done.returncode == 0 and "no DSP listener" in done.stdout, done.stderr
    host.dsp_port = new  # type: ignore[attr-defined]
    with _as_sunarc(host) as member, pytest.raises(httpx.ConnectError):
        member.get("/catalog/datasets/inspections")
    with host.client(host.host_token()) as admin:
        assert admin.get("/host/v1/tenants/cellex").json()["dsp_port"] is None
