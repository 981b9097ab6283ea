"""A hosted tenant on the consuming side of a live subscription (real host process, a
real self-hosted supplier node, real mutual-TLS gRPC): the host suspending the tenant
stops its subscription with it, and resuming it (or restarting the host) opens the same
subscription again after the last row it holds, so the rows the supplier stored while the
tenant was down arrive, none twice. Nothing is timed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from qdspace.connector.sample import order_for, write_sample_files
from qdspace.node.init import add_peers
from qdspace.node.localnet.network import LocalNetwork, MemberSpec
from qdspace.util.ports import free_port

from .conftest import Host, eventually, qdspace

pytestmark = pytest.mark.integration

SPC = "spc-monitoring"
TENANT = "sunarc"


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    workdir = tmp_path_factory.mktemp("host-consumer")
    net = LocalNetwork(workdir, members=(MemberSpec("cellex", "supplier"),), chain=False)
    net.create()
    hosted = Host(workdir, workdir / "H", net, free_port(), {TENANT: free_port()})
    done = qdspace("host", "init", "--dir", str(hosted.directory), "--api-port",
                   str(hosted.api_port))  # fmt: skip
    assert done.returncode == 0, done.stderr
    hosted.add_tenant(TENANT, "oem")
    add_peers(hosted.directory / "tenants" / TENANT, {"cellex": net["cellex"].grpc_address})
    add_peers(net["cellex"].directory, {TENANT: f"127.0.0.1:{hosted.ports[TENANT]}"})
    net.start()
    try:
        hosted.start()
        yield hosted
    finally:
        hosted.stop()
        net.stop()


def _inspection(i: int, order: str) -> dict[str, Any]:
    return {
        "inspection_id": f"LIVE-{i:04d}",
        "station": "EL-1",
        "inspected_at": f"2026-12-05T06:{i // 60:02d}:{i % 60:02d}Z",
        "verdict": "pass",
        "score": 0.1 + i / 1000,
        "model_version": "el-live-1",
        "image_hash": "ab" * 32,
        "order_id": order,
        "batch_id": "CX-CB-260001",
    }


def _tenant(host: Host, verb: str) -> None:
    done = qdspace("host", "tenant", verb, "--dir", str(host.directory), "--name", TENANT)
    assert done.returncode == 0, done.stderr


def test_a_hosted_consumers_subscription_outlives_its_suspension_and_a_host_restart(
    host: Host,
) -> None:
    order = order_for("cellex")
    with host.net["cellex"].operator(timeout=120) as cellex:
        folder = host.workdir / "sample"
        for kind, path in write_sample_files(folder, "cellex", "supplier", bad_rows=False).items():
            cellex.ingest_file(kind, path)
    with host.operator(TENANT) as sunarc:
        agreed = sunarc.negotiate("cellex", "live-inspections", [SPC], orders=[order])
        assert agreed["state"] == "FINALIZED", agreed
        agreement = agreed["agreement_id"]
        sub = sunarc.subscribe(agreement, SPC, usl=0.5, baseline_size=20)
        sid = sub["subscription_id"]

    def live_ids() -> list[str]:
        with host.operator(TENANT) as sunarc:
            rows = sunarc.received(agreement)["rows"]
        return [r["inspection_id"] for r in rows if r["inspection_id"].startswith("LIVE-")]

    with host.net["cellex"].operator() as cellex:
        cellex.ingest_rows("inspection", [_inspection(1, order)])
    eventually(lambda: live_ids() == ["LIVE-0001"], "the first live row")

    _tenant(host, "suspend")
    with host.net["cellex"].operator() as cellex:  # stored while the consumer is down
        cellex.ingest_rows("inspection", [_inspection(2, order), _inspection(3, order)])
    _tenant(host, "resume")
    eventually(
        lambda: live_ids() == ["LIVE-0001", "LIVE-0002", "LIVE-0003"],
        "the rows stored while the tenant was suspended, once each",
    )
    with host.operator(TENANT) as sunarc:
        back = sunarc.subscription(sid)  # the same subscription, taken up again
        assert back["resumed"] and back["running"] and back["state"] == "streaming", back
        assert back["received"] == 3, back  # counted across the suspension
        assert [s["subscription_id"] for s in sunarc.subscriptions()] == [sid]

    host.stop()
    with host.net["cellex"].operator() as cellex:  # stored while the whole host is down
        cellex.ingest_rows("inspection", [_inspection(4, order)])
    host.start()
    eventually(
        lambda: live_ids() == ["LIVE-0001", "LIVE-0002", "LIVE-0003", "LIVE-0004"],
        "the row stored while the host was down",
    )
    with host.operator(TENANT) as sunarc:
        back = sunarc.subscription(sid)
        assert back["resumed"] and back["state"] == "streaming", back
        sunarc.end_subscription(sid)  # ended for good: the next restart does not take it up
    _tenant(host, "suspend")
    _tenant(host, "resume")
    with host.operator(TENANT) as sunarc:
        ended = sunarc.subscription(sid)
        assert ended["state"] == "ended" and not ended["running"], ended
