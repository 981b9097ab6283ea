"""A member's side of a round, minus the transport: what it sends, given what it trained.

The member never sends data, only its change to the global model. When the job
clips (secure aggregation, DP, norm bounding, or a plain mean under its default clip,
`job.DEFAULT_UPDATE_CLIP`) the change is clipped here, before
noise and masking, so the bound holds for whatever leaves the company; in
distributed-DP jobs each member adds its share of the Gaussian noise here too.

The noise is drawn afresh at every call, and a secure round calls once per attempt:
every change sent is one more noisy copy of the member's data, which is why the node
counts each one against the member's floor (``member_releases``) rather than each round.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from nacl.signing import SigningKey

from qdspace.federation.dp import add_noise
from qdspace.federation.job import JobSpec
from qdspace.federation.params import Params, Vector
from qdspace.federation.secagg import SecAggClient
from qdspace.federation.strategies import clip_in_place


def prepare_change(
    job: JobSpec, global_vector: Vector, trained: Vector, rng: np.random.Generator
) -> Vector:
    """The change to report: ``trained - global``, clipped and noised as the job says
    (fresh noise each call: each change sent is one release, ``member_releases``)."""
    change = np.subtract(trained, global_vector, dtype=np.float32)  # a fresh array: ours
    if job.clip is not None:
        clip_in_place(change, job.clip)
    if job.dp is not None:
        change = add_noise(change, job.dp.member_noise_std(job.min_members), rng)
    return change


def plain_update(
    job: JobSpec, global_vector: Vector, trained: Vector, rng: np.random.Generator
) -> Vector:
    """The parameter vector to upload in a round without secure aggregation."""
    if job.clip is None and job.dp is None:
        return np.asarray(trained, dtype=np.float32)
    return (global_vector + prepare_change(job, global_vector, trained, rng)).astype(np.float32)


def secagg_client(
    job: JobSpec,
    member: str,
    round_: int,
    attempt: int,
    signing_key: SigningKey,
) -> SecAggClient:
    """This member's SecAgg state for one round attempt (fresh keys every attempt); its
    adverts, shares and consistency signatures are signed with ``signing_key``, the
    Ed25519 key its certificate binds to its name."""
    return SecAggClient(member, job.secagg_config(round_, attempt), signing_key)


#: A member's local training: the global parameters and the round number in, the
#: trained parameters and the number of examples out. The data stays in the closure.
Trainer = Callable[[Params, int], tuple[Params, int]]
