"""A hostile coordinator's terms against a member's own floor, its rounds and phases.

The coordinator is the rogue gRPC server of ``test_federation_hostile_coordinator``;
the member side is the node's own code: ``NodeSettings`` read from a ``node.json``,
``FederationMember.join`` reading the terms over gRPC, ``FederationClient`` and
``MemberRunner``. Before: a member joined a job with DP off (or near-zero noise)
although its operator asked for DP, read terms of 10**9 rounds, and ended on a status
naming an unknown phase with a bare ``ValueError``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from qdspace.federation import logreg
from qdspace.federation.dp import DPConfig
from qdspace.federation.errors import RefusalReason, UpdateRefused
from qdspace.federation.job import JobSpec
from qdspace.federation.member_floor import MemberFloor
from qdspace.federation.round_status import Phase
from qdspace.node.config import NodeSettings
from qdspace.node.errors import ConfigError, PeerError
from qdspace.node.rpc.federation_client import FederationClient
from qdspace.node.rpc.federation_link import GrpcCoordinator
from qdspace.node.rpc.federation_runner import MemberRunner
from qdspace.node.runtime.federation_member import (
    FederationMember,
    FederationRequestError,
    JoinRequest,
)

from .test_federation_hostile_coordinator import (
    COORDINATOR,
    DIMS,
    KEY,
    MEMBER,
    Hostile,
    serving,
    status,
    terms,
    versions,
)


def node_floor(tmp_path: Path, **floor: Any) -> MemberFloor:
    """The floor a node with ``federation_floor`` set so in its node.json runs with."""
    node = tmp_path / "node"
    node.mkdir()
    base = {"name": MEMBER, "role": "supplier", "member_id": f"{MEMBER}-1"}
    (node / "node.json").write_text(json.dumps(base | {"federation_floor": floor}))
    return NodeSettings.load(node).federation_floor.floor()


async def _join(tmp_path: Path, job: JobSpec, floor: MemberFloor | None) -> tuple[Any, Hostile]:
    """``FederationMember.join`` against a coordinator serving ``job``: the session, or
    the error that refused it."""
    data = tmp_path / "own.npz"
    logreg.save_dataset(data, logreg.make_blobs(40, DIMS, 2, seed=1))
    hostile = Hostile([job], [status(job, 1, Phase.TRAINING, 0)], None)  # type: ignore[arg-type]
    server, port = await serving(hostile)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")

    def connect(coordinator: str, job_id: str) -> GrpcCoordinator:
        return GrpcCoordinator(None, lambda *_: False, channel, coordinator, job_id)  # type: ignore[arg-type]

    try:
        member = FederationMember(connect, tmp_path, MEMBER, floor=floor)
        try:
            got: Any = await member.join(JoinRequest("j1", COORDINATOR, data))
        except FederationRequestError as exc:
            got = exc
        await member.stop()  # a session that started follows no further
        assert isinstance(got, Exception) or member.sessions() == [got]
        return got, hostile
    finally:
        await channel.close()
        await server.stop(0)


@pytest.mark.parametrize(
    ("floor", "served", "named"),
    [
        (
            {"min_noise_multiplier": 0.5},
            {},
            "dp is off (no noise on this member's update), and min_noise_multiplier 0.5 asks",
        ),
        (
            {"min_noise_multiplier": 0.5},
            {"dp": DPConfig(clip=1.0, noise_multiplier=1e-6)},
            "dp.noise_multiplier 1e-06 leaves 1e-06 on this member's update",
        ),
        (
            {"max_epsilon": 10.0},
            {"dp": DPConfig(clip=1.0, noise_multiplier=0.1, max_epsilon=1.0)},
            "over max_epsilon 10",
        ),
        (
            {"require_secure_aggregation": True},
            {},
            "secure_aggregation is off, and require_secure_aggregation is set",
        ),
        ({"max_rounds": 2}, {}, "rounds 3 is over max_rounds 2"),
    ],
)
def test_a_member_refuses_terms_below_its_own_floor(
    tmp_path: Path, floor: dict[str, Any], served: dict[str, Any], named: str
) -> None:
    """An agreement for the job's asset says nothing of its noise: the member's node
    settings do, and ``join`` refuses before any round, naming the term and the floor."""
    got, hostile = asyncio.run(_join(tmp_path, terms(**served), node_floor(tmp_path, **floor)))
    assert isinstance(got, FederationRequestError), got
    assert f"{MEMBER} refuses job j1: its terms are below this node's federation_floor" in str(got)
    assert named in str(got)
    assert hostile.uploads == []


def test_the_default_floor_joins_a_job_without_dp(tmp_path: Path) -> None:
    """No ``federation_floor`` in node.json: a plain job is joined as before."""
    got, _ = asyncio.run(_join(tmp_path, terms(), node_floor(tmp_path)))
    assert not isinstance(got, Exception), got
    assert got.job_id == "j1"


@pytest.mark.parametrize(
    ("floor", "where"),
    [
        ({"min_noise_multiplier": -1}, "federation_floor.min_noise_multiplier"),
        ({"max_epsilon": "inf"}, "federation_floor.max_epsilon"),
        ({"epsilon_delta": 1.0}, "federation_floor.epsilon_delta"),
        ({"max_rounds": 0}, "federation_floor.max_rounds"),
        ({"min_noise_multipler": 1.0}, "federation_floor.min_noise_multipler"),  # misspelt
    ],
)
def test_a_bad_floor_names_its_setting(tmp_path: Path, floor: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError, match=f"node.json: {where}: "):
        node_floor(tmp_path, **floor)


def test_a_member_refuses_terms_of_more_rounds_than_any_job_may_have() -> None:
    """Terms of 10**9 rounds (a member would train and upload until the coordinator
    stopped asking): the member's client refuses them on reading, naming the ceiling."""
    raw = terms().to_dict() | {"rounds": 10**9}
    body = json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()

    async def read() -> Exception:
        import hashlib

        from qdspace.protocols.v1 import federation_pb2 as pb

        async def get_job(request: pb.JobRef, context: Any) -> pb.JobTerms:
            return pb.JobTerms(terms=body, job_digest=hashlib.sha256(body).digest())

        hostile = Hostile([terms()], [status(terms(), 1, Phase.TRAINING, 0)], None)  # type: ignore[arg-type]
        hostile.get_job = get_job  # type: ignore[method-assign]
        server, port = await serving(hostile)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                with pytest.raises(PeerError) as refused:  # its fault: a 502
                    await FederationClient(channel, COORDINATOR, "j1").job()
                return refused.value
        finally:
            await server.stop(0)

    error = asyncio.run(read())
    assert "rounds must be in 1..10,000 (the most a job may have), got 1,000,000,000" in str(error)


