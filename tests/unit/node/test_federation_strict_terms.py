"""Job terms are read strictly wherever they arrive: a value not of its field's JSON type
is refused with a message naming the field, never coerced and never a crash.

JSON reads ``1e400`` (and Python's ``Infinity``) as infinity, and ``int()`` of it raised
``OverflowError``, which nothing caught: the coordinator's ``StartJob`` answered
INTERNAL with a traceback in its log, a member reading such terms from a coordinator
ended its join with a 500. Other values were quietly changed: ``"false"`` became true,
2.9 rounds became 2, a dimension of 2.9 became 2.

Each bad value goes where terms arrive: to the coordinator's real ``StartJob`` over
mutual TLS (the node's server, interceptor and servicer; Cellex starts a job on its own
node), from a hostile coordinator to the member's join route, and to the operator's
start route (both through the operator app in process).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import grpc
import pytest

from qdspace.federation import logreg
from qdspace.federation.job import JobSpec, JobSpecError
from qdspace.federation.params import params_to_bytes
from qdspace.node.context import NodeContext
from qdspace.node.rpc.auth import PeerAuthenticator
from qdspace.node.rpc.client import open_channel
from qdspace.node.rpc.federation_link import GrpcCoordinator
from qdspace.node.rpc.federation_service import FederationServicer
from qdspace.node.rpc.server import build_server
from qdspace.node.runtime.federation_jobs import FederationJobs
from qdspace.node.runtime.federation_member import FederationMember
from qdspace.protocols.v1 import federation_pb2 as pb
from qdspace.protocols.v1 import federation_pb2_grpc as pb_grpc

from .conftest import operator_post

ME = "cellex"
DIMS, CLASSES = 4, 2

#: (field, its value as JSON text, what the refusal says)
BAD = [
    ("shapes", "[[1e400], [2]]", "shapes[0][0] must be a whole number, got inf"),
    ("rounds", "1e400", "rounds must be a whole number, got inf"),
    ("threshold", "1e400", "threshold must be a whole number, got inf"),
    ("min_members", "1e400", "min_members must be a whole number, got inf"),
    ("max_examples_per_member", "-1e400", "max_examples_per_member must be a whole number"),
    ("rounds", "2.9", "rounds must be a whole number, got 2.9"),
    ("rounds", "true", "rounds must be a whole number, got true"),
    ("shapes", "[[2.9], [2]]", "shapes[0][0] must be a whole number, got 2.9"),
    ("secure_aggregation", '"false"', "secure_aggregation must be true or false, got 'false'"),
    ("phase_timeout_s", "Infinity", "phase_timeout_s must be a finite number, got inf"),
    ("phase_timeout_s", '"30"', "phase_timeout_s must be a finite number, got '30'"),
    ("update_clip", "1e400", "update_clip must be a finite number, got inf"),
    ("training", '{"lr": NaN}', "training.lr must be a finite number, got nan"),
    (
        "dp",
        '{"clip": 1' + "0" * 400 + ', "noise_multiplier": 1.0}',
        "dp.clip must be a finite number, got a number over 10**18",
    ),
    (
        "strategy",
        '{"name": "fedprox", "params": {"mu": 1e400}}',
        "strategy.params.mu must be a finite number, got inf",
    ),
]
CASES = [pytest.param(f, v, m, id=f"{f}={v[:24]}") for f, v, m in BAD]


def raw_terms(field: str, value: str, job_id: str = "j1", coordinator: str = ME) -> bytes:
    """Valid terms (of a logistic regression) but for ``field``, given as JSON text."""
    terms: dict[str, Any] = {
        "job_id": job_id,
        "coordinator": coordinator,
        "model": "logreg",
        "shapes": [list(s) for s in logreg.model_shapes(DIMS, CLASSES)],
        "rounds": 2,
        "min_members": 2,
        "members": ["cellex", "polycell", "sunarc"],
    }
    terms.pop(field, None)
    body = json.dumps(terms)
    return f'{body[:-1]}, "{field}": {value}}}'.encode()


def test_the_terms_read_back_whole() -> None:
    """The terms here are valid but for the field each case spoils; every JobSpec the
    project writes reads back as itself."""
    for job in (
        JobSpec.from_dict(json.loads(raw_terms("rounds", "3"))),
        JobSpec.from_dict(json.loads(raw_terms("secure_aggregation", "false"))),
    ):
        assert JobSpec.from_dict(json.loads(job.canonical_bytes())) == job


@pytest.mark.parametrize(("field", "value", "named"), CASES)
def test_the_terms_name_the_bad_field(field: str, value: str, named: str) -> None:
    with pytest.raises(JobSpecError, match="job terms are not valid: ") as refused:
        JobSpec.from_dict(json.loads(raw_terms(field, value)))
    assert named in str(refused.value)


# -- the coordinator's StartJob, over mutual TLS ------------------------------------------


async def start_job(node: NodeContext, root: Path, terms: bytes) -> tuple[grpc.StatusCode, str]:
    """``terms`` sent to this node's own ``StartJob`` by its operator: the call's status.

    Only the header is written and the call is left open: a refusal answers at once,
    while terms taken would wait for the initial model (and run into the deadline)."""
    jobs = FederationJobs(node.keys.identity, node.keys.signing_key, root)
    server = build_server(
        node.keys,
        PeerAuthenticator(node.revocations),
        [FederationServicer(jobs).register],
        "127.0.0.1",
        0,
    )
    await server.start()
    payload = params_to_bytes(logreg.init_params(DIMS, CLASSES))
    header = pb.UploadHeader(
        job_id="j1",
        total_bytes=len(payload),
        sha256=hashlib.sha256(payload).digest(),
        terms=terms,
    )
    try:
        async with open_channel(node.keys, f"127.0.0.1:{server.port}", ME) as channel:
            call = pb_grpc.FederationStub(channel).StartJob(timeout=20)
            await call.write(pb.UploadChunk(header=header))
            try:
                await call
            except grpc.aio.AioRpcError as exc:
                return exc.code(), exc.details() or ""
            return grpc.StatusCode.OK, ""
    finally:
        await server.stop(0)


@pytest.mark.parametrize(("field", "value", "named"), CASES)
def test_start_job_refuses_bad_terms_as_invalid_argument(
    node: NodeContext,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    field: str,
    value: str,
    named: str,
) -> None:
    caplog.set_level(logging.INFO)
    code, details = asyncio.run(start_job(node, tmp_path, raw_terms(field, value)))
    assert code is grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert f"job terms are not valid: {named}" in details
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


# -- a member joining a hostile coordinator's job, and the operator starting one ------------


async def serve_terms(terms: bytes) -> tuple[grpc.aio.Server, int]:
    """A coordinator serving ``terms`` as job j1's (under their own digest)."""

    async def get_job(request: pb.JobRef, context: Any) -> pb.JobTerms:
        return pb.JobTerms(terms=terms, job_digest=hashlib.sha256(terms).digest())

    handler = grpc.method_handlers_generic_handler(
        "qdspace.v1.Federation",
        {
            "GetJob": grpc.unary_unary_rpc_method_handler(
                get_job,
                request_deserializer=pb.JobRef.FromString,
                response_serializer=pb.JobTerms.SerializeToString,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def post(node: NodeContext, root: Path, terms: bytes, path: str, body: bytes) -> Any:
    """``body`` posted to the operator app's ``path``, its federation member reaching the
    coordinator ``x`` that serves ``terms``."""
    server, port = await serve_terms(terms)

    def connect(coordinator: str, job_id: str) -> GrpcCoordinator:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        return GrpcCoordinator(None, lambda *_: False, channel, coordinator, job_id)  # type: ignore[arg-type]

    before = node.federation
    node.federation = FederationMember(connect, root / "fl", ME)
    try:
        return await operator_post(node, path, body)
    finally:
        node.federation = before
        await server.stop(0)


@pytest.mark.parametrize(("field", "value", "named"), CASES)
def test_a_member_refuses_a_coordinators_bad_terms_as_the_coordinators_fault(
    node: NodeContext, tmp_path: Path, field: str, value: str, named: str
) -> None:
    """The terms are the coordinator's: its mistake is a 502 to our operator (the request
    was fine), as terms that are no JSON at all are."""
    data = tmp_path / "own.npz"
    logreg.save_dataset(data, logreg.make_blobs(40, DIMS, CLASSES, seed=1))
    join = json.dumps({"job_id": "j1", "coordinator": "x", "data": str(data)}).encode()
    terms = raw_terms(field, value, coordinator="x")
    answer = asyncio.run(post(node, tmp_path, terms, "/v1/federation/sessions", join))
    assert answer.status_code == 502, answer.text
    assert "sent terms that are not valid" in answer.json()["detail"]
    assert f"job terms are not valid: {named}" in answer.json()["detail"]


@pytest.mark.parametrize(("field", "value", "named"), CASES)
def test_the_operator_start_route_refuses_bad_terms_with_a_400(
    node: NodeContext, tmp_path: Path, field: str, value: str, named: str
) -> None:
    terms = raw_terms(field, value, coordinator="x").decode()
    start = f'{{"coordinator": "x", "terms": {terms}}}'.encode()
    answer = asyncio.run(post(node, tmp_path, b"{}", "/v1/federation/jobs", start))
    assert answer.status_code == 400, answer.text
    assert f"job terms are not valid: {named}" in answer.json()["detail"]
