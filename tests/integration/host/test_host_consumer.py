"""A hosted tenant on the consuming side (real host process, a real self-hosted supplier
node, real mutual-TLS gRPC): the host suspending the tenant stops its subscription with
it, and resuming it (or restarting the host) opens the same subscription again after the
last row it holds, so the rows the supplier stored while the tenant was down arrive, none
twice; rows the supplier sends count against the tenant's row quota, and what does not
fit is not stored until there is room. Nothing is timed."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from qdspace.connector.sample import order_for, write_sample_files
from qdspace.node.client_transport import ClientError
from qdspace.node.init import add_peers
from qdspace.node.localnet.network import LocalNetwork, MemberSpec
from qdspace.util.ports import free_port

from .conftest import Host, eventually, qdspace

pytestmark = pytest.mark.integration

SPC = "spc-monitoring"
QA = "quality-assurance"
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
        with net["cellex"].operator(timeout=120) as cellex:
            files = write_sample_files(workdir / "sample", "cellex", "supplier", bad_rows=False)
            for kind, path in files.items():
                cellex.ingest_file(kind, path)
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


def _quota(host: Host, *args: str) -> None:
    done = qdspace("host", "tenant", "quota", "--dir", str(host.directory), "--name", TENANT,
                   *args)  # fmt: skip
    assert done.returncode == 0 and "(host running)" in done.stdout, done.stderr


def test_rows_a_provider_sends_past_the_row_quota_are_not_stored_until_there_is_room(
    host: Host,
) -> None:
    """The supplier's rows count against the hosted consumer's row quota like its own
    ingests: a pull's group of batches that could pass it is refused whole (507 naming
    the quota), the transfer's cursor stays at the last group stored, and once the quota
    allows it, the pull resumes from there and every row arrives once."""
    order = order_for("cellex")
    with host.operator(TENANT) as sunarc:
        agreed = sunarc.negotiate("cellex", "inspections", [QA], orders=[order])
        assert agreed["state"] == "FINALIZED", agreed
        agreement = agreed["agreement_id"]
    _quota(host, "--max-rows", "1")
    with host.operator(TENANT) as sunarc:
        with pytest.raises(ClientError) as refused:
            sunarc.transfer(agreement, QA, order_id=order)
        assert refused.value.status == 507, refused.value
        detail = refused.value.detail
        assert "rows received from a provider" in detail and "quota of 1 rows" in detail, detail
        assert sunarc.received(agreement)["total"] == 0  # nothing of it was stored
        held = int(re.search(r"stores (\d+) rows", detail).group(1))  # type: ignore[union-attr]

        # room for 75 rows more: the first group of five 10-row batches fits, the next not
        _quota(host, "--max-rows", str(held + 75))
        with pytest.raises(ClientError) as again:
            sunarc.transfer(agreement, QA, order_id=order, batch_rows=10)
        assert again.value.status == 507 and f"stores {held + 50} rows" in again.value.detail
        cut = [t for t in sunarc.transfers() if t["agreement_id"] == agreement]
        assert [(t["state"], t["offset"]) for t in cut] == [("STARTED", 0), ("STARTED", 50)]
        assert sunarc.received(agreement)["total"] == 50

        _quota(host, "--reset")  # the host's defaults: room enough
        done = sunarc.resume_transfer(cut[1]["transfer_id"])
        assert done["state"] == "COMPLETED" and done["offset"] > 100, done
        assert sunarc.received(agreement)["total"] == done["offset"]  # the rest, none twice
        first = sunarc.resume_transfer(cut[0]["transfer_id"])  # a re-delivery: no new row
        assert first["state"] == "COMPLETED" and first["offset"] == done["offset"], first
        assert sunarc.received(agreement)["total"] == done["offset"]


def test_a_live_subscription_past_the_row_quota_waits_for_room(host: Host) -> None:
    """A live stream's rows count too: refused, the subscription reconnects (saying why)
    from the last row it holds, and the rows arrive once the quota allows them."""
    order = order_for("cellex")
    _quota(host, "--max-rows", "1")
    with host.operator(TENANT) as sunarc:
        agreed = sunarc.negotiate("cellex", "live-inspections", [SPC], orders=[order])
        assert agreed["state"] == "FINALIZED", agreed
        agreement = agreed["agreement_id"]
        sid = sunarc.subscribe(agreement, SPC, usl=0.5, baseline_size=20)["subscription_id"]
    with host.net["cellex"].operator() as cellex:
        cellex.ingest_rows("inspection", [_inspection(100, order)])

    def subscription() -> dict[str, Any]:
        with host.operator(TENANT) as sunarc:
            found: dict[str, Any] = sunarc.subscription(sid)
            return found

    def refused_now() -> dict[str, Any] | None:  # one snapshot: it reopens between tries
        found = subscription()
        return found if "quota of 1 rows" in found["error"] else None

    refused = eventually(refused_now, "the quota named as the reason")
    assert refused["state"] == "reconnecting" and refused["received"] == 0, refused
    with host.operator(TENANT) as sunarc:
        assert sunarc.received(agreement)["total"] == 0

    _quota(host, "--reset")

    def held() -> list[str]:
        with host.operator(TENANT) as sunarc:
            rows = sunarc.received(agreement, limit=100_000)["rows"]
        return [r["inspection_id"] for r in rows]

    eventually(lambda: "LIVE-0100" in held(), "the live row, once there is room")
    ids = held()
    assert len(ids) == len(set(ids)), "a row stored twice"
    with host.operator(TENANT) as sunarc:
        assert sunarc.subscription(sid)["state"] == "streaming"
        sunarc.end_subscription(sid)
