"""The coordinator's own arithmetic on a closed round: the job's clip, the bound on a
secure sum, and the step to the next global model.

A job's clip (``JobSpec.clip``) is enforced by the coordinator on every change it sees,
not left to the members that agreed to it: in plain rounds each update is clipped before
any strategy runs (FedAvg, median and Krum included), so one hostile member cannot move
the model further than the bound. Under secure aggregation the coordinator never sees a
single change, so it bounds their sum instead: longer than honest members' changes
within the clip can add up to, it is scaled back (``RoundRecord.sum_bounded``), and the
model moves by at most the clip there too (with distributed noise, a member may still
send, in place of its share of the noise, a change of that share's length: the sum
cannot tell them apart).

This is its own room because it is numbers only: plain functions of vectors and the
job's terms, with no phase, deadline or member bookkeeping, so the bounds can be read
and argued about apart from the state machine (``rounds``) that decides when a round
closes, and apart from the strategies (``strategies``) that a plain round hands the
clipped updates to. Models run to 50 MB, so the arithmetic works in place where the
array is the round's own.

A change is measured as the strategies measure it (``strategies.bounded_change``: in
float64 where float32 overflows, which made a clipped change NaN), and a step that
takes the model past float32's range is refused (``AggregateNotFinite``), not published.
"""

from __future__ import annotations

import math

import numpy as np

from qdspace.federation.job import JobSpec
from qdspace.federation.params import Vector
from qdspace.federation.secagg_masks import Quantizer
from qdspace.federation.strategies import (
    ClientUpdate,
    bounded_change,
    finite_aggregate,
    l2_norm,
)

#: Elements per block of the in-place mean (1 MiB of float32).
_BLOCK = 1 << 18


def clip_updates(
    updates: list[ClientUpdate], base: Vector, clip: float
) -> tuple[list[ClientUpdate], tuple[str, ...]]:
    """Each update whose change from the global model ``base`` is longer than ``clip``
    (L2), scaled back to it; and who was. The job's clip is a term every member agreed
    to, so the coordinator enforces it on what arrives rather than trust each member
    to have applied it: a hostile member's 1e30 update moved a FedAvg model by 5e29.
    Updates within the bound are kept as sent (bit for bit)."""
    out: list[ClientUpdate] = []
    bounded: list[str] = []
    for u in updates:
        change, was = bounded_change(u.vector, base, clip)  # a fresh array: ours
        if not was:
            out.append(u)
            continue
        with np.errstate(over="ignore"):  # past float32's limit: the strategy refuses it
            np.add(change, base, out=change)
        out.append(ClientUpdate(u.member, change, u.num_examples))
        bounded.append(u.member)
    return out, tuple(bounded)


def sum_of_changes(
    updates: list[ClientUpdate], base: Vector, clip: float | None
) -> tuple[Vector, tuple[str, ...]]:
    """The sum of the updates' changes from ``base`` (a sum-mode job: the plain round
    that adds as a secure one would), each clipped to ``clip`` first; and whose were.
    Each change is measured as ``clip_updates`` measures it (``bounded_change``): in
    float32 it overflowed for a model near float32's limit, and the clip made it NaN."""
    total = np.zeros(base.shape, dtype=np.float64)
    bounded = []
    for u in updates:
        if clip is None:
            total += np.subtract(u.vector, base, dtype=np.float64)
            continue
        change, was = bounded_change(u.vector, base, clip)
        total += change
        if was:
            bounded.append(u.member)
    with np.errstate(over="ignore"):  # past float32's range: ``mean_step`` refuses it
        return total.astype(np.float32), tuple(bounded)


def secure_sum_bound(job: JobSpec, quantizer: Quantizer, members: int, size: int) -> float:
    """The longest sum (L2) of `members` changes each within the job's clip, as a
    secure round decodes it: their clips and the quantizer's rounding in every
    coordinate, and the distributed noise each member adds, bounded by its square.

    The noise adds ``sigma^2 * d`` to the sum's square, give or take six standard
    deviations of that (``sigma^2 * sqrt(2d)`` each) and of its cross term with the
    changes (``2 * sigma * |changes|`` each); bounding the square, not the length,
    keeps the slack to that. What it cannot bound: a member that leaves out its own
    share of the noise and sends a change of that share's length instead
    (``sigma / sqrt(members) * sqrt(d)``, in a direction of its choosing): the sum
    cannot tell a member's noise from its change. A relative 1e-4 on top keeps
    float32 rounding of an honest, aligned sum from counting as over."""
    clip = job.clip
    assert clip is not None  # a secure job has one (`JobSpec.problems`)
    changes = members * clip + quantizer.max_error(members) * math.sqrt(size)
    square = changes * changes
    dp = job.dp
    if dp is not None:
        sigma = math.sqrt(members) * dp.member_noise_std(job.min_members)
        noise = sigma * sigma * (size + 6.0 * math.sqrt(2.0 * size))
        square += noise + 6.0 * 2.0 * sigma * changes
    return math.sqrt(square) * (1.0 + 1e-4)


def bound_secure_sum(
    total: Vector, job: JobSpec, quantizer: Quantizer, members: int
) -> tuple[Vector, bool]:
    """The unmasked sum, scaled back to `secure_sum_bound` if it is longer; whether it was.

    The coordinator never sees a member's change under secure aggregation, so it
    cannot clip one; but a masked input is any ring element the member likes (each
    coordinate up to the quantizer's room for all members' sum), and one hostile
    member's input moved the model by ``sqrt(d)`` times the clip. Honest members'
    sum is within this bound, so bounding the sum takes nothing from them; without
    noise it moves the model by at most the clip (the mean), as clipping does in a
    plain round (with distributed noise, see `secure_sum_bound` for what is left). Who
    sent the long input stays unknown (that is the protocol's point)."""
    flat = np.asarray(total, dtype=np.float32)
    bound = secure_sum_bound(job, quantizer, members, flat.size)
    norm = l2_norm(flat.ravel())
    if norm <= bound:
        return total, False
    if math.isinf(norm) or not flat.flags.writeable or flat is not total:
        wide = np.asarray(total, dtype=np.float64)
        return (wide * (bound / float(np.linalg.norm(wide)))).astype(np.float32), True
    np.multiply(flat, np.float32(bound / norm), out=flat)
    return flat, True


def mean_step(total: Vector, count: int, base: Vector) -> Vector:
    """The next global model: ``base`` plus the mean of ``count`` members' changes
    summed in ``total``. A fresh, writable float32 ``total`` (the round's own) is
    divided and added to in place, a block at a time (no 50 MB temporaries)."""
    mean = np.asarray(total, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # refused below, not warned about
        if mean is total and mean.flags.writeable:
            members = np.float32(count)
            for start in range(0, mean.size, _BLOCK):  # both steps while a block is in cache
                part = mean[start : start + _BLOCK]
                np.divide(part, members, out=part)
                np.add(part, base[start : start + _BLOCK], out=part)
        else:
            mean = base + (mean / np.float32(count)).astype(np.float32)
    # a model near float32's limit that the step pushes past it is never published
    return finite_aggregate(mean, "mean")
