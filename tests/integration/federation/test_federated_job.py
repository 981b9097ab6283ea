"""Real federated jobs between real node processes over mutual-TLS gRPC on loopback.

SunArc (OEM) coordinates; SunArc, Cellex and PolyCell train a small softmax model on
their own shards. The jobs run secure aggregation with a robust strategy, lose a
member after masking, face a poisoned member, refuse what does not fit, and survive
a coordinator restart between rounds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from qdspace.federation import logreg
from qdspace.federation.job import JobSpec
from qdspace.federation.member import Trainer
from qdspace.federation.params import Params, flatten, params_to_bytes, unflatten
from qdspace.federation.round_status import Phase
from qdspace.federation.strategies import StrategyName, StrategySpec
from qdspace.federation.versions import ModelVersion
from qdspace.node.errors import NodeError
from qdspace.node.identity.member import load_member_keys
from qdspace.node.localnet.network import LocalNetwork
from qdspace.node.rpc.client import open_channel
from qdspace.node.rpc.federation_client import (
    FederationClient,
    FederationRefused,
    coordinator_key,
)
from qdspace.node.rpc.federation_runner import MemberRunner
from qdspace.node.runtime.federation_member import MemberEvent, MemberResult
from qdspace.protocols.v1 import federation_pb2 as pb
from qdspace.protocols.v1 import federation_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

COORDINATOR = "sunarc"
MEMBERS = ("cellex", "polycell", "sunarc")
DIMS, CLASSES = 12, 3
SHAPES = logreg.model_shapes(DIMS, CLASSES)
_DATA = logreg.make_blobs(1500, DIMS, CLASSES, seed=11, spread=1.3)
SHARDS = dict(
    zip(MEMBERS, logreg.split(logreg.Dataset(_DATA.x[:1200], _DATA.y[:1200]), 3), strict=True)
)
TEST = logreg.Dataset(_DATA.x[1200:], _DATA.y[1200:])


class Dropout(Exception):
    """A member process dying at a chosen point of a round."""


def job_terms(job_id: str, **overrides: Any) -> JobSpec:
    terms: dict[str, Any] = {
        "job_id": job_id,
        "coordinator": COORDINATOR,
        "model": "logreg",
        "shapes": SHAPES,
        "rounds": 3,
        "min_members": 2,
        "members": MEMBERS,
        "phase_timeout_s": 20.0,
    }
    terms.update(overrides)
    return JobSpec(**terms)


def honest(member: str) -> Trainer:
    return logreg.trainer(SHARDS[member], epochs=2, lr=0.2)


def scaled(member: str, factor: float) -> Trainer:
    """A poisoned member: its change is multiplied by ``factor`` (x100, or -1 to flip)."""
    train = honest(member)

    def attack(params: Params, round_: int) -> tuple[Params, int]:
        trained, n = train(params, round_)
        start, end = flatten(params), flatten(trained)
        return unflatten(start + np.float32(factor) * (end - start), SHAPES), n

    return attack


def centralised_accuracy() -> float:
    pooled = logreg.Dataset(_DATA.x[:1200], _DATA.y[:1200])
    params = logreg.init_params(DIMS, CLASSES)
    for r in range(3):
        params, _ = logreg.train_local(params, pooled, epochs=2, lr=0.2, seed=r)
    return logreg.accuracy(params, TEST)


async def start_job(network: LocalNetwork, job: JobSpec) -> None:
    keys = load_member_keys(network[COORDINATOR].directory)
    channel = open_channel(keys, network[COORDINATOR].grpc_address, COORDINATOR)
    try:
        client = FederationClient(channel, COORDINATOR, job.job_id)
        status = await client.start_job(job, logreg.init_params(DIMS, CLASSES))
    finally:
        await channel.close()
    assert status.round == 1 and status.version == 0


async def run_member(
    network: LocalNetwork,
    member: str,
    job_id: str,
    trainer: Trainer,
    on_event: Callable[[MemberEvent], None] | None = None,
) -> MemberResult:
    keys = load_member_keys(network[member].directory)
    channel = open_channel(keys, network[COORDINATOR].grpc_address, COORDINATOR)
    try:
        client = FederationClient(channel, COORDINATOR, job_id)
        key = await coordinator_key(channel, COORDINATOR)
        runner = MemberRunner(
            client,
            member,
            trainer,
            key,
            signing_key=keys.signing_key,
            certificate=keys.cert,
            ca_cert=keys.ca_cert,
            on_event=on_event,
            poll_s=5.0,
        )
        return await runner.run()
    finally:
        await channel.close()


async def run_all(
    network: LocalNetwork, job_id: str, trainers: Mapping[str, Trainer], **hooks: Any
) -> dict[str, MemberResult | BaseException]:
    results = await asyncio.gather(
        *(run_member(network, m, job_id, t, hooks.get(m)) for m, t in trainers.items()),
        return_exceptions=True,
    )
    return dict(zip(trainers, results, strict=True))


def final_accuracy(result: MemberResult | BaseException) -> float:
    assert isinstance(result, MemberResult), result
    assert result.params is not None
    return logreg.accuracy(result.params, TEST)


async def test_secure_robust_job_survives_a_dropout_after_masking(network: LocalNetwork) -> None:
    job = job_terms(
        "el-secure",
        secure_aggregation=True,
        threshold=2,
        strategy=StrategySpec(StrategyName.NORM_BOUNDING, {"bound": 1.0}),
        phase_timeout_s=3.0,
    )
    await start_job(network, job)

    # SunArc coordinates and trains too. Its consistency signature never counts towards
    # t (it could sign two survivor sets), so with t=2 of three members the round can
    # lose the coordinator-member, not another one, and only once keys are shared: each
    # member masks with the keys of at least t others (one of them honest, whoever
    # colludes), so a round of two is not run at all (each would read the other's
    # update from the sum). The dropout shown: after masking, in the last round.
    def sunarc_dies_after_masking_round_3(event: MemberEvent) -> None:
        if event.kind == "sent" and event.round == 3:
            raise Dropout("sunarc's training process died after sending its masked update")

    results = await run_all(
        network,
        job.job_id,
        {
            "cellex": honest("cellex"),
            "polycell": scaled("polycell", 100.0),
            "sunarc": honest("sunarc"),
        },
        sunarc=sunarc_dies_after_masking_round_3,
    )
    assert isinstance(results["sunarc"], Dropout)
    cellex = results["cellex"]
    assert isinstance(cellex, MemberResult) and cellex.status.phase is Phase.DONE
    assert cellex.aborted == []
    history = cellex.status.history
    # Round 3 still holds sunarc's masked update: its masks were removed with the
    # others' shares after it had gone.
    assert [h.members for h in history] == [MEMBERS, MEMBERS, MEMBERS]
    versions = [v.version for v in cellex.versions]
    assert versions == [0, 1, 2, 3]
    assert all(
        isinstance(v, ModelVersion) and v.coordinator == COORDINATOR for v in cellex.versions
    )
    assert cellex.versions[-1].members == MEMBERS
    # The x100 member was bounded by clipping before masking: the model still learns.
    reference = centralised_accuracy()
    for name in ("cellex", "polycell"):
        assert final_accuracy(results[name]) >= reference - 0.05, name


async def test_median_keeps_a_poisoned_member_out(network: LocalNetwork) -> None:
    job = job_terms("el-median", strategy=StrategySpec(StrategyName.MEDIAN), min_members=3)
    await start_job(network, job)
    results = await run_all(
        network,
        job.job_id,
        {
            "cellex": honest("cellex"),
            "polycell": scaled("polycell", -100.0),
            "sunarc": honest("sunarc"),
        },
    )
    reference = centralised_accuracy()
    for name in MEMBERS:
        assert final_accuracy(results[name]) >= reference - 0.05, name
    # The same job under FedAvg is ruined by the flipped update (the test can fail).
    job = job_terms("el-fedavg-poisoned", min_members=3)
    await start_job(network, job)
    results = await run_all(
        network,
        job.job_id,
        {
            "cellex": honest("cellex"),
            "polycell": scaled("polycell", -100.0),
            "sunarc": honest("sunarc"),
        },
    )
    assert final_accuracy(results["sunarc"]) < reference - 0.1


async def test_a_plain_job_bounds_a_hostile_members_update_to_the_jobs_clip(
    network: LocalNetwork,
) -> None:
    """``update_clip`` in a plain FedAvg job: Cellex's runner clips its own change, SunArc
    sends 1e30 everywhere and claims a million examples. The coordinator clips each
    change that arrives to the job's bound, so the published model moves by at most the
    clip (it moved by 5e29 when only honest members clipped) and the round's record
    names SunArc as bounded."""
    job = job_terms("el-plain-clip", members=("cellex", "sunarc"), rounds=1, update_clip=1.0)
    await start_job(network, job)

    async def hostile() -> None:
        keys = load_member_keys(network[COORDINATOR].directory)
        channel = open_channel(keys, network[COORDINATOR].grpc_address, COORDINATOR)
        try:
            client = FederationClient(channel, COORDINATOR, job.job_id)
            await client.upload_update(1, [np.full(s, 1e30, np.float32) for s in SHAPES], 10**6)
        finally:
            await channel.close()

    cellex, _ = await asyncio.gather(
        run_member(network, "cellex", job.job_id, honest("cellex")), hostile()
    )
    assert cellex.status.phase is Phase.DONE, cellex.status
    record = cellex.status.history[0]
    # (cellex clipped its own change; float rounding may have it clipped once more)
    assert record.members == ("cellex", "sunarc") and "sunarc" in record.bounded, record
    assert cellex.params is not None and [v.version for v in cellex.versions] == [0, 1]
    start = flatten(logreg.init_params(DIMS, CLASSES)).astype(np.float64)
    moved = float(np.linalg.norm(flatten(cellex.params).astype(np.float64) - start))
    assert moved <= 1.0 + 1e-5, moved


async def _raw_upload(
    network: LocalNetwork, member: str, header: pb.UploadHeader, payload: bytes
) -> grpc.aio.AioRpcError:
    keys = load_member_keys(network[member].directory)
    channel = open_channel(keys, network[COORDINATOR].grpc_address, COORDINATOR)

    async def stream() -> Any:
        yield pb.UploadChunk(header=header)
        # A refusal comes on the header: then send no data, since a write racing the
        # server's status makes the client report INTERNAL instead of the refusal.
        done, _ = await asyncio.wait({asyncio.ensure_future(call.code())}, timeout=1.0)
        if not done:
            yield pb.UploadChunk(data=payload)

    try:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            call = pb_grpc.FederationStub(channel).UploadUpdate(stream(), timeout=10)
            await call
    finally:
        await channel.close()
    return exc.value


async def test_updates_that_do_not_fit_are_refused_with_a_reason(network: LocalNetwork) -> None:
    job = job_terms("el-refusals", members=("cellex", "sunarc"), rounds=1)
    await start_job(network, job)
    payload = params_to_bytes(logreg.init_params(DIMS, CLASSES))
    digest = hashlib.sha256(payload).digest()

    def header(**kw: Any) -> pb.UploadHeader:
        fields: dict[str, Any] = {
            "job_id": job.job_id,
            "round": 1,
            "total_bytes": len(payload),
            "sha256": digest,
            "num_examples": 10,
        }
        fields.update(kw)
        return pb.UploadHeader(**fields)

    refused = await _raw_upload(network, "polycell", header(), payload)
    assert refused.code() is grpc.StatusCode.PERMISSION_DENIED
    assert refused.details().startswith("not_a_member: polycell is not a member")
    refused = await _raw_upload(network, "cellex", header(round=2), payload)
    assert refused.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert refused.details().startswith("wrong_round:")
    wrong = params_to_bytes(logreg.init_params(DIMS + 1, CLASSES))
    refused = await _raw_upload(
        network,
        "cellex",
        header(total_bytes=len(wrong), sha256=hashlib.sha256(wrong).digest()),
        wrong,
    )
    assert refused.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.details().startswith("wrong_shape:")
    refused = await _raw_upload(network, "regulator", header(), payload)
    assert refused.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "role regulator may not call" in refused.details()
    # Only the coordinator's own identity may start a job on its node.
    keys = load_member_keys(network["cellex"].directory)
    channel = open_channel(keys, network[COORDINATOR].grpc_address, COORDINATOR)
    try:
        client = FederationClient(channel, COORDINATOR, "el-foreign")
        with pytest.raises(FederationRefused) as exc:
            await client.start_job(job_terms("el-foreign"), logreg.init_params(DIMS, CLASSES))
    finally:
        await channel.close()
    assert exc.value.code == "PERMISSION_DENIED" and "own operator" in str(exc.value)


async def test_a_job_under_contract_refuses_members_without_an_agreement(
    network: LocalNetwork,
) -> None:
    job = job_terms(
        "el-contract", members=("cellex", "sunarc"), rounds=1, agreement_asset="fl-job:el-contract"
    )
    await start_job(network, job)
    payload = params_to_bytes(logreg.init_params(DIMS, CLASSES))
    header = pb.UploadHeader(job_id=job.job_id, round=1, total_bytes=len(payload), num_examples=10)
    refused = await _raw_upload(network, "cellex", header, payload)
    assert refused.code() is grpc.StatusCode.PERMISSION_DENIED
    assert refused.details().startswith("no_agreement: member cellex")
    assert "holds no agreement for fl-job:el-contract" in refused.details()
    # The job is in the coordinator's catalog, offered for training on model updates only.
    with network["cellex"].operator() as api:
        listed = api.catalog(COORDINATOR, kind="federated_job")
        entry = next(e for e in listed if e["asset_id"] == "fl-job:el-contract")
        assert entry["fields"] == ["model_update"]
        offer = entry["offer"]
        assert {p["action"] for p in offer["prohibition"]} == {"distribute", "read", "stream"}
        # cellex negotiates the job's offer through its node, once; then it trains
        agreement, fresh = await asyncio.to_thread(
            api.federation.ensure_agreement, COORDINATOR, "fl-job:el-contract"
        )
        again = await asyncio.to_thread(
            api.federation.ensure_agreement, COORDINATOR, "fl-job:el-contract"
        )
    assert fresh and again == (agreement, False)
    # polycell is no member of the job: its node's negotiation is terminated
    with network["polycell"].operator() as api, pytest.raises(NodeError) as not_member:
        await asyncio.to_thread(api.federation.ensure_agreement, COORDINATOR, "fl-job:el-contract")
    assert "TERMINATED: polycell is not a member of job asset fl-job:el-contract" in str(
        not_member.value
    )
    results = await run_all(network, job.job_id, {m: honest(m) for m in ("cellex", "sunarc")})
    cellex = results["cellex"]
    assert isinstance(cellex, MemberResult) and cellex.status.phase is Phase.DONE
    assert cellex.contributed == [1]


async def test_restarted_coordinator_resumes_between_rounds(network: LocalNetwork) -> None:
    job = job_terms("el-restart", members=("cellex", "polycell"), rounds=3)
    await start_job(network, job)

    def stop_after_version_1(event: MemberEvent) -> None:
        if event.kind == "model" and event.version == 1:
            raise Dropout("members stop after round 1")

    trainers = {m: honest(m) for m in ("cellex", "polycell")}
    stop = dict.fromkeys(trainers, stop_after_version_1)
    first = await run_all(network, job.job_id, trainers, **stop)
    assert all(isinstance(r, Dropout) for r in first.values())
    network.stop([COORDINATOR])
    network.start([COORDINATOR])
    results = await run_all(network, job.job_id, trainers)
    cellex = results["cellex"]
    assert isinstance(cellex, MemberResult) and cellex.status.phase is Phase.DONE
    assert [h.round for h in cellex.status.history] == [1, 2, 3]
    # After the restart the member continues from version 1 (resumed from the checkpoint).
    assert [v.version for v in cellex.versions] == [1, 2, 3]
    assert cellex.contributed == [2, 3]


async def test_coordinator_killed_mid_secure_aggregation_finishes_without_loss_or_duplicates(
    network: LocalNetwork,
) -> None:
    """SIGKILL the coordinator's node while round 1's masked inputs are arriving, restart it:
    the members keep polling, the round reruns as a fresh attempt (new keys, no mask used
    twice) and every round is aggregated exactly once."""
    job = job_terms(
        "el-sigkill",
        secure_aggregation=True,
        threshold=2,
        update_clip=1.0,
        rounds=2,
        min_members=3,
        phase_timeout_s=20.0,
    )
    await start_job(network, job)
    masked_sent = asyncio.Event()
    events: list[MemberEvent] = []

    def cellex_events(event: MemberEvent) -> None:
        events.append(event)
        if event.kind == "sent" and event.round == 1:
            masked_sent.set()

    async def crash_and_restart() -> None:
        await masked_sent.wait()
        await asyncio.to_thread(network.kill, COORDINATOR)
        await asyncio.to_thread(network.start, [COORDINATOR])

    crash = asyncio.create_task(crash_and_restart())
    results = await run_all(
        network, job.job_id, {m: honest(m) for m in MEMBERS}, cellex=cellex_events
    )
    await crash
    for name in MEMBERS:
        result = results[name]
        assert isinstance(result, MemberResult), (name, result)
        assert result.status.phase is Phase.DONE, (name, result.status)
        history = result.status.history
        assert [(h.round, h.version) for h in history] == [(1, 1), (2, 2)], name
        assert all(h.members == MEMBERS for h in history), name
        assert [v.version for v in result.versions] == [0, 1, 2], name
    assert any(e.kind == "waiting" for e in events)  # cellex saw the coordinator go away
    assert final_accuracy(results["cellex"]) > 0.5


def test_cli_start_join_and_status(network: LocalNetwork, tmp_path: Path) -> None:
    """The operator's path: `qdspace fl start`, three `fl join` processes (the coordinator's
    node trains too: a secure round needs t + 1 members), `fl status`."""
    job = job_terms(
        "el-cli",
        members=("cellex", "polycell", "sunarc"),
        rounds=2,
        secure_aggregation=True,
        threshold=2,
        update_clip=2.0,
        training={"epochs": 2, "lr": 0.2},
    )
    terms = tmp_path / "job.json"
    terms.write_bytes(job.canonical_bytes())
    test_file = tmp_path / "test.npz"
    logreg.save_dataset(test_file, TEST)

    def qdspace(member: str, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "qdspace", "fl", *args, "--dir", str(network[member].directory)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
        )

    started = qdspace(COORDINATOR, "start", "--terms", str(terms))
    out, _ = started.communicate(timeout=60)
    assert started.returncode == 0, out
    assert "job el-cli published on sunarc" in out
    joins = {}
    for m in ("cellex", "polycell", "sunarc"):
        data = tmp_path / f"{m}.npz"
        logreg.save_dataset(data, SHARDS[m])
        joins[m] = qdspace(
            m,
            "join",
            "--job",
            "el-cli",
            "--coordinator",
            COORDINATOR,
            "--data",
            str(data),
            "--test",
            str(test_file),
        )
    outputs = {m: p.communicate(timeout=60)[0] for m, p in joins.items()}
    for m, p in joins.items():
        assert p.returncode == 0, outputs[m]
        assert "version 2 (round 2) verified, signed by sunarc, held-out accuracy" in outputs[m]
        assert "round 2: sent masked update sent" in outputs[m]
        assert "job el-cli done: contributed to rounds [1, 2]" in outputs[m]
    shown = qdspace("cellex", "status", "--coordinator", COORDINATOR, "--job", "el-cli")
    out, _ = shown.communicate(timeout=60)
    assert shown.returncode == 0, out
    assert "el-cli: done after 2 rounds" in out
    # A job the caller is not a member of is not shown to it.
    shown = qdspace("polycell", "status", "--coordinator", COORDINATOR, "--job", "el-refusals")
    out, _ = shown.communicate(timeout=60)
    assert shown.returncode == 1 and "no job 'el-refusals' visible" in out


def test_demo_chapter_runs_the_el_job(network: LocalNetwork) -> None:
    """The demo's job trains the line's CNN; both suppliers' nodes deploy the final
    version (here with no line model and no audit set yet: activated ungated)."""
    pytest.importorskip("torch")
    from qdspace.node.demo.federation import DEPLOY_AT, ROUNDS, run_federation_chapter
    from qdspace.node.demo.federation import MEMBERS as DEMO_MEMBERS
    from qdspace.node.demo.report import DemoReport

    report = DemoReport(workdir=str(network.workdir))
    result = run_federation_chapter(network, report, job_id="el-demo-test")
    assert result.model == "el-cnn"
    assert [r["version"] for r in result.rounds] == list(range(ROUNDS + 1))
    assert all(r["members"] == list(DEMO_MEMBERS) for r in result.rounds[1:])
    assert result.local_only == {}  # no line models were trained before it here
    # every member but the coordinator negotiated the job's contract before training
    assert set(result.agreements) == set(DEMO_MEMBERS) - {COORDINATOR}
    # Each member's data went into its own node directory only.
    for m in DEMO_MEMBERS:
        assert (network[m].directory / "federation" / "data" / "el-demo-test.npz").is_file()
    assert result.global_accuracy == result.rounds[-1]["accuracy"]
    assert set(result.deployed) == set(DEPLOY_AT)
    for member, deployed in result.deployed.items():
        assert deployed["member"] == member
        assert deployed["model"] == "el-cnn" and deployed["version"] == ROUNDS
        assert deployed["max_difference"] <= 1e-4


def _el_cells(count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic EL cells in [0, 1]: defective ones carry a dark crack line."""
    rng = np.random.default_rng(seed)
    frames = rng.uniform(0.4, 0.8, (count, 1, size, size)).astype(np.float32)
    labels = (rng.random(count) < 0.4).astype(np.int64)
    for i in np.flatnonzero(labels):
        row = rng.integers(2, size - 2)
        frames[i, 0, row, :] *= 0.15
    return frames, labels


