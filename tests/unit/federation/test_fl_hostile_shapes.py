"""What a hostile peer can put in a job's shapes, a parameter header or an update.

A member controls its update's header and values; a coordinator controls the job's
terms and the versions it serves. Each is read as hostile: headers of shapes nobody
checked (negative, wrapping int64, nested a thousand deep) are refused by name, terms
of negative or oversized shapes are refused, a version of other shapes than the job's
is refused by the member, and the job's clip bounds every member's change in plain
rounds whatever the member itself did.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from nacl.signing import SigningKey

from qdspace.federation import logreg, mlp
from qdspace.federation.el_features import feature_count
from qdspace.federation.errors import ParamsError, RefusalReason, UpdateRefused
from qdspace.federation.host import JobHost
from qdspace.federation.job import MAX_VECTOR_LEN, JobSpec, JobSpecError
from qdspace.federation.models import MAX_MLP_HIDDEN, job_problems
from qdspace.federation.params import (
    MAGIC,
    Shapes,
    encoded_size,
    flatten,
    params_from_bytes,
    params_to_bytes,
    size_of,
)
from qdspace.federation.rounds import Coordinator
from qdspace.federation.strategies import StrategyName, StrategySpec, clip_to_norm
from qdspace.node.errors import PeerError
from qdspace.node.rpc.federation_client import FederationClient
from qdspace.protocols.v1 import federation_pb2 as pb

from .conftest import logreg_job

SHAPES = logreg.model_shapes(500, 2)
MEMBERS = ("cellex", "polycell", "sunarc")


def job(**overrides: object) -> JobSpec:
    return logreg_job(SHAPES, MEMBERS, **overrides)


def crafted(header: bytes, body_bytes: int, total: int) -> bytes:
    """Canonical-looking bytes of ``total`` length: ``header`` padded with spaces (JSON
    whitespace) so that ``body_bytes`` zero bytes of body end it."""
    pad = total - len(MAGIC) - 4 - body_bytes - len(header)
    assert pad >= 0
    head = header + b" " * pad
    return MAGIC + struct.pack(">I", len(head)) + head + b"\0" * body_bytes


def _shapes_header(shapes: object) -> bytes:
    return json.dumps({"dtype": "<f4", "shapes": shapes}).encode()


#: Each hostile header, the size of its body, and what its refusal must say. All are
#: exactly as long as the job's update, so they pass the upload's size check.
HOSTILE_HEADERS = {
    # (-2) * (-501) = 1002 scalars, as the job has: numpy's reshape raised ValueError
    "negative dims": (_shapes_header([[-2, -501]]), 4 * 1002, "has shape [-2, -501]"),
    # a thousand levels of '[': json.loads raised RecursionError
    "nested header": (b"[" * (encoded_size(SHAPES) - len(MAGIC) - 4), 0, "nested deeper"),
    # 2**62 * 4 wraps numpy's int64 product to 0 scalars: reshape raised ValueError
    "wrapping dims": (_shapes_header([[2**62, 4]]), 0, "0..2147483647"),
    "float dims": (_shapes_header([[1002.0]]), 4 * 1002, "whole number"),
    "shapes not a list": (_shapes_header("12"), 0, "must be a list"),
    "other shapes": (_shapes_header([[1002]]), 4 * 1002, "the model has [[500, 2], [2]]"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_HEADERS))
def test_hostile_update_headers_are_refused_by_name_and_a_good_update_follows(
    tmp_path: Path, case: str
) -> None:
    header, body, why = HOSTILE_HEADERS[case]
    spec = job()
    host = JobHost.create(tmp_path, spec, logreg.init_params(500, 2), SigningKey(bytes(32)), 0.0)
    payload = crafted(header, body, encoded_size(SHAPES))
    with pytest.raises(UpdateRefused) as refused:
        host.submit_update("cellex", 1, payload, 10, now=1.0)
    assert refused.value.reason is RefusalReason.WRONG_SHAPE
    assert str(refused.value).startswith("wrong_shape: update of cellex: parameter header")
    assert why in str(refused.value), str(refused.value)
    assert len(str(refused.value)) < 400
    good = params_to_bytes([np.ones(s, np.float32) for s in SHAPES])
    host.submit_update("cellex", 1, good, 10, now=1.0)  # cellex's first accepted update
    with pytest.raises(UpdateRefused) as again:
        host.submit_update("cellex", 1, good, 10, now=1.0)
    assert again.value.reason is RefusalReason.DUPLICATE


def test_sizes_are_exact_and_unchecked_reads_still_refuse_bad_dimensions() -> None:
    assert size_of(((2**62, 4),)) == 2**64  # numpy's int64 product made this 0
    with pytest.raises(ParamsError, match=re.escape("whole number in 0..2147483647")):
        params_from_bytes(crafted(_shapes_header([[2**31, 1]]), 0, 200))
    with pytest.raises(ParamsError, match="is not valid"):
        params_from_bytes(crafted(b'{"dtype": "<f4", "shapes": [[1]], "x": "\xc3"}', 4, 100))
    assert params_from_bytes(params_to_bytes([np.ones((2, 3), np.float32)]))[0].shape == (2, 3)


def test_job_terms_refuse_negative_zero_and_oversized_shapes() -> None:
    for shapes, why in (
        (((-1,), (3,)), "tensor 0 has shape [-1]: every dimension must be >= 1"),
        (((4, 0),), "tensor 0 has shape [4, 0]"),
        (((2**62, 4),), "a job may have at most"),
        (((MAX_VECTOR_LEN + 1,),), f"at most {MAX_VECTOR_LEN:,}"),
        ((), "no parameters"),
    ):
        with pytest.raises(JobSpecError, match=re.escape(why)):
            job(shapes=shapes)
    with pytest.raises(JobSpecError, match="every dimension must be >= 1"):
        JobSpec.from_dict(job().to_dict() | {"shapes": [[-1], [3]]})
    assert job(shapes=((MAX_VECTOR_LEN,),)).vector_len == MAX_VECTOR_LEN


def test_el_mlp_jobs_must_be_the_mlp_over_the_el_features() -> None:
    dims = feature_count()
    terms = {"epochs": 1.0}
    assert job_problems("el-mlp", mlp.model_shapes(dims, 8), terms) == []
    assert job_problems("el-mlp", mlp.model_shapes(dims, MAX_MLP_HIDDEN), terms) == []
    for shapes in (
        mlp.model_shapes(dims, 50_000_000),  # a 62 GiB download limit
        mlp.model_shapes(dims, MAX_MLP_HIDDEN + 1),
        mlp.model_shapes(dims + 1, 8),
        mlp.model_shapes(dims, 8, classes=3),
        mlp.model_shapes(dims, 8)[:5],
        SHAPES,
    ):
        problems = job_problems("el-mlp", shapes, terms)
        assert len(problems) == 1 and "are not an el-mlp model" in problems[0], shapes
        assert f"[[{dims}], [{dims}], [{dims}, H], [H], [H, 2], [2]]" in problems[0]


async def _download_from(served: JobSpec, payload: bytes) -> object:
    """``FederationClient.download`` from a coordinator serving ``payload`` as version 1."""

    async def get_job(request: pb.JobRef, context: grpc.aio.ServicerContext) -> pb.JobTerms:
        return pb.JobTerms(terms=served.canonical_bytes(), job_digest=served.digest())

    async def download(
        request: pb.DownloadRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelChunk]:
        digest = hashlib.sha256(payload).digest()
        header = pb.ModelHeader(total_bytes=len(payload), sha256=digest, record=b"{}")
        yield pb.ModelChunk(header=header)
        yield pb.ModelChunk(data=payload)

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "qdspace.v1.Federation",
        {
            "GetJob": grpc.unary_unary_rpc_method_handler(
                get_job,
                request_deserializer=pb.JobRef.FromString,
                response_serializer=pb.JobTerms.SerializeToString,
            ),
            "DownloadModel": grpc.unary_stream_rpc_method_handler(
                download,
                request_deserializer=pb.DownloadRequest.FromString,
                response_serializer=pb.ModelChunk.SerializeToString,
            ),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            return await FederationClient(channel, "sunarc", served.job_id).download(1)
    finally:
        await server.stop(0)


def test_members_refuse_a_version_whose_shapes_are_not_the_jobs() -> None:
    """A coordinator's version is cut up by the job's shapes, never by its own header:
    a transposed model of the same size, or negative dimensions, is refused with a
    ``PeerError`` naming both (it was a ``ValueError`` from numpy, or a model of the
    wrong shape handed to training)."""
    spec = job()
    transposed: Shapes = ((2, 500), (2,))
    other = params_to_bytes([np.ones(s, np.float32) for s in transposed])
    negative = crafted(_shapes_header([[-2, -501]]), 4 * 1002, encoded_size(SHAPES))
    for payload, shown in ((other, "[[2, 500], [2]]"), (negative, "[-2, -501]")):
        with pytest.raises(PeerError) as refused:
            asyncio.run(_download_from(spec, payload))
        message = str(refused.value)
        assert message.startswith("coordinator sunarc sent version 1 of job el-1 that is not")
        assert shown in message, message
    good = params_to_bytes([np.full(s, 2.0, np.float32) for s in SHAPES])
    got = asyncio.run(_download_from(spec, good))
    assert [p.shape for p in got.params] == [(500, 2), (2,)]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "strategy",
    [
        StrategySpec(StrategyName.FEDAVG),
        StrategySpec(StrategyName.FEDPROX),
        StrategySpec(StrategyName.MEDIAN),
        StrategySpec(StrategyName.TRIMMED_MEAN, {"trim": 0.2}),
        StrategySpec(StrategyName.KRUM, {"byzantine": 0}),
        StrategySpec(StrategyName.NORM_BOUNDING, {"bound": 5.0}),  # looser than the clip
    ],
    ids=lambda s: s.name.value,
)
def test_plain_rounds_clip_every_change_to_the_jobs_bound(strategy: StrategySpec) -> None:
    """``update_clip`` is a term every member agreed to: the coordinator enforces it on
    each update, before any strategy, not only under secure aggregation or DP. Two
    hostile members send 1e30 (a majority, so a median would pick them) and claim a
    million examples each."""
    spec = job(update_clip=1.0, strategy=strategy, min_members=3)
    initial = flatten(logreg.init_params(500, 2))
    coord = Coordinator.start(spec, initial, now=0.0)
    honest = [np.full(s, 0.001, np.float32) for s in SHAPES]
    hostile = [np.full(s, 1e30, np.float32) for s in SHAPES]
    coord.submit_update("cellex", 1, honest, 100, now=1.0)
    coord.submit_update("polycell", 1, hostile, 10**6, now=1.0)
    coord.submit_update("sunarc", 1, hostile, 10**6, now=1.0)
    assert coord.version == 1
    moved = float(np.linalg.norm(coord.global_vector.astype(np.float64) - initial))
    assert moved <= 1.0 + 1e-5, moved
    assert coord.history[0].bounded == ("polycell", "sunarc")


def test_plain_rounds_keep_updates_within_the_clip_bit_for_bit() -> None:
    spec = job(update_clip=10.0, members=("cellex", "polycell"))
    initial = flatten(logreg.init_params(500, 2))
    coord = Coordinator.start(spec, initial, now=0.0)
    a = np.random.default_rng(0).normal(0, 0.01, initial.size).astype(np.float32)
    coord.submit_update("cellex", 1, [a[:1000].reshape(500, 2), a[1000:]], 1, now=1.0)
    coord.submit_update("polycell", 1, [a[:1000].reshape(500, 2), a[1000:]], 1, now=1.0)
    assert np.array_equal(coord.global_vector, a) and coord.history[0].bounded == ()


def test_a_clip_keeps_the_direction_of_a_change_whose_squares_overflow_float32() -> None:
    change = np.full(1002, 1e30, np.float32)
    clipped, was = clip_to_norm(change, 1.0)
    assert was
    assert float(np.linalg.norm(clipped.astype(np.float64))) == pytest.approx(1.0, rel=1e-5)


def test_a_change_past_float32s_range_is_clipped_not_turned_into_nan() -> None:
    """The difference of an update and the global model can overflow float32 where the
    two are far apart; it is then measured and scaled in float64 (inf * 0 was NaN)."""
    spec = job(update_clip=1.0, members=("cellex", "polycell"))
    initial = flatten(logreg.init_params(500, 2))
    initial[0] = -3e38
    coord = Coordinator.start(spec, initial, now=0.0)
    far = initial.copy()
    far[0] = 3e38
    coord.submit_update("cellex", 1, [initial[:1000].reshape(500, 2), initial[1000:]], 1, 1.0)
    coord.submit_update("polycell", 1, [far[:1000].reshape(500, 2), far[1000:]], 1, now=1.0)
    assert np.isfinite(coord.global_vector).all()
    moved = float(np.linalg.norm(coord.global_vector.astype(np.float64) - initial))
    assert moved <= 1.0, moved  # (0.5 at -3e38 is below float32's resolution there)
    assert coord.history[0].bounded == ("polycell",)
