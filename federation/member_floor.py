"""What a member accepts of a job's terms: a floor it sets in its own configuration.

A member's agreement for a job names the job's asset (``federation.agreements``), not
its privacy terms, and the coordinator writes the terms. Under an agreement already in
force it could publish a job with next to no noise, without secure aggregation, or of
thousands of rounds, and a member would join it: every check it made was about the
terms being consistent, none about them being acceptable *to this member*. The updates
describe the member's data, so the member decides: a floor in its own node settings
(``node.json`` ``federation_floor``, ``node.config.FederationFloorSetting``) that a job's
terms must meet before its node joins (``FederationMember.join``). The terms' digest is
pinned from then on (``FederationClient.job``), so the terms checked are the ones run.

The floor counts only noise that protects this member's update *from the coordinator*,
as the terms themselves arrange it (``protecting_noise``):

- no DP, or DP in central mode: none. Central noise is added by the coordinator to
  what it has already seen; this member cannot check that it was added at all.
- distributed noise without secure aggregation: the coordinator sees this member's
  update with only its own share, ``noise_multiplier / sqrt(min_members)``.
- distributed noise with secure aggregation: the coordinator sees only sums, unmasked
  from at least ``threshold`` members, each adding its share:
  ``noise_multiplier * sqrt(threshold / min_members)`` (secure aggregation's own
  premise: fewer than ``threshold`` members collude with the coordinator).

Epsilon is counted from that noise, at the member's own delta (a coordinator choosing a
large delta would otherwise shrink it), with no amplification by sampling: the member
sends in every round it is asked to, whatever ``sample_rate`` the terms claim. At
``join`` it is counted over every round the terms allow (the job's own epsilon budget
is the coordinator's to enforce), one release of this member's update per round: the
least the job will take. A coordinator can take more, by failing and restarting the
attempts of a round: each attempt the member sends a fresh noisy update (or masked
input), and averaging them strips the noise. So while the job runs, the same epsilon
(``member_epsilon``) is counted over the releases the member has actually made, and one
more is sent only within ``max_epsilon`` and ``max_rounds`` (``member_releases``).
A coordinator can also publish new jobs over the same data, each with a fresh count, so
the releases of all its jobs are counted together as well, within
``max_total_epsilon`` and ``max_total_rounds`` (``member_budget``; by default a few
jobs' worth of the per-job caps).
The defaults ask for no DP, so plain jobs (and the demo's, secure aggregation without
DP) are joined as before; they cap a job at ``DEFAULT_MAX_ROUNDS`` rounds, and so at as
many releases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qdspace.federation.dp import Accountant, DPConfig, NoiseMode
from qdspace.federation.job import JobSpec

#: Most rounds a member takes part in unless its settings say otherwise (terms may
#: name up to ``job.MAX_ROUNDS``); the longest job the project runs has 50.
DEFAULT_MAX_ROUNDS = 1_000
#: The delta at which a member counts a job's epsilon unless its settings say otherwise.
DEFAULT_DELTA = 1e-5


@dataclass(frozen=True, slots=True)
class MemberFloor:
    """The least a job's terms must give this member (its node settings, checked there).

    ``min_noise_multiplier`` and ``max_epsilon`` ask for differential privacy (a job
    without it is refused); ``None`` asks for none. ``delta`` is the one epsilon is
    counted at. ``require_secure_aggregation`` refuses jobs that send updates in the
    clear; ``max_rounds`` refuses longer jobs. ``max_total_epsilon`` and
    ``max_total_rounds`` cap the releases of all of one coordinator's jobs together
    (``member_budget``); ``None`` is their default, a multiple of the per-job caps.
    """

    min_noise_multiplier: float | None = None
    max_epsilon: float | None = None
    delta: float = DEFAULT_DELTA
    require_secure_aggregation: bool = False
    max_rounds: int = DEFAULT_MAX_ROUNDS
    max_total_epsilon: float | None = None
    max_total_rounds: int | None = None

    @property
    def wants_dp(self) -> bool:
        return any(
            v is not None
            for v in (self.min_noise_multiplier, self.max_epsilon, self.max_total_epsilon)
        )

    @property
    def dp_asked(self) -> str:
        """The settings that ask for DP, with their values (for refusals)."""
        asked = [
            f"{name} {value:g}"
            for name, value in (
                ("min_noise_multiplier", self.min_noise_multiplier),
                ("max_epsilon", self.max_epsilon),
                ("max_total_epsilon", self.max_total_epsilon),
            )
            if value is not None
        ]
        return " and ".join(asked)


def protecting_noise(job: JobSpec) -> tuple[float, str]:
    """The noise multiplier (of the clip) on what the coordinator sees of one member's
    update under ``job``, and how the terms make it."""
    dp = job.dp
    if dp is None:
        return 0.0, "the terms add no noise"
    if dp.mode is NoiseMode.CENTRAL:
        return 0.0, "central noise is added by the coordinator, which no member can check"
    n, t = job.min_members, job.threshold
    if job.secure_aggregation:
        return (
            dp.noise_multiplier * math.sqrt(t / n),
            f"the coordinator sees sums of at least threshold {t} members' shares: "
            f"noise_multiplier * sqrt({t}/{n})",
        )
    return (
        dp.noise_multiplier / math.sqrt(n),
        f"without secure aggregation the coordinator sees the update with this member's "
        f"share alone: noise_multiplier / sqrt(min_members {n})",
    )


def floor_problems(job: JobSpec, floor: MemberFloor) -> list[str]:
    """Each term of ``job`` below ``floor``, naming the term and the floor; [] if none."""
    out = []
    if job.rounds > floor.max_rounds:
        out.append(f"rounds {job.rounds:,} is over max_rounds {floor.max_rounds:,}")
    if floor.require_secure_aggregation and not job.secure_aggregation:
        out.append("secure_aggregation is off, and require_secure_aggregation is set")
    if floor.wants_dp:
        out.extend(_dp_problems(job, floor))
    return out


def _dp_problems(job: JobSpec, floor: MemberFloor) -> list[str]:
    asked = floor.dp_asked
    if job.dp is None:
        return [f"dp is off (no noise on this member's update), and {asked} asks for it"]
    noise, how = protecting_noise(job)
    if noise <= 0.0:
        return [f"dp.mode is central ({how}), and {asked} needs distributed noise"]
    out = []
    least = floor.min_noise_multiplier
    if least is not None and noise < least:
        out.append(
            f"dp.noise_multiplier {job.dp.noise_multiplier:g} leaves {noise:.3g} on this "
            f"member's update ({how}), under min_noise_multiplier {least:g}"
        )
    most = floor.max_epsilon
    if most is not None:
        epsilon = member_epsilon(job, floor, job.rounds)
        if epsilon > most:
            out.append(
                f"dp spends epsilon {epsilon:.3g} of this member's over the job's "
                f"{job.rounds:,} rounds (noise {noise:.3g}, delta {floor.delta:g}, every "
                f"round), over max_epsilon {most:g}"
            )
    return out


def member_epsilon(job: JobSpec, floor: MemberFloor, releases: int) -> float:
    """Epsilon of ``releases`` unsampled Gaussian releases of this member's update under
    ``job``, counted from the noise that protects it (``protecting_noise``) at the
    floor's delta; infinite without such noise, or with noise too small to square (the
    terms' multiplier is any number > 0)."""
    if releases <= 0:
        return 0.0
    noise, _ = protecting_noise(job)
    if job.dp is None or noise <= 0.0:
        return math.inf
    counted = DPConfig(clip=job.dp.clip, noise_multiplier=noise, delta=floor.delta)
    try:
        return Accountant(counted).spent(releases).epsilon
    except (ZeroDivisionError, OverflowError):
        return math.inf