async def test_member_deploys_a_verified_anchored_version_into_its_inspection_tier(
    network: LocalNetwork,
) -> None:
    """Signature and ledger anchor checked, ONNX export checked, registered, hot-swapped."""
    from qdspace.federation import mlp
    from qdspace.federation.el_features import el_features, feature_count
    from qdspace.federation.errors import VersionError
    from qdspace.federation.onnx_export import el_mlp_reference, export_el_mlp
    from qdspace.inference.registry import ModelRegistry
    from qdspace.inference.session import InspectionSession
    from qdspace.node.runtime.federation import (
        check_anchor,
        install,
        member_ledger,
        verified_anchor,
    )

    size, members = 32, ("polycell", "sunarc")
    data = {}
    for n, m in enumerate(members):
        frames, labels = _el_cells(160, size, seed=n)
        data[m] = logreg.Dataset(el_features(frames[:, 0]), labels)
    initial = mlp.init_params(data["sunarc"].x, 8, seed=1)
    job = job_terms(
        "el-deploy",
        model="el-mlp",
        shapes=mlp.model_shapes(feature_count(), 8),
        members=members,
        rounds=1,
        training={"epochs": 3, "lr": 0.01, "batch": 32},
    )
    keys = load_member_keys(network[COORDINATOR].directory)
    channel = open_channel(keys, network[COORDINATOR].grpc_address, COORDINATOR)
    try:
        await FederationClient(channel, COORDINATOR, job.job_id).start_job(job, initial)
    finally:
        await channel.close()
    # polycell's line serves a model of its own before the job
    directory = network["polycell"].directory
    registry = ModelRegistry(directory)
    registry.register(export_el_mlp(initial, size), source="local", activate=True)
    session = InspectionSession(registry, use_ray=False)
    before = session.start()
    try:
        trainers = {m: mlp.trainer_for(job.training, data[m]) for m in members}
        results = await run_all(network, job.job_id, trainers)
        result = results["polycell"]
        assert isinstance(result, MemberResult) and result.params is not None
        final = result.versions[-1]
        assert final.version == 1
        ledger = member_ledger(directory)
        member_keys = load_member_keys(directory)
        channel = open_channel(member_keys, network[COORDINATOR].grpc_address, COORDINATOR)
        try:
            client = FederationClient(channel, COORDINATOR, job.job_id)
            verdict = await verified_anchor(client, final, ledger, wait_s=30.0, poll_s=0.5)
            proof = await client.version_proof(final.version)
        finally:
            await channel.close()
        assert verdict.valid, verdict.reason
        # the proof holds for exactly this record: not for another version, not for altered bytes
        with pytest.raises(VersionError, match="the proof is for model_version el-deploy/v1"):
            check_anchor(result.versions[0], proof, ledger)
        altered = dataclasses.replace(final, members=("polycell",))
        with pytest.raises(VersionError, match="record"):
            check_anchor(altered, proof, ledger)
        deployment = install(directory, final, result.params, verdict, size)
        assert deployment.max_difference <= 1e-4
        assert registry.active() is not None
        swapped = session.follow_active()  # what a running line does on its display tick
        assert swapped is not None and swapped.version == deployment.registry_version
        assert swapped.version != before.version and swapped.source == "federated:el-deploy/v1"
        probe, _ = _el_cells(6, size, seed=9)
        served = registry.load(swapped.version, device="cpu").probabilities(probe)
        assert np.abs(served - el_mlp_reference(result.params, probe)).max() <= 1e-4
    finally:
        session.close()
