"""Hostile members' plain updates against a real coordinator node (mutual-TLS gRPC).

Values at float32's limit are finite, so a plain FedAvg job without a clip takes them
(poisoning it is the accepted risk of a job without one); what it must not do is add
them up in float32 past that limit and sign a model of infinities, which no member
could train from again.
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from qdspace.federation import logreg
from qdspace.federation.job import JobSpec
from qdspace.node.identity.member import load_member_keys
from qdspace.node.localnet.network import LocalNetwork
from qdspace.node.rpc.client import open_channel
from qdspace.node.rpc.federation_client import FederationClient

pytestmark = pytest.mark.integration

COORDINATOR = "sunarc"
DIMS, CLASSES = 6, 2
SHAPES = logreg.model_shapes(DIMS, CLASSES)
LIMIT = np.finfo(np.float32).max


def channel_of(network: LocalNetwork, member: str) -> grpc.aio.Channel:
    keys = load_member_keys(network[member].directory)
    return open_channel(keys, network[COORDINATOR].grpc_address, COORDINATOR)


async def test_updates_at_float32s_limit_never_make_a_model_of_infinities(
    network: LocalNetwork,
) -> None:
    """Three members send every parameter at float32's largest value (claiming 1, 8 and
    1 examples, which an unweighted job ignores): the float32 sum overflowed, and version
    1 was all ``inf``. It is the mean now, finite (the clip set past float32's range, as
    the default clip would move the model by at most 100)."""
    members = ("cellex", "polycell", "sunarc")
    job = JobSpec(
        job_id="el-hostile-limit",
        coordinator=COORDINATOR,
        model="logreg",
        shapes=SHAPES,
        rounds=1,
        min_members=3,
        members=members,
        phase_timeout_s=60.0,
        update_clip=1e300,  # past float32's range: the default clip would move it by 100
    )
    channels = {m: channel_of(network, m) for m in members}
    clients = {m: FederationClient(c, COORDINATOR, job.job_id) for m, c in channels.items()}
    try:
        await clients[COORDINATOR].start_job(job, logreg.init_params(DIMS, CLASSES))
        huge = [np.full(s, LIMIT, np.float32) for s in SHAPES]
        for member, examples in zip(members, (1, 8, 1), strict=True):
            await clients[member].upload_update(1, huge, examples)
        status = await clients["cellex"].status()
        assert (status.phase.value, status.version) == ("done", 1), status
        got = await clients["cellex"].download(1)
        assert np.isfinite(got.vector).all(), got.vector[:4]
        assert np.allclose(got.vector, LIMIT, rtol=1e-6)
    finally:
        await asyncio.gather(*(c.close() for c in channels.values()))
