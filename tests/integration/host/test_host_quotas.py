"""Per-tenant quotas of a managed host, with a real host process, real gRPC/TLS and a real
self-hosted member calling it: each quota exceeded gives its own error naming the quota,
its limit and its use, while the other tenant is served as before; racing calls cannot
both take the last slot; a quota changed with the CLI takes effect at once and holds
across a restart; hostile values are refused with a clear error. Nothing is timed.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from qdspace.connector.investigation import CaseKind, CaseTerms, Severity, opening
from qdspace.connector.investigation_wire import SealedEvent, sign_event
from qdspace.node.errors import PeerError
from qdspace.node.identity.member import load_member_keys
from qdspace.node.init import add_peers
from qdspace.node.layout import NodeLayout
from qdspace.node.localnet.network import LocalNetwork, MemberSpec
from qdspace.node.rpc.client import open_channel
from qdspace.node.rpc.contracts_notification_serde import Notification, notification_to_proto
from qdspace.node.rpc.peers import PeerDirectory
from qdspace.util.ports import free_port

from .conftest import Host, qdspace

pytestmark = pytest.mark.integration

BUSY, CALM = "busyco", "calmco"


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    workdir = tmp_path_factory.mktemp("host-quotas")
    net = LocalNetwork(workdir, members=(MemberSpec("sunarc", "oem"),), chain=False)
    net.create()
    ports = {BUSY: free_port(), CALM: free_port()}
    hosted = Host(workdir, workdir / "H", net, free_port(), ports)
    done = qdspace("host", "init", "--dir", str(hosted.directory), "--api-port",
                   str(hosted.api_port))  # fmt: skip
    assert done.returncode == 0, done.stderr
    quotas = {BUSY: ["--max-rows", "5", "--max-streams", "2"], CALM: []}
    for name in ports:
        hosted.add_tenant(name, "supplier", *quotas[name])
    add_peers(net["sunarc"].directory, {n: f"127.0.0.1:{p}" for n, p in ports.items()})
    try:
        hosted.start()
        yield hosted
    finally:
        hosted.stop()


def _peers(host: Host) -> PeerDirectory:
    """The self-hosted member's own keys, dialling both tenants over mutual TLS."""
    files = NodeLayout(host.net["sunarc"].directory)
    addresses = {n: f"127.0.0.1:{p}" for n, p in host.ports.items()}
    return PeerDirectory(
        host.net["sunarc"].keys(), addresses, cert_files=(files.tls_cert, files.tls_key)
    )


def _hellos(host: Host, target: str, n: int) -> list[str]:
    """``n`` Hello calls one after another: "ok" or the refusal's message each."""

    async def calls() -> list[str]:
        peers = _peers(host)
        out = []
        try:
            for _ in range(n):
                try:
                    await peers.hello(target, timeout=30)
                    out.append("ok")
                except PeerError as exc:
                    out.append(str(exc))
        finally:
            await peers.close()
        return out

    return asyncio.run(calls())


def _inspection(i: int) -> dict[str, Any]:
    return {
        "inspection_id": f"QUOTA-{i:04d}",
        "station": "EL-1",
        "inspected_at": f"2026-12-01T06:{i // 60:02d}:{i % 60:02d}Z",
        "verdict": "pass",
        "score": 0.1,
        "model_version": "el-live-1",
        "image_hash": "ab" * 32,
        "order_id": "PO-Q-1",
        "batch_id": "SW-CB-260001",
    }


def _ingest(host: Host, tenant: str, ids: range) -> httpx.Response:
    with host.client(host.tokens[tenant]) as api:
        return api.post("/v1/ingest/inspection", json={"rows": [_inspection(i) for i in ids]})


def _count(host: Host, tenant: str) -> int:
    with host.client(host.tokens[tenant]) as api:
        return int(api.get("/v1/qdm/counts").json()["inspection"])


def _listed(host: Host) -> dict[str, dict[str, Any]]:
    done = qdspace("host", "tenant", "list", "--dir", str(host.directory), "--json")
    assert done.returncode == 0, done.stderr
    return {t["name"]: t for t in json.loads(done.stdout)}


def _quota(host: Host, *args: str) -> Any:
    return qdspace("host", "tenant", "quota", "--dir", str(host.directory), *args)


def test_quotas_set_at_add_are_listed_with_the_host_defaults_for_the_rest(host: Host) -> None:
    listed = _listed(host)
    busy, calm = listed[BUSY], listed[CALM]
    assert busy["own_quota"] and busy["quota"]["max_rows"] == 5
    assert busy["quota"]["max_streams"] == 2 and busy["quota"]["rps"] == 100  # default rest
    assert not calm["own_quota"] and calm["quota"]["max_rows"] == 10_000_000
    table = qdspace("host", "tenant", "list", "--dir", str(host.directory))
    assert "rows 5," in table.stdout and "default)" in table.stdout, table.stdout


