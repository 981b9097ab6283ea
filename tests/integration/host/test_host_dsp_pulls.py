"""A hosted tenant's DSP transfers (it consumes) end with it: a suspension ends its live
stream, and so does closing it to open it again (``tenant renew``); a resume, and the
reopened tenant, follow the stream again from the rows held, none twice.

Before, a suspension stopped the tenant's DSP listener and gRPC but not the pulls and
streams it received: they went on storing rows into the suspended tenant's database, and
after a reopen beside the new instance's. Real processes: the host (`race_host`, which
can hold a tenant's opening), a self-hosted supplier node, mutual TLS. The supplier lets
a member hold one stream at a time, so whether the tenant's stream is still open is a
question the supplier answers: a data-plane GET with the tenant's certificate is refused
with 429 "streams open" while it is. Nothing is timed.
"""

from __future__ import annotations

import json
import ssl
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from qdspace.connector.sample import write_sample_files
from qdspace.node.host.config import HostLayout
from qdspace.node.host.tenants import load_master_key, tenant_key_files
from qdspace.node.identity.keyfiles import transient_key_file
from qdspace.node.identity.member import load_member_keys
from qdspace.node.init import add_peers
from qdspace.node.localnet.network import LocalNetwork, MemberSpec
from qdspace.util.ports import free_port

from .conftest import Host, eventually, qdspace

pytestmark = pytest.mark.integration

TENANT, PROVIDER = "sunarc", "cellex"
SUNARC_ORDER = "PO-2026-0042"  # the order SunArc placed with Cellex in the sample data
TAG = uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    workdir = tmp_path_factory.mktemp("host-dsp-pulls")
    env = {"QDSPACE_DSP_PORT": "0", "QDSPACE_RPC_MAX_STREAMS_PER_PEER": "1"}
    net = LocalNetwork(workdir, members=(MemberSpec(PROVIDER, "supplier"),), chain=False, env=env)
    net.create()
    gate = workdir / "gate"
    gate.mkdir()
    hosted = Host(
        workdir,
        workdir / "H",
        net,
        free_port(),
        {TENANT: free_port()},
        launcher=(str(Path(__file__).with_name("race_host.py")),),
        env={"QDSPACE_RACE_GATE": str(gate)},
    )
    done = qdspace("host", "init", "--dir", str(hosted.directory), "--api-port",
                   str(hosted.api_port))  # fmt: skip
    assert done.returncode == 0, done.stderr
    hosted.add_tenant(TENANT, "oem", "--dsp-port", str(free_port()))
    # each calls the other's DSP listener only on the host it knows the other at
    add_peers(hosted.directory / "tenants" / TENANT, {PROVIDER: net[PROVIDER].grpc_address})
    add_peers(net[PROVIDER].directory, {TENANT: f"127.0.0.1:{hosted.ports[TENANT]}"})
    net.start()
    try:
        hosted.start()
        with net[PROVIDER].operator(timeout=120) as cellex:
            files = write_sample_files(workdir / "sample", PROVIDER, "supplier", bad_rows=False)
            for kind, path in files.items():
                cellex.ingest_file(kind, path)
        yield hosted
    finally:
        hosted.stop()
        net.stop()


def _provider_dsp(host: Host) -> str:
    runtime = json.loads(host.net[PROVIDER].layout.runtime.read_text())
    return str(runtime["dsp"])


def _post_row(host: Host, i: int) -> None:
    row = {
        "inspection_id": f"DSP-{TAG}-{i:03d}",
        "station": "EL-1",
        "inspected_at": datetime(2026, 12, 2, 6, 0, i, tzinfo=UTC).isoformat(),
        "verdict": "pass",
        "score": 0.1,
        "model_version": "el-live-1",
        "image_hash": "ab" * 32,
        "order_id": SUNARC_ORDER,
        "batch_id": "CX-CB-260012",
    }
    with host.net[PROVIDER].client() as supplier:
        answer = supplier.post("/v1/ingest/inspection", json={"rows": [row]})
    assert answer.status_code == 200 and answer.json()["accepted"] == 1, answer.text


def _as_tenant(host: Host) -> httpx.Client:
    """The tenant's member certificate (unsealed with the host's master key, as the host
    does) calling the supplier's DSP listener."""
    files = HostLayout(host.directory)
    key_files = tenant_key_files(files, load_master_key(files), TENANT)
    keys = load_member_keys(files.tenant(TENANT), key_files=key_files)
    context = ssl.create_default_context(cafile=str(host.net[PROVIDER].layout.ca_cert))
    context.check_hostname = False
    with transient_key_file(keys.cert_pem, keys.tls_key) as (cert, key, password):
        context.load_cert_chain(cert, key, password)
    return httpx.Client(base_url=_provider_dsp(host), verify=context, timeout=30)


