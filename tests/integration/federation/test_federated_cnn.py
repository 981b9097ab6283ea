"""The line's CNN federated between real node processes (``el-cnn`` jobs).

SunArc's node coordinates; the three member nodes train the CNN the line serves on
their own EL cells (tiny images and widths, two rounds, so it runs in seconds) with
secure aggregation, and one member deploys the final version: its ledger anchor and
ONNX export checked, offered to its promotion gate, loaded by the line's
``OnnxClassifier``. Hostile members and jobs the members cannot train are refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from contextlib import ExitStack
from typing import Any

import grpc
import numpy as np
import pytest

from qdspace.federation.el_cnn import LAYOUT, MODEL, cnn_shapes
from qdspace.federation.el_features import SPLIT_MEMBERS, member_split
from qdspace.federation.job import JobSpec
from qdspace.federation.params import Params, params_to_bytes
from qdspace.federation.strategies import StrategyName, StrategySpec
from qdspace.node.client import ClientError
from qdspace.node.identity.member import load_member_keys
from qdspace.node.localnet.network import LocalNetwork
from qdspace.node.rpc.client import open_channel
from qdspace.protocols.v1 import federation_pb2 as pb
from qdspace.protocols.v1 import federation_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration
pytest.importorskip("torch")

COORDINATOR = "sunarc"
DEPLOY_AT = "cellex"
SIZE = 24
WIDTHS = (8, 16, 16)
SHAPES = cnn_shapes(WIDTHS)
TERMS = {"layout": float(LAYOUT), "image_size": float(SIZE), "epochs": 2.0, "lr": 3e-3}
CELLS_PER_MEMBER = 320


def initial_cnn() -> Params:
    from qdspace.inference.training import TrainConfig, build_model, get_weights

    return get_weights(build_model(TrainConfig(seed=0, widths=WIDTHS)))


def cnn_job(job_id: str, **overrides: Any) -> JobSpec:
    terms: dict[str, Any] = {
        "job_id": job_id,
        "coordinator": COORDINATOR,
        "model": MODEL,
        "shapes": SHAPES,
        "rounds": 2,
        "min_members": 2,
        "members": SPLIT_MEMBERS,
        "secure_aggregation": True,
        "threshold": 2,
        "update_clip": 5.0,
        "phase_timeout_s": 60.0,
        "training": TERMS,
    }
    terms.update(overrides)
    return JobSpec(**terms)


def el_cells() -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]:
    """Members' own cells (the demo's non-IID split, capped) and held-out cells, at SIZE."""
    from qdspace.inference.dataset import binary_labels, load_elpv

    data = load_elpv(size=SIZE)
    labels = binary_labels(data.probabilities)
    rows, held_out = member_split(labels, np.asarray(data.cell_types), seed=7)
    rng = np.random.default_rng(0)
    own = {}
    for m, idx in rows.items():
        chosen = np.sort(rng.permutation(idx)[:CELLS_PER_MEMBER])
        own[m] = (np.asarray(data.images[chosen]), labels[chosen])
    return own, np.asarray(data.images[held_out]), labels[held_out]


def test_federated_cnn_version_is_gated_and_served_by_the_line(network: LocalNetwork) -> None:
    from qdspace.inference.frames import to_model_input
    from qdspace.inference.gate import WEIGHTED_ACCURACY, GatePolicy, metric_values
    from qdspace.inference.metrics import binary_metrics
    from qdspace.inference.registry import ModelRegistry

    job = cnn_job("cnn-line")
    own, test_images, test_labels = el_cells()
    half = len(test_labels) // 2
    files = {}
    for m, (images, labels) in own.items():
        files[m] = network[m].layout.federation_data(job.job_id)
        files[m].parent.mkdir(parents=True, exist_ok=True)
        np.savez(files[m], images=images, y=labels)
    # the deploying member scores each version on its held-out cells; the coordinator
    # scores the final one on its own (by their conventional name) when it registers it
    test_file = network[DEPLOY_AT].layout.federation_data(f"{job.job_id}-test")
    for path in (test_file, network[COORDINATOR].layout.federation_data(f"{job.job_id}-held-out")):
        np.savez(path, images=test_images[half:], y=test_labels[half:])
    registry = ModelRegistry(network[DEPLOY_AT].directory)
    # the deploying member's audit set: labelled cells it re-inspected (the other half)
    registry.set_audit_set(
        list(test_images[:half]),
        test_labels[:half],
        [f"audit{i}" for i in range(half)],
    )
    before = registry.active()
    with ExitStack() as stack:
        apis = {m: stack.enter_context(network[m].operator(timeout=120.0)) for m in SPLIT_MEMBERS}
        # the operator writes the CNN's widths, not its 26 shapes; without an initial
        # model the coordinator's node makes a seeded fresh network (zeros never train)
        terms = {k: v for k, v in job.to_dict().items() if k != "shapes"}
        view = apis[COORDINATOR].federation.start({**terms, "widths": list(WIDTHS)}, None)
        assert view["round"] == 1 and view["version"] == 0
        sessions = {
            m: apis[m].federation.join(
                job.job_id,
                str(files[m]),
                coordinator=COORDINATOR,
                test=str(test_file) if m == DEPLOY_AT else None,
                deploy=True if m == DEPLOY_AT else None,
                poll_s=1.0,
            )["session_id"]
            for m in SPLIT_MEMBERS
        }
        deadline = time.monotonic() + 240
        while True:
            states = {m: apis[m].federation.session(sid) for m, sid in sessions.items()}
            if all(s["state"] != "running" for s in states.values()):
                break
            assert time.monotonic() < deadline, states
            time.sleep(0.5)
    for m, state in states.items():
        assert state["state"] == "done", (m, state["error"])
        assert state["contributed"] == [1, 2], m
    versions = [e for e in states[DEPLOY_AT]["events"] if e["kind"] == "version"]
    assert [e["version"] for e in versions] == [0, 1, 2]
    final_scores = versions[-1]["scores"]
    assert set(final_scores) == {"accuracy", "f1", "auroc"}
    deployed = states[DEPLOY_AT]["deployment"]
    assert deployed["model"] == MODEL and deployed["version"] == 2
    assert deployed["max_difference"] <= 1e-4
    entry = registry.get(deployed["registry_version"])
    assert entry.source == f"federated:{job.job_id}/v2" and entry.input_size == SIZE
    assert entry.metrics == pytest.approx(final_scores)
    # the version went through the gate: with no model active it had to beat the
    # majority-class predictor on the audit set; with one, be no worse than it
    last = registry.promotions()[-1]
    assert last["version"] == entry.version and last["decision"] is not None
    if before is None:
        assert deployed["active"] and last["outcome"] == "activated"
    assert deployed["active"] == (last["outcome"] == "activated")
    # the coordinator exported the final version as `qdspace train` does and registered
    # it (not activated there) with its held-out metrics: the very same ONNX bytes
    coordinated = ModelRegistry(network[COORDINATOR].directory)
    deadline = time.monotonic() + 60
    while entry.version not in {v.version for v in coordinated.versions()}:
        assert time.monotonic() < deadline, "the coordinator did not register the version"
        time.sleep(0.5)
    there = coordinated.get(entry.version)
    assert there.source == entry.source and there.metrics == pytest.approx(final_scores)
    # the line's own classifier loads the ONNX file and beats the majority class
    classifier = registry.load(entry.version, device="cpu")
    assert classifier.info.input_size == SIZE
    probs = classifier.probabilities(to_model_input(list(test_images[half:]), SIZE))
    scores = probs[:, 1].astype(np.float64)
    held_out = test_labels[half:]
    balanced = float(metric_values(WEIGHTED_ACCURACY, held_out, scores, GatePolicy())[0])
    assert balanced > 0.6, balanced  # the majority class scores 0.5
    assert binary_metrics(held_out, scores).auroc > 0.65
    assert binary_metrics(held_out, scores).accuracy == pytest.approx(final_scores["accuracy"])


def test_members_refuse_a_job_whose_model_they_do_not_train(network: LocalNetwork) -> None:
    unknown = cnn_job("cnn-unknown-model", model="el-transformer", secure_aggregation=False)
    with network[COORDINATOR].operator() as coordinator, network["cellex"].operator() as cellex:
        # the coordinator only averages vectors: it publishes a kind it does not train
        coordinator.federation.start(unknown.to_dict(), params_to_bytes(initial_cnn()))
        path = network["cellex"].layout.federation_data("cnn-unknown-model")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, images=np.zeros((4, SIZE, SIZE), np.uint8), y=np.zeros(4, np.int64))
        with pytest.raises(ClientError) as refused:
            cellex.federation.join(unknown.job_id, str(path), coordinator=COORDINATOR)
        assert refused.value.status == 400
        assert "'el-transformer' is not one this node trains" in str(refused.value)
        assert "el-cnn" in str(refused.value) and "el-mlp" in str(refused.value)
        # an el-cnn job of another parameter layout, or whose shapes are not the CNN, is
        # refused where it is published (the coordinator knows el-cnn)
        for bad, what in (
            (cnn_job("cnn-layout-2", training={**TERMS, "layout": 2.0}), "layout 2.0"),
            (cnn_job("cnn-not-a-cnn", shapes=((3, 4), (4,))), "not an el-cnn network"),
            (cnn_job("cnn-no-size", training={"layout": 1.0}), "image_size"),
        ):
            with pytest.raises(ClientError) as refused:
                coordinator.federation.start(bad.to_dict(), None)
            assert refused.value.status == 400 and what in str(refused.value), what
    # and nothing of the refused join started: no session of cellex follows the job
    with network["cellex"].operator() as cellex:
        sessions = cellex._get("/v1/federation/sessions")
        rows = sessions["items"] if isinstance(sessions, dict) else sessions
        assert all(s["job_id"] != unknown.job_id for s in rows)


async def _raw_upload(network: LocalNetwork, member: str, job_id: str, payload: bytes) -> Any:
    """``member`` uploads ``payload`` as its round-1 update over real gRPC with TLS."""
    keys = load_member_keys(network[member].directory)
    channel = open_channel(keys, network[COORDINATOR].grpc_address, COORDINATOR)
    header = pb.UploadHeader(
        job_id=job_id,
        round=1,
        total_bytes=len(payload),
        sha256=hashlib.sha256(payload).digest(),
        num_examples=100,
    )

    async def stream() -> Any:
        yield pb.UploadChunk(header=header)
        done, _ = await asyncio.wait({asyncio.ensure_future(call.code())}, timeout=1.0)
        if not done:
            yield pb.UploadChunk(data=payload)

    try:
        call = pb_grpc.FederationStub(channel).UploadUpdate(stream(), timeout=20)
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            return exc
    finally:
        await channel.close()


async def test_hostile_cnn_updates_are_refused_or_bounded(network: LocalNetwork) -> None:
    from qdspace.node.rpc.federation_client import FederationClient

    job = cnn_job(
        "cnn-hostile",
        members=("cellex", "polycell", "sunarc"),
        secure_aggregation=False,
        update_clip=None,
        strategy=StrategySpec(StrategyName.NORM_BOUNDING, {"bound": 5.0}),
        rounds=1,
        min_members=3,
    )
    start = initial_cnn()
    with network[COORDINATOR].operator() as coordinator:
        coordinator.federation.start(job.to_dict(), params_to_bytes(start))
    # the update of a wider network: the length does not fit the job's CNN
    wrong = params_to_bytes(initial_cnn_of((8, 16, 32)))
    refused = await _raw_upload(network, "cellex", job.job_id, wrong)
    assert isinstance(refused, grpc.aio.AioRpcError)
    assert refused.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.details().startswith("wrong_shape:"), refused.details()
    # the right shapes holding a NaN
    poisoned = [p.copy() for p in start]
    poisoned[10][0] = np.nan
    refused = await _raw_upload(network, "cellex", job.job_id, params_to_bytes(poisoned))
    assert isinstance(refused, grpc.aio.AioRpcError)
    assert refused.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert refused.details().startswith("not_finite:"), refused.details()
    # huge but finite weights are taken and bounded to the job's norm
    huge = [np.full_like(p, 1e30) for p in start]
    for member, params in (("cellex", huge), ("polycell", start), ("sunarc", start)):
        accepted = await _raw_upload(network, member, job.job_id, params_to_bytes(params))
        assert not isinstance(accepted, grpc.aio.AioRpcError), accepted.details()
    keys = load_member_keys(network["polycell"].directory)
    channel = open_channel(keys, network[COORDINATOR].grpc_address, COORDINATOR)
    try:
        status = await FederationClient(channel, COORDINATOR, job.job_id).status()
    finally:
        await channel.close()
    assert status.finished and status.history[-1].bounded == ("cellex",)
    assert len(status.history) == 1


def initial_cnn_of(widths: tuple[int, int, int]) -> Params:
    return [np.zeros(s, np.float32) for s in cnn_shapes(widths)]