def test_an_ingest_past_the_row_quota_is_refused_whole_and_racers_cannot_both_fit(
    host: Host,
) -> None:
    assert _ingest(host, BUSY, range(0, 3)).status_code == 200
    over = _ingest(host, BUSY, range(3, 6))  # 3 + 3 > 5
    assert over.status_code == 507, over.text
    assert "stores 3 rows" in over.json()["detail"] and "quota of 5 rows" in over.text
    assert _count(host, BUSY) == 3  # nothing of it was written
    assert _ingest(host, CALM, range(0, 8)).status_code == 200  # the neighbour: no such quota
    # two ingests of 2 rows race for the last 2 rows: one fits, one is refused
    answers: list[int] = []
    start = threading.Barrier(2)

    def race(first: int) -> None:
        start.wait()
        answers.append(_ingest(host, BUSY, range(first, first + 2)).status_code)

    racers = [threading.Thread(target=race, args=(i,)) for i in (10, 20)]
    for r in racers:
        r.start()
    for r in racers:
        r.join()
    assert sorted(answers) == [200, 507], answers
    assert _count(host, BUSY) == 5
    assert _count(host, CALM) == 8


def test_an_ingest_past_the_storage_quota_is_refused_naming_it(host: Host) -> None:
    done = _quota(host, "--name", CALM, "--max-storage", "1KiB")
    assert done.returncode == 0 and "(host running)" in done.stdout, done.stderr
    refused = _ingest(host, CALM, range(100, 101))
    assert refused.status_code == 507, refused.text
    assert "storage quota of 1.0 KiB" in refused.json()["detail"], refused.text
    assert _count(host, CALM) == 8
    assert _hellos(host, BUSY, 1) == ["ok"]  # the other tenant is served as before
    done = _quota(host, "--name", CALM, "--reset")
    assert done.returncode == 0, done.stderr
    assert _ingest(host, CALM, range(100, 101)).status_code == 200
    assert not _listed(host)[CALM]["own_quota"]


def _watch_streams(host: Host, target: str, n: int) -> tuple[list[str], Any]:
    """``n`` Health/Watch streams opened at once (a server stream that stays open): each
    "open" or its refusal; returns the open calls' closer too."""

    async def opened() -> list[str]:
        stub = health_pb2_grpc.HealthStub(peers.channel(target))
        calls = [stub.Watch(health_pb2.HealthCheckRequest()) for _ in range(n)]

        async def first(call: Any) -> str:
            try:
                await call.read()
                return "open"
            except grpc.aio.AioRpcError as exc:
                return f"{exc.code().name}: {exc.details()}"

        out = list(await asyncio.gather(*(first(c) for c in calls)))
        for call in calls:
            call.cancel()
        return out

    peers = _peers(host)
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(opened()), None
    finally:
        loop.run_until_complete(peers.close())
        loop.close()


def test_streams_past_the_quota_are_refused_at_open_even_when_racing(host: Host) -> None:
    answers, _ = _watch_streams(host, BUSY, 5)
    assert answers.count("open") == 2, answers
    refused = [a for a in answers if a != "open"]
    assert len(refused) == 3
    assert all(a.startswith("RESOURCE_EXHAUSTED") and "streams open" in a for a in refused)
    assert all("quota: 2" in a for a in refused), refused
    calm, _ = _watch_streams(host, CALM, 5)
    assert calm == ["open"] * 5  # the neighbour's default quota is 32
    again, _ = _watch_streams(host, BUSY, 2)  # the closed streams gave their slots back
    assert again == ["open", "open"], again


def test_a_rate_quota_changed_live_refuses_with_retry_after_and_holds_across_a_restart(
    host: Host,
) -> None:
    done = _quota(host, "--name", BUSY, "--rps", "0.2", "--burst", "4")
    assert done.returncode == 0 and "(host running)" in done.stdout, done.stderr
    answers = _hellos(host, BUSY, 5)
    assert answers[:2] == ["ok", "ok"], answers  # one member: half the burst
    assert all("RESOURCE_EXHAUSTED" in a and "request rate quota" in a for a in answers[2:])
    assert "share one member may take" in answers[2], answers
    assert "half of 0.2 requests per second, burst 4" in answers[2], answers
    with host.client(host.tokens[BUSY]) as busy:  # its staff have a bucket of their own
        assert [busy.get("/v1/node").status_code for _ in range(4)] == [200] * 4
        r = busy.get("/v1/node")  # past their own burst
        assert r.status_code == 429, r.text
        assert int(r.headers["retry-after"]) >= 1 and "retry in" in r.json()["detail"]
    assert _hellos(host, CALM, 5) == ["ok"] * 5  # the neighbour is not throttled
    with host.client(host.tokens[CALM]) as calm:
        assert calm.get("/v1/node").status_code == 200

    host.stop()
    quota = _listed(host)[BUSY]["quota"]
    assert (quota["rps"], quota["burst"], quota["max_rows"]) == (0.2, 4, 5)
    host.start()
    answers = _hellos(host, BUSY, 3)
    assert answers[:2] == ["ok", "ok"] and "request rate quota" in answers[2], answers
    done = _quota(host, "--name", BUSY, "--rps", "unlimited")
    assert done.returncode == 0, done.stderr
    assert _hellos(host, BUSY, 5) == ["ok"] * 5