def _stream_open(host: Host) -> bool:
    """Whether the supplier holds the tenant's one stream slot (its live stream is open):
    a data-plane GET of the tenant is then refused over the cap, else for its token."""
    with _as_tenant(host) as tenant:
        answer = tenant.get(f"/data/urn:uuid:{uuid.uuid4()}")
    if answer.status_code == 429:
        assert "streams open" in answer.text, answer.text
        return True
    assert answer.status_code in (401, 403, 404), answer.text
    return False


def _state(host: Host, tid: str) -> dict[str, Any]:
    with host.operator(TENANT) as sunarc:
        state: dict[str, Any] = sunarc.dsp.transfer_status(tid)
    return state


def _mine(host: Host, agreement: str) -> list[str]:
    with host.operator(TENANT) as sunarc:
        held = sunarc.received(agreement, limit=1000)
    return [r["inspection_id"] for r in held["rows"] if r["inspection_id"].startswith("DSP-")]


def _followed(host: Host, tid: str, rows: int) -> dict[str, Any]:
    """The transfer's state once the tenant's own stream brought `rows` rows."""
    found: dict[str, Any] = eventually(
        lambda: (
            (
                (s := _state(host, tid))["received"] >= rows
                and s["waiting"] == ""
                and s["error"] == ""
            )
            and s
        ),
        f"the tenant's stream to bring {rows} rows",
    )
    return found


@pytest.fixture(scope="module")
def live(host: Host) -> tuple[str, str]:
    """(agreement id, transfer id) of the tenant's live transfer from the supplier."""
    with host.operator(TENANT) as sunarc:
        nid = sunarc.dsp.negotiate(_provider_dsp(host), "live-inspections")["negotiation_id"]

        def agreed() -> Any:
            found = sunarc.negotiation(nid)
            return found["state"] in ("FINALIZED", "TERMINATED") and found

        negotiation = eventually(agreed, "the DSP negotiation to end")
        assert negotiation["state"] == "FINALIZED", negotiation
        agreement = negotiation["agreement_id"]
        tid = sunarc.dsp.transfer(agreement)["transfer_id"]
    eventually(
        lambda: (s := _state(host, tid))["state"] == "STARTED" and s["delivery"],
        "the live transfer to start",
    )
    _post_row(host, 1)
    _followed(host, tid, 1)
    return agreement, tid


def _tenant(host: Host, verb: str) -> None:
    done = qdspace("host", "tenant", verb, "--dir", str(host.directory), "--name", TENANT)
    assert done.returncode == 0, done.stderr


def test_a_suspension_ends_the_tenants_stream_and_a_resume_follows_it_again(
    host: Host, live: tuple[str, str]
) -> None:
    agreement, tid = live
    assert eventually(lambda: _stream_open(host), "the tenant's stream to hold its slot")
    _tenant(host, "suspend")
    eventually(lambda: not _stream_open(host), "the suspended tenant's stream to end")
    _post_row(host, 2)  # while suspended: nothing of the tenant takes it
    _tenant(host, "resume")
    _followed(host, tid, 2)  # the resumed tenant asked for a new address by itself
    assert _stream_open(host)
    assert _mine(host, agreement) == [f"DSP-{TAG}-001", f"DSP-{TAG}-002"]


def test_a_reopened_tenant_closed_its_stream_and_follows_it_again(
    host: Host, live: tuple[str, str]
) -> None:
    agreement, tid = live
    gate = host.workdir / "gate"
    for old in gate.iterdir():
        old.unlink()
    assert eventually(lambda: _stream_open(host), "the tenant's stream to hold its slot")
    (gate / "hold-open").write_text(TENANT)  # the reopen closes the tenant, then waits
    with ThreadPoolExecutor(1) as pool, host.client(host.host_token()) as admin:
        reopen = pool.submit(admin.post, f"/host/v1/tenants/{TENANT}/reopen")
        eventually(lambda: (gate / "held-open").exists() or reopen.done(), "the reopen held")
        assert not reopen.done(), reopen.result().text
        try:
            # closed: nothing of the old instance streams into the database reopened next
            eventually(lambda: not _stream_open(host), "the closed tenant's stream to end")
        finally:
            (gate / "release").touch()
        assert reopen.result().status_code == 200, reopen.result().text
    _post_row(host, 3)
    _followed(host, tid, 3)
    assert _mine(host, agreement) == [f"DSP-{TAG}-{i:03d}" for i in (1, 2, 3)]
