"""A hosted tenant's model versions are on the host's disk, so they count in its storage
quota: a real host directory (two tenants enrolled with a real authority, their SQLite
databases), opened by the host's runtime, its operator API and the tenants' APIs called
over ASGI. Model versions are written by the real registry (ONNX files). Nothing timed.

Before, the storage quota saw only a tenant's database: one that trained or received
version after version filled the host's disk with ONNX files and starved the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from qdspace.inference.registry import ModelRegistry
from qdspace.node.context import NodeContext
from qdspace.node.host.admission import measure_usage
from qdspace.node.host.config import HostSettings
from qdspace.node.host.dispatch import HostDispatcher, create_host_app
from qdspace.node.host.errors import StorageQuotaExceeded
from qdspace.node.host.runtime import HostedTenant, HostRuntime
from qdspace.node.host.tenants import (
    Enrollment,
    add_tenant,
    init_host,
    load_host_token,
    load_master_key,
    tenant_token,
)
from qdspace.node.identity.authority import Authority
from qdspace.util.sizes import show_size

training = pytest.importorskip("qdspace.inference.training", exc_type=ImportError)

BUSY, CALM = "busyco", "calmco"
SIZE = 32


def _onnx(seed: int) -> bytes:
    """A small ONNX classifier (some 23 KB), distinct for each seed."""
    config = training.TrainConfig(input_size=SIZE, widths=(4, 8, 8), seed=seed)
    return bytes(training.export_onnx(training.build_model(config), SIZE))


@pytest.fixture(scope="module")
def versions() -> tuple[bytes, bytes]:
    return _onnx(1), _onnx(2)


@dataclass
class Host:
    runtime: HostRuntime
    dispatcher: HostDispatcher
    host_token: str
    tokens: dict[str, str]

    def tenant(self, name: str) -> HostedTenant:
        return self.runtime.get(name)

    def call(self, token: str, method: str, path: str, body: Any = None) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.dispatcher)
            async with httpx.AsyncClient(transport=transport, base_url="https://host") as c:
                headers = {"authorization": f"Bearer {token}"}
                return await c.request(method, path, json=body, headers=headers)

        return asyncio.run(go())

    def shown(self, name: str) -> dict[str, Any]:
        """The tenant as the host operator's API lists it."""
        answer = self.call(self.host_token, "GET", f"/host/v1/tenants/{name}")
        assert answer.status_code == 200, answer.text
        listed: dict[str, Any] = answer.json()
        return listed

    def database_bytes(self, name: str) -> int:
        """The tenant's database alone, as the storage quota measured it before."""
        ctx = self.tenant(name).ctx
        assert ctx is not None and ctx.contracts is not None
        return measure_usage(ctx.store, ctx.contracts.store).size


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    Authority.init(tmp_path / "authority", "test-space")
    files = init_host(tmp_path / "H", HostSettings())
    for name in (BUSY, CALM):
        enrollment = Enrollment(authority_dir=tmp_path / "authority")
        add_tenant(files.directory, name, "supplier", enrollment)
    settings = HostSettings.load(files.directory)
    runtime = HostRuntime(files.directory, settings, load_master_key(files))
    runtime.open_all()
    host_token = load_host_token(files)
    dispatcher = HostDispatcher(runtime, host_token, create_host_app(runtime, host_token, 0.0))
    tokens = {name: tenant_token(files.directory, name) for name in (BUSY, CALM)}
    try:
        yield Host(runtime, dispatcher, host_token, tokens)
    finally:
        runtime.close_all()


def _inspection(i: int) -> dict[str, Any]:
    return {
        "inspection_id": f"MODEL-{i:04d}",
        "station": "EL-1",
        "inspected_at": f"2026-12-01T06:00:{i % 60:02d}Z",
        "verdict": "pass",
        "score": 0.1,
        "model_version": "el-live-1",
        "image_hash": "ab" * 32,
        "order_id": "PO-M-1",
        "batch_id": "SW-CB-260001",
    }


def _ingest(host: Host, name: str, i: int) -> httpx.Response:
    body = {"rows": [_inspection(i)]}
    return host.call(host.tokens[name], "POST", "/v1/ingest/inspection", body)


def _register(host: Host, name: str, data: bytes) -> Path:
    """A model version of the tenant, written by the model registry; its ONNX file."""
    ctx = host.tenant(name).ctx
    assert ctx is not None
    registry = ModelRegistry(ctx.directory)
    return registry.root / registry.register(data, source="test").file


def test_the_host_shows_a_tenant_s_storage_with_its_model_versions(
    host: Host, versions: tuple[bytes, bytes]
) -> None:
    """The storage the host operator sees is the tenant's database and its model files;
    another tenant's files are not counted for it."""
    onnx = _register(host, BUSY, versions[0])
    assert onnx.stat().st_size == len(versions[0])
    busy = host.shown(BUSY)["use"]["storage"]
    assert busy is not None, "the host shows no storage for the tenant"
    assert busy >= host.database_bytes(BUSY) + len(versions[0]), busy
    calm = host.shown(CALM)["use"]["storage"]
    assert calm is not None and calm < host.database_bytes(CALM) + len(versions[0]), calm