HOSTILE = [
    ("--max-rows", "-1", "at least 1"),
    ("--max-rows", "0", "suspend"),
    ("--max-rows", "1e3", "not a whole number"),
    ("--max-rows", str(10**13), "above the most allowed"),
    ("--max-storage", "2XB", "not a size"),
    ("--max-storage", "nan", "not a size"),
    ("--max-storage", "-2GiB", "not a size"),
    ("--rps", "nan", "finite"),
    ("--rps", "inf", "finite"),
    ("--rps", "0", "above 0"),
    ("--burst", "0", "at least 1"),
    ("--max-streams", "0", "at least 1"),
    ("--max-calls", "99999999999", "above the most allowed"),
]


def test_hostile_quota_values_are_refused_clearly(host: Host) -> None:
    before = _listed(host)[BUSY]["quota"]
    for option, value, says in HOSTILE:
        done = _quota(host, "--name", BUSY, f"{option}={value}")
        assert done.returncode == 1, (option, value, done.stdout)
        assert says in done.stderr and "Traceback" not in done.stderr, (option, done.stderr)
    assert _listed(host)[BUSY]["quota"] == before


def test_hostile_quota_bodies_to_the_host_api_are_refused(host: Host) -> None:
    before = _listed(host)[BUSY]["quota"]
    with host.client(host.host_token()) as admin:
        path = f"/host/v1/tenants/{BUSY}/quota"
        for body in (
            '{"changes": {"rps": NaN}}',
            '{"changes": {"max_rows": -4}}',
            '{"changes": {"max_storage": 1e300}}',
            '{"changes": {"evil": 1}}',
            '{"changes": {"max_rows": 5}, "reset": true}',
        ):
            r = admin.put(path, content=body, headers={"content-type": "application/json"})
            assert r.status_code in (400, 422), (body, r.text)
        assert admin.put("/host/v1/tenants/..%2Fcalmco/quota", json={}).status_code in (400, 404)
    with host.client(host.tokens[BUSY]) as busy:  # a tenant's token cannot change quotas
        assert busy.put(f"/host/v1/tenants/{BUSY}/quota", json={"reset": True}).status_code == 404
    assert _listed(host)[BUSY]["quota"] == before


def test_a_hostile_quota_at_add_leaves_no_tenant(host: Host) -> None:
    done = qdspace("host", "tenant", "add", "--dir", str(host.directory), "--name", "newco",
                   "--role", "supplier", "--authority", str(host.net.authority_dir),
                   "--grpc-port", str(free_port()), "--max-storage", "lots")  # fmt: skip
    assert done.returncode == 1 and "not a size" in done.stderr, done.stderr
    assert not (host.directory / "tenants" / "newco").exists()
    assert "newco" not in _listed(host)


def _uploads_left(host: Host, tenant: str) -> list[str]:
    """Spooled uploads left in the tenant's directory (none once an ingest has ended)."""
    return [p.name for p in (host.directory / "tenants" / tenant).glob(".upload-*")]