def test_a_status_with_an_unknown_phase_ends_the_round_loop_with_a_protocol_error() -> None:
    """The member trains round 1 and uploads; the next status names phase "reticulate":
    the round loop ends with the coordinator's protocol error (``OUT_OF_RANGE``, naming
    the field and the value), as for a status with an out-of-range deadline."""
    job = terms()
    signed = versions(job, 1)
    bogus = status(job, 1, Phase.TRAINING, 0)
    bogus.phase = "reticulate"
    hostile = Hostile([job], [status(job, 1, Phase.TRAINING, 0), bogus], serve=lambda v: signed[0])

    async def follow() -> BaseException:
        server, port = await serving(hostile)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                client = FederationClient(channel, COORDINATOR, "j1")
                data = logreg.make_blobs(40, DIMS, 2, seed=1)
                runner = MemberRunner(
                    client, MEMBER, logreg.trainer(data), KEY.verify_key, poll_s=0.0
                )
                try:
                    await asyncio.wait_for(runner.run(), 30)
                except Exception as exc:  # what ended the round loop
                    return exc
                raise AssertionError("the round loop went on past the unknown phase")
        finally:
            await server.stop(0)

    got = asyncio.run(follow())
    assert isinstance(got, UpdateRefused), repr(got)
    assert got.reason is RefusalReason.OUT_OF_RANGE
    assert "status field phase has the unknown value 'reticulate'" in str(got)
    assert len(hostile.uploads) == 1  # round 1 was sent before the bad status


def test_a_running_node_holds_its_members_to_the_floor_in_its_settings(tmp_path: Path) -> None:
    """The floor in ``node.json`` is the one the node's member side joins by: the serving
    code makes the node's `FederationMember` with it (a floor only the tests handed to
    `FederationMember` would leave a running node on the default)."""
    from qdspace.node.context import build_context
    from qdspace.node.serving import MemberServer

    from .conftest import cellex_context

    made = cellex_context(tmp_path)
    settings = made.settings
    made.close()
    wanted = {"min_noise_multiplier": 0.8, "require_secure_aggregation": True, "max_rounds": 40}
    settings.model_copy(
        update={"federation_floor": settings.federation_floor.model_validate(wanted)}
    ).save()
    ctx = build_context(NodeSettings.load(settings.directory))
    try:
        MemberServer(ctx).prepare()
        assert ctx.federation is not None
        floor = ctx.federation.floor
        assert (floor.min_noise_multiplier, floor.require_secure_aggregation) == (0.8, True)
        assert floor.max_rounds == 40
    finally:
        ctx.close()