def test_model_versions_past_the_storage_quota_refuse_the_next_one_and_ingests(
    host: Host, versions: tuple[bytes, bytes]
) -> None:
    """Each tenant's quota holds its database and one version's bytes. BUSY keeps one
    version: a second (asked as its writer asks, `NodeContext.check_kept`) is refused
    naming the tenant, what it holds and its quota, and so is an ingest; CALM, holding no
    model, may keep one. Counting the database alone, BUSY's fit too."""
    first, second = versions
    _register(host, BUSY, first)
    assert _ingest(host, CALM, 1).status_code == 200  # its database as it will stay
    quotas = {name: host.database_bytes(name) + len(second) for name in (BUSY, CALM)}
    for name, quota in quotas.items():
        path = f"/host/v1/tenants/{name}/quota"
        changed = host.call(host.host_token, "PUT", path, {"changes": {"max_storage": quota}})
        assert changed.status_code == 200, changed.text
    refused = _ingest(host, BUSY, 1)
    assert refused.status_code == 507, refused.text
    limit = f"storage quota of {show_size(quotas[BUSY])}"
    assert limit in refused.json()["detail"], refused.text
    busy = host.tenant(BUSY).ctx
    assert busy is not None
    with pytest.raises(StorageQuotaExceeded) as caught:
        busy.check_kept(len(second), "model version 2")
    holds = host.shown(BUSY)["use"]["storage"]
    assert holds >= host.database_bytes(BUSY) + len(first), holds
    assert str(caught.value).startswith(f"tenant {BUSY} holds {show_size(holds)} "), caught.value
    assert f"model version 2 brings {show_size(len(second))}" in str(caught.value)
    assert limit in str(caught.value), caught.value
    calm = host.tenant(CALM).ctx  # the other tenant is not affected
    assert calm is not None
    calm.check_kept(len(second), "model version 2")


def test_a_model_version_past_the_quota_is_refused_by_the_registry_before_it_is_written(
    host: Host, versions: tuple[bytes, bytes]
) -> None:
    """The registry of BUSY's node asks its room (`NodeContext.check_kept`), as its
    trainings, federated deploys and coordinated jobs make it: a version past BUSY's quota
    is refused naming the tenant, and nothing of it is written (no file, the manifest as
    it was); the same version is registered at CALM, whose quota has room."""
    first, second = versions
    busy, calm = host.tenant(BUSY).ctx, host.tenant(CALM).ctx
    assert busy is not None and calm is not None
    ModelRegistry(busy.directory, busy.check_kept).register(first, source="test")
    quota = host.database_bytes(BUSY) + len(second)
    path = f"/host/v1/tenants/{BUSY}/quota"
    changed = host.call(host.host_token, "PUT", path, {"changes": {"max_storage": quota}})
    assert changed.status_code == 200, changed.text
    registry = ModelRegistry(busy.directory, busy.check_kept)
    files = sorted(p.name for p in registry.root.iterdir())
    manifest = registry.manifest_path.read_bytes()
    with pytest.raises(StorageQuotaExceeded, match=f"^tenant {BUSY} holds .*model version"):
        registry.register(second, source="test")
    assert sorted(p.name for p in registry.root.iterdir()) == files
    assert registry.manifest_path.read_bytes() == manifest
    assert registry.register(first, source="again").file in files  # known: nothing to write
    entry = ModelRegistry(calm.directory, calm.check_kept).register(second, source="test")
    assert (calm.layout.models / entry.file).stat().st_size == len(second)


def _start_job(ctx: NodeContext, initial: bytes) -> None:
    """Job ``el-1`` (logistic regression over 256 features) coordinated by the tenant of
    ``ctx``, through its jobs service as its node wires it."""
    from qdspace.federation import logreg
    from qdspace.federation.job import JobSpec
    from qdspace.node.runtime.federation_wiring import jobs_from_context

    name = ctx.keys.identity.name
    job = JobSpec(
        job_id="el-1",
        coordinator=name,
        model="logreg",
        shapes=logreg.model_shapes(256, 2),
        rounds=1,
        min_members=2,
        members=("cellex", "polycell"),
        phase_timeout_s=10.0,
    )
    jobs = jobs_from_context(ctx)

    async def start() -> None:
        await jobs.start(jobs.proposed(job.canonical_bytes()), memoryview(initial), name)

    asyncio.run(start())


def test_a_job_coordinated_past_the_quota_is_refused_before_its_directory_is_written(
    host: Host,
) -> None:
    """BUSY's coordinator asks for a new job's two checkpoint slots first: past its quota
    the job is refused naming the tenant, and no job directory is left; CALM, under the
    host's default quota, starts the same job."""
    from qdspace.federation import logreg
    from qdspace.federation.params import params_to_bytes

    initial = params_to_bytes(logreg.init_params(256, 2))
    quota = host.database_bytes(BUSY) + len(initial)  # one slot's room, not two
    path = f"/host/v1/tenants/{BUSY}/quota"
    changed = host.call(host.host_token, "PUT", path, {"changes": {"max_storage": quota}})
    assert changed.status_code == 200, changed.text
    busy, calm = host.tenant(BUSY).ctx, host.tenant(CALM).ctx
    assert busy is not None and calm is not None
    with pytest.raises(StorageQuotaExceeded, match=f"^tenant {BUSY} holds .*job el-1"):
        _start_job(busy, initial)
    assert not (busy.layout.federation_jobs / "el-1").exists()
    _start_job(calm, initial)
    assert (calm.layout.federation_jobs / "el-1" / "checkpoint.bin").is_file()