def test_an_upload_over_the_storage_quota_is_refused_as_it_arrives(host: Host) -> None:
    """CALM may store 2 MiB more than it holds. A 48 MB CSV sent without a length is
    refused once what arrived no longer fits (it was spooled whole to the host's shared
    temporary folder first); the same with its length declared is refused before a byte
    is read; a JSON ingest is held in memory to be parsed, so it is refused over 16 MiB
    whatever the quota (a tenant's 90 MB JSON body took the host 3.7 GB and held every
    tenant's calls 3.6 s)."""
    with host.client(host.tokens[CALM]) as api:
        held = api.get("/v1/qdm/counts").json()
    assert _quota(host, "--name", CALM, "--max-storage", "3MiB").returncode == 0
    header = b"inspection_id,station,inspected_at,verdict\n"
    row = b"X-%08d,EL-1,2026-12-01T06:00:00Z,pass" + b" " * 60 + b"\n"

    def csv(rows: int) -> Iterator[bytes]:
        yield header
        for start in range(0, rows, 10_000):
            yield b"".join(row % i for i in range(start, start + 10_000))

    try:
        with host.client(host.tokens[CALM]) as api:
            streamed = api.post(
                "/v1/ingest/inspection",
                content=csv(480_000),
                headers={"content-type": "text/csv"},
            )
            assert streamed.status_code == 507, streamed.text
            assert "over its storage quota of 3.0 MiB" in streamed.json()["detail"]
            declared = api.post(
                "/v1/ingest/inspection",
                content=b"".join(csv(480_000)),
                headers={"content-type": "text/csv"},
            )
            assert declared.status_code == 507, declared.text
            assert api.get("/v1/qdm/counts").json() == held  # nothing of either stored
        assert _uploads_left(host, CALM) == []
    finally:
        assert _quota(host, "--name", CALM, "--reset").returncode == 0

    body = json.dumps({"rows": [_inspection(i) for i in range(70_000)]}).encode()
    assert len(body) > 16 << 20
    with host.client(host.tokens[CALM]) as api:
        big = api.post(
            "/v1/ingest/inspection", content=body, headers={"content-type": "application/json"}
        )
    assert big.status_code == 413, big.text
    assert "a JSON ingest is at most 16 MiB" in big.json()["detail"], big.text


def test_a_member_flooding_a_tenant_does_not_lock_its_staff_out(host: Host) -> None:
    """SunArc calls BUSY faster than its rate quota allows: its calls past the quota are
    refused, and BUSY's staff are still served (they drew on one bucket: 429 for as long
    as the member kept at it)."""
    assert _quota(host, "--name", BUSY, "--rps", "unlimited").returncode == 0  # fresh buckets
    assert _quota(host, "--name", BUSY, "--rps", "2", "--burst", "4").returncode == 0
    try:
        answers = _hellos(host, BUSY, 12)
        assert "ok" in answers and any("rate quota" in a for a in answers), answers
        with host.client(host.tokens[BUSY]) as api:
            staff = [api.get("/v1/node").status_code for _ in range(3)]
        assert staff == [200, 200, 200], staff
    finally:
        assert _quota(host, "--name", BUSY, "--max-rows", "5", "--rps", "100").returncode == 0


def test_a_member_s_quality_cases_count_against_the_tenant_s_storage_quota(host: Host) -> None:
    """SunArc (its own key, over mutual TLS) opens a quality case with CALM, whose database
    is past its storage quota: refused RESOURCE_EXHAUSTED naming the quota, nothing kept
    (cases were kept on no quota: a member's 60 cases took a tenant to 30x its quota and
    locked its own ingests out); with room again, the same case is taken."""
    with host.client(host.tokens[CALM]) as api:
        calm_id = api.get("/v1/node").json()["member_id"]
    sunarc = load_member_keys(host.net["sunarc"].directory)
    terms = CaseTerms(
        CaseKind.INVESTIGATION, sunarc.identity.member_id, calm_id, Severity.MAJOR, "EL cracks"
    )
    event = opening(f"qc-{uuid.uuid4().hex}", terms, datetime.now(UTC))[0]
    signed = sign_event(event, sunarc.signing_key)
    sealed = SealedEvent(event.canonical_bytes(), signed.signature)

    def notify() -> tuple[grpc.StatusCode, str]:
        note = Notification(
            f"n-{uuid.uuid4().hex}", sunarc.identity.member_id, datetime.now(UTC), sealed
        )
        raw = notification_to_proto(note).SerializeToString()

        async def call() -> tuple[grpc.StatusCode, str]:
            address = f"127.0.0.1:{host.ports[CALM]}"
            async with open_channel(sunarc, address, CALM) as channel:
                method = channel.unary_unary(
                    "/qdspace.v1.Notification/Notify",
                    request_serializer=None,
                    response_deserializer=None,
                )
                try:
                    await method(raw, timeout=20)
                except grpc.aio.AioRpcError as err:
                    return err.code(), err.details() or ""
            return grpc.StatusCode.OK, ""

        return asyncio.run(call())

    assert _quota(host, "--name", CALM, "--max-storage", "1KiB").returncode == 0
    try:
        code, why = notify()
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED, (code, why)
        assert "quality case data from sunarc brings" in why and "storage quota" in why, why
        with host.client(host.tokens[CALM]) as api:
            assert api.get("/v1/investigations").json() == []
    finally:
        assert _quota(host, "--name", CALM, "--reset").returncode == 0
    assert notify() == (grpc.StatusCode.OK, "")
    with host.client(host.tokens[CALM]) as api:
        assert [c["case_id"] for c in api.get("/v1/investigations").json()] == [event.case_id]
